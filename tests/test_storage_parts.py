"""S3 transfers in parts against a real S3 server (SeaweedFS): parts sent concurrently, an abort that never races a
part in flight, uploads a dead store left behind swept, ranged reads in order. Plus the pure helpers."""

from __future__ import annotations

import hashlib
import io
import threading
import time

import pytest

from libsgde.client.transfers import write_behind
from libsgde.server import s3_parts
from libsgde.server.storage import BlobIntegrityError, StorageUnavailable
from libsgde.wire.limits import CHUNK_SIZE
from tests.test_storage import (  # noqa: F401 - fault_server, fault_store: fixtures
    MULTIPART,
    ClientGone,
    blob,
    chunked,
    fault_server,
    fault_store,
    incomplete_uploads,
    read_all,
)

PART = s3_parts.PART_SIZE


# -- pure helpers (no sockets) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 10, 11, 25])
def test_split_parts_regroups_exactly(chunk):
    data = bytes(range(256)) * 2  # 512 bytes
    fed = []
    parts = list(s3_parts.split_parts(chunked(data, chunk), 10, fed.append))
    assert b"".join(parts) == data and b"".join(fed) == data
    assert all(len(p) == 10 for p in parts[:-1]) and 0 < len(parts[-1]) <= 10
    assert all(isinstance(p, bytes) for p in parts)


def test_split_parts_stops_when_feed_raises():
    def feed(chunk):
        if chunk == b"bad":
            raise BlobIntegrityError("bad chunk")

    parts = s3_parts.split_parts([b"good", b"bad", b"never"], 100, feed)
    with pytest.raises(BlobIntegrityError):
        list(parts)


def test_write_behind_writes_everything_in_order_and_raises_its_errors():
    data, _ = blob(3 * CHUNK_SIZE + 11)
    f, digest = io.BytesIO(), hashlib.sha256()
    with write_behind(f, digest, depth=2) as write:
        for piece in chunked(data, 100_003):
            write(piece)
    assert f.getvalue() == data and digest.hexdigest() == hashlib.sha256(data).hexdigest()

    class Full(io.BytesIO):
        def write(self, piece):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):  # raised to the receiver, which stops receiving
        with write_behind(Full(), hashlib.sha256(), depth=1) as write:
            for piece in chunked(data, 1000):
                write(piece)


# -- uploads in parts ------------------------------------------------------------------------------------------


class PartCalls:
    """Wraps the store's real S3 calls for parts to record their order and hold chosen parts back (so the test
    decides what is in flight when the sender fails). Every call still goes to SeaweedFS."""

    def __init__(self, store, monkeypatch):
        self.events: list[tuple[str, int]] = []
        self.started = {n: threading.Event() for n in range(1, 10)}
        self.hold: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        client = store._client
        upload_part, abort = client._upload_part, client._abort_multipart_upload

        def held_upload_part(bucket, key, data, headers, upload_id, number):
            self._record("start", number)
            self.started[number].set()
            if number in self.hold:
                assert self.hold[number].wait(20), f"part {number} was held for good"
            try:
                return upload_part(bucket, key, data, headers, upload_id, number)
            finally:
                self._record("end", number)

        def recorded_abort(bucket, key, upload_id):
            self._record("abort", 0)
            return abort(bucket, key, upload_id)

        monkeypatch.setattr(client, "_upload_part", held_upload_part)
        monkeypatch.setattr(client, "_abort_multipart_upload", recorded_abort)

    def _record(self, what: str, number: int) -> None:
        with self._lock:
            self.events.append((what, number))


def test_parts_are_sent_while_earlier_parts_are_in_flight(s3_store, monkeypatch):
    calls = PartCalls(s3_store, monkeypatch)
    calls.hold[1] = calls.started[2]  # part 1 finishes only once part 2 is being sent: sequential parts never would
    data, sha = blob(MULTIPART, seed=3)
    s3_store.put(sha, chunked(data), len(data))
    assert calls.events.index(("start", 2)) < calls.events.index(("end", 1))
    assert read_all(s3_store, sha) == data
    assert incomplete_uploads(s3_store) == []


@pytest.mark.parametrize("failure", ["sender", "wrong sha256"])
def test_a_failed_upload_is_aborted_only_after_its_parts_in_flight_end(s3_store, monkeypatch, failure):
    """The race that minio's own parallel put_object has: it aborts while a part is still being sent, and that part
    may land after the abort. Here part 1 is held in flight while the upload fails; the abort must follow it."""
    calls = PartCalls(s3_store, monkeypatch)
    release = threading.Event()
    calls.hold[1] = release
    data, sha = blob(MULTIPART, seed=4)
    if failure == "wrong sha256":
        _, sha = blob(MULTIPART, seed=5)

    def sender():
        for n, chunk in enumerate(chunked(data)):
            if n == PART // CHUNK_SIZE + 1:  # part 1 is in flight (held), part 2 is being filled
                assert calls.started[1].wait(10)
                threading.Timer(0.5, release.set).start()  # let it go while the put is failing
                if failure == "sender":
                    raise ClientGone("the client went away")
            yield chunk

    with pytest.raises(ClientGone if failure == "sender" else BlobIntegrityError):
        s3_store.put(sha, sender(), len(data))
    assert ("abort", 0) in calls.events
    ended = [i for i, (what, _) in enumerate(calls.events) if what == "end"]
    assert ended and max(ended) < calls.events.index(("abort", 0)), calls.events
    assert calls.events.count(("start", 1)) == calls.events.count(("end", 1)) == 1
    time.sleep(0.2)
    assert incomplete_uploads(s3_store) == [] and not s3_store.exists(sha)


def test_a_store_that_dies_mid_upload_fails_fast_and_its_upload_is_swept(fault_server, fault_store):  # noqa: F811
    data, sha = blob(MULTIPART, seed=6)

    def sender():
        for n, chunk in enumerate(chunked(data)):
            if n == PART // CHUNK_SIZE + 2:  # part 1 was handed to the store: a multipart upload is open
                time.sleep(0.5)  # and sent
                fault_server.kill()
            yield chunk

    fault_store.check()
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match=fault_server.endpoint):
        fault_store.put(sha, sender(), len(data))
    assert time.monotonic() - started < 10
    fault_server.restart()
    assert not fault_store.exists(sha)
    # the abort could not reach a dead store: the upload is still open, until a sweep past its age ends it
    assert len(incomplete_uploads(fault_store)) == 1
    assert fault_store.sweep_abandoned_uploads(older_than_s=3600) == 0  # a young one may be a put still running
    assert len(incomplete_uploads(fault_store)) == 1
    assert fault_store.sweep_abandoned_uploads(older_than_s=0) == 1
    assert incomplete_uploads(fault_store) == []
    fault_store.put(sha, chunked(data), len(data))  # and the same blob uploads cleanly afterwards
    assert read_all(fault_store, sha) == data


def test_sweep_of_a_bucket_not_made_yet_is_nothing(s3_store):
    assert s3_store.sweep_abandoned_uploads(older_than_s=0) == 0


# -- ranged reads ------------------------------------------------------------------------------------------------


def test_large_blobs_read_as_ranges_in_order_from_any_offset(s3_store):
    data, sha = blob(2 * s3_parts.RANGE_SIZE + 3 * CHUNK_SIZE + 7, seed=7)
    s3_store.put(sha, chunked(data), len(data))
    rs = s3_parts.RANGE_SIZE
    for offset in (0, 1, rs - 1, rs, rs + 1, len(data) - rs - 1, len(data) - 1, len(data)):
        chunks = list(s3_store.get(sha, offset))
        assert b"".join(chunks) == data[offset:], offset
        assert all(0 < len(c) <= CHUNK_SIZE for c in chunks)
    small = list(s3_store.get(sha, 3, chunk_size=300_000))
    assert b"".join(small) == data[3:] and max(map(len, small)) <= 300_000


def test_a_download_stopped_early_frees_its_ranges(s3_store):
    data, sha = blob(4 * s3_parts.RANGE_SIZE, seed=8)
    s3_store.put(sha, chunked(data), len(data))
    for _ in range(20):  # more than the pool's slots: a leaked range would hold one for good and this would hang
        chunks = s3_store.get(sha)
        assert next(chunks) == data[:CHUNK_SIZE]
        chunks.close()
    assert read_all(s3_store, sha) == data
