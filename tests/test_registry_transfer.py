"""Publishing and downloading artifacts large enough to travel in parts, through a registry process backed by a
real S3 server (SeaweedFS): what a failed publish leaves behind (nothing), and downloads that resume."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid

import grpc
import pytest

from libsgde.security import signing
from libsgde.server import s3_parts
from libsgde.wire.limits import CHUNK_SIZE
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from tests.support.services import RegistryProcess, make_artifact, user_client

pytestmark = pytest.mark.integration  # real servers on loopback sockets

N_FLOATS = (2 * s3_parts.PART_SIZE + 3 * CHUNK_SIZE) // 4  # three parts


@pytest.fixture
def s3_registry(tmp_path, pki, seaweed):
    home = tmp_path / "registry-home"
    home.mkdir()
    bucket = f"reg-{uuid.uuid4().hex[:12]}"
    proc = RegistryProcess(home, pki, seaweed.url(bucket), seaweed.env())
    proc.start()
    proc.bucket = bucket
    yield proc
    if proc.proc and proc.proc.poll() is None:
        proc.stop()


@pytest.fixture
def big_artifact(tmp_path):
    return make_artifact(tmp_path / "big.safetensors", n_floats=N_FLOATS, seed=11)


def _header(client, model: str, data: bytes, sha256: str | None = None) -> rpb.PublishVersionRequest.Header:
    key = signing.load_signing_key(client.signing_key_path(client.username))
    sha = sha256 or hashlib.sha256(data).hexdigest()
    return rpb.PublishVersionRequest.Header(
        model=f"models/{client.username}/{model}",
        sha256=sha,
        size_bytes=len(data),
        signature=signing.sign_artifact(key, sha),
    )


def _requests(header, data: bytes, on_chunk=None):
    yield rpb.PublishVersionRequest(header=header)
    for i, start in enumerate(range(0, len(data), CHUNK_SIZE)):
        if on_chunk:
            on_chunk(i)
        yield rpb.PublishVersionRequest(chunk=data[start : start + CHUNK_SIZE])


def _store_is_empty(seaweed, bucket: str, timeout: float = 20) -> bool:
    """No object and no unfinished multipart upload in `bucket` (the registry cleans up asynchronously after a
    cancellation, so wait for it a little)."""
    s3 = seaweed.client()
    deadline = time.monotonic() + timeout
    while True:
        objects = list(s3.list_objects(bucket, recursive=True)) if s3.bucket_exists(bucket) else []
        uploads = s3._list_multipart_uploads(bucket).uploads if s3.bucket_exists(bucket) else []
        if not objects and not uploads:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def test_a_publish_cancelled_with_parts_in_flight_leaves_nothing(s3_registry, seaweed, pki, tmp_path, big_artifact):
    alice = user_client(s3_registry.address, pki, tmp_path)
    alice.create_model("cancelled")
    data = big_artifact.read_bytes()
    past_first_part = threading.Event()

    def on_chunk(i: int) -> None:
        if i == s3_parts.PART_SIZE // CHUNK_SIZE + 4:
            past_first_part.set()
            time.sleep(2)  # the stream stalls here until the cancellation below ends it

    call = alice.registry.PublishVersion.future(
        _requests(_header(alice, "cancelled", data), data, on_chunk), metadata=alice._metadata(), timeout=60
    )
    assert past_first_part.wait(30)
    time.sleep(0.5)  # part 1 is with the store by now
    call.cancel()
    with pytest.raises(grpc.FutureCancelledError):
        call.result()
    assert _store_is_empty(seaweed, s3_registry.bucket)
    assert list(alice.list_versions("cancelled")) == []
    assert alice.push(big_artifact, "cancelled").number == 1  # and the same bytes publish cleanly afterwards
    alice.close()


def test_a_wrong_sha256_is_refused_and_stores_nothing(s3_registry, seaweed, pki, tmp_path, big_artifact):
    alice = user_client(s3_registry.address, pki, tmp_path)
    alice.create_model("wrong")
    data = big_artifact.read_bytes()
    other = hashlib.sha256(data + b"!").hexdigest()
    with pytest.raises(grpc.RpcError) as refused:
        alice.registry.PublishVersion(
            _requests(_header(alice, "wrong", data, other), data), metadata=alice._metadata(), timeout=60
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "do not match the header" in refused.value.details() and other in refused.value.details()
    assert _store_is_empty(seaweed, s3_registry.bucket, timeout=0)
    assert list(alice.list_versions("wrong")) == []
    alice.close()


def test_a_large_download_arrives_whole_and_resumes(s3_registry, pki, tmp_path, big_artifact):
    alice = user_client(s3_registry.address, pki, tmp_path)
    version = alice.push(big_artifact, "large")
    data = big_artifact.read_bytes()
    dest = tmp_path / "back.safetensors"
    path, _ = alice.pull("large", dest)
    assert path.read_bytes() == data
    # a download cut off past the first range: the next pull asks for the rest only, from the registry's ranges
    cut = s3_parts.RANGE_SIZE + 12_345
    partial = dest.with_name(dest.name + f".{version.sha256[:12]}.part")
    partial.write_bytes(data[:cut])
    dest.unlink()
    seen = []
    path, _ = alice.pull("large", dest, progress=lambda done, total: seen.append(done))
    assert path.read_bytes() == data and not partial.exists()
    assert seen[0] > cut and seen[-1] == len(data)
    partial.write_bytes(data)  # cut off after the last byte: nothing is left to send, and the file is checked
    dest.unlink()
    path, _ = alice.pull("large", dest)
    assert path.read_bytes() == data
    alice.close()


def test_a_registry_starting_aborts_uploads_older_than_its_lease(tmp_path, pki, seaweed):
    """What a registry killed mid-publish (or an abort that could not reach the store) leaves: an open multipart
    upload. The next start ends those older than the upload lease (younger ones may be a replica's publish: the
    store's own test shows that they stay)."""
    home = tmp_path / "registry-home"
    home.mkdir()
    bucket = f"reg-{uuid.uuid4().hex[:12]}"
    env = {**seaweed.env(), "SGDE_REGISTRY_UPLOAD_LEASE_SECONDS": "1"}
    proc = RegistryProcess(home, pki, seaweed.url(bucket), env)
    proc.start()
    proc.stop()
    s3 = seaweed.client()
    s3._create_multipart_upload(bucket, "sha256/" + "a" * 64, {})
    assert len(s3._list_multipart_uploads(bucket).uploads) == 1
    time.sleep(1.5)
    proc.start()
    try:
        assert s3._list_multipart_uploads(bucket).uploads == []
    finally:
        proc.stop()
