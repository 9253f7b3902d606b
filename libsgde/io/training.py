"""Training as a library function: encoded data + schema + spec in, a signed-ready artifact and progress events out.

The loop itself is the architecture's mechanism (libsgde.ml.mechanisms); this module checks the spec against the
schema and the data, keeps the checkpoint on disk and writes the artifact.

The trainer's jobs (services/trainer) and a local run (`train_file`, `sgde train --local`) go through the same
functions: `request_violations` before the data is read, `spec_for_data` once its size N is known (the defaults that
scale with N: libsgde.domain.specs), then `train`; so the same data, schema, spec, seed and secret give the same
artifact bytes on either path.

The mechanism's secret key (libsgde.ml.train) defaults to 32 fresh random bytes; passing the same secret and seed
reproduces an artifact byte for byte. The secret is kept in the checkpoint (mode 0600) so that a resumed job
continues the same noise stream. Resuming never spends privacy twice: only the final parameters are released, and
the steps before the checkpoint are not run again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from libsgde.domain.specs import (
    DEFAULTS,
    TrainSpec,
    chosen_defaults,
    default_batch_size,
    default_delta,
    default_epochs,
    spec_field,
)
from libsgde.errors import FieldError
from libsgde.io import checkpoint as ckpt
from libsgde.io.artifact import Manifest, build_manifest, write_artifact
from libsgde.io.encoding import EncodedData, model_space
from libsgde.io.schema import SchemaError, validate_schema
from libsgde.io.training_data import load_training_data
from libsgde.ml.architectures import CLASS_PRIOR, ConfigError, get_architecture
from libsgde.ml.architectures.base import flatten
from libsgde.ml.mechanisms import DP_SGD
from libsgde.ml.privacy import accounting
from libsgde.ml.train import CHECKPOINT_EVERY_S, Progress, Run, TrainingCancelled
from libsgde.wire.convert import privacy_to_proto, train_spec_from_proto, train_spec_to_proto
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

__all__ = [
    "CHECKPOINT_EVERY_S",
    "Progress",
    "SpecError",
    "TrainResult",
    "TrainSpec",
    "TrainingCancelled",
    "check_spec",
    "defaults_chosen",
    "request_violations",
    "spec_for_data",
    "train",
    "train_file",
]

MIN_SECRET_BYTES = 32


class SpecError(FieldError):
    """A training spec that cannot run; `field` is a dotted path such as "spec.target_epsilon"."""


@dataclass
class TrainResult:
    path: Path
    sha256: str
    privacy: pb.PrivacyReport
    manifest: Manifest
    spec: TrainSpec | None = None  # the spec that ran, every default filled in
    defaults: tuple[str, ...] = ()  # train_file: the defaults chosen from N, one line each (domain.chosen_defaults)


def check_spec(spec: TrainSpec, schema: pb.DataSchema, dataset_size: int | None = None) -> TrainSpec:
    """The spec with every default filled in and every setting checked; raises SpecError."""
    try:
        validate_schema(schema)
    except SchemaError as e:
        raise SpecError(f"data_schema.{e.field}" if e.field else "data_schema", e.description) from None
    space = model_space(schema)
    try:
        arch = get_architecture(spec.architecture)
        config = arch.configure(_plain(spec.config), space)
    except ConfigError as e:
        raise SpecError(
            "spec.architecture" if e.key == "architecture" else f"spec.config.{e.key}", e.description
        ) from None
    if not (math.isfinite(spec.target_epsilon) and 0 < spec.target_epsilon <= 1000):
        raise SpecError(
            "spec.target_epsilon", f"must be in (0, 1000] (got {spec.target_epsilon}); 1 to 10 are common choices"
        )
    # Without N (a check before the data is read) epochs stay 0, and batch size and delta take N-free defaults.
    filled = {k: getattr(spec, k) or v for k, v in DEFAULTS.items()}
    if dataset_size:
        filled["batch_size"] = spec.batch_size or default_batch_size(dataset_size)
        filled["delta"] = spec.delta or default_delta(dataset_size)
    if not 1 <= filled["batch_size"] <= 1 << 20:
        raise SpecError("spec.batch_size", f"must be between 1 and {1 << 20} (got {filled['batch_size']})")
    filled["epochs"] = spec.epochs or (default_epochs(dataset_size, filled["batch_size"]) if dataset_size else 0)
    if dataset_size is not None:
        try:
            accounting.check_delta(filled["delta"], dataset_size)
        except accounting.PrivacyError as e:
            raise SpecError(f"spec.{e.field}", e.description) from None
        try:
            arch.mechanism.check(replace(spec, **filled), dataset_size)
        except FieldError as e:
            raise SpecError(e.field, e.description) from None
    elif not 0 < filled["delta"] < 1:
        raise SpecError("spec.delta", f"must be in (0, 1) (got {filled['delta']})")
    if (spec.epochs or dataset_size) and not 1 <= filled["epochs"] <= 100_000:
        raise SpecError("spec.epochs", f"must be between 1 and 100000 (got {filled['epochs']})")
    for name in ("clip_norm", "learning_rate"):
        if not (math.isfinite(filled[name]) and filled[name] > 0):
            raise SpecError(f"spec.{name}", f"must be a finite number > 0 (got {filled[name]})")
    if not 0 <= spec.seed < 2**63:
        raise SpecError("spec.seed", "must be in [0, 2^63)")
    return replace(spec, config=config, **filled)


def request_violations(spec: TrainSpec, schema: pb.DataSchema) -> list[tuple[str, str]]:
    """What a training request gets wrong before its data is read, as (request field, description): the schema,
    else the spec. The trainer's CreateJob and a local run refuse the same requests with the same fields."""
    try:
        validate_schema(schema)
    except SchemaError as e:
        return [(f"data_schema.{e.field}" if e.field else "data_schema", e.description)]
    try:
        check_spec(spec, schema)
    except (SpecError, accounting.PrivacyError) as e:
        return [(spec_field(e.field), e.description)]
    return []


def spec_for_data(spec: TrainSpec, schema: pb.DataSchema, dataset_size: int) -> TrainSpec:
    """The spec a run on `dataset_size` examples trains, or FieldError naming the request's field: check_spec's,
    in the form the trainer stores it (a TrainingSpec, whose config numbers are doubles) and checked again. The
    trainer (at submit) and a local run both call it, so that both train the very same spec."""
    try:
        filled = check_spec(spec, schema, dataset_size)
        return check_spec(train_spec_from_proto(train_spec_to_proto(filled)), schema, dataset_size)
    except (SpecError, accounting.PrivacyError) as e:
        raise FieldError(spec_field(e.field), e.description) from None


def defaults_chosen(asked: TrainSpec, filled: TrainSpec, dataset_size: int) -> list[str]:
    """The defaults chosen from N for `asked`, one line each, to be shown where they are chosen (a job's first event,
    a local run's output, the SDK's result): libsgde.domain.specs.chosen_defaults."""
    uses_epochs = get_architecture(filled.architecture).mechanism.name == DP_SGD.name
    return chosen_defaults(asked, filled, dataset_size, uses_epochs)


def _plain(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """Struct numbers arrive as floats; give integral ones back as ints so that integer settings accept them."""
    if config is None:
        return None

    def fix(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return [fix(x) for x in v] if isinstance(v, list) else v

    return {k: fix(v) for k, v in config.items()}


def train(
    data: EncodedData,
    schema: pb.DataSchema,
    spec: TrainSpec,
    out_path: Path,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    checkpoint_dir: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    secret: bytes | None = None,
    checkpoint_every_s: float = CHECKPOINT_EVERY_S,
) -> TrainResult:
    """Train a DP generator and write its artifact to `out_path` (see the module docstring for randomness).

    Deterministic for (secret, spec.seed). With `checkpoint_dir`, resumes from a checkpoint of the same spec and
    data, saves one every `checkpoint_every_s` seconds and before raising TrainingCancelled, and removes it at the
    end. Blocking: run it in a worker thread to serve other calls meanwhile."""
    spec = check_spec(spec, schema, len(data))
    arch = get_architecture(spec.architecture)
    folder = Path(checkpoint_dir) if checkpoint_dir else None
    fingerprint = _fingerprint(data, schema, spec)

    def save(step: int, run_secret: bytes, state, extra: dict) -> None:
        assert folder is not None
        ckpt.save_checkpoint(folder, fingerprint, step, run_secret, state, extra)

    run = Run(
        data.x,
        data.labels,
        data.space,
        spec,
        arch,
        secret if secret is not None else os.urandom(32),
        on_progress=on_progress or (lambda p: None),
        should_stop=should_stop or (lambda: False),
        save_checkpoint=save if folder else None,
        resumed=ckpt.load_checkpoint(folder, fingerprint) if folder else None,
        checkpoint_every_s=checkpoint_every_s,
    )
    outcome = arch.mechanism.train(run)
    tensors = {k: np.asarray(v, np.float32) for k, v in flatten(arch.sampling_params(outcome.params)).items()}
    tensors[CLASS_PRIOR] = np.asarray(outcome.class_prior, np.float32)
    privacy = privacy_to_proto(outcome.privacy)
    assert spec.config is not None  # check_spec filled it in
    manifest = build_manifest(arch.name, outcome.config or spec.config, schema, privacy, outcome.training)
    sha = write_artifact(Path(out_path), tensors, manifest)
    if folder:
        ckpt.remove_checkpoint(folder)
    return TrainResult(Path(out_path), sha, privacy, manifest, spec)


def train_file(
    data_path: Path,
    schema: pb.DataSchema,
    spec: TrainSpec,
    out_path: Path,
    *,
    secret: bytes | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: Path | None = None,
) -> TrainResult:
    """Train on a data file of one's own, with no service: what the trainer does for an uploaded dataset, in the
    same order and with the same refusals (FieldErrors naming the same fields): the request, the data
    (libsgde.io.training_data), the spec for its N, then `train`. The same file, schema, spec, seed and `secret`
    give the bytes a trainer job gives; without a secret, 32 fresh random bytes (and so other bytes each run).
    The result's `defaults` says which defaults were chosen from N."""
    violations = request_violations(spec, schema)
    if secret is not None and len(secret) < MIN_SECRET_BYTES:
        violations.append(("secret", f"at least {MIN_SECRET_BYTES} random bytes (got {len(secret)})"))
    if violations:
        raise FieldError.many(violations)
    data = load_training_data(Path(data_path), schema, should_stop=should_stop)
    filled = spec_for_data(spec, schema, len(data))
    chosen = tuple(defaults_chosen(spec, filled, len(data)))
    if chosen and on_progress:  # said where they are chosen, as a trainer job's first event says them
        on_progress(Progress(0, 0, 0, math.nan, 0.0, 0.0, 0.0, "defaults: " + "; ".join(chosen)))
    result = train(
        data,
        schema,
        filled,
        out_path,
        on_progress=on_progress,
        checkpoint_dir=checkpoint_dir,
        should_stop=should_stop,
        secret=secret,
    )
    return replace(result, defaults=chosen)


def _fingerprint(data: EncodedData, schema: pb.DataSchema, spec: TrainSpec) -> str:
    """Identifies a run: a checkpoint is only resumed by the same spec on the same data."""
    h = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode())
    h.update(schema.SerializeToString(deterministic=True))
    h.update(np.ascontiguousarray(data.x).tobytes())
    if data.labels is not None:
        h.update(np.ascontiguousarray(data.labels).tobytes())
    return h.hexdigest()
