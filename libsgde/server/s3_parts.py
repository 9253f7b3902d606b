"""One S3 object moved in parts, several at once: multipart uploads whose parts are sent while the stream that feeds
them is still arriving, and downloads read as concurrent ranged GETs handed on in order.

Memory is bounded twice: each transfer keeps at most `in_flight` parts (or ranges) of its own, and every transfer
of one store shares a `PartPool` whose workers are its only senders. A failed upload never races its own abort:
parts not yet started are cancelled, parts being sent are waited for, and only then is the upload aborted.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Protocol, TypeVar

log = logging.getLogger("sgde.storage")

PART_SIZE = 16 << 20  # S3 allows 5 MiB to 5 GiB; 16 MiB keeps requests few and memory per part modest
PARTS_IN_FLIGHT = 4  # per upload: 4 parts sending + 1 filling = 80 MiB at most
RANGE_SIZE = 8 << 20
RANGES_IN_FLIGHT = 3  # per download: 24 MiB read ahead at most

T = TypeVar("T")


class Guard(Protocol):
    """Turns the S3 SDK's errors into the store's (StorageUnavailable, BlobNotFound) around one call."""

    def __call__(self) -> contextlib.AbstractContextManager[None]: ...


class PartPool:
    """The threads that send and fetch parts for every transfer of one store, with one slot per thread: a transfer
    waits for a free slot instead of queueing parts (and their memory) without bound."""

    def __init__(self, workers: int):
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="s3-part")
        self._slots = threading.BoundedSemaphore(workers)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        self._slots.acquire()
        try:
            future = self._pool.submit(fn, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())  # runs on cancel too
        return future


def split_parts(chunks: Iterable[bytes], part_size: int, feed: Callable[[bytes], None]) -> Iterator[bytes]:
    """The bytes of `chunks` regrouped into parts of exactly `part_size` bytes (the last one shorter, never empty),
    each chunk passed to `feed` first (which raises to stop the stream). One copy per byte: the join."""
    pending: list[memoryview] = []
    have = 0
    for chunk in chunks:
        feed(chunk)
        view = memoryview(chunk)
        while have + len(view) >= part_size:
            take = part_size - have
            pending.append(view[:take])
            yield b"".join(pending)
            pending, have, view = [], 0, view[take:]
        if view:
            pending.append(view)
            have += len(view)
    if have:
        yield b"".join(pending)


class MultipartUpload:
    """One object uploaded as a multipart upload with up to `in_flight` parts being sent at once."""

    def __init__(self, client: Any, bucket: str, key: str, pool: PartPool, guard: Guard, in_flight: int):
        self.client, self.bucket, self.key = client, bucket, key
        self.pool, self.guard, self.in_flight = pool, guard, in_flight
        self.upload_id: str | None = None
        self._sending: dict[int, Future] = {}
        self._etags: dict[int, str] = {}

    def run(self, parts: Iterable[bytes], before_complete: Callable[[], None]) -> None:
        """Sends `parts` (its iterator may raise: the sender's error, or bad bytes) and completes the upload once
        they all arrived and `before_complete()` returned. Any failure aborts it, after the last part in flight."""
        from minio.datatypes import Part

        try:
            for number, data in enumerate(parts, start=1):
                if self.upload_id is None:
                    with self.guard():
                        self.upload_id = self.client._create_multipart_upload(
                            self.bucket, self.key, {"Content-Type": "application/octet-stream"}
                        )
                self._make_room(self.in_flight - 1)
                self._sending[number] = self.pool.submit(
                    self.client._upload_part, self.bucket, self.key, data, None, self.upload_id, number
                )
                del data  # the pool's task holds the only reference: freed once sent
            before_complete()
            self._make_room(0)
            if self.upload_id is None:
                raise ValueError("a multipart upload needs at least one part")
            with self.guard():
                self.client._complete_multipart_upload(
                    self.bucket, self.key, self.upload_id, [Part(n, tag) for n, tag in sorted(self._etags.items())]
                )
        except BaseException:
            self._abort()
            raise

    def _make_room(self, keep: int) -> None:
        """Waits until at most `keep` parts are still being sent; raises the error of any part that failed."""
        while True:
            for number, future in [(n, f) for n, f in self._sending.items() if f.done()]:
                del self._sending[number]
                with self.guard():
                    self._etags[number] = future.result()
            if len(self._sending) <= keep:
                return
            wait(self._sending.values(), return_when=FIRST_COMPLETED)

    def _abort(self) -> None:
        if self.upload_id is None:
            return
        for future in self._sending.values():
            future.cancel()  # not started yet: it never will be
        wait(self._sending.values())  # the ones sending now end (either way) before the abort, not after it
        try:
            with self.guard():
                self.client._abort_multipart_upload(self.bucket, self.key, self.upload_id)
        except Exception as e:  # noqa: BLE001 - the first failure is the one to report; the sweep ends this upload
            log.warning(
                "could not abort a failed multipart upload; sweep_abandoned_uploads will",
                extra={"key": self.key, "upload_id": self.upload_id, "error": str(e)},
            )


def ranged_read(
    fetch: Callable[[int, int], T], start: int, end: int, pool: PartPool, range_size: int, in_flight: int
) -> Iterator[T]:
    """The bytes [start, end) as ranges of `range_size` fetched concurrently (what `fetch(offset, length)` returns
    for each), yielded in order with at most `in_flight` ranges fetched ahead of the consumer. Closing the generator
    early cancels the ranges not started and lets the running ones finish in the background."""
    offsets = iter(range(start, end, range_size))
    ahead: deque[Future[T]] = deque()
    try:
        while True:
            while len(ahead) < in_flight and (offset := next(offsets, None)) is not None:
                ahead.append(pool.submit(fetch, offset, min(range_size, end - offset)))
            if not ahead:
                return
            yield ahead.popleft().result()
    finally:
        for future in ahead:
            future.cancel()
