"""The sampler over real mutual TLS with a real registry and trainer: a model trained (DP-MERF) and published through
the trainer, then sampled: values inside the schema, reproducible bytes checked by sha256, exact class counts,
refusals (visibility, limits, formats), a tampered cache never served, cancellation that stops generation,
`sample_local` equal to the service, and `sgde sample`.

One tiny model is trained once for the module; the library-level checks (buckets, formats) use untrained artifacts."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY

from libsgde.cli import main
from libsgde.client import Client, SgdeError, sample_local
from libsgde.io import formats, sampling
from libsgde.io.artifact import build_manifest, write_artifact
from libsgde.io.generator import load_generator
from libsgde.wire.limits import CHUNK_SIZE
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from libsgde.wire.proto.sgde.v1 import sampler_pb2 as spb
from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb
from tests.support.fixtures import store_unchecked
from tests.support.sampler import SamplerProcess, make_generator_artifact, start_sampler
from tests.support.services import REPO, free_port, tabular_schema, user_client, wait_healthy
from tests.support.trainer import TINY_MERF, start_trainer, trainer_client, wait_for, write_csv

pytestmark = pytest.mark.integration  # real servers on loopback sockets

CODE = grpc.StatusCode
IMAGE_SCHEMA = pb.DataSchema(
    image=pb.ImageSchema(height=4, width=3, channels=1, class_names=["a", "b", "c"], pixel_max=255)
)


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class World:
    """Registry (session), trainer and sampler (module); alice trained and published `adult` (shared with bob),
    an untrained image generator `shapes`, and a non-generator `placeholder` (stored as a registry from before the
    publish-time tensor check may hold it); carol sees none of them."""

    def __init__(self, registry, pki, root):
        self.registry, self.pki, self.root = registry, pki, root
        self.trainer_cfg, self.trainer = start_trainer(root / "trainer", pki, registry.address)
        self.sampler_cfg, self.sampler = start_sampler(root / "sampler", pki, registry.address)
        self.alice = self.client(
            trainer_client(user_client(registry.address, pki, root / "homes"), self.trainer_cfg.listen)
        )
        self.bob = self.client(user_client(registry.address, pki, root / "homes"))
        self.carol = self.client(user_client(registry.address, pki, root / "homes"))

    def client(self, user: Client, sampler: str | None = None) -> Client:
        client = Client(
            user.address,
            trainer=user.trainer_address,
            sampler=sampler or self.sampler_cfg.listen,
            home=user.home,
            pki=user.pki.root,
        )
        user.close()
        return client

    def close(self) -> None:
        for c in (self.alice, self.bob, self.carol):
            c.close()
        self.sampler.stop(grace=1)
        self.trainer.stop(grace=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory, pki, registry):
    world = World(registry, pki, tmp_path_factory.mktemp("sampling"))
    alice = world.alice
    dataset = alice.upload_dataset(write_csv(world.root / "adult.csv"))
    spec = tpb.TrainingSpec(architecture="dp-merf", target_epsilon=5.0, delta=1e-3, epochs=1, batch_size=60)
    spec.config.update({**TINY_MERF, "generator_steps": 20})
    job = alice.create_job(spec, tabular_schema(), dataset, "adult")
    events = list(alice.watch_job(job.name, timeout=120))
    assert events[-1].state == tpb.JOB_STATE_SUCCEEDED, events[-1]
    world.adult = alice.publish_job(job.name).published_version
    alice.share("adult", [world.bob.username])
    make_generator_artifact(world.root / "shapes.safetensors", IMAGE_SCHEMA, prior=[0.2, 0.3, 0.5])
    world.shapes = alice.push(world.root / "shapes.safetensors", "shapes").name
    alice.share("shapes", [world.bob.username])
    world.placeholder = store_unchecked(registry, alice, "placeholder", placeholder_artifact(world.root))
    alice.share("placeholder", [world.bob.username])
    yield world
    world.close()


def placeholder_artifact(root: Path) -> Path:
    """A well-formed artifact of no known architecture: the registry refuses it at publish, the sampler at load."""
    manifest = build_manifest(
        "placeholder",
        {"n": 64},
        tabular_schema(),
        pb.PrivacyReport(mechanism="none", epsilon=float("inf")),
        {"note": "test"},
    )
    write_artifact(root / "placeholder.safetensors", {"w": np.zeros(64, np.float32)}, manifest)
    return root / "placeholder.safetensors"


def raw_stream(client: Client, timeout: float = 60, **fields) -> list[spb.SampleResponse]:
    return list(client.sampler.Sample(spb.SampleRequest(**fields), metadata=client._metadata(), timeout=timeout))


def refusal(call) -> SgdeError:
    with pytest.raises(SgdeError) as info:
        call()
    return info.value


# -- end to end ---------------------------------------------------------------------------------------------------


def test_stream_is_reproducible_checked_and_inside_the_schema(world):
    bob, model = world.bob, world.adult.rsplit("/versions/", 1)[0]  # the model's name: its latest version
    messages = raw_stream(bob, model=model, num_samples=3000, seed=7, format=spb.OUTPUT_FORMAT_NPY, chunk_samples=1000)
    first, chunks, last = messages[0], messages[1:-1], messages[-1]
    meta = first.metadata
    assert first.WhichOneof("payload") == "metadata"
    version = bob.get_version(world.adult)
    assert meta.version == world.adult and meta.artifact_sha256 == version.sha256 and meta.num_samples == 3000
    assert meta.data_schema == tabular_schema() and meta.privacy.mechanism == "dp-merf"
    assert 0 < meta.privacy.epsilon <= 5.0 + 1e-9 and meta.format == spb.OUTPUT_FORMAT_NPY
    assert len(meta.class_counts) == 2 and sum(meta.class_counts) == 3000
    assert all(m.WhichOneof("payload") == "chunk" and 0 < len(m.chunk) <= CHUNK_SIZE for m in chunks)
    done = [m.samples_done for m in chunks]
    assert done == sorted(done) and done[-1] == 3000 and len(chunks) == 4  # the .npy header, then 3 x 1000 rows
    data = b"".join(m.chunk for m in chunks)
    assert last.WhichOneof("payload") is None and last.samples_done == 3000
    assert last.sha256 == hashlib.sha256(data).hexdigest()

    rows = np.load(io.BytesIO(data), allow_pickle=False)
    assert rows.shape == (3000,) and rows.dtype.names == ("age", "label")
    assert rows["age"].dtype == np.uint8  # the narrowest dtype that holds the bounds [0, 120]
    assert rows["age"].min() >= 0 and rows["age"].max() <= 120 and len(np.unique(rows["age"])) > 10
    no, yes = meta.class_counts
    assert list(rows["label"]) == ["no"] * no + ["yes"] * yes  # grouped in the schema's class order

    again = bob.sample(model, 3000, seed=7, chunk_samples=1000)
    assert again.sha256 == last.sha256 and again.raw() == data
    assert again.values["age"].tolist() == rows["age"].tolist() and again.labels.tolist() == [0] * no + [1] * yes
    other = bob.sample(model, 3000, seed=8, chunk_samples=1000)
    assert other.sha256 != again.sha256 and (other.values["age"] != again.values["age"]).mean() > 0.5

    # CSV of the same request holds the same values; concurrent requests get the same bytes.
    as_csv = bob.sample(model, 3000, seed=7, format="csv", chunk_samples=1000)
    assert as_csv.raw().startswith(b"age,label\n") and as_csv.raw().count(b"\n") == 3001
    assert as_csv.values["age"].tolist() == rows["age"].tolist()
    assert as_csv.values["label"].tolist() == rows["label"].tolist()
    results: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(bob.sample(model, 3000, seed=7, format="csv", chunk_samples=1000).sha256)
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [as_csv.sha256] * 3


def test_class_counts_are_exact_and_in_schema_order(world):
    bob = world.bob
    samples = bob.sample(world.adult, 999, seed=1, class_counts={"yes": 7, "no": 5})  # num_samples is ignored
    assert samples.metadata.num_samples == 12 and list(samples.metadata.class_counts) == [5, 7]
    assert samples.labels.tolist() == [0] * 5 + [1] * 7
    assert samples.values["label"].tolist() == ["no"] * 5 + ["yes"] * 7
    only = bob.sample(world.adult, class_counts={"yes": 4, "no": 0}, seed=1)
    assert only.values["label"].tolist() == ["yes"] * 4

    error = refusal(lambda: bob.sample(world.adult, class_counts={"maybe": 1, "perhaps": 2, "yes": 1}))
    assert error.code == CODE.INVALID_ARGUMENT and [f for f, _ in error.violations] == ["class_counts"]
    assert "'maybe'" in str(error) and "'perhaps'" in str(error) and "'no'" in str(error)
    error = refusal(lambda: bob.sample(world.adult, class_counts={"yes": -1, "no": 3}))
    assert error.code == CODE.INVALID_ARGUMENT and "class_counts" in str(error)


def test_images_stream_as_one_npy_array(world, tmp_path):
    bob = world.bob
    samples = bob.sample(world.shapes, class_counts={"c": 3, "a": 2}, seed=5)
    assert samples.values.shape == (5, 4, 3, 1) and samples.values.dtype == np.uint8
    assert samples.labels.tolist() == [0, 0, 2, 2, 2] and list(samples.metadata.class_counts) == [2, 0, 3]
    drawn = bob.sample(world.shapes, 2000, seed=5)
    assert sum(drawn.metadata.class_counts) == 2000 and drawn.metadata.class_counts[2] > drawn.metadata.class_counts[0]
    assert drawn.labels.tolist() == sorted(drawn.labels.tolist())  # from the prior, grouped by class
    frame = samples.to_dataframe()
    assert list(frame["label"]) == ["a", "a", "c", "c", "c"] and frame["image"][0].shape == (4, 3, 1)
    for fmt in ("csv", "parquet"):
        error = refusal(lambda fmt=fmt: bob.sample(world.shapes, 10, format=fmt))
        assert error.code == CODE.INVALID_ARGUMENT and [f for f, _ in error.violations] == ["format"], error
    path, _ = bob.pull(world.shapes, tmp_path / "shapes.safetensors")
    local = sample_local(path, class_counts={"c": 3, "a": 2}, seed=5)
    assert local.sha256 == samples.sha256 and np.array_equal(local.values, samples.values)


def test_refusals(world):
    bob, carol = world.bob, world.carol
    for name in (
        world.adult,
        f"{world.alice.username}/adult",
        f"{world.alice.username}/adult@1",
        "models/nobody/nothing",
    ):  # carol may not see alice's model: as if it did not exist
        error = refusal(lambda name=name: carol.sample(name, 10))
        assert error.code == CODE.NOT_FOUND and "not found" in str(error), error

    def violations(**fields) -> tuple[CODE, list[str], str]:
        with pytest.raises(grpc.RpcError) as info:
            raw_stream(bob, **{"model": world.adult, "num_samples": 10, **fields})
        from libsgde.wire.status import field_violations

        return info.value.code(), [f for f, _ in field_violations(info.value)], info.value.details()

    code, fields, details = violations(num_samples=1_000_001)
    assert code == CODE.INVALID_ARGUMENT and fields == ["num_samples"] and "1000000" in details
    assert violations(num_samples=0)[:2] == (CODE.INVALID_ARGUMENT, ["num_samples"])
    assert violations(class_counts={"yes": 600_000, "no": 400_001})[:2] == (CODE.INVALID_ARGUMENT, ["class_counts"])
    assert violations(chunk_samples=-1)[:2] == (CODE.INVALID_ARGUMENT, ["chunk_samples"])
    assert violations(format=9)[:2] == (CODE.INVALID_ARGUMENT, ["format"])
    assert violations(model="alice/adult")[:2] == (CODE.INVALID_ARGUMENT, ["model"])
    error = refusal(lambda: bob.sample(world.placeholder, 10))
    assert error.code == CODE.FAILED_PRECONDITION and "placeholder" in str(error)
    with pytest.raises(grpc.RpcError) as info:  # no token
        list(bob.sampler.Sample(spb.SampleRequest(model=world.adult, num_samples=1), timeout=10))
    assert info.value.code() == CODE.UNAUTHENTICATED


def test_memory_per_request_is_bounded(world):
    """A sampler allowed 16 MiB per request: what fits is served with the same bytes as under the default limit
    (the plan does not depend on the limit); chunks too large for the model, and a model whose one sample does not
    fit (a 256 x 256 image: buckets of 16 rows of about 2.5 MiB each), are refused with RESOURCE_EXHAUSTED naming
    the limit and what to do, before anything is generated."""
    alice, bob = world.alice, world.bob
    wide = world.root / "wide.safetensors"
    schema = pb.DataSchema(image=pb.ImageSchema(height=256, width=256, channels=1, pixel_max=255))
    make_generator_artifact(wide, schema, {"hidden": [1], "latent_dim": 1, "features": 50, "generator_batch": 16})
    wide_model = alice.push(wide, "wide").name
    alice.share("wide", [bob.username])
    cfg, handle = start_sampler(world.root / "bounded", world.pki, world.registry.address, max_request_bytes=16 << 20)
    try:
        with Client(bob.address, sampler=cfg.listen, home=bob.home, pki=bob.pki.root) as bounded:
            served = bounded.sample(world.adult, 500, seed=4)
            assert served.sha256 == bob.sample(world.adult, 500, seed=4).sha256
            samples = metric("sgde_sampler_samples_total")
            with pytest.raises(grpc.RpcError) as info:
                raw_stream(bounded, model=world.adult, num_samples=65536, chunk_samples=65536)
            from libsgde.wire.status import field_violations

            details = info.value.details()
            assert info.value.code() == CODE.RESOURCE_EXHAUSTED, details
            assert [f for f, _ in field_violations(info.value)] == ["chunk_samples"]
            assert "16 MiB per request (this sampler's SGDE_SAMPLER_MAX_REQUEST_BYTES)" in details, details
            fits = int(details.rsplit("chunk_samples <= ", 1)[1])
            error = refusal(lambda: bounded.sample(wide_model, 1))
            assert error.code == CODE.RESOURCE_EXHAUSTED and "one sample of this model needs about" in str(error)
            assert "SGDE_SAMPLER_MAX_REQUEST_BYTES" in str(error)
            assert metric("sgde_sampler_samples_total") == samples  # refused before generating anything
            chunked = bounded.sample(world.adult, 2 * fits, seed=4, chunk_samples=fits)
            assert chunked.metadata.num_samples == 2 * fits
        assert bob.sample(wide_model, 1).values.shape == (1, 256, 256, 1)  # the default limit holds it
    finally:
        handle.stop(grace=1)


def test_parquet_where_pyarrow_is_installed(world):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        error = refusal(lambda: world.bob.sample(world.adult, 10, format="parquet"))
        assert error.code == CODE.FAILED_PRECONDITION and "pyarrow" in str(error)
        assert [f for f, _ in error.violations] == ["format"]
        return
    table = world.bob.sample(world.adult, 500, seed=2, format="parquet")
    npy = world.bob.sample(world.adult, 500, seed=2)
    assert table.values["age"].tolist() == npy.values["age"].tolist() and table.labels.tolist() == npy.labels.tolist()


def test_sample_local_matches_the_service_and_out_is_atomic(world, tmp_path):
    bob = world.bob
    path, _ = bob.pull(world.adult, tmp_path / "adult.safetensors")
    for request in (
        {"num_samples": 1234, "seed": 3, "format": "csv"},
        {"class_counts": {"no": 300, "yes": 50}, "seed": -5, "format": "npy", "chunk_samples": 100},
    ):
        served = bob.sample(world.adult, out=tmp_path / f"served.{request['format']}", **request)
        local = sample_local(path, **request)
        assert local.sha256 == served.sha256 and local.data == served.path.read_bytes()
        assert local.values["age"].tolist() == served.values["age"].tolist()
        assert local.metadata.class_counts == served.metadata.class_counts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adult.safetensors", "served.csv", "served.npy"]
    before = (tmp_path / "served.csv").read_bytes()
    with pytest.raises(SgdeError):
        bob.sample(world.adult, 10, format="csv", chunk_samples=-1, out=tmp_path / "served.csv")
    assert (tmp_path / "served.csv").read_bytes() == before  # a failed request leaves the file alone
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_a_tampered_cache_is_detected_and_never_served(world):
    bob = world.bob
    reference = bob.sample(world.adult, 500, seed=11)
    sha = reference.metadata.artifact_sha256
    cached = world.sampler_cfg.state_dir / "artifacts" / f"{sha}.safetensors"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha
    data = bytearray(cached.read_bytes())
    data[-64:] = np.full(16, 0.5, np.float32).tobytes()  # still a loadable artifact: only its weights change
    cached.write_bytes(bytes(data))
    assert load_generator(cached) is not None  # the strict reader alone would not notice

    # A sampler started afresh on the same cache (a restart) must not trust the file.
    corrupt, downloads = (
        metric("sgde_sampler_cache_events_total", event="corrupt"),
        metric("sgde_sampler_cache_events_total", event="download"),
    )
    cfg, handle = start_sampler(world.root / "sampler", world.pki, world.registry.address)
    try:
        restarted = Client(bob.address, sampler=cfg.listen, home=bob.home, pki=bob.pki.root)
        with restarted:
            again = restarted.sample(world.adult, 500, seed=11)
    finally:
        handle.stop(grace=1)
    assert again.sha256 == reference.sha256
    assert metric("sgde_sampler_cache_events_total", event="corrupt") == corrupt + 1
    assert metric("sgde_sampler_cache_events_total", event="download") == downloads + 1
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha  # downloaded again, verified


def test_cancel_and_deadline_stop_generation(world):
    bob = world.bob
    request = spb.SampleRequest(model=world.adult, num_samples=1_000_000, seed=1, chunk_samples=64)
    samples, cancelled = (
        metric("sgde_sampler_samples_total"),
        metric("sgde_sampler_requests_total", outcome="cancelled"),
    )
    stream = bob.sampler.Sample(request, metadata=bob._metadata(), timeout=120)
    for message in stream:
        if message.samples_done > 0:
            break
    stream.cancel()
    wait_for(
        lambda: metric("sgde_sampler_requests_total", outcome="cancelled") > cancelled,
        timeout=30,
        what="the sampler to see the cancellation",
    )
    generated = metric("sgde_sampler_samples_total") - samples
    assert 0 < generated < 100_000, generated  # it stopped, far from the million asked for
    time.sleep(0.5)
    assert metric("sgde_sampler_samples_total") - samples == generated

    samples, deadline = metric("sgde_sampler_samples_total"), metric("sgde_sampler_requests_total", outcome="deadline")
    request.chunk_samples = 1  # a million steps: far more than a second
    with pytest.raises(grpc.RpcError) as info:
        for _ in bob.sampler.Sample(request, metadata=bob._metadata(), timeout=1.5):
            pass
    assert info.value.code() == CODE.DEADLINE_EXCEEDED
    wait_for(
        lambda: metric("sgde_sampler_requests_total", outcome="deadline") > deadline,
        timeout=30,
        what="the sampler to see the deadline",
    )
    assert metric("sgde_sampler_samples_total") - samples < 100_000


def test_cli_sample(world, tmp_path, monkeypatch):
    bob = world.bob
    monkeypatch.setenv("SGDE_HOME", str(bob.home))
    monkeypatch.setenv("SGDE_PKI_DIR", str(world.pki.root))
    monkeypatch.setenv("SGDE_REGISTRY_ADDRESS", world.registry.address)
    monkeypatch.setenv("SGDE_SAMPLER_ADDRESS", world.sampler_cfg.listen)
    runner = CliRunner()

    def sgde(*args: str, ok: bool = True) -> str:
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    out = tmp_path / "synthetic.csv"
    output = sgde("sample", world.adult, "--class", "no=100", "--class", "yes=20", "--seed", "4", "--out", str(out))
    expected = bob.sample(world.adult, class_counts={"no": 100, "yes": 20}, seed=4, format="csv")
    assert out.read_bytes() == expected.raw() and expected.sha256 in output.replace("\n", "")
    assert "120 samples" in output and world.adult in output
    sgde("sample", world.adult, "-n", "50", "--out", str(tmp_path / "s.npy"))
    assert np.load(tmp_path / "s.npy").shape == (50,)
    assert "NAME=COUNT" in sgde("sample", world.adult, "--class", "yes", "--out", str(out), ok=False)
    assert "-n N" in sgde("sample", world.adult, "--out", str(out), ok=False)
    assert "NOT_FOUND" in sgde("sample", "models/nobody/nothing", "-n", "5", "--out", str(out), ok=False)


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # subprocess forks then execs at once
def test_sampler_process_configured_by_environment(world, tmp_path):
    """`python -m services.sampler` reads its settings from the environment, and another process gives the same
    bytes for the same request."""
    bob = world.bob
    process = SamplerProcess(
        tmp_path, world.pki, world.registry.address, tmp_path / "state", {"SGDE_SAMPLER_MAX_SAMPLES": "100"}
    )
    process.start()
    try:
        with Client(bob.address, sampler=process.address, home=bob.home, pki=bob.pki.root) as other:
            assert other.sample(world.adult, 100, seed=3).sha256 == bob.sample(world.adult, 100, seed=3).sha256
            error = refusal(lambda: other.sample(world.adult, 101))
            assert error.code == CODE.INVALID_ARGUMENT and "limit of 100" in str(error)
    finally:
        assert process.stop() == 0
    assert list((tmp_path / "state" / "artifacts").glob("*.safetensors"))


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_up_starts_and_stops_all_three(tmp_path):
    ports = {service: free_port() for service in ("registry", "trainer", "sampler")}
    env = {**os.environ, "SGDE_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    for service, port in ports.items():
        env.update(
            {f"SGDE_{service.upper()}_ADDRESS": f"127.0.0.1:{port}", f"SGDE_{service.upper()}_METRICS_PORT": "0"}
        )
    env.pop("SGDE_PKI_DIR", None)
    env.pop("SGDE_REGISTRY_ADDRESS")  # the trainer and sampler follow the registry `up` starts
    env["SGDE_REGISTRY_LISTEN"] = f"127.0.0.1:{ports['registry']}"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from libsgde.cli import main; main()", "up"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        from libsgde.security import tls

        pki = tls.PkiPaths(tmp_path / "pki")
        wait_for(lambda: pki.cert("client").exists() and pki.key("client").exists(), timeout=60, what="the PKI")
        for port in ports.values():
            wait_healthy(f"127.0.0.1:{port}", pki, timeout=60)
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    said = " ".join(output.split())  # rich wraps long lines
    assert f"sampler on 127.0.0.1:{ports['sampler']}" in said and said.endswith("stopped")


# -- the library --------------------------------------------------------------------------------------------------


def test_buckets_compile_once_and_rows_depend_on_their_number_only(tmp_path):
    schema = pb.DataSchema(
        tabular=pb.TabularSchema(
            columns=[
                pb.Column(name="x", type=pb.COLUMN_TYPE_CONTINUOUS, lower=-1, upper=1),
                pb.Column(name="kind", type=pb.COLUMN_TYPE_CATEGORICAL, categories=["a", "b,c", 'say "hi"']),
            ]
        )
    )
    make_generator_artifact(tmp_path / "g.safetensors", schema)
    sampler = sampling.CompiledSampler(load_generator(tmp_path / "g.safetensors"))
    assert sampling.plan_labels(sampler.generator, 10, None, 0) is None  # unconditional
    with pytest.raises(sampling.SamplingError, match="unconditional"):
        sampling.plan_labels(sampler.generator, 0, {"a": 1}, 0)
    for n in (1, 37, 63, 64):
        assert len(list(sampler.iter_chunks(n, seed=1))[0]) == n
    assert sampler.compiled_buckets == [64]  # odd sizes share one compiled shape
    chunks = list(sampler.iter_chunks(200, seed=1, chunk_samples=100))
    assert [len(c) for c in chunks] == [100, 100] and sampler.compiled_buckets == [64, 128]
    seeds = [np.concatenate([c.values["x"] for c in sampler.iter_chunks(64, seed=s)]) for s in (0, 2**40, -1)]
    assert not np.array_equal(seeds[0], seeds[1]) and not np.array_equal(seeds[0], seeds[2])  # all 64 bits count

    data = b"".join(piece for piece, _ in formats.encode_stream(sampler, 300, 9, "csv", chunk_samples=128))
    text = data.decode()
    assert text.splitlines()[0] == "x,kind" and len(text.splitlines()) == 301
    values, labels = formats.read_samples(data, "csv", schema)
    assert labels is None and set(values["kind"]) <= {"a", "b,c", 'say "hi"'} and -1 <= values["x"].min()
    npy = b"".join(piece for piece, _ in formats.encode_stream(sampler, 300, 9, "npy", chunk_samples=128))
    array = np.load(io.BytesIO(npy))
    assert array.dtype == np.dtype([("x", "<f8"), ("kind", "<U8")])
    assert array["x"].tolist() == values["x"].tolist() and array["kind"].tolist() == values["kind"].tolist()


def test_npy_headers_read_back_with_numpy():
    for dtype, shape in (
        (np.dtype([("ünïcode", "<f8"), ("b", "<U3")]), (7,)),
        (np.dtype("<u2"), (2, 3, 4, 1)),
        (np.dtype([(f"c{i:05d}", "<i8") for i in range(4000)]), (1,)),
    ):
        header = formats.npy_header(dtype, shape)
        body = np.zeros(shape, dtype)
        assert len(header) % 64 == 0
        read = np.load(io.BytesIO(header + body.tobytes()), max_header_size=formats.MAX_NPY_HEADER)
        assert read.dtype == dtype and np.array_equal(read, body)


def test_image_labels_need_the_counts(tmp_path):
    make_generator_artifact(tmp_path / "im.safetensors", IMAGE_SCHEMA)
    result = sample_local(tmp_path / "im.safetensors", 10, seed=3)
    images, labels = formats.read_samples(result.data, "npy", IMAGE_SCHEMA)
    assert images.shape == (10, 4, 3, 1) and labels is None
    assert result.labels.tolist() == sorted(result.labels.tolist()) and len(result.labels) == 10
