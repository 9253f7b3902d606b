"""Evaluating a published generator end to end, as `sgde evaluate` does: synthetic samples from the sampler (or from
a local artifact file), real files loaded against the model's schema, `evaluate`, the report folder, and the flat
metrics stored on the model in the registry."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from libsgde.evaluate import Evaluation, evaluate
from libsgde.evaluate.report import write_report
from libsgde.io.datasets import load_dataset
from libsgde.io.encoding import EncodedData, TabularEncoder, encoder_for

__all__ = ["FederationEvaluation", "ModelEvaluation", "encode_samples", "evaluate_federation", "evaluate_model"]

MAX_DEFAULT_SAMPLES = 100_000


@dataclass
class ModelEvaluation:
    evaluation: Evaluation
    source: str  # the version sampled ("models/o/m/versions/N"), or the artifact file's path
    sha256: str  # of the artifact sampled
    folder: Path
    files: list[str]
    metrics: dict[str, float]  # what was stored on the model (or, unpublished, would have been)
    published: bool


def encode_samples(samples) -> EncodedData:
    """A `Samples` (from Client.sample or sample_local) back in model space, through its schema's encoder."""
    encoder = encoder_for(samples.metadata.data_schema)
    if isinstance(encoder, TabularEncoder):
        return encoder.encode(samples.values)
    return encoder.encode(samples.values, samples.labels)


def _model_of(ref: str) -> str:
    """MODEL@N or .../versions/N -> the model's reference."""
    return ref.split("/versions/")[0].rsplit("@", 1)[0]


def _version_number(version: str) -> int | None:
    found = re.search(r"/versions/(\d+)$", version)
    return int(found.group(1)) if found else None


def evaluate_model(
    client,
    model: str,
    holdout_path: Path,
    *,
    train_path: Path | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    out: Path | None = None,
    classifiers: list[str] | None = None,
    publish: bool = True,
) -> ModelEvaluation:
    """Evaluates MODEL (a registry reference: MODEL, MODEL@N, .../versions/N; or the path of a local artifact file)
    against the real `holdout_path` (records the generator never saw) and, when given, its training data
    `train_path` (TRTR and the privacy audit need it).

    `num_samples` defaults to the number of training records (the audit compares like with like), else of held-out
    ones. The report goes to `out` (default `evaluation-<model>-v<N>`). Metrics (Evaluation.metrics, plus
    `evaluate.version`) are stored on the model, merged with its others, unless `publish` is False or MODEL is a
    local file (owner only: the registry refuses anyone else)."""
    from libsgde.client import sample_local
    from libsgde.errors import FailedPrecondition, PermissionDenied
    from libsgde.io.artifact import read_header

    local = Path(model).is_file()
    if local:
        schema = read_header(Path(model)).manifest.data_schema
    else:
        entry = client.get_model(_model_of(model))
        if publish and entry.owner != client.username:  # said now, not after minutes of evaluation
            raise PermissionDenied(
                f"only its owner {entry.owner} may store metrics on {entry.name}; evaluate it "
                "with publish off (sgde evaluate --no-publish)"
            )
        schema = entry.data_schema
        if not schema.WhichOneof("kind"):
            raise FailedPrecondition(f"{model} has no published version to evaluate yet")
    holdout = load_dataset(Path(holdout_path), schema)
    train = load_dataset(Path(train_path), schema) if train_path is not None else None
    n = num_samples or min(len(train if train is not None else holdout), MAX_DEFAULT_SAMPLES)
    samples = sample_local(model, n, seed=seed) if local else client.sample(model, n, seed=seed)
    source = str(model) if local else samples.metadata.version
    synthetic = encode_samples(samples)
    ev = evaluate(samples.metadata.data_schema, synthetic, holdout, train, classifiers=classifiers, seed=seed)

    number = None if local else _version_number(source)
    stem = Path(model).stem if local else source.removeprefix("models/").split("/versions/")[0].replace("/", "-")
    folder = Path(out) if out is not None else Path(f"evaluation-{stem}" + (f"-v{number}" if number else ""))
    privacy = samples.metadata.privacy
    context = {
        "model": source,
        "artifact_sha256": samples.metadata.artifact_sha256,
        "seed": seed,
        "holdout_file": str(holdout_path),
        "train_file": None if train_path is None else str(train_path),
        "privacy": {"mechanism": privacy.mechanism, "epsilon": privacy.epsilon, "delta": privacy.delta},
    }
    files = write_report(ev, folder, holdout, synthetic, train, title=f"Evaluation of {source}", context=context)
    metrics = ev.metrics()
    if number is not None:
        metrics["evaluate.version"] = float(number)
    published = publish and not local
    if published:
        client.set_metrics(_model_of(model), metrics)
    return ModelEvaluation(ev, source, samples.metadata.artifact_sha256, folder, files, metrics, published)


@dataclass
class FederationEvaluation:
    results: list  # libsgde.evaluate.membership.MembershipResult, one per classifier
    folder: Path
    files: list[str]
    sources: dict[str, int]  # member -> synthetic samples of theirs used


def evaluate_federation(
    client,
    federation: str,
    train_path: Path,
    holdout_path: Path,
    *,
    num_samples: int | None = None,
    seed: int = 0,
    out: Path | None = None,
    classifiers: list[str] | None = None,
) -> FederationEvaluation:
    """What membership buys: on your held-out data (`holdout_path`), a classifier trained on your local data
    (`train_path`), on the other members' synthetic data (sampled through the sampler, equal shares; `num_samples`
    in all, default as many as your local rows), and on both. Both files are read against the federation's schema.
    The report (report.md, report.json, membership.png) goes to `out` (default `evaluation-<federation>`)."""
    from libsgde.evaluate import image_shape as shape_of
    from libsgde.evaluate.membership import membership_value, write_membership_report

    fed = client.get_federation(federation)
    schema = fed.data_schema
    local = load_dataset(Path(train_path), schema)
    holdout = load_dataset(Path(holdout_path), schema)
    samples = client.sample_federation(federation, num_samples or len(local), seed=seed)
    synthetic = encode_samples_of(samples)
    image = shape_of(holdout.space) if holdout.space.kind == "image" else None
    results = membership_value(local, synthetic, holdout, classifiers=classifiers, image_shape=image, seed=seed)
    sources = {member: len(part) for member, part in samples.parts}
    folder = Path(out) if out is not None else Path(f"evaluation-{fed.name.removeprefix('federations/')}")
    names = list(schema.image.class_names) if schema.HasField("image") else _label_categories(schema)
    context = {
        "federation": fed.name,
        "member": client.username,
        "seed": seed,
        "train_file": str(train_path),
        "holdout_file": str(holdout_path),
        "local_rows": len(local),
        "synthetic_rows_by_member": sources,
    }
    files = write_membership_report(folder, results, names, context)
    return FederationEvaluation(results, folder, files, sources)


def encode_samples_of(federation_samples) -> EncodedData:
    """A FederationSamples back in model space (its parts joined in order)."""
    parts = [encode_samples(part) for _, part in federation_samples.parts]
    labels = None if parts[0].labels is None else np.concatenate([p.labels for p in parts])
    return EncodedData(np.concatenate([p.x for p in parts]), labels, parts[0].space)


def _label_categories(schema) -> list[str]:
    t = schema.tabular
    return next(list(c.categories) for c in t.columns if c.name == t.label_column)
