"""The trainer over real mutual TLS with a real registry: upload, submit, watch, publish; refusals at submit;
isolation between users; cancel; queueing; SIGKILL and resume; and `sgde train` end to end.

Models are tiny (a few hundred parameters, 60 rows) so that every job trains in seconds."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import jwt
import pytest
from click.testing import CliRunner

from libsgde.cli import main
from libsgde.client import Client, SgdeError
from libsgde.io.schema import schema_to_dict
from libsgde.security import signing
from libsgde.server import auth
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb
from services.trainer.jobs import JobStore
from services.trainer.servicer import TrainerSettings
from services.trainer.sources import SourceError, Sources
from tests.support.services import PASSWORD, tabular_schema, user_client
from tests.support.trainer import (
    TINY_CVAE,
    TINY_MERF,
    TrainerProcess,
    start_trainer,
    trainer_client,
    wait_for,
    wait_state,
    write_csv,
)

pytestmark = pytest.mark.integration  # real servers on loopback sockets

CODE = grpc.StatusCode
S = tpb  # job states: S.JOB_STATE_...


def tiny_spec(architecture: str = "cvae", **fields) -> tpb.TrainingSpec:
    config = fields.pop("config", TINY_CVAE if architecture == "cvae" else TINY_MERF)
    # Batches of the whole dataset (sampling rate 1) make the noise calibration quick.
    spec = tpb.TrainingSpec(architecture=architecture, target_epsilon=5.0, delta=1e-3, epochs=3, batch_size=60)
    for key, value in fields.items():
        setattr(spec, key, value)
    spec.config.update(config)
    return spec


def merf_spec(steps: int) -> tpb.TrainingSpec:
    return tiny_spec("dp-merf", config={**TINY_MERF, "generator_steps": steps})


def refusal(call) -> SgdeError:
    with pytest.raises(SgdeError) as info:
        call()
    return info.value


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, pki, registry):
    cfg, handle = start_trainer(tmp_path_factory.mktemp("trainer"), pki, registry.address)
    yield cfg
    handle.stop(grace=1)


@pytest.fixture
def user(registry, pki, tmp_path, trainer):
    """Call it for a fresh, logged-in user whose client talks to the registry and the module's trainer."""
    made = []

    def make():
        client = trainer_client(user_client(registry.address, pki, tmp_path), trainer.listen)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def test_train_watch_publish_and_isolation(user, trainer, tmp_path):
    alice, bob = user(), user()
    csv = write_csv(tmp_path / "adult.csv")
    dataset = alice.upload_dataset(csv)
    assert dataset.name.startswith("datasets/") and dataset.filename == "adult.csv"
    assert dataset.sha256 == hashlib.sha256(csv.read_bytes()).hexdigest() and dataset.size_bytes == csv.stat().st_size

    schema = tabular_schema()
    job = alice.create_job(tiny_spec(), schema, dataset, "adult-dp", request_id="first-try")
    assert job.owner == alice.username and job.state in (S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING)
    assert job.publish_model == f"models/{alice.username}/adult-dp"
    assert job.spec.clip_norm == 1.0 and job.spec.learning_rate > 0  # the defaults, filled in at submit
    again = alice.create_job(tiny_spec(), schema, dataset, "adult-dp", request_id="first-try")
    assert again.name == job.name  # an idempotent retry, not a second job

    # Bob sees none of it: not the job, not the dataset.
    for call in (
        lambda: bob.get_job(job.name),
        lambda: bob.cancel_job(job.name),
        lambda: list(bob.watch_job(job.name)),
    ):
        assert refusal(call).code == CODE.NOT_FOUND
    assert job.name not in [j.name for j in bob.list_jobs()]
    error = refusal(lambda: bob.create_job(tiny_spec(), schema, dataset.name, "steal"))
    assert error.code == CODE.INVALID_ARGUMENT and [f for f, _ in error.violations] == ["dataset"]

    events = list(alice.watch_job(job.name))
    assert events[-1].state == S.JOB_STATE_SUCCEEDED, events[-1]
    running = [e for e in events if e.state == S.JOB_STATE_RUNNING and e.total_steps]
    assert running and running[-1].step == running[-1].total_steps == 3  # 60 rows, batches of 60, three epochs
    assert [e.step for e in running] == sorted(e.step for e in running)
    assert any("noise multiplier" in e.message for e in events)
    done = alice.get_job(job.name)
    assert done.state == S.JOB_STATE_SUCCEEDED and len(done.artifact_sha256) == 64
    assert done.privacy.mechanism == "dp-sgd" and 0 < done.privacy.epsilon <= 5.0 + 1e-9
    assert done.privacy.dataset_size == 60 and done.start_time is not None and done.end_time >= done.start_time
    assert refusal(lambda: bob.publish_job(job.name)).code == CODE.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        bob.trainer.PublishJobResult(
            tpb.PublishJobResultRequest(name=job.name, signature=b"x" * 64), metadata=bob._metadata(), timeout=10
        )
    assert info.value.code() == CODE.NOT_FOUND

    # A signature by another key: the registry refuses it, the job stays SUCCEEDED for a retry.
    wrong = signing.sign_artifact(signing.generate_signing_key(), done.artifact_sha256)
    with pytest.raises(grpc.RpcError) as info:
        alice.trainer.PublishJobResult(
            tpb.PublishJobResultRequest(name=job.name, signature=wrong), metadata=alice._metadata(), timeout=30
        )
    assert info.value.code() == CODE.INVALID_ARGUMENT and "signature" in info.value.details()
    assert alice.get_job(job.name).state == S.JOB_STATE_SUCCEEDED

    published = alice.publish_job(job.name)
    assert published.state == S.JOB_STATE_PUBLISHED
    assert published.published_version == f"models/{alice.username}/adult-dp/versions/1"
    version = alice.get_version(published.published_version)
    assert version.sha256 == done.artifact_sha256 and version.architecture == "cvae"
    assert version.privacy.mechanism == "dp-sgd" and version.privacy.epsilon <= 5.0 + 1e-9
    assert version.privacy.delta == pytest.approx(1e-3)
    assert alice.get_model("adult-dp").data_schema == schema
    assert refusal(lambda: alice.publish_job(job.name)).code == CODE.FAILED_PRECONDITION
    path, _ = alice.pull(published.published_version, tmp_path / "model.safetensors")  # sha256 + signature checked
    assert hashlib.sha256(path.read_bytes()).hexdigest() == done.artifact_sha256


def test_bad_requests_are_refused_at_submit(user, trainer, tmp_path):
    alice = user()
    dataset = alice.upload_dataset(write_csv(tmp_path / "d.csv"))
    schema = tabular_schema()

    def fields(spec=None, data_schema=None, data=None, model="bad-specs") -> list[str]:
        error = refusal(
            lambda: alice.create_job(spec or tiny_spec(), data_schema or schema, data or dataset.name, model)
        )
        assert error.code == CODE.INVALID_ARGUMENT, error
        return [f for f, _ in error.violations]

    assert fields(tiny_spec(target_epsilon=0)) == ["spec.target_epsilon"]
    assert fields(tiny_spec(target_epsilon=-1)) == ["spec.target_epsilon"]
    assert fields(tiny_spec(delta=0.05)) == ["spec.delta"]  # delta must be < 1/N = 1/60
    assert fields(tiny_spec(architecture="gan")) == ["spec.architecture"]
    assert fields(tiny_spec(config={"bogus": 1})) == ["spec.config.bogus"]
    assert fields(tiny_spec(batch_size=1000)) == ["spec.batch_size"]

    # Schema and data disagree: the value is named by place, never repeated.
    other = pb.DataSchema()
    other.CopyFrom(schema)
    other.tabular.columns[1].ClearField("categories")
    other.tabular.columns[1].categories.extend(["no", "maybe"])
    error = refusal(lambda: alice.create_job(tiny_spec(), other, dataset.name, "bad-specs"))
    assert [f for f, _ in error.violations] == ["data_schema.tabular.columns[1]"]
    assert "line" in str(error) and "'yes'" not in str(error)
    extra = pb.DataSchema()
    extra.CopyFrom(schema)
    extra.tabular.columns.add(name="income", type=pb.COLUMN_TYPE_CONTINUOUS, lower=0, upper=1e6)
    assert fields(data_schema=extra) == ["data_schema.tabular.columns[2]"]
    assert fields(data_schema=pb.DataSchema(tabular=pb.TabularSchema())) == ["data_schema.tabular.columns"]

    # Datasets: only under the data root, symlinks included; only your own uploads.
    root = trainer.data_root
    secret = write_csv(root.parent / "outside.csv")
    (root / "link.csv").symlink_to(secret)
    for reference in (
        "../outside.csv",
        str(secret),
        "link.csv",
        "nothing-here.csv",
        "datasets/0123456789abcdef",
        "s3://bucket/key.csv",
    ):
        assert fields(data=reference) == ["dataset"], reference
    error = refusal(lambda: alice.create_job(tiny_spec(), schema, "../outside.csv", "bad-specs"))
    assert "outside the trainer's data root" in str(error)

    error = refusal(lambda: alice.create_job(tiny_spec(), schema, dataset.name, "models/someone-else/m"))
    assert error.code == CODE.PERMISSION_DENIED
    assert list(alice.list_jobs()) == []

    # An upload whose bytes do not match its sha256 leaves nothing behind.
    before = sorted((trainer.state_dir / "datasets").iterdir())
    data = b"age,label\n30,no\n"
    header = tpb.UploadDatasetRequest.Header(filename="x.csv", size_bytes=len(data), sha256="0" * 64)
    with pytest.raises(grpc.RpcError) as info:
        alice.trainer.UploadDataset(
            iter([tpb.UploadDatasetRequest(header=header), tpb.UploadDatasetRequest(chunk=data)]),
            metadata=alice._metadata(),
            timeout=10,
        )
    assert info.value.code() == CODE.INVALID_ARGUMENT
    bad_name = tpb.UploadDatasetRequest.Header(
        filename="../x.csv", size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    with pytest.raises(grpc.RpcError) as info:
        alice.trainer.UploadDataset(
            iter([tpb.UploadDatasetRequest(header=bad_name)]), metadata=alice._metadata(), timeout=10
        )
    assert info.value.code() == CODE.INVALID_ARGUMENT
    too_big = tpb.UploadDatasetRequest.Header(
        filename="x.csv", size_bytes=trainer.max_dataset_bytes + 1, sha256="0" * 64
    )
    with pytest.raises(grpc.RpcError) as info:
        alice.trainer.UploadDataset(
            iter([tpb.UploadDatasetRequest(header=too_big)]), metadata=alice._metadata(), timeout=10
        )
    assert info.value.code() == CODE.RESOURCE_EXHAUSTED
    assert sorted((trainer.state_dir / "datasets").iterdir()) == before


def test_data_you_may_train_on_but_not_read_answers_nothing_about_its_values(user, trainer):
    """The attack that worked on the first release: alice may train on a data-root file but not read it. She
    declares `age` categorical with the categories 0..k-1 and calls CreateJob: the first failing line said whether
    each row's age was below k, so a binary search per row gave exact ages (six rows in 45 calls, no privacy spent).
    N leaked the same way, through the delta and batch size errors. Now every answer is the same whatever the
    values, N is named by no error, and the loss of DP-SGD steps on such data is withheld."""
    alice = user()
    path = write_csv(trainer.data_root / f"{alice.username}-sealed.csv", rows=61)
    reference = path.name
    first_age = int(path.read_text().splitlines()[1].split(",")[0])

    def ages_below(k: int) -> pb.DataSchema:
        schema = tabular_schema()
        age = schema.tabular.columns[0]
        age.type, age.lower, age.upper = pb.COLUMN_TYPE_CATEGORICAL, 0, 0
        age.categories.extend(str(a) for a in range(k))
        return schema

    def answer(schema: pb.DataSchema) -> tuple:
        try:
            job = alice.create_job(merf_spec(1), schema, reference, "probe")
        except SgdeError as e:
            return ("refused", e.code, str(e), tuple(e.violations))
        alice.cancel_job(job.name)
        return ("accepted",)

    # Below, at and above the first row's age, and above every age: on the first release each answer differed.
    answers = {answer(ages_below(k)) for k in (first_age, first_age + 1, 91, 18)}
    assert answers == {("accepted",)}

    for spec in (tiny_spec(delta=0.5), tiny_spec(batch_size=10_000)):
        error = refusal(lambda spec=spec: alice.create_job(spec, tabular_schema(), reference, "n-probe"))
        assert error.code == CODE.INVALID_ARGUMENT
        assert "61" not in str(error) and "0.0164" not in str(error)  # neither N nor 1/N

    job = alice.create_job(tiny_spec(epochs=1), tabular_schema(), reference, "sealed-loss")
    stepped = [e for e in alice.watch_job(job.name) if e.total_steps]
    assert stepped and all(math.isnan(e.loss) for e in stepped)
    assert alice.get_job(job.name).state == S.JOB_STATE_SUCCEEDED


def test_a_remembered_token_check_ends_with_the_token(user, trainer, registry, pki, tmp_path):
    """The trainer remembers the registry's answer about a token for 30 s; on the first release it trusted an
    expired token for the rest of those 30 s. Now no longer than the token itself lives."""
    alice = user()
    claims = jwt.decode(alice._token, options={"verify_signature": False})
    issuer = auth.TokenIssuer(auth.load_or_create_token_key(registry.config.token_key), lifetime=timedelta(seconds=3))
    short, expires = issuer.issue(alice.username, user_id=claims["uid"])
    client = Client(registry.address, trainer=trainer.listen, home=tmp_path / "short", pki=pki.root, token=short)
    assert list(client.list_jobs()) == []  # checked with the registry, and remembered
    past = expires + timedelta(seconds=auth.TokenVerifier(issuer.public_key).leeway + 1)  # the clock-skew grace
    wait_for(lambda: datetime.now(UTC) > past, timeout=15, what="the token's expiry")
    assert refusal(lambda: list(client.list_jobs())).code == CODE.UNAUTHENTICATED


def test_an_aborted_upload_leaves_no_traceback_and_nothing_behind(user, trainer, caplog):
    """On the first release a client that cancelled its upload made the trainer log an INTERNAL error with a
    traceback: anyone could write tracebacks into the log."""
    alice = user()
    data = b"age,label\n" + b"30,no\n" * 1000
    header = tpb.UploadDatasetRequest.Header(
        filename="aborted.csv", size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    sent, hold = threading.Event(), threading.Event()

    def requests():
        yield tpb.UploadDatasetRequest(header=header)
        yield tpb.UploadDatasetRequest(chunk=data[:100])
        sent.set()
        hold.wait(10)

    before = sorted((trainer.state_dir / "datasets").iterdir())
    with caplog.at_level(logging.INFO):
        call = alice.trainer.UploadDataset.future(requests(), metadata=alice._metadata(), timeout=30)
        assert sent.wait(10)
        time.sleep(0.5)  # the trainer has read the header and the chunk
        call.cancel()
        hold.set()
        wait_for(
            lambda: any(
                r.getMessage() == "rpc" and "UploadDataset" in str(r.__dict__.get("method")) for r in caplog.records
            ),
            timeout=10,
            what="the trainer's record of the call",
        )
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text
    assert sorted((trainer.state_dir / "datasets").iterdir()) == before  # the partial file is gone


def test_queue_and_cancel(user, trainer):
    alice = user()
    write_csv(trainer.data_root / f"{alice.username}.csv")  # training on a file in the data root
    first = alice.create_job(merf_spec(10**7), tabular_schema(), f"{alice.username}.csv", "queued-a")
    second = alice.create_job(merf_spec(10**7), tabular_schema(), f"{alice.username}.csv", "queued-b")
    wait_state(alice, first.name, {S.JOB_STATE_RUNNING})
    assert alice.get_job(second.name).state == S.JOB_STATE_QUEUED  # one job at a time
    assert [j.name for j in alice.list_jobs(state=S.JOB_STATE_QUEUED)] == [second.name]
    assert [j.name for j in alice.list_jobs(page_size=1)] == [second.name, first.name]  # newest first, paged
    watch = alice.watch_job(second.name)
    assert next(watch).state == S.JOB_STATE_QUEUED

    assert alice.cancel_job(second.name).state == S.JOB_STATE_CANCELLED  # queued: at once
    assert [e.state for e in watch][-1] == S.JOB_STATE_CANCELLED

    for event in alice.watch_job(first.name):  # running for real
        if event.step >= 1:
            break
    alice.cancel_job(first.name)
    cancelled = wait_state(alice, first.name, {S.JOB_STATE_CANCELLED}, timeout=30)
    assert cancelled.error == "" and cancelled.latest_progress.state == S.JOB_STATE_CANCELLED
    assert alice.cancel_job(first.name).state == S.JOB_STATE_CANCELLED  # again: no harm
    assert not (trainer.state_dir / "jobs" / first.name.split("/")[1]).exists()  # checkpoint removed
    assert refusal(lambda: alice.publish_job(first.name)).code == CODE.FAILED_PRECONDITION


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # subprocess forks then execs at once
def test_sigkill_mid_job_resumes_from_checkpoint(registry, pki, tmp_path):
    proc = TrainerProcess(
        tmp_path,
        pki,
        registry.address,
        tmp_path / "state",
        {"SGDE_TRAINER_CHECKPOINT_SECONDS": "0.2", "SGDE_LOG_LEVEL": "WARNING"},
    )
    proc.start()
    try:
        alice = trainer_client(user_client(registry.address, pki, tmp_path), proc.address)
        dataset = alice.upload_dataset(write_csv(tmp_path / "d.csv"))
        job = alice.create_job(merf_spec(3000), tabular_schema(), dataset, "resumed")
        checkpoint = tmp_path / "state" / "jobs" / job.name.split("/")[1] / "checkpoint" / "checkpoint.safetensors"
        wait_for(checkpoint.exists, timeout=60, what="a checkpoint")
        assert alice.get_job(job.name).state == S.JOB_STATE_RUNNING
        proc.kill()
        proc.start()  # same port, same state dir
        events = list(alice.watch_job(job.name))
        assert events[-1].state == S.JOB_STATE_SUCCEEDED, events[-1]
        messages = [e.message for e in events]
        assert any("queued again" in m for m in messages), messages
        resumed = [m for m in messages if m.startswith("resumed from step")]
        assert resumed and int(resumed[0].split()[3].rstrip(";")) > 0, messages
        done = alice.get_job(job.name)
        assert done.state == S.JOB_STATE_SUCCEEDED and done.privacy.mechanism == "dp-merf"
        assert done.privacy.epsilon <= 5.0 + 1e-9
        assert proc.stop() == 0  # SIGTERM: a graceful stop
    finally:
        if proc.proc.poll() is None:
            proc.kill()


def test_cli_train_publishes(registry, pki, trainer, tmp_path, monkeypatch):
    monkeypatch.setenv("SGDE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SGDE_PKI_DIR", str(pki.root))
    monkeypatch.setenv("SGDE_REGISTRY_ADDRESS", registry.address)
    monkeypatch.setenv("SGDE_TRAINER_ADDRESS", trainer.listen)
    runner = CliRunner()

    def sgde(*args: str, stdin: str | None = None, ok: bool = True) -> str:
        result = runner.invoke(main, list(args), input=stdin, catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    username = f"cli{os.urandom(4).hex()}"
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
    csv = write_csv(tmp_path / "people.csv")
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(schema_to_dict(tabular_schema())))
    output = sgde(
        "train",
        "--data",
        str(csv),
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
    assert f"published models/{username}/people/versions/1: epsilon" in output and "(dp-merf)" in output
    listing = sgde("jobs", "list")
    assert "published" in listing and "dp-merf" in listing
    job = next(line.split()[1] for line in listing.splitlines() if "jobs/" in line)
    assert f"models/{username}/people/versions/1" in sgde("jobs", "show", job)
    assert "published" in sgde("jobs", "publish", job, ok=False)
    assert "spec.target_epsilon" in sgde(
        "train",
        "--data",
        str(csv),
        "--schema",
        str(schema_file),
        "--arch",
        "cvae",
        "--epsilon",
        "0",
        "--publish",
        "people",
        ok=False,
    )


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # the S3 server starts as a subprocess
def test_dataset_from_the_silos_s3_store(seaweed, registry, pki, tmp_path, monkeypatch):
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    bucket = f"silo-{uuid.uuid4().hex[:12]}"
    s3 = seaweed.client()
    s3.make_bucket(bucket)
    csv = write_csv(tmp_path / "people.csv")
    s3.fput_object(bucket, "tables/people.csv", str(csv))
    cfg, handle = start_trainer(tmp_path / "trainer", pki, registry.address, s3_url=seaweed.url(bucket))
    try:
        alice = trainer_client(user_client(registry.address, pki, tmp_path), cfg.listen)
        for reference in (f"s3://other-{bucket}/tables/people.csv", f"s3://{bucket}/tables/missing.csv"):
            error = refusal(lambda ref=reference: alice.create_job(merf_spec(20), tabular_schema(), ref, "from-s3"))
            assert [f for f, _ in error.violations] == ["dataset"], error
        job = alice.create_job(merf_spec(20), tabular_schema(), f"s3://{bucket}/tables/people.csv", "from-s3")
        done = wait_state(alice, job.name, {S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED})
        assert done.state == S.JOB_STATE_SUCCEEDED and done.privacy.dataset_size == 60, done.error
        assert not any((cfg.state_dir / "tmp").iterdir())  # the downloaded copy is gone
    finally:
        handle.stop(grace=1)


def test_per_user_quotas_and_dataset_deletion(registry, pki, tmp_path):
    """Limits that protect the silo: queued + running jobs and kept upload bytes per user, refused with
    RESOURCE_EXHAUSTED naming the limit; uploads can be deleted (not while a job needs them), also on publish."""
    csv = write_csv(tmp_path / "people.csv")
    size = csv.stat().st_size
    settings = TrainerSettings(max_jobs_per_user=2, max_user_dataset_bytes=2 * size + size // 2)
    cfg, handle = start_trainer(tmp_path / "trainer", pki, registry.address, settings=settings)
    try:
        alice = trainer_client(user_client(registry.address, pki, tmp_path), cfg.listen)
        bob = trainer_client(user_client(registry.address, pki, tmp_path), cfg.listen)
        first, second = alice.upload_dataset(csv), alice.upload_dataset(csv)
        error = refusal(lambda: alice.upload_dataset(csv))
        assert error.code == CODE.RESOURCE_EXHAUSTED and "SGDE_TRAINER_MAX_USER_DATASET_BYTES" in str(error)
        assert [d.name for d in alice.list_datasets(page_size=1)] == [second.name, first.name]  # newest first, paged
        bob.upload_dataset(csv)  # per user: bob has his own allowance

        running = [alice.create_job(merf_spec(10**7), tabular_schema(), first, f"long-{i}") for i in range(2)]
        error = refusal(lambda: alice.create_job(merf_spec(1), tabular_schema(), second, "one-too-many"))
        assert error.code == CODE.RESOURCE_EXHAUSTED and "SGDE_TRAINER_MAX_JOBS_PER_USER = 2" in str(error)

        error = refusal(lambda: alice.delete_dataset(first))
        assert error.code == CODE.FAILED_PRECONDITION and running[0].name in str(error)
        assert refusal(lambda: bob.delete_dataset(second)).code == CODE.NOT_FOUND  # not his
        alice.delete_dataset(second)
        assert not (cfg.state_dir / "datasets" / second.name.split("/")[1]).exists()
        assert [d.name for d in alice.list_datasets()] == [first.name]
        for job in running:
            alice.cancel_job(job.name)
        alice.delete_dataset(first)
        assert list(alice.list_datasets()) == []

        upload = alice.upload_dataset(csv)  # the space is free again
        job = alice.create_job(merf_spec(1), tabular_schema(), upload, "published-then-deleted")
        assert wait_state(alice, job.name, {S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED}).state == S.JOB_STATE_SUCCEEDED
        assert alice.publish_job(job.name, delete_dataset=True).state == S.JOB_STATE_PUBLISHED
        assert list(alice.list_datasets()) == []
    finally:
        handle.stop(grace=1)


def test_data_root_never_reaches_the_trainers_own_state(tmp_path):
    root = tmp_path / "silo"
    state = root / "trainer"  # an operator made the data root the parent of the state dir
    (state / "datasets" / "0123456789abcdef").mkdir(parents=True)
    other = write_csv(state / "datasets" / "0123456789abcdef" / "theirs.csv")
    mine = write_csv(root / "mine.csv")
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    sources = Sources(store, state, root)
    sources.check("mine.csv", "alice")
    assert sources.load(str(mine), "alice", tabular_schema()).x.shape == (60, 1)
    with pytest.raises(SourceError, match="trainer's own state"):
        sources.check(str(other.relative_to(root)), "alice")
    with pytest.raises(SourceError, match="may not train"):
        Sources(store, state, root, data_users=frozenset({"bob"})).check("mine.csv", "alice")
