"""BlobStore against a real directory and a real S3 server (SeaweedFS)."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from libsgde.security import tls
from libsgde.server.storage import (
    BlobIntegrityError,
    BlobNotFound,
    FileBlobStore,
    S3BlobStore,
    S3Location,
    StorageUnavailable,
    minio_client,
    open_blob_store,
    tls_refusal,
)
from libsgde.wire.limits import CHUNK_SIZE
from tests.support.seaweed import SeaweedS3

MULTIPART = 33 * CHUNK_SIZE + 5  # over minio's 16 MiB part: three parts


class ClientGone(Exception):
    pass


def blob(size: int, seed: int = 0) -> tuple[bytes, str]:
    data = random.Random(seed).randbytes(size)
    return data, hashlib.sha256(data).hexdigest()


def chunked(data: bytes, size: int = CHUNK_SIZE, fail_after: int | None = None):
    for n, start in enumerate(range(0, len(data), size)):
        if fail_after is not None and n == fail_after:
            raise ClientGone("the client went away")
        yield data[start : start + size]


def read_all(store, sha: str, offset: int = 0, chunk_size: int = CHUNK_SIZE) -> bytes:
    return b"".join(store.get(sha, offset, chunk_size))


def incomplete_uploads(store: S3BlobStore) -> list:
    return store._client._list_multipart_uploads(store.bucket).uploads


def assert_clean(store) -> None:
    """No temp file (file backend) or unfinished multipart upload (S3) was left behind."""
    if isinstance(store, FileBlobStore):
        leftovers = [p for p in store.root.rglob("*") if p.name.startswith(".")]
        assert leftovers == []
    else:
        assert incomplete_uploads(store) == []


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.integration)])
def store(request, tmp_path):
    if request.param == "file":
        return FileBlobStore(tmp_path / "blobs")
    return request.getfixturevalue("s3_store")


# -- both backends ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, 3 * CHUNK_SIZE + 17])
def test_round_trip(store, size):
    data, sha = blob(size)
    store.put(sha, chunked(data, 300_001), size)  # chunks not aligned with CHUNK_SIZE
    assert store.exists(sha)
    assert store.stat(sha) == size
    chunks = list(store.get(sha))
    assert b"".join(chunks) == data
    assert all(0 < len(c) <= CHUNK_SIZE for c in chunks)
    assert_clean(store)


def test_multipart_round_trip_and_reupload(store):
    data, sha = blob(MULTIPART, seed=1)
    store.put(sha, chunked(data), len(data))
    store.put(sha, chunked(data), len(data))  # the same content again is fine
    assert store.stat(sha) == len(data)
    assert hashlib.sha256(read_all(store, sha)).hexdigest() == sha
    assert_clean(store)


def test_get_from_offset_and_chunk_size(store):
    data, sha = blob(2 * CHUNK_SIZE + 10)
    store.put(sha, [data], len(data))
    for offset in (0, 1, CHUNK_SIZE, len(data) - 1, len(data)):
        assert read_all(store, sha, offset) == data[offset:]
    small = list(store.get(sha, 5, chunk_size=64 << 10))
    assert b"".join(small) == data[5:] and max(map(len, small)) <= 64 << 10
    with pytest.raises(ValueError):
        store.get(sha, len(data) + 1)
    with pytest.raises(ValueError):
        store.get(sha, -1)


def test_offset_on_empty_blob(store):
    data, sha = blob(0)
    store.put(sha, [], 0)
    assert read_all(store, sha, 0) == b""
    with pytest.raises(ValueError):
        store.get(sha, 1)


def test_stat_exists_delete(store):
    data, sha = blob(1000)
    assert not store.exists(sha)
    with pytest.raises(BlobNotFound):
        store.stat(sha)
    store.put(sha, [data], 1000)
    assert store.exists(sha) and store.stat(sha) == 1000
    store.delete(sha)
    assert not store.exists(sha)
    store.delete(sha)  # missing is fine


def test_get_missing_raises_eagerly(store):
    _, sha = blob(10)
    with pytest.raises(BlobNotFound):
        store.get(sha)  # no next(): the error comes from the call itself


@pytest.mark.parametrize("size", [10, MULTIPART])
def test_hash_mismatch_stores_nothing(store, size):
    data, _ = blob(size)
    _, other_sha = blob(size, seed=99)
    with pytest.raises(BlobIntegrityError, match="sha256"):
        store.put(other_sha, chunked(data), size)
    assert not store.exists(other_sha)
    assert_clean(store)


@pytest.mark.parametrize("size", [1000, MULTIPART])
def test_bad_reupload_leaves_good_blob_untouched(store, size):
    good, sha = blob(size)
    store.put(sha, chunked(good), size)
    bad = bytearray(good)
    bad[-1] ^= 1
    with pytest.raises(BlobIntegrityError):
        store.put(sha, chunked(bytes(bad)), size)
    with pytest.raises(BlobIntegrityError):
        store.put(sha, chunked(good[:-1]), size)
    with pytest.raises(ClientGone):
        store.put(sha, chunked(good, fail_after=size // CHUNK_SIZE), size)
    assert store.stat(sha) == size
    assert read_all(store, sha) == good
    assert_clean(store)


def test_too_many_bytes_stops_reading_early(store):
    data, sha = blob(10)
    endless = itertools.repeat(b"x" * CHUNK_SIZE)  # would never end if the store kept reading
    with pytest.raises(BlobIntegrityError, match="more than"):
        store.put(sha, endless, 10)
    with pytest.raises(BlobIntegrityError):
        store.put(sha, [data, b"!"], 10)
    assert not store.exists(sha)
    assert_clean(store)


def test_too_few_bytes(store):
    data, sha = blob(10)
    with pytest.raises(BlobIntegrityError, match="announced"):
        store.put(sha, [data[:9]], 10)
    with pytest.raises(BlobIntegrityError):
        store.put(sha, [], 10)
    assert not store.exists(sha)
    assert_clean(store)


@pytest.mark.parametrize("size", [3 * CHUNK_SIZE, MULTIPART])
def test_failing_sender_leaves_nothing(store, size):
    data, sha = blob(size)
    with pytest.raises(ClientGone):  # the sender's own error, not a storage error
        store.put(sha, chunked(data, fail_after=size // CHUNK_SIZE - 1), size)
    assert not store.exists(sha)
    assert_clean(store)


@pytest.mark.parametrize("bad", ["A" * 64, "a" * 63, "a" * 65, "g" * 64, "", " " + "a" * 63, None, b"a" * 64])
def test_invalid_sha256_is_a_value_error(store, bad):
    with pytest.raises(ValueError):
        store.put(bad, [b""], 0)
    for call in (store.get, store.stat, store.exists, store.delete):
        with pytest.raises(ValueError):
            call(bad)


def test_invalid_size_is_a_value_error(store):
    _, sha = blob(0)
    with pytest.raises(ValueError):
        store.put(sha, [], -1)


def test_check_passes(store):
    store.check()


def test_concurrent_transfers(store):
    blobs = [blob(256 << 10, seed=i) for i in range(32)]
    barrier = threading.Barrier(32)

    def transfer(item):
        data, sha = item
        barrier.wait()
        store.put(sha, chunked(data, 64 << 10), len(data))
        return read_all(store, sha, chunk_size=64 << 10) == data

    with ThreadPoolExecutor(32) as pool:
        assert all(pool.map(transfer, blobs))


# -- file backend -----------------------------------------------------------------------------------------------


def test_file_layout_and_url(tmp_path):
    store = open_blob_store((tmp_path / "b s").as_uri())
    assert isinstance(store, FileBlobStore) and store.root == tmp_path / "b s"
    data, sha = blob(5)
    store.put(sha, [data], 5)
    assert (tmp_path / "b s" / "sha256" / sha[:2] / sha).read_bytes() == data


def test_file_check_fails_when_root_is_gone(tmp_path):
    store = FileBlobStore(tmp_path / "blobs")
    store.check()
    (tmp_path / "blobs").rmdir()
    (tmp_path / "blobs").write_text("not a directory")
    with pytest.raises(StorageUnavailable, match="not writable"):
        store.check()


def test_bad_urls():
    for url in (
        "http://x",
        "file://host/path",
        "file:relative",
        "s3://b?endpoint=h:1&bogus=1",
        "s3://b?secure=maybe",
        "s3:///?endpoint=h:1",
        "s3://b/path",
    ):
        with pytest.raises(ValueError):
            open_blob_store(url)


# -- S3 backend -------------------------------------------------------------------------------------------------


def test_s3_url_parsing(monkeypatch):
    monkeypatch.setenv("SGDE_S3_ACCESS_KEY", "ak")
    monkeypatch.setenv("SGDE_S3_SECRET_KEY", "very-secret")
    s = open_blob_store("s3://my-bucket?endpoint=minio:9000&secure=false&region=eu-west-1&prefix=blobs")
    assert (s.bucket, s.endpoint, s.secure, s.prefix) == ("my-bucket", "minio:9000", False, "blobs/")
    assert "very-secret" not in s.url and "ak" not in s.url.split("?")[1]
    d = open_blob_store("s3://my-bucket")
    assert (d.endpoint, d.secure, d.prefix) == ("s3.amazonaws.com", True, "")
    assert d._key("a" * 64) == "sha256/" + "a" * 64


def test_s3_falls_back_to_aws_credentials(monkeypatch, seaweed):
    monkeypatch.delenv("SGDE_S3_ACCESS_KEY", raising=False)
    monkeypatch.delenv("SGDE_S3_SECRET_KEY", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    open_blob_store(seaweed.url(f"sgde-aws-{uuid.uuid4().hex[:12]}")).check()


def test_s3_prefix_and_bucket_creation(seaweed, monkeypatch):
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    bucket = f"sgde-prefix-{uuid.uuid4().hex[:12]}"
    store = open_blob_store(seaweed.url(bucket) + "&prefix=tenant-a/")
    client = seaweed.client()
    assert not client.bucket_exists(bucket)
    data, sha = blob(100)
    assert not store.exists(sha)  # reading a bucket that is not there yet is just "not found"
    store.put(sha, [data], 100)  # creates the bucket
    names = [o.object_name for o in client.list_objects(bucket, recursive=True)]
    assert names == [f"tenant-a/sha256/{sha}"]


def test_s3_incomplete_upload_listing_works(s3_store):
    """The 'no stray multipart uploads' assertions above would be vacuous if the listing never showed any."""
    s3_store.check()
    client = s3_store._client
    key = s3_store._key("0" * 64)
    upload_id = client._create_multipart_upload(s3_store.bucket, key, {})
    assert [u.upload_id for u in incomplete_uploads(s3_store)] == [upload_id]
    client._abort_multipart_upload(s3_store.bucket, key, upload_id)
    assert incomplete_uploads(s3_store) == []


@pytest.mark.parametrize("secret", ["wrong-secret-0123456789", None])
def test_s3_wrong_credentials(seaweed, monkeypatch, secret):
    monkeypatch.setenv("SGDE_S3_ACCESS_KEY", seaweed.access_key if secret else "")
    monkeypatch.setenv("SGDE_S3_SECRET_KEY", secret or "")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    store = open_blob_store(seaweed.url(f"sgde-creds-{uuid.uuid4().hex[:12]}"))
    data, sha = blob(10)
    for call in (store.check, lambda: store.put(sha, [data], 10), lambda: store.get(sha), lambda: store.stat(sha)):
        with pytest.raises(StorageUnavailable, match="SGDE_S3_ACCESS_KEY"):
            call()


# -- S3 over TLS (MinIO in the cluster serves a certificate of the SGDE CA) -----------------------------------------


def _tls_env(monkeypatch, server: SeaweedS3, ca_file) -> None:
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    if ca_file is None:
        monkeypatch.delenv("SGDE_S3_CA_FILE", raising=False)
    else:
        monkeypatch.setenv("SGDE_S3_CA_FILE", str(ca_file))


def test_s3_over_tls_is_verified_against_the_ca_file(seaweed_tls, pki, monkeypatch):
    """secure=true with SGDE_S3_CA_FILE: the blob store and the trainer's silo store (S3Location) both work against
    a server whose certificate that CA signed."""
    _tls_env(monkeypatch, seaweed_tls, pki.ca_cert)
    url = seaweed_tls.url(f"sgde-tls-{uuid.uuid4().hex[:12]}")
    assert "secure=true" in url
    store = open_blob_store(url)
    store.check()
    data, sha = blob(MULTIPART)  # multipart over TLS too
    store.put(sha, chunked(data), len(data))
    assert b"".join(store.get(sha)) == data
    assert store.stat(sha) == len(data) and incomplete_uploads(store) == []
    silo = S3Location.parse(url).client()
    assert silo.bucket_exists(store.bucket)


@pytest.mark.parametrize("trust", ["another CA", "the system's CAs"])
def test_s3_over_tls_refuses_a_certificate_the_ca_did_not_sign(seaweed_tls, tmp_path, monkeypatch, trust):
    other = None
    if trust == "another CA":
        other = tmp_path / "other-ca.crt"
        other.write_bytes(tls.make_ca("not the SGDE CA")[0])
    _tls_env(monkeypatch, seaweed_tls, other)
    store = open_blob_store(seaweed_tls.url(f"sgde-tls-{uuid.uuid4().hex[:12]}"))
    data, sha = blob(10)
    expected = f"SGDE_S3_CA_FILE={other}" if other else "the system's CAs"
    for call in (store.check, lambda: store.put(sha, [data], 10), lambda: store.stat(sha)):
        with pytest.raises(StorageUnavailable) as refused:
            call()
        message = str(refused.value)
        assert "does not vouch for" in message and expected in message, message
        assert "certificate verify failed" in message or "unable to get local issuer" in message, message
    assert not seaweed_tls.client().bucket_exists(store.bucket)  # nothing was sent past the handshake
    with pytest.raises(Exception) as silo:  # the trainer's silo store: the same client, the same refusal
        S3Location.parse(seaweed_tls.url(store.bucket)).client().bucket_exists(store.bucket)
    assert tls_refusal(silo.value), silo.value


def test_an_s3_ca_file_that_cannot_verify_is_refused_at_once(tmp_path):
    """Before any connection: a CA file that is missing or not PEM, or one given for plain HTTP."""
    keys = {"region": None, "access_key": "ak", "secret_key": "sk"}
    garbage = tmp_path / "ca.crt"
    garbage.write_text("not a certificate\n")
    for ca_file, secure, says in (
        (str(tmp_path / "missing.crt"), True, "not a readable PEM file"),
        (str(garbage), True, "not a readable PEM file"),
        (str(garbage), False, "secure=false"),
    ):
        with pytest.raises(ValueError, match=says) as refused:
            minio_client("minio:9000", secure=secure, ca_file=ca_file, **keys)
        assert f"SGDE_S3_CA_FILE={ca_file}" in str(refused.value)
    good = tmp_path / "good.crt"
    good.write_bytes(tls.make_ca()[0])
    assert minio_client("minio:9000", secure=True, ca_file=str(good), **keys)


@pytest.mark.integration  # the trainer's configuration takes a free loopback port
def test_a_trainer_with_an_unusable_s3_ca_file_does_not_start(tmp_path, pki, monkeypatch):
    """The silo's S3 store is checked when the trainer starts, not at a user's first job (which would get INTERNAL)."""
    from tests.support.trainer import start_trainer

    monkeypatch.setenv("SGDE_S3_CA_FILE", str(tmp_path / "missing.crt"))
    with pytest.raises(ValueError, match="SGDE_S3_CA_FILE"):
        start_trainer(tmp_path, pki, "127.0.0.1:1", s3_url="s3://?endpoint=127.0.0.1:9&secure=true")


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory):
    """A server of our own to kill: the session's server must stay up for everyone else."""
    with SeaweedS3(tmp_path_factory.mktemp("seaweed-faults")) as server:
        yield server


@pytest.fixture
def fault_store(fault_server, monkeypatch):
    for name, value in fault_server.env().items():
        monkeypatch.setenv(name, value)
    if fault_server.proc is None:
        fault_server.restart()
    store = open_blob_store(fault_server.url(f"sgde-fault-{uuid.uuid4().hex[:12]}"))
    yield store
    if fault_server.proc is None:
        fault_server.restart()


def _fails_fast(call, endpoint: str) -> None:
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as info:
        call()
    assert time.monotonic() - started < 5
    assert endpoint in str(info.value)


def test_s3_dead_server_fails_fast_then_recovers(fault_server, fault_store):
    data, sha = blob(CHUNK_SIZE)
    fault_store.put(sha, chunked(data), len(data))
    fault_server.kill()
    endpoint = fault_server.endpoint
    _fails_fast(fault_store.check, endpoint)
    _fails_fast(lambda: fault_store.put(sha, chunked(data), len(data)), endpoint)
    _fails_fast(lambda: fault_store.get(sha), endpoint)  # eagerly, at the call
    _fails_fast(lambda: fault_store.stat(sha), endpoint)
    _fails_fast(lambda: fault_store.exists(sha), endpoint)
    fault_server.restart()
    fault_store.check()
    assert read_all(fault_store, sha) == data  # survived the crash


def test_s3_server_dies_during_put(fault_server, fault_store):
    data, sha = blob(3 * CHUNK_SIZE)

    def sender():
        for n, chunk in enumerate(chunked(data)):
            if n == 2:
                fault_server.kill()
            yield chunk

    fault_store.check()
    _fails_fast(lambda: fault_store.put(sha, sender(), len(data)), fault_server.endpoint)
    fault_server.restart()
    assert not fault_store.exists(sha)


def test_s3_server_dies_during_get(fault_server, fault_store):
    data, sha = blob(MULTIPART)
    fault_store.put(sha, chunked(data), len(data))
    chunks = fault_store.get(sha, chunk_size=64 << 10)
    next(chunks)
    fault_server.kill()
    with pytest.raises(StorageUnavailable):
        for _ in chunks:
            pass


def test_s3_sender_error_wins_when_abort_fails_too(fault_server, fault_store):
    data, sha = blob(MULTIPART)

    def sender():
        for n, chunk in enumerate(chunked(data)):
            if n == 20:  # the first 16 MiB part is uploaded: a multipart upload is open
                fault_server.kill()  # so minio's abort will fail
                raise ClientGone("the client went away")
            yield chunk

    fault_store.check()
    with pytest.raises(ClientGone):
        fault_store.put(sha, sender(), len(data))
    fault_server.restart()
    assert not fault_store.exists(sha)


def test_temporaries_of_a_killed_put_are_swept_at_start(tmp_path):
    """A put killed mid-way (SIGKILL) left its temporary file for good on the first release."""
    store = FileBlobStore(tmp_path / "blobs")
    data = b"x" * 100
    store.put(hashlib.sha256(data).hexdigest(), [data], len(data))
    folder = next((tmp_path / "blobs" / "sha256").iterdir())
    old, young = folder / f".{'a' * 64}.0123456789ab.tmp", folder / f".{'b' * 64}.ba9876543210.tmp"
    for path in (old, young):
        path.write_bytes(b"half a blob")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    FileBlobStore(tmp_path / "blobs")  # a restart
    assert not old.exists() and young.exists()  # a young one may be a put still running in a replica
    assert store.stat(hashlib.sha256(data).hexdigest()) == 100
