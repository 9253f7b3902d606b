"""evaluate() on model-space data of a schema, its flat metrics, and the report folder."""

from __future__ import annotations

import json

import numpy as np

from libsgde.evaluate import evaluate
from libsgde.evaluate.report import write_report
from libsgde.io.encoding import encoder_for
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

PNG = b"\x89PNG\r\n\x1a\n"
METRIC_KEYS = {
    "tstr.logreg",
    "trtr.logreg",
    "audit.mia_auc",
    "audit.dcr_share_closer_to_train",
    "audit.flagged",
    "evaluate.samples",
}


def _tabular(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, n)
    return {
        "age": age,
        "income": np.clip(age * 900 + rng.normal(0, 8000, n), 0, 200_000),
        "region": rng.choice(["north", "south", "east"], n),
        "outcome": np.where(age + rng.normal(0, 10, n) > 50, "yes", "no"),
    }


def test_a_tabular_evaluation_and_its_report(tmp_path):
    schema = pb.DataSchema(
        tabular=pb.TabularSchema(
            label_column="outcome",
            columns=[
                pb.Column(name="age", type=pb.COLUMN_TYPE_INTEGER, lower=0, upper=120),
                pb.Column(name="income", type=pb.COLUMN_TYPE_CONTINUOUS, lower=0, upper=200_000),
                pb.Column(name="region", type=pb.COLUMN_TYPE_CATEGORICAL, categories=["north", "south", "east"]),
                pb.Column(name="outcome", type=pb.COLUMN_TYPE_CATEGORICAL, categories=["no", "yes"]),
            ],
        )
    )
    encoder = encoder_for(schema)
    train, holdout, fresh = (encoder.encode(_tabular(300, s)) for s in (1, 2, 3))
    ev = evaluate(schema, fresh, holdout, train, classifiers=["logreg"])
    metrics = ev.metrics()
    assert METRIC_KEYS | {"fidelity.marginal_mean", "fidelity.correlation_mean_abs_diff"} <= set(metrics)
    assert metrics["audit.flagged"] == 0.0 and 0.75 < metrics["tstr.logreg"] and metrics["fidelity.marginal_mean"] < 0.1
    files = write_report(ev, tmp_path / "report", holdout, fresh, train, context={"model": "models/a/b"})
    assert files == ["report.json", "report.md", "marginals.png", "correlation_difference.png", "dcr.png", "roc.png"]
    for name in files[2:]:
        assert (tmp_path / "report" / name).read_bytes().startswith(PNG)
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["context"] == {"model": "models/a/b"} and saved["metrics"] == metrics
    assert [c["column"] for c in saved["fidelity"]["columns"]] == ["age", "income", "region", "label"]
    assert "region=south" in saved["fidelity"]["feature_names"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "not flagged" in md and "TSTR" in md and "![roc.png](roc.png)" in md


def test_an_image_evaluation_flags_copies_and_draws_them(tmp_path):
    schema = pb.DataSchema(
        image=pb.ImageSchema(height=6, width=6, channels=1, pixel_max=255, class_names=["dark", "light"])
    )
    rng = np.random.default_rng(0)
    labels = np.arange(120) % 2
    images = np.clip(rng.normal(80 + 100 * labels[:, None, None], 30, (120, 6, 6)), 0, 255).astype(np.uint8)
    encoder = encoder_for(schema)
    train, holdout = encoder.encode(images[:60], labels[:60]), encoder.encode(images[60:], labels[60:])
    ev = evaluate(schema, train, holdout, train, classifiers=["logreg"])  # the "generator" replays its training set
    metrics = ev.metrics()
    assert metrics["audit.flagged"] == 1.0 and metrics["audit.exact_copies_train"] == 1.0
    assert metrics["tstr.logreg"] == metrics["trtr.logreg"] and metrics["fidelity.nearest_neighbour_rms_median"] == 0
    files = write_report(ev, tmp_path, holdout, train, train)
    assert files[2:] == ["mean_images.png", "nearest_neighbours.png", "dcr.png", "roc.png"]
    assert "FLAGGED" in (tmp_path / "report.md").read_text()
    # No training records: utility without TRTR, fidelity, and no audit.
    alone = evaluate(schema, train, holdout, classifiers=["logreg"])
    assert alone.audit is None and alone.utility[0].trtr_accuracy is None
    assert not any(k.startswith(("audit.", "trtr.")) for k in alone.metrics())
