"""`sgde evaluate` against a real registry and sampler (mutual TLS): a small generator published, sampled, judged,
its report written and its metrics stored on the model, shown by `sgde models show` and `sgde models list`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from libsgde.cli import main
from tests.support.sampler import make_generator_artifact, start_sampler
from tests.support.services import tabular_schema, user_client
from tests.support.trainer import write_csv

pytestmark = pytest.mark.integration  # real servers on loopback sockets


@pytest.fixture
def world(registry, pki, tmp_path, monkeypatch):
    cfg, sampler = start_sampler(tmp_path / "sampler", pki, registry.address)
    alice = user_client(registry.address, pki, tmp_path / "homes")
    artifact = tmp_path / "judged.safetensors"
    make_generator_artifact(artifact, tabular_schema(), seed=3)  # untrained: its samples are noise
    alice.push(artifact, "judged", visibility="public")
    for name, value in (
        ("SGDE_HOME", str(alice.home)),
        ("SGDE_PKI_DIR", str(pki.root)),
        ("SGDE_REGISTRY_ADDRESS", registry.address),
        ("SGDE_SAMPLER_ADDRESS", cfg.listen),
    ):
        monkeypatch.setenv(name, value)
    yield alice, artifact
    alice.close()
    sampler.stop(grace=1)


def run(*args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def test_sgde_evaluate_publishes_metrics_and_writes_a_report(world, tmp_path):
    alice, artifact = world
    train, holdout = write_csv(tmp_path / "train.csv", 150, seed=1), write_csv(tmp_path / "holdout.csv", 150, seed=2)
    report = tmp_path / "report"
    output = run(
        "evaluate",
        f"{alice.username}/judged@1",
        "--real",
        str(holdout),
        "--train",
        str(train),
        "--samples",
        "150",
        "--out",
        str(report),
        "--classifier",
        "logreg",
    )
    assert "TSTR" in output and "logreg" in output and "privacy audit:" in output and "metrics stored" in output
    saved = json.loads((report / "report.json").read_text())
    assert saved["context"]["model"] == f"models/{alice.username}/judged/versions/1"
    assert saved["sizes"] == {"synthetic": 150, "holdout": 150, "train": 150}
    assert saved["context"]["privacy"] == {"mechanism": "none", "epsilon": None, "delta": 0.0}  # infinite: null
    assert {"report.md", "marginals.png", "dcr.png", "roc.png"} <= set(saved["files"])
    stored = dict(alice.get_model("judged").metrics)
    assert stored == saved["metrics"] | {"evaluate.version": 1.0}
    assert {"tstr.logreg", "trtr.logreg", "fidelity.marginal_mean", "audit.mia_auc", "audit.flagged"} <= set(stored)

    shown = run("models", "show", "judged")
    assert "tstr.logreg" in shown and "audit.mia_auc" in shown
    assert "TSTR" in run("models", "list", "--owner", alice.username)

    # A local artifact file, without the registry's metrics; and without training data, no audit.
    before = dict(alice.get_model("judged").metrics)
    output = run(
        "evaluate",
        str(artifact),
        "--real",
        str(holdout),
        "--out",
        str(tmp_path / "local"),
        "--classifier",
        "logreg",
        "--no-publish",
    )
    assert "audit: skipped" in output and "metrics stored" not in output
    assert json.loads((tmp_path / "local" / "report.json").read_text())["sizes"]["train"] == 0
    assert dict(alice.get_model("judged").metrics) == before

    # Someone else may evaluate a model they can see, but not store metrics on it.
    bob = user_client(alice.address, alice.pki, tmp_path / "homes")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SGDE_HOME", str(bob.home))
        refused = run("evaluate", f"{alice.username}/judged", "--real", str(holdout), ok=False)
        assert f"only its owner {alice.username}" in refused and "--no-publish" in refused
        assert "metrics stored" not in run(
            "evaluate",
            f"{alice.username}/judged",
            "--real",
            str(holdout),
            "--classifier",
            "logreg",
            "--out",
            str(tmp_path / "bob"),
            "--no-publish",
        )
    bob.close()

    wrong = tmp_path / "wrong.csv"
    wrong.write_text("height,label\n1,no\n")
    assert "height" in run("evaluate", "judged", "--real", str(wrong), ok=False)
