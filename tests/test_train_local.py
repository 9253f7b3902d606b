"""Training with no service (`sgde train --local`, `libsgde.train_local`) against the trainer's path: the same artifact
bytes for one secret and seed, the same refusals with the same fields; the artifact publishes with `sgde models
push`; and the defaults that scale with N (epochs, batch size, delta), chosen by one rule and said where chosen.

Models are tiny (a few hundred parameters, 60 rows) so that every run trains in seconds."""

from __future__ import annotations

import base64
import hashlib
import json
import math

import pytest
from click.testing import CliRunner

from libsgde.cli import main
from libsgde.client import LocalModel, train_local
from libsgde.domain import specs
from libsgde.domain.specs import TrainSpec, chosen_defaults, default_batch_size, default_delta, default_epochs
from libsgde.errors import FieldError, SgdeError
from libsgde.io.schema import schema_to_dict
from libsgde.io.training import check_spec
from libsgde.security import signing
from libsgde.wire.convert import train_spec_from_proto, train_spec_to_proto
from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb
from tests.support.services import tabular_schema, user_client
from tests.support.trainer import TINY_CVAE, start_trainer, trainer_client, wait_state, write_csv

SECRET = b"a test secret of 32 bytes or more; never a fixed one in production"
TINY = TrainSpec("cvae", 5.0, config=dict(TINY_CVAE), epochs=2, seed=7)  # batch size and delta: N's defaults


# -- defaults that scale with N (unit) -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "batch", "epochs"),
    [
        (4_000, 256, 128),  # the case: 10 epochs were 156 steps; now 2,000
        (30_000, 256, 18),
        (51_200, 256, 10),  # where the old default of 10 epochs already gave 2,000 steps
        (60_000, 256, 9),
        (10_000_000, 256, 1),  # at least one pass
        (300, 30, 200),
        (40, 40, 500),  # at most 500 passes (batch = N: no amplification, more steps add only noise)
    ],
)
def test_default_epochs_aim_at_a_step_count_within_an_epoch_range(n, batch, epochs):
    assert default_epochs(n, batch) == epochs
    steps = specs.dpsgd_steps(epochs, n, batch)
    if specs.MIN_EPOCHS < epochs < specs.MAX_EPOCHS:  # unclamped: the target, rounded up to whole epochs
        assert specs.DEFAULT_STEPS <= steps < specs.DEFAULT_STEPS + n / batch + 1


def test_default_batch_size_and_delta_scale_with_n():
    assert [default_batch_size(n) for n in (5, 60, 400, 2_560, 100_000)] == [1, 6, 40, 256, 256]
    assert default_delta(4_000) == 1e-5 and default_delta(50_000) == pytest.approx(2e-6)


def test_check_spec_fills_the_scaled_defaults_and_says_which():
    schema = tabular_schema()
    asked = TrainSpec("cvae", 1.0, config=dict(TINY_CVAE))
    filled = check_spec(asked, schema, 4_000)
    assert (filled.batch_size, filled.epochs, filled.delta) == (256, 128, 1e-5)
    lines = chosen_defaults(asked, filled, 4_000)
    assert lines[0] == "delta 1e-05 (default: min(1e-5, 0.1/N), N=4000)"
    assert lines[1] == "batch size 256 (default: min(256, N/10), N=4000)"
    assert lines[2].startswith("epochs 128: 2000 DP-SGD steps (default: about 2000 steps")
    # What was asked for is kept, and not reported as a default.
    given = TrainSpec("cvae", 1.0, config=dict(TINY_CVAE), delta=1e-6, epochs=3, batch_size=100)
    kept = check_spec(given, schema, 4_000)
    assert (kept.batch_size, kept.epochs, kept.delta) == (100, 3, 1e-6) and chosen_defaults(given, kept, 4_000) == []
    # Mechanisms without epochs (dp-merf: one release) say nothing of epochs or batches.
    merf = TrainSpec("dp-merf", 1.0)
    assert chosen_defaults(merf, check_spec(merf, schema, 4_000), 4_000, uses_epochs=False) == [lines[0]]
    # Before N is known, epochs stay unset (0) and a given value is still checked.
    assert check_spec(asked, schema).epochs == 0
    with pytest.raises(FieldError) as e:
        check_spec(TrainSpec("cvae", 1.0, epochs=-1), schema)
    assert e.value.field == "spec.epochs"


# -- local training (unit: no sockets) --------------------------------------------------------------------------------


def test_train_local_reports_signs_and_refuses_to_overwrite(tmp_path):
    home = tmp_path / "home"
    (home / "keys").mkdir(parents=True)
    key = signing.generate_signing_key()
    signing.save_signing_key(key, home / "keys" / "ada.pem")
    csv = write_csv(tmp_path / "people.csv")
    reports = []
    model = train_local(csv, tabular_schema(), TINY, tmp_path / "m.safetensors", home=home, progress=reports.append)
    assert isinstance(model, LocalModel) and model.path.is_file()
    assert model.sha256 == hashlib.sha256(model.path.read_bytes()).hexdigest()
    assert model.privacy.mechanism == "dp-sgd" and 0 < model.privacy.epsilon <= 5.0 + 1e-9
    assert model.privacy.dataset_size == 60 and model.privacy.delta == pytest.approx(1e-5)
    assert (model.spec.batch_size, model.spec.epochs) == (6, 2) and model.privacy.steps == 20
    assert model.defaults == tuple(chosen_defaults(TINY, model.spec, 60))
    assert reports[0].message == "defaults: " + "; ".join(model.defaults)  # said before training starts
    assert reports[-1].step == reports[-1].total_steps == 20 and math.isfinite(reports[-1].loss)

    record = json.loads(model.signature_path.read_text())
    public = signing.public_key_bytes(key)
    assert record["sha256"] == model.sha256 and record["signer"] == model.signer == "ada"
    assert record["public_key_fingerprint"] == model.fingerprint == signing.fingerprint(public)
    assert signing.verify_artifact(public, model.sha256, base64.b64decode(record["signature"]))

    with pytest.raises(FieldError) as e:  # never replaces an artifact unless asked
        train_local(csv, tabular_schema(), TINY, model.path, home=home)
    assert [v.field for v in e.value.violations] == ["out"]
    unsigned = train_local(csv, tabular_schema(), TINY, model.path, home=tmp_path / "nobody", overwrite=True)
    assert unsigned.signature_path is None and unsigned.sha256 != model.sha256  # a fresh random secret
    assert not model.signature_path.exists()  # the replaced artifact's signature went with it


def test_a_short_secret_is_refused(tmp_path):
    with pytest.raises(FieldError) as e:
        train_local(write_csv(tmp_path / "d.csv"), tabular_schema(), TINY, tmp_path / "m", secret=b"short")
    assert [v.field for v in e.value.violations] == ["secret"]


# -- against the trainer (integration: real registry and trainer over mutual TLS) -------------------------------------


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, pki, registry):
    cfg, handle = start_trainer(tmp_path_factory.mktemp("trainer"), pki, registry.address)
    handle.worker.secret_for = lambda job: SECRET  # every job's mechanism key: to compare with a local run's
    yield cfg
    handle.stop(grace=1)


@pytest.fixture
def alice(registry, pki, tmp_path, trainer):
    client = trainer_client(user_client(registry.address, pki, tmp_path), trainer.listen)
    yield client
    client.close()


@pytest.mark.integration
def test_local_run_and_trainer_job_give_the_same_artifact_and_both_publish(
    alice, registry, pki, trainer, tmp_path, monkeypatch
):
    csv = write_csv(tmp_path / "people.csv")
    schema = tabular_schema()
    spec = train_spec_to_proto(TINY)
    job = alice.create_job(spec, schema, alice.upload_dataset(csv), "from-trainer")
    events = list(alice.watch_job(job.name))
    defaults = [e.message for e in events if e.message.startswith("defaults: ")]
    assert defaults and "delta 1e-05 (default: min(1e-5, 0.1/N), N=60)" in defaults[0]
    done = wait_state(alice, job.name, {tpb.JOB_STATE_SUCCEEDED})
    assert (done.spec.batch_size, done.spec.epochs, done.spec.delta) == (6, 2, pytest.approx(1e-5))

    # `sgde train --local` as this user (their $SGDE_HOME: token and key), with the jobs' secret.
    for name, value in {
        "SGDE_HOME": str(alice.home),
        "SGDE_PKI_DIR": str(pki.root),
        "SGDE_REGISTRY_ADDRESS": registry.address,
    }.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "secret").chmod(0o600)  # refused when others may read it
    (tmp_path / "schema.json").write_text(json.dumps(schema_to_dict(schema)))
    artifact = tmp_path / "local.safetensors"
    runner = CliRunner()

    def sgde(*args: str, ok: bool = True) -> str:
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    local_args = ["train", "--local", "--data", str(csv), "--schema", str(tmp_path / "schema.json")]
    output = sgde(
        *local_args,
        *("--arch", "cvae", "--epsilon", "5", "--epochs", "2", "--seed", "7"),
        *("--config", json.dumps(TINY_CVAE), "--out", str(artifact), "--secret-file", str(tmp_path / "secret")),
    )
    assert "defaults: delta 1e-05 (default: min(1e-5, 0.1/N), N=60)" in " ".join(output.split())
    assert f"sgde models push {artifact} --name MODEL" in " ".join(output.split())
    assert hashlib.sha256(artifact.read_bytes()).hexdigest() == done.artifact_sha256  # the very same bytes

    pushed = sgde("models", "push", str(artifact), "--name", "from-laptop")
    assert f"published models/{alice.username}/from-laptop/versions/1" in pushed
    local = alice.get_version("from-laptop@1")
    trained = alice.get_version(alice.publish_job(job.name).published_version)
    assert local.sha256 == trained.sha256 == done.artifact_sha256
    assert local.privacy == trained.privacy  # recomputed by the registry from the manifest, for both
    record = json.loads((tmp_path / "local.safetensors.sig.json").read_text())
    assert base64.b64decode(record["signature"]) == local.signature == trained.signature  # Ed25519: deterministic
    assert record["signer"] == alice.username

    # --local needs no service, and refuses the trainer's options.
    assert "--publish" in sgde(*local_args, "--arch", "cvae", "--epsilon", "5", "--publish", "x", ok=False)


def _refusal(call) -> list[tuple[str, str]]:
    with pytest.raises(SgdeError) as info:
        call()
    assert info.value.status == "INVALID_ARGUMENT", info.value
    return [tuple(v) for v in info.value.violations]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("change", "rows", "field"),
    [
        ({"target_epsilon": 0.0}, None, "spec.target_epsilon"),
        ({"architecture": "gan"}, None, "spec.architecture"),
        ({"config": {"latent_dim": -1}}, None, "spec.config.latent_dim"),
        ({"batch_size": 61}, None, "spec.batch_size"),  # known once the data is read: N = 60
        ({"delta": 0.5}, None, "spec.delta"),
        ({}, "age,label\n30,no\nold,yes\n", "data_schema.tabular.columns[0]"),  # not a number
        ({}, "age,label\n30,maybe\n", "data_schema.tabular.columns[1]"),  # not a declared category
        ({}, "years,label\n30,no\n", "dataset"),  # not the schema's columns
    ],
)
def test_refusals_are_the_same_with_the_same_fields(alice, tmp_path, change, rows, field):
    csv = tmp_path / "people.csv"
    if rows is None:
        write_csv(csv)
    else:
        csv.write_text(rows)
    spec = TrainSpec(**{**TINY.__dict__, **change})
    schema = tabular_schema()
    by_trainer = _refusal(
        lambda: alice.create_job(train_spec_to_proto(spec), schema, alice.upload_dataset(csv), "refused")
    )
    here = _refusal(lambda: train_local(csv, schema, train_spec_from_proto(train_spec_to_proto(spec)), tmp_path / "m"))
    assert here == by_trainer and here[0][0] == field, (here, by_trainer)
    assert not (tmp_path / "m").exists()
