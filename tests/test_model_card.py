"""Model cards: the registry serves, for every version, a card built from its own records (version, privacy report,
sha256, owner's signing key, metrics with who stored them and on which version, audit verdict), rendered as markdown;
`sgde models show` prints it and `--json` holds it. Against real registries over mutual TLS (SQLite and PostgreSQL),
plus unit tests of the rendering and of the schema summary."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime

import grpc
import pytest
from click.testing import CliRunner

from libsgde.cli import main
from libsgde.cli.common import out
from libsgde.client import SgdeError
from libsgde.domain.card import (
    FLAGGED,
    NOT_AUDITED,
    NOT_FLAGGED,
    NOT_SHOWN,
    ColumnSummary,
    MetricRecord,
    ModelCard,
    SchemaSummary,
    render_markdown,
)
from libsgde.domain.privacy import PrivacyComponent, PrivacyReport
from libsgde.domain.resources import DataKind, PrivacyPolicy
from libsgde.io.privacy import RELATIVE_TOLERANCE
from libsgde.security.signing import fingerprint
from libsgde.wire.convert import privacy_from_proto, schema_summary_from_proto
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from tests.support.services import make_artifact, merf_privacy, tabular_schema

CODE = grpc.StatusCode
integration = pytest.mark.integration


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def registry(request):
    """The integration tests here run on the registry with SQLite, then with PostgreSQL (the provenance table)."""
    return request.getfixturevalue(f"{request.param}_registry")


def refusal(call) -> SgdeError:
    with pytest.raises(SgdeError) as info:
        call()
    return info.value


def schema() -> pb.DataSchema:
    """The shared test schema with a nullable column that has a point mass, so the summary shows both."""
    s = tabular_schema()
    s.tabular.columns.insert(
        1, pb.Column(name="gain", type=pb.COLUMN_TYPE_CONTINUOUS, lower=0, upper=1e5, nullable=True, point_masses=[0])
    )
    return s


def publish_two_versions(client, tmp_path, model: str = "people"):
    """Two honest dp-merf versions (different weights and privacy), with a description and tags."""
    for seed, noise in ((1, 4.0), (2, 6.0)):
        path = make_artifact(
            tmp_path / f"{model}-{seed}.safetensors", seed=seed, schema=schema(), privacy=merf_privacy(noise)
        )
        client.push(path, model, description="People | as cards see them", tags=["cards", "census"])
    return client.get_model(model)


# -- against the registry ------------------------------------------------------------------------------------------


@integration
def test_card_holds_the_registrys_records(new_user, tmp_path):
    alice = new_user()
    model = publish_two_versions(alice, tmp_path)
    before = time.time()
    # What `sgde evaluate` stores for version 2 (it adds evaluate.version), then a metric measured on version 1.
    alice.set_metrics(
        "people", {"tstr.logreg": 0.8125, "audit.mia_auc": 0.515, "audit.flagged": 0.0, "evaluate.version": 2}
    )
    alice.set_metrics("people", {"fidelity.marginal_mean": 0.25}, version=1)
    after = time.time()
    me = alice.whoami()

    card = alice.model_card("people")  # the latest
    version = alice.get_version("people@2")
    model = alice.get_model("people")
    manifest = json.loads(version.manifest_json)
    empty = [f.name for f in dataclasses.fields(card) if getattr(card, f.name) in (None, "", [], {}, 0)]
    assert empty == [], f"fields missing from the card: {empty}"
    assert card.name == f"{version.name}/card" and card.version == version.name and card.number == 2
    assert card.model == model.name and card.owner == me.username
    assert card.description == model.description and card.tags == model.tags == ["cards", "census"]
    assert card.data_kind == DataKind.TABULAR == version.data_kind
    assert card.schema == schema_summary_from_proto(model.data_schema)
    assert [(c.name, c.type, c.nullable, c.point_masses) for c in card.schema.columns] == [
        ("age", "integer", False, []),
        ("gain", "continuous", True, [0.0]),
        ("label", "categorical", False, []),
    ]
    assert card.schema.label == "label" and card.schema.classes == ["no", "yes"]
    assert card.architecture == version.architecture == "dp-merf"
    assert card.architecture_config == manifest["config"] and card.training == manifest["training"]
    # The registry's record: the accountant's figure for these parameters, the same as the version shows.
    assert card.privacy == version.privacy == privacy_from_proto(merf_privacy(6.0))
    assert card.sha256 == version.sha256 and card.size_bytes == version.size_bytes
    assert card.create_time == version.create_time
    assert card.signing_key_fingerprint == fingerprint(me.signing_public_key) and card.signature_verified
    # Metrics measured on version 2 with who stored them and when; the one measured on version 1 is not here.
    assert {m.key: (m.value, m.author, m.version) for m in card.metrics} == {
        "tstr.logreg": (0.8125, me.username, 2),
        "audit.mia_auc": (0.515, me.username, 2),
        "audit.flagged": (0.0, me.username, 2),
        "evaluate.version": (2.0, me.username, 2),
    }
    for m in card.metrics:
        assert m.update_time is not None and before - 1 <= m.update_time.timestamp() <= after + 1
    assert card.audit_verdict == NOT_FLAGGED

    # The markdown the registry served is the client's rendering of the same card, and names the key facts.
    assert card.markdown == render_markdown(card)
    text = card.markdown
    for fact in (
        f"# Model card: {me.username}/people, version 2",
        "People | as cards see them",
        version.name,
        version.sha256,
        card.signing_key_fingerprint,
        "verifies with the owner's key",
        f"| epsilon | {card.privacy.epsilon:.4g} |",
        f"| delta | {card.privacy.delta:.3g} |",
        "| N (private training examples) | 500 |",
        "| accountant | pld",
        f"| tstr.logreg | 0.8125 | {me.username} | v2 |",
        "Verdict: **not flagged**",
        "attack AUC 0.515",
        "| gain | continuous | [0, 100000] | yes | 0 |",
        "| label | categorical | 2 categories | no | - |",
        "Label: `label` (2 classes: no, yes).",
        "`dp-merf`",
    ):
        assert fact in text, fact
    assert "fidelity.marginal_mean" not in text

    # Version 1's card: its own record and the metric measured on it; no audit of it.
    first = alice.model_card(f"{me.username}/people@1")
    assert first.version == f"{model.name}/versions/1" and first.sha256 == alice.get_version("people@1").sha256
    assert first.privacy == privacy_from_proto(merf_privacy(4.0)) != card.privacy
    assert [(m.key, m.value, m.author, m.version) for m in first.metrics] == [
        ("fidelity.marginal_mean", 0.25, me.username, 1)
    ]
    assert first.audit_verdict == NOT_AUDITED and "Verdict: **not audited**" in first.markdown


@integration
def test_a_claim_within_the_tolerance_is_recorded_as_the_accountants_figure(new_user, tmp_path):
    """The registry accepts a stated epsilon within RELATIVE_TOLERANCE of its own, but records and shows its own."""
    alice = new_user()
    honest = merf_privacy(5.0)
    claimed = pb.PrivacyReport()
    claimed.CopyFrom(honest)
    claimed.epsilon *= 1 + RELATIVE_TOLERANCE / 2
    alice.push(make_artifact(tmp_path / "near.safetensors", schema=schema(), privacy=claimed), "near")
    card = alice.model_card("near")
    assert card.privacy.epsilon == honest.epsilon != claimed.epsilon
    assert alice.get_version("near@1").privacy == card.privacy == privacy_from_proto(honest)


@integration
def test_card_names_and_provenance_rules(new_user, tmp_path):
    alice, bob = new_user(), new_user()
    publish_two_versions(alice, tmp_path)
    name = f"models/{alice.username}/people/versions/1"
    # The card's own name works too, and "latest".
    by_card_name = alice.registry.GetModelCard(rpb.GetModelCardRequest(name=f"{name}/card"), metadata=alice._metadata())
    assert by_card_name.version == name
    assert alice.model_card(f"models/{alice.username}/people/versions/latest").number == 2
    # A version that does not exist, or one bob may not see: NOT_FOUND alike; a malformed name: INVALID_ARGUMENT.
    assert refusal(lambda: alice.model_card("people@3")).code == CODE.NOT_FOUND
    assert refusal(lambda: bob.model_card(f"{alice.username}/people@1")).code == CODE.NOT_FOUND
    assert refusal(lambda: alice.model_card("people@zero")).code == CODE.INVALID_ARGUMENT
    # Metrics claimed to be measured on a version that does not exist are refused, naming the field.
    bad = refusal(lambda: alice.set_metrics("people", {"tstr.logreg": 0.5}, version=3))
    assert bad.code == CODE.INVALID_ARGUMENT and [f for f, _ in bad.violations] == ["version"]
    # Replacing the whole map (UpdateModel) records its author, with no version said: every card shows them.
    alice.set_metrics("people", {"tstr.logreg": 0.5, "audit.flagged": 1.0}, merge=False)
    for ref in ("people@1", "people@2"):
        card = alice.model_card(ref)
        assert {(m.key, m.author, m.version) for m in card.metrics} == {
            ("tstr.logreg", alice.username, 0),
            ("audit.flagged", alice.username, 0),
        }
        assert card.audit_verdict == FLAGGED and "Verdict: **flagged**" in card.markdown
        assert f"| tstr.logreg | 0.5 | {alice.username} | not said |" in card.markdown
    # Removed keys leave the card with their records; a public model's card is anyone's to read.
    alice.set_metrics("people", {}, remove=["audit.flagged"])
    alice.update_model("people", visibility="public")
    card = bob.model_card(f"{alice.username}/people")
    assert [m.key for m in card.metrics] == ["tstr.logreg"] and card.audit_verdict == NOT_AUDITED


@integration
def test_a_federation_member_reads_the_version_but_not_the_models_own_facts(new_user, tmp_path):
    alice, bob = new_user(), new_user()
    fed = f"cards-{alice.username}"
    policy = PrivacyPolicy(max_epsilon=10.0, max_delta=1e-3, architectures=["dp-merf"], min_dataset_size=100)
    alice.create_federation(fed, schema(), policy)
    alice.invite(fed, bob.username)
    bob.accept_invitation(fed)
    publish_two_versions(bob, tmp_path, "private-model")  # private: only the federation lets alice read it
    bob.set_metrics("private-model", {"audit.flagged": 0.0}, version=2)
    bob.push_generator(fed, "private-model")
    card = alice.model_card(f"{bob.username}/private-model@2")
    assert card.sha256 == bob.get_version("private-model@2").sha256 and card.signature_verified
    assert card.description == "" and card.tags == [] and card.metrics == [] and card.audit_verdict == NOT_SHOWN
    assert "Not shown: you read this version through a federation" in card.markdown
    assert bob.model_card("private-model@2").audit_verdict == NOT_FLAGGED


@integration
def test_sgde_models_show_prints_the_card_and_json_holds_it(new_user, registry, pki, tmp_path, monkeypatch):
    alice = new_user()
    publish_two_versions(alice, tmp_path)
    alice.set_metrics("people", {"tstr.logreg": 0.75, "evaluate.version": 1})
    monkeypatch.setenv("SGDE_HOME", str(alice.home))
    monkeypatch.setenv("SGDE_PKI_DIR", str(pki.root))
    monkeypatch.setenv("SGDE_REGISTRY_ADDRESS", registry.address)
    monkeypatch.setattr(out, "width", 400)
    runner = CliRunner()

    def sgde(*args: str):
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    shown = json.loads(sgde("models", "show", "people", "--json"), parse_constant=lambda c: pytest.fail(c))
    card = shown["card"]
    latest = shown["versions"][-1]
    assert card["version"] == latest["name"] and card["sha256"] == latest["sha256"]
    assert card["privacy"] == latest["privacy"] and card["create_time"] == latest["create_time"]
    assert card["schema"]["data_kind"] == "tabular" and card["schema"]["label"] == "label"
    assert card["schema"]["columns"][1] == {
        "name": "gain",
        "type": "continuous",
        "lower": 0.0,
        "upper": 1e5,
        "categories": 0,
        "nullable": True,
        "point_masses": [0.0],
    }
    assert card["metrics"] == [] and card["audit_verdict"] == NOT_AUDITED  # the metrics were measured on v1
    assert card["signing_key_fingerprint"] == fingerprint(alice.whoami().signing_public_key)
    assert card["markdown"] == alice.model_card("people").markdown
    # MODEL@N: that version's card, with the metric measured on it and who stored it.
    first = json.loads(sgde("models", "show", "people@1", "--json"))["card"]
    assert first["version"] == shown["versions"][0]["name"]
    [metric] = [m for m in first["metrics"] if m["key"] == "tstr.logreg"]
    assert metric["author"] == alice.username and metric["version"] == 1 and metric["update_time"].endswith("Z")
    # The text: today's output, then the card's markdown as served.
    text = sgde("models", "show", "people@1")
    assert text.startswith(f"models/{alice.username}/people  private\n")
    assert text.endswith("\n" + first["markdown"])
    # A model without versions has no card yet: null in JSON, none in the text.
    alice.create_model("empty")
    assert json.loads(sgde("models", "show", "empty", "--json"))["card"] is None
    assert "# Model card" not in sgde("models", "show", "empty")


# -- rendering (no sockets) ----------------------------------------------------------------------------------------


def _card(**changes) -> ModelCard:
    base = ModelCard(
        name="models/alice/digits/versions/3/card",
        version="models/alice/digits/versions/3",
        model="models/alice/digits",
        owner="alice",
        description="",
        tags=[],
        data_kind=DataKind.IMAGE,
        schema=SchemaSummary(DataKind.IMAGE, classes=["0", "1"], height=8, width=8, channels=1, pixel_max=16.0),
        architecture="cvae",
        architecture_config={"latent_dim": 8, "conv": True},
        training={"steps": 120, "batch_size": 64},
        privacy=PrivacyReport(
            mechanism="dp-sgd",
            epsilon=1.23456,
            delta=1e-5,
            accountant="pld",
            noise_multiplier=1.1,
            sampling_rate=0.01,
            steps=120,
            clip_norm=1.0,
            dataset_size=1347,
            rdp_epsilon=1.4,
            components=(PrivacyComponent("class_prior", "gaussian", noise_multiplier=15.2),),
        ),
        metrics=[],
        audit_verdict=NOT_AUDITED,
        signing_key_fingerprint="SHA256:abc",
        signature_verified=True,
        sha256="ab" * 32,
        size_bytes=123456,
        create_time=datetime(2026, 12, 6, 20, 0, tzinfo=UTC),
    )
    return dataclasses.replace(base, **changes)


def test_markdown_of_an_image_model_without_evaluation():
    text = render_markdown(_card())
    lines = text.splitlines()
    assert lines[0] == "# Model card: alice/digits, version 3"
    for fact in (
        "Images of 8 x 8 pixels, 1 channel, pixel values in [0, 16].",
        "Label: the class, one of 2: 0, 1.",
        "`cvae`, with this config:",
        '  "conv": true,',
        "Training: batch_size 64, steps 120.",
        "| mechanism | dp-sgd |",
        "| epsilon | 1.235 |",
        "| delta | 1e-05 |",
        "| accountant | pld (RDP cross-check: epsilon 1.4) |",
        "| N (private training examples) | 1,347 |",
        "| further release | class_prior (gaussian, noise multiplier 15.2) |",
        "No evaluation stored for this version (`sgde evaluate models/alice/digits/versions/3`).",
        "Verdict: **not audited** (`sgde evaluate models/alice/digits/versions/3 --real HOLDOUT --train TRAIN`).",
        "| published | 2026-12-06 20:00:00 UTC |",
        "| size | 123,456 bytes |",
        "| owner's signing key | SHA256:abc |",
        "| signature (Ed25519, over the sha256) | verifies with the owner's key |",
    ):
        assert fact in lines, fact
    assert text.endswith("\n") and "Tags" not in text


def test_markdown_of_a_table_with_metrics_an_audit_and_no_dp():
    stored = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    card = _card(
        description="Census | adults",
        tags=["census"],
        data_kind=DataKind.TABULAR,
        schema=SchemaSummary(
            DataKind.TABULAR,
            columns=[
                ColumnSummary("capital-gain", "integer", 0.0, 99999.0, 0, True, [0.0]),
                ColumnSummary("income", "categorical", None, None, 2, False),
            ],
            label="income",
            classes=["<=50K", ">50K"],
        ),
        privacy=PrivacyReport("none", float("inf"), 0.0, "", 0.0, 0.0, 0, 0.0, 0, 0.0),
        metrics=[
            MetricRecord("tstr.logreg", 0.81234, "alice", stored, 3),
            MetricRecord("audit.mia_auc", 0.71, "alice", stored, 3),
            MetricRecord("audit.flagged", 1.0, "", None, 0),
        ],
        audit_verdict=FLAGGED,
        signature_verified=False,
    )
    lines = render_markdown(card).splitlines()
    for fact in (
        "Census | adults",  # free text stays as written outside tables
        "Tags: census",
        "A table of 2 columns.",
        "Label: `income` (2 classes: <=50K, >50K).",
        "| capital-gain | integer | [0, 99999] | yes | 0 |",
        "| income | categorical | 2 categories | no | - |",
        "Not differentially private: trained without DP, epsilon is infinite. Treat samples as the data.",
        "| tstr.logreg | 0.8123 | alice | v3 | 2026-12-01 09:30:00 UTC |",
        "| audit.flagged | 1 | not recorded | not said | not recorded |",
        "Verdict: **flagged** by the membership-inference / distance-to-closest-record audit (attack AUC 0.71), "
        "stored before the registry recorded authors.",
        "| signature (Ed25519, over the sha256) | DOES NOT VERIFY with the owner's key |",
    ):
        assert fact in lines, fact
    assert "| mechanism |" not in lines
    assert [line.split(" | ")[0] for line in lines if line.startswith("| audit.") or line.startswith("| tstr.")] == [
        "| audit.flagged",
        "| audit.mia_auc",
        "| tstr.logreg",
    ]  # sorted by key
    # A pipe inside a cell is escaped, so the table keeps its columns.
    column = ColumnSummary("a|b", "integer", 0.0, 1.0, 0, False)
    odd = _card(data_kind=DataKind.TABULAR, schema=SchemaSummary(DataKind.TABULAR, [column]))
    assert "| a\\|b | integer | [0, 1] | no | - |" in render_markdown(odd).splitlines()


def test_schema_summary_of_an_image_schema_and_of_none():
    image = pb.DataSchema(
        image=pb.ImageSchema(height=28, width=28, channels=3, class_names=["cat", "dog"], pixel_max=255)
    )
    assert schema_summary_from_proto(image) == SchemaSummary(
        DataKind.IMAGE, classes=["cat", "dog"], height=28, width=28, channels=3, pixel_max=255.0
    )
    assert schema_summary_from_proto(pb.DataSchema()) == SchemaSummary(DataKind.UNSPECIFIED)
