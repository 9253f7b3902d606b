"""What membership buys (libsgde.evaluate.membership): the three arms on real data, and the report."""

from __future__ import annotations

import json

import numpy as np
from sklearn.datasets import load_breast_cancer

from libsgde.cli.demo_data import breast_cancer_schema
from libsgde.evaluate.membership import membership_value, write_membership_report
from libsgde.io.encoding import EncodedData, encoder_for


def test_three_arms_scored_on_the_holdout_and_reported(tmp_path):
    """Real rows stand in for the others' synthetic data: a silo with 16 rows of its own gains from 300 more."""
    d = load_breast_cancer()
    schema = breast_cancer_schema(list(d.feature_names))
    columns = {name: d.data[:, i] for i, name in enumerate(d.feature_names)}
    columns["diagnosis"] = np.asarray(d.target_names)[d.target]
    data = encoder_for(schema).encode(columns)
    order = np.random.default_rng(0).permutation(len(data))

    def rows(idx) -> EncodedData:
        assert data.labels is not None
        return EncodedData(data.x[idx], data.labels[idx], data.space)

    local, others, holdout = rows(order[:16]), rows(order[16:316]), rows(order[316:])
    [result] = membership_value(local, others, holdout, classifiers=["logreg"], seed=0)
    assert set(result.accuracy) == {"local", "others", "both"}
    assert result.accuracy["others"] > result.accuracy["local"] and result.accuracy["both"] > result.accuracy["local"]
    assert all(len(v) == 2 for v in result.per_class.values())
    files = write_membership_report(tmp_path, [result], ["malignant", "benign"], {"federation": "federations/f"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)
    assert "(b) others' synthetic" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["results"][0]["classifier"] == "logreg"
