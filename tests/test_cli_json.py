"""`--json` on the CLI's list and show commands: one strict JSON document on stdout, nothing else there, carrying
every fact the table shows for the same objects (each table row is rebuilt from the JSON and must equal the row the
table printed). Against a real registry and trainer over mutual TLS; the trained model is tiny."""

from __future__ import annotations

import base64
import json
import os
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from libsgde.cli import main
from libsgde.cli.common import as_json, out
from libsgde.client import Client
from libsgde.domain.privacy import PrivacyReport
from libsgde.domain.resources import DataKind, JobState, ModelVersion, User
from libsgde.io.schema import schema_to_dict
from libsgde.security.signing import fingerprint
from tests.support.services import PASSWORD, make_artifact, tabular_schema
from tests.support.trainer import TINY_MERF, start_trainer, write_csv


def strict_json(text: str):
    """json.loads, refusing the NaN / Infinity literals Python would accept but JSON (and jq) does not."""

    def refuse(literal: str):
        raise ValueError(f"{literal} is not JSON")

    return json.loads(text, parse_constant=refuse)


def boxed_rows(text: str) -> list[list[str]]:
    """The body rows of a rich table (box drawn with │), each a list of its stripped cells."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]


def minute(rfc3339: str | None) -> str:
    return f"{datetime.fromisoformat(rfc3339):%Y-%m-%d %H:%M}" if rfc3339 else ""


def plain(value):
    """As `sgde jobs show` writes a spec's values: whole floats (Struct numbers are doubles) as ints, dicts sorted."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in sorted(value.items())}
    return value


def epsilon_cell(privacy: dict) -> str:
    return (
        "not private" if privacy["mechanism"] in ("", "none") else f"{privacy['epsilon']:.3g}, {privacy['delta']:.1e}"
    )


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, pki, registry):
    cfg, handle = start_trainer(tmp_path_factory.mktemp("trainer"), pki, registry.address)
    yield cfg
    handle.stop(grace=1)


@pytest.fixture
def sgde(registry, pki, trainer, tmp_path, monkeypatch):
    """Runs `sgde ARGS`; returns click's Result (stdout and stderr apart). The tables get a wide console, so that
    their rows do not wrap and can be compared cell by cell."""
    monkeypatch.setenv("SGDE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SGDE_PKI_DIR", str(pki.root))
    monkeypatch.setenv("SGDE_REGISTRY_ADDRESS", registry.address)
    monkeypatch.setenv("SGDE_TRAINER_ADDRESS", trainer.listen)
    monkeypatch.setattr(out, "width", 400)
    runner = CliRunner()

    def run(*args: str, stdin: str | None = None, ok: bool = True):
        result = runner.invoke(main, list(args), input=stdin, catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result

    return run


def test_every_list_and_show_command_prints_json_with_the_tables_facts(sgde, registry, pki, tmp_path):
    username = f"json{os.urandom(4).hex()}"
    sgde(
        "register",
        "--username",
        username,
        "--email",
        f"{username}@example.org",
        "--password-stdin",
        stdin=f"{PASSWORD}\n{PASSWORD}\n",
    )
    sgde("login", "--username", username, "--password-stdin", stdin=f"{PASSWORD}\n")

    # whoami: the key in base64, and the fingerprint the text shows
    me = strict_json(sgde("whoami", "--json").stdout)
    assert me["username"] == username and me["email"] == f"{username}@example.org"
    assert fingerprint(base64.b64decode(me["signing_public_key"], validate=True)) == me["signing_key_fingerprint"]
    assert sgde("whoami").stdout.strip() == f"{username} <{me['email']}> signing key {me['signing_key_fingerprint']}"

    assert strict_json(sgde("datasets", "list", "--json").stdout) == []  # the table says "no datasets"
    assert strict_json(sgde("models", "list", "--tag", "no-such-tag", "--json").stdout) == []

    # A model with an unaccounted version (epsilon +inf), metrics, then a DP version trained by the trainer.
    sgde(
        "models",
        "push",
        str(make_artifact(tmp_path / "m.safetensors")),
        "--name",
        "people",
        "--tag",
        "json",
        "--description",
        "people, as a JSON test sees them",
    )
    with Client(registry.address, home=tmp_path / "home", pki=pki.root) as client:
        client.set_metrics("people", {"tstr.logreg": 0.8125, "trtr.logreg": 0.875, "audit.flagged": 0.0})
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(schema_to_dict(tabular_schema())))
    trained = sgde(
        "train",
        "--data",
        str(write_csv(tmp_path / "people.csv")),
        "--schema",
        str(schema_file),
        "--arch",
        "dp-merf",
        "--epsilon",
        "5",
        "--delta",
        "1e-3",
        "--config",
        json.dumps({**TINY_MERF, "generator_steps": 20}),
        "--publish",
        "people",
    )
    assert f"published models/{username}/people/versions/2" in trained.stdout

    # models list
    listed = strict_json(sgde("models", "list", "--tag", "json", "--json").stdout)
    assert [m["name"] for m in listed] == [f"models/{username}/people"]
    m = listed[0]
    assert (
        m["data_kind"] == "tabular"
        and m["latest_version"] == 2
        and m["data_schema"] == schema_to_dict(tabular_schema())
    )
    assert datetime.fromisoformat(m["create_time"]).tzinfo is not None and m["create_time"].endswith("Z")
    from libsgde.cli.models import _evaluation_summary

    assert boxed_rows(sgde("models", "list", "--tag", "json").stdout) == [
        [
            m["name"],
            m["data_kind"],
            str(m["latest_version"]),
            m["visibility"],
            ",".join(m["tags"]),
            _evaluation_summary(m["metrics"]),
            m["description"][:60],
        ]
    ]

    # models show: the model and its versions
    shown = strict_json(sgde("models", "show", "people", "--json").stdout)
    assert {k: v for k, v in shown.items() if k not in ("versions", "card")} == m
    versions = shown["versions"]
    assert shown["card"]["version"] == versions[-1]["name"]  # the latest version's card (tests/test_model_card.py)
    assert [v["number"] for v in versions] == [1, 2]
    none, dp = versions
    assert none["privacy"]["mechanism"] == "none" and none["privacy"]["epsilon"] == "Infinity"
    assert dp["architecture"] == "dp-merf" and dp["privacy"]["mechanism"] == "dp-merf"
    assert 0 < dp["privacy"]["epsilon"] <= 5 and dp["privacy"]["delta"] == 1e-3 and dp["privacy"]["dataset_size"] == 60
    assert len(base64.b64decode(dp["signature"], validate=True)) == 64  # Ed25519
    assert json.loads(dp["manifest_json"])["architecture"] == "dp-merf"
    text = sgde("models", "show", "people").stdout
    assert text.splitlines()[:3] == [f"{m['name']}  {m['visibility']}", m["description"], "tags: json"]
    rows = boxed_rows(text)
    assert rows == [[name, f"{value:.4g}"] for name, value in sorted(m["metrics"].items())] + [
        [
            str(v["number"]),
            v["architecture"],
            epsilon_cell(v["privacy"]),
            f"{v['size_bytes']:,}",
            v["sha256"][:16],
            minute(v["create_time"]),
        ]
        for v in versions
    ]

    # jobs list and show
    jobs = strict_json(sgde("jobs", "list", "--json").stdout)
    assert [j["state"] for j in jobs] == ["published"]
    job = jobs[0]
    assert job["published_version"] == dp["name"] and job["privacy"]["epsilon"] == dp["privacy"]["epsilon"]
    p = job["latest_progress"]
    assert boxed_rows(sgde("jobs", "list").stdout) == [
        [
            job["name"],
            job["state"],
            job["publish_model"].rsplit("/", 1)[-1],
            job["spec"]["architecture"],
            f"{p['step']}/{p['total_steps']}",
            f"{job['privacy']['epsilon']:.3g}",
        ]
    ]
    assert strict_json(sgde("jobs", "show", job["name"], "--json").stdout) == job
    assert [j["name"] for j in strict_json(sgde("jobs", "list", "--state", "failed", "--json").stdout)] == []
    pr = job["privacy"]
    lines = sgde("jobs", "show", job["name"]).stdout.splitlines()
    assert lines[:3] == [
        f"{job['name']}  {job['state']}  (owner {job['owner']})",
        f"dataset {job['dataset']} -> {job['publish_model']}",
        "spec: " + ", ".join(f"{k}={v}" for k, v in plain(job["spec"]).items() if v not in (None, "", 0)),
    ]
    assert job["spec"]["config"]["generator_steps"] == 20
    assert lines[3:] == [
        f"progress: step {p['step']}/{p['total_steps']}, epoch {p['epoch']}, loss {p['loss']:.4g}, epsilon spent "
        f"{p['epsilon_spent']:.3g}",
        f"privacy: epsilon {pr['epsilon']:.4g} at delta {pr['delta']:.3g} ({pr['mechanism']}, {pr['accountant']}; "
        f"noise multiplier {pr['noise_multiplier']:.4g}, {pr['steps']} steps, N = {pr['dataset_size']})",
        f"artifact sha256 {job['artifact_sha256']}",
        f"published as {job['published_version']}",
    ]

    # datasets list (the upload `sgde train --data` made, kept)
    uploads = strict_json(sgde("datasets", "list", "--json").stdout)
    assert [d["name"] for d in uploads] == [job["dataset"]] and uploads[0]["filename"] == "people.csv"
    table = sgde("datasets", "list").stdout.splitlines()[1:]  # box=None: cells apart by two spaces or more
    assert [re.split(r"\s{2,}", line.strip()) for line in table] == [
        [d["name"], d["filename"], f"{d['size_bytes']:,}", minute(d["create_time"])] for d in uploads
    ]

    # An error: nothing on stdout, the red line on stderr.
    missing = sgde("models", "show", f"{username}/nothing-here", "--json", ok=False)
    assert missing.stdout == "" and "not found" in missing.stderr


def test_as_json_converts_the_sdks_values():
    """The rules the --json documents follow, on values the services rarely produce (naive times, NaN)."""
    key, signature = bytes(range(32)), b"\x00\xff" * 32
    when = datetime(2026, 12, 2, 9, 30, 15, 250000, tzinfo=timezone(timedelta(hours=2)))
    user = User("users/ann", "ann", "ann@example.org", key, when)
    assert as_json(user) == {
        "name": "users/ann",
        "username": "ann",
        "email": "ann@example.org",
        "signing_public_key": base64.b64encode(key).decode(),
        "create_time": "2026-12-02T07:30:15.250000Z",  # RFC 3339, in UTC
    }
    privacy = PrivacyReport("none", float("inf"), 0.0, "", float("nan"), 0.0, 0, 0.0, 60, float("-inf"))
    version = ModelVersion(
        "models/ann/m/versions/1", 1, "ab" * 32, 10, signature, "dp-merf", DataKind.TABULAR, privacy, None, "{}"
    )
    document = as_json({"versions": [version], "state": JobState.SUCCEEDED, "pair": (1, 2.5)})
    assert json.dumps(document, allow_nan=False)  # strict JSON: no NaN or Infinity literals
    v = document["versions"][0]
    assert v["privacy"]["epsilon"] == "Infinity" and v["privacy"]["rdp_epsilon"] == "-Infinity"
    assert v["privacy"]["noise_multiplier"] == "NaN" and v["privacy"]["dataset_size"] == 60
    assert base64.b64decode(v["signature"]) == signature and v["create_time"] is None and v["data_kind"] == "tabular"
    assert document["state"] == "succeeded" and document["pair"] == [1, 2.5]
    assert as_json(tabular_schema()) == schema_to_dict(tabular_schema())  # a message: its proto3 JSON form
    assert as_json(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00Z"
    with pytest.raises(TypeError, match="naive"):
        as_json(datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="set"):
        as_json({1, 2})
