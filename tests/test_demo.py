"""`sgde demo --tiny`: the whole walk (services, training in the trainer, publish, sample, evaluate, figures) with tiny
models, and a report a person can open."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from libsgde.cli import main
from libsgde.cli.demo_data import BREAST_CANCER_LIMITS, breast_cancer_upper
from libsgde.cli.walkthrough import DemoError, _fresh_home

pytestmark = pytest.mark.integration  # real servers on loopback sockets

PNG = b"\x89PNG\r\n\x1a\n"


def test_tiny_demo_writes_a_sensible_report(tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["demo", "--tiny", "--out", str(out), "--epsilon", "3"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "TSTR" in result.output and "published models/demo-" in result.output

    for name in ("digits_samples.png", "breast_cancer_marginals.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    summary = json.loads((out / "summary.json").read_text())
    assert {
        "target_epsilon",
        "delta",
        "architecture",
        "models",
        "evaluation",
        "timings_seconds",
        "sample_path",
        "machine",
        "schemas",
    } <= set(summary)
    assert summary["target_epsilon"] == 3 and summary["tiny"] is True
    # The sampler service served the samples: it pulled and verified both artifacts into its cache.
    assert summary["sample_path"] == "service"
    cached = {
        p.name.removesuffix(".safetensors") for p in (out / "home" / "sampler" / "artifacts").glob("*.safetensors")
    }
    assert {summary["models"][name]["sha256"] for name in ("digits", "breast_cancer")} <= cached  # + the federation's
    for name in ("digits", "breast_cancer"):
        p = summary["models"][name]["privacy"]
        assert 0 < p["epsilon"] <= 3 and p["delta"] == 1e-5
        assert p["mechanism"] == "dp-merf" and p["accountant"] == "pld"
        assert summary["models"][name]["version"].endswith("/versions/1")
        ev = summary["evaluation"][name]
        for accuracies in (ev["tstr"], ev["trtr"]):
            assert accuracies and all(0.0 <= a <= 1.0 for a in accuracies.values())
        assert min(ev["trtr"].values()) > 0.85  # the real-data baseline is what it should be
    # The federation: three silos, each generator admitted with the registry's epsilon, the three arms measured.
    federation = summary["federation"]
    assert len(federation["members"]) == 3 and all(0 < m["epsilon"] <= 3 for m in federation["members"])
    others = {m["member"] for m in federation["members"]} - {federation["evaluated_by"]}
    assert set(federation["synthetic_rows_by_member"]) == others  # the evaluating silo's own is not among them
    for accuracy in federation["membership"].values():
        assert set(accuracy) == {"local", "others", "both"} and all(0 <= a <= 1 for a in accuracy.values())
    assert (out / "federation" / "membership.png").read_bytes().startswith(PNG)
    assert "What membership buys" in (out / "summary.md").read_text()
    per_class = summary["evaluation"]["digits"]["per_class"]
    assert len(per_class["tstr"]) == len(per_class["trtr"]) == 10
    assert all(0.0 <= a <= 1.0 for a in per_class["tstr"] + per_class["trtr"])
    timings = summary["timings_seconds"]
    assert {"train_digits", "train_breast_cancer", "sample", "evaluate", "total"} <= set(timings)
    assert all(math.isfinite(t) and t >= 0 for t in timings.values())
    md = (out / "summary.md").read_text()
    assert "TSTR" in md and "digits_samples.png" in md and "not the data's maxima" in md.lower()
    # The schema files hold the public bounds, not the data's.
    schema = json.loads((out / "data" / "breast_cancer.schema.json").read_text())
    uppers = {c["name"]: c.get("upper") for c in schema["tabular"]["columns"]}
    assert uppers["mean radius"] == BREAST_CANCER_LIMITS["radius"] and uppers["radius error"] == 12.5
    # Everything was stopped: a second run in the same folder replaces the demo's home.
    _fresh_home(out / "home")
    assert [p.name for p in (out / "home").iterdir()] == [".sgde-demo"]


def test_public_bounds_are_constants_and_refuse_a_foreign_home(tmp_path):
    assert breast_cancer_upper("worst area") == 8000 and breast_cancer_upper("area error") == 2000
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("not the demo's")
    with pytest.raises(DemoError, match="not made by the demo"):
        _fresh_home(foreign)
    assert (foreign / "precious.txt").exists()
