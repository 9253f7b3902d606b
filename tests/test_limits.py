"""Worker exhaustion, at a small scale: a server with few workers, and more streams that send nothing or whose
responses are never read than it has workers. The limits (libsgde/server/limits.py) must keep unary calls answering,
refuse the excess at once, cancel idle streams, and say NOT_SERVING on the probe port while no worker is free."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libsgde.client import Client
from libsgde.errors import SgdeError
from libsgde.security import tls
from libsgde.server.limits import ServerLimits
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from libsgde.wire.proto.sgde.v1 import registry_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from tests.support.fixtures import start_registry
from tests.support.services import free_port, health_status, make_artifact, tabular_schema, user_client
from tests.support.trainer import TINY_MERF, start_trainer, trainer_client, write_csv

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Big enough that a client that does not read its download stops the server's sends (flow control): 12 MiB.
BIG_FLOATS = 3_000_000
HANG = 60.0  # generous: only detects a hang


def _channel(address: str, pki: tls.PkiPaths, identity: tuple[bytes, bytes] | None = None) -> grpc.Channel:
    """A mutual-TLS channel presenting the development `client` certificate, or `identity` (cert, key)."""
    if identity is None:
        return grpc.secure_channel(address, tls.channel_credentials(pki))
    cert, key = identity
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(pki.ca_cert.read_bytes(), key, cert))


def _second_identity(pki: tls.PkiPaths) -> tuple[bytes, bytes]:
    """A client certificate of our CA with another common name: another caller from the same address."""
    return tls.issue_certificate(
        pki.ca_cert.read_bytes(), pki.ca_key.read_bytes(), "second-caller", server=False, client=True
    )


def _idle_publish(channel: grpc.Channel, user: Client, release: threading.Event) -> grpc.Future:
    """A PublishVersion stream that sends nothing until `release` is set."""

    def nothing() -> Iterator[rpb.PublishVersionRequest]:
        release.wait()
        return
        yield  # a generator that yields nothing

    return registry_pb2_grpc.RegistryServiceStub(channel).PublishVersion.future(nothing(), metadata=user._metadata())


def _unread_download(channel: grpc.Channel, user: Client, name: str):
    """A DownloadVersion stream of which only the first message (the version) is read."""
    stream = registry_pb2_grpc.RegistryServiceStub(channel).DownloadVersion(
        rpb.DownloadVersionRequest(name=name), metadata=user._metadata()
    )
    assert next(stream).WhichOneof("payload") == "version"
    return stream


def _wait_for_failures(calls: list[grpc.Future], count: int) -> list[grpc.Future]:
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        done = [c for c in calls if c.done()]
        if len(done) >= count:
            return done
        time.sleep(0.05)
    raise AssertionError(f"{count} of {len(calls)} calls should have ended; {len(done)} did")


def _end_of(stream) -> grpc.RpcError:
    """The error that ends a download stream, once its buffered messages are read."""
    with pytest.raises(grpc.RpcError) as info:
        for _ in stream:
            pass
    return info.value


def _big_version(registry_address: str, pki: tls.PkiPaths, tmp_path: Path) -> tuple[Client, str]:
    alice = user_client(registry_address, pki, tmp_path / "homes", "alice")
    version = alice.push(make_artifact(tmp_path / "big.safetensors", n_floats=BIG_FLOATS), "big")
    return alice, version.name


@pytest.mark.integration  # real registries on loopback sockets, over mutual TLS
def test_streams_past_the_caps_are_refused_at_once_and_unary_calls_still_answer(pki, tmp_path):
    # 8 workers: at most 6 streams (three quarters), at most 4 per caller (half); no idle cancel during the test.
    registry, handle = start_registry(
        tmp_path / "registry", pki, limits=ServerLimits(workers=8, stream_idle_seconds=600)
    )
    release = threading.Event()
    downloads = []
    try:
        alice, name = _big_version(registry.address, pki, tmp_path)
        with _channel(registry.address, pki) as first, _channel(registry.address, pki, _second_identity(pki)) as other:
            # One caller opens 5 uploads that send nothing: its 5th is refused, the other 4 are held.
            publishes = [_idle_publish(first, alice, release) for _ in range(5)]
            [refused] = _wait_for_failures(publishes, 1)
            error = refused.exception()
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            assert "retry later" in error.details()
            # Another caller's downloads, never read, fill the server's 6 stream slots: the 7th stream is refused.
            downloads = [_unread_download(other, alice, name) for _ in range(2)]
            with pytest.raises(grpc.RpcError) as info:
                _unread_download(other, alice, name)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "retry later" in info.value.details()
            assert sum(p.done() for p in publishes) == 1  # the 4 admitted uploads are still held
            # 6 of 8 workers are held; unary calls still answer, on the API port too.
            assert alice.get_model("big").name == "models/alice/big"
            with _channel(registry.address, pki) as third:
                check = health_pb2_grpc.HealthStub(third).Check(health_pb2.HealthCheckRequest(), timeout=HANG)
                assert check.status == SERVING
    finally:
        release.set()
        for stream in downloads:
            stream.cancel()
        handle.stop(grace=1)


@pytest.mark.integration  # real registries on loopback sockets, over mutual TLS
def test_idle_streams_are_cancelled_and_readiness_says_when_no_worker_is_free(pki, tmp_path):
    # 4 workers, all of them allowed to streams, so that idle streams can take every one: readiness must notice.
    registry, handle = start_registry(
        tmp_path / "registry",
        pki,
        health_port=free_port(),
        limits=ServerLimits(workers=4, max_streams=4, max_streams_per_caller=4, stream_idle_seconds=4),
    )
    release = threading.Event()
    statuses: queue.Queue = queue.Queue()
    probe = grpc.insecure_channel(f"127.0.0.1:{handle.health_port}")
    watch = health_pb2_grpc.HealthStub(probe).Watch(health_pb2.HealthCheckRequest(service=""))

    def follow() -> None:
        try:
            for response in watch:
                statuses.put(response.status)
        except grpc.RpcError:  # cancelled at the end of the test
            pass

    threading.Thread(target=follow, daemon=True).start()

    def next_status(wanted: int) -> None:
        deadline = time.monotonic() + HANG
        while (status := statuses.get(timeout=max(0.0, deadline - time.monotonic()))) != wanted:
            assert status in (SERVING, NOT_SERVING)

    try:
        alice, name = _big_version(registry.address, pki, tmp_path)
        next_status(SERVING)
        with _channel(registry.address, pki) as channel:
            # Two uploads that send nothing and two downloads never read hold all 4 workers.
            downloads = [_unread_download(channel, alice, name) for _ in range(2)]
            publishes = [_idle_publish(channel, alice, release) for _ in range(2)]
            next_status(NOT_SERVING)
            # After the idle limit the server cancels them all, and a worker is free again.
            for publish in publishes:
                assert publish.exception(timeout=HANG).code() == grpc.StatusCode.CANCELLED
            for download in downloads:
                assert _end_of(download).code() == grpc.StatusCode.CANCELLED
            next_status(SERVING)
            assert alice.get_model("big").name == "models/alice/big"
            assert health_status(registry.address, pki) == SERVING
    finally:
        release.set()
        watch.cancel()
        probe.close()
        handle.stop(grace=1)


@pytest.mark.integration  # real registries on loopback sockets, over mutual TLS
def test_a_call_past_its_time_limit_is_ended(pki, tmp_path):
    """A stream that is read but never ends (a health watch on the API port) is cut at the time limit."""
    registry, handle = start_registry(tmp_path / "registry", pki, limits=ServerLimits(max_rpc_seconds=1))
    ended: queue.Queue = queue.Queue()
    try:
        with _channel(registry.address, pki) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))

            def read() -> None:
                try:
                    for _ in watch:
                        pass
                    ended.put(None)
                except grpc.RpcError as e:
                    ended.put(e)

            threading.Thread(target=read, daemon=True).start()
            try:
                error = ended.get(timeout=HANG)
            finally:
                watch.cancel()
        assert isinstance(error, grpc.RpcError)
        # Cancelled by the watchdog, or ended at its next message with a message saying why.
        assert error.code() == grpc.StatusCode.CANCELLED or (
            error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "limit of 1 s" in error.details()
        ), error
    finally:
        handle.stop(grace=1)


@pytest.mark.integration  # a real trainer and registry on loopback sockets, over mutual TLS
def test_the_trainer_cancels_an_idle_upload_and_a_watch_outlives_the_limits(registry, pki, tmp_path):
    limit = 1.0
    # Every call but those that may legitimately take a while here is limited to a second; WatchJob keeps its rule.
    lenient = {"WatchJob": 0.0, "CreateJob": 0.0, "CancelJob": 0.0, "UploadDataset": 0.0}
    cfg, handle = start_trainer(
        tmp_path / "trainer",
        pki,
        registry.address,
        limits=ServerLimits(stream_idle_seconds=limit, max_rpc_seconds=limit, rpc_seconds=lenient),
    )
    release = threading.Event()
    try:
        alice = trainer_client(user_client(registry.address, pki, tmp_path / "homes"), cfg.listen)
        with _channel(cfg.listen, pki) as channel:

            def nothing() -> Iterator[trainer_pb2.UploadDatasetRequest]:
                release.wait()
                return
                yield

            upload = trainer_pb2_grpc.TrainerServiceStub(channel).UploadDataset.future(
                nothing(), metadata=alice._metadata()
            )
            assert upload.exception(timeout=HANG).code() == grpc.StatusCode.CANCELLED

        # A watch waits for the job's events (not idle) for longer than the limit, and sees the job to its end.
        dataset = alice.upload_dataset(write_csv(tmp_path / "adult.csv"))
        spec = trainer_pb2.TrainingSpec(architecture="dp-merf", target_epsilon=5.0, delta=1e-3, epochs=3, batch_size=60)
        spec.config.update({**TINY_MERF, "generator_steps": 10**7})
        job = alice.create_job(spec, tabular_schema(), dataset, "long")
        events: queue.Queue = queue.Queue()

        def follow() -> None:
            try:
                for event in alice.watch_job(job.name):
                    events.put(event)
            except SgdeError as e:  # the watch ended by an error: reported below
                events.put(e)

        threading.Thread(target=follow, daemon=True).start()
        time.sleep(4 * limit)  # the watch is now older than any limit it could be under
        alice.cancel_job(job.name)
        deadline = time.monotonic() + HANG
        while True:
            event = events.get(timeout=max(0.0, deadline - time.monotonic()))
            assert not isinstance(event, SgdeError), event
            if event.state == trainer_pb2.JOB_STATE_CANCELLED:
                break
    finally:
        release.set()
        handle.stop(grace=1)


def test_limits_from_the_environment(monkeypatch):
    monkeypatch.setenv("SGDE_TRAINER_WORKERS", "16")
    monkeypatch.setenv("SGDE_TRAINER_STREAM_IDLE_SECONDS", "5")
    monkeypatch.setenv("SGDE_TRAINER_MAX_RPC_SECONDS_BY_METHOD", "UploadDataset=7200")
    limits = ServerLimits.from_env("trainer")
    assert (limits.workers, limits.stream_cap, limits.caller_cap, limits.stream_idle_seconds) == (16, 12, 8, 5.0)
    assert limits.time_limit("UploadDataset") == 7200.0
    assert limits.time_limit("WatchJob") is None  # as long as the job: see libsgde/server/limits.py
    assert limits.time_limit("ListJobs") == 3600.0
    monkeypatch.setenv("SGDE_TRAINER_MAX_RPC_SECONDS_BY_METHOD", "WatchJob")
    with pytest.raises(ValueError, match="METHOD=SECONDS"):
        ServerLimits.from_env("trainer")
    monkeypatch.setenv("SGDE_TRAINER_MAX_RPC_SECONDS_BY_METHOD", "")
    monkeypatch.setenv("SGDE_TRAINER_MAX_STREAMS", "17")
    with pytest.raises(ValueError, match="max_streams"):
        ServerLimits.from_env("trainer")
