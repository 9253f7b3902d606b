"""The registry as its own process, backed by a real S3 server (SeaweedFS): faults, restarts and load."""

from __future__ import annotations

import hashlib
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from libsgde.client import Client
from libsgde.security import signing
from libsgde.wire.limits import CHUNK_SIZE
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from tests.support.seaweed import SeaweedS3
from tests.support.services import RegistryProcess, make_artifact, user_client

pytestmark = pytest.mark.integration  # real servers on loopback sockets


@pytest.fixture
def s3_registry(tmp_path, pki, seaweed):
    home = tmp_path / "registry-home"
    home.mkdir()
    proc = RegistryProcess(home, pki, seaweed.url(f"reg-{uuid.uuid4().hex[:12]}"), seaweed.env())
    proc.start()
    yield proc
    if proc.proc and proc.proc.poll() is None:
        proc.stop()


def test_sigterm_stops_gracefully(s3_registry):
    assert s3_registry.stop() == 0


def test_sigkill_and_restart_keep_every_committed_version(s3_registry, pki, tmp_path):
    alice = user_client(s3_registry.address, pki, tmp_path)
    published = {}
    for seed in range(3):
        art = make_artifact(tmp_path / f"a{seed}.safetensors", n_floats=50_000, seed=seed)
        published[alice.push(art, "durable").number] = art.read_bytes()
    s3_registry.kill()
    s3_registry.start()  # same port, database, token key and bucket
    again = Client(s3_registry.address, home=alice.home, pki=pki.root)  # the saved token still works
    assert [v.number for v in again.list_versions("durable")] == [1, 2, 3]
    for number, data in published.items():
        path, version = again.pull(f"durable@{number}", tmp_path / f"back{number}.safetensors")
        assert path.read_bytes() == data and version.sha256 == hashlib.sha256(data).hexdigest()
    again.close()
    alice.close()


def test_s3_dying_mid_publish_gives_unavailable_and_changes_nothing(tmp_path, pki):
    with SeaweedS3(tmp_path / "fragile-s3") as s3:
        home = tmp_path / "registry-home"
        home.mkdir()
        proc = RegistryProcess(home, pki, s3.url("fragile"), s3.env())
        proc.start()
        try:
            alice = user_client(proc.address, pki, tmp_path)
            alice.push(make_artifact(tmp_path / "first.safetensors", n_floats=1000), "fragile")
            data = make_artifact(tmp_path / "big.safetensors", n_floats=1_500_000, seed=9).read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            key = signing.load_signing_key(alice.signing_key_path(alice.username))
            header = rpb.PublishVersionRequest.Header(
                model=f"models/{alice.username}/fragile",
                sha256=sha,
                size_bytes=len(data),
                signature=signing.sign_artifact(key, sha),
            )

            def requests_killing_s3():
                yield rpb.PublishVersionRequest(header=header)
                for i, start in enumerate(range(0, len(data), CHUNK_SIZE)):
                    if i == 2:
                        s3.kill()
                    yield rpb.PublishVersionRequest(chunk=data[start : start + CHUNK_SIZE])

            with pytest.raises(grpc.RpcError) as info:
                alice.registry.PublishVersion(requests_killing_s3(), metadata=alice._metadata(), timeout=60)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
            assert [v.number for v in alice.list_versions("fragile")] == [1]
            assert alice.get_model("fragile").latest_version == 1
            s3.restart()
            path = tmp_path / "big.safetensors"
            assert alice.push(path, "fragile").number == 2
            pulled, _ = alice.pull("fragile@2", tmp_path / "big-back.safetensors")
            assert pulled.read_bytes() == data
            alice.close()
        finally:
            proc.stop()


def test_32_concurrent_publishes_and_downloads(s3_registry, pki, tmp_path):
    clients = [user_client(s3_registry.address, pki, tmp_path) for _ in range(32)]
    arts = [make_artifact(tmp_path / f"load{i}.safetensors", n_floats=40_000, seed=100 + i) for i in range(32)]

    def round_trip(i: int) -> bool:
        client = clients[i]
        version = client.push(arts[i], "load")
        path, _ = client.pull("load", tmp_path / f"load{i}-back.safetensors")
        data = path.read_bytes()
        return data == arts[i].read_bytes() and hashlib.sha256(data).hexdigest() == version.sha256

    with ThreadPoolExecutor(32) as pool:
        assert all(pool.map(round_trip, range(32)))
    for client in clients:
        client.close()
