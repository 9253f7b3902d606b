"""Moving files over gRPC streams: chunks of at most 1 MiB, hashed as they pass, and outputs that appear only once
they are whole and verified."""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from libsgde.io.atomic import atomic_write
from libsgde.wire.limits import CHUNK_SIZE
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb

Progress = Callable[[int, int], None]  # (bytes done, bytes in all); for sampling (samples done, samples in all)


def file_chunks(path: Path, progress: Progress | None, size: int) -> Iterator[bytes]:
    done = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK_SIZE):
            done += len(block)
            yield block
            if progress:
                progress(done, size)


def publish_requests(
    header: rpb.PublishVersionRequest.Header, path: Path, progress: Progress | None = None
) -> Iterator[rpb.PublishVersionRequest]:
    """The PublishVersion request stream: the header, then the file in chunks of at most 1 MiB."""
    yield rpb.PublishVersionRequest(header=header)
    for block in file_chunks(path, progress, header.size_bytes):
        yield rpb.PublishVersionRequest(chunk=block)


def collect(pieces: Iterable[bytes], out: str | Path | None, check: Callable[[str], None]) -> tuple[str, bytes | None]:
    """Hashes the pieces and keeps them: in memory, or (with `out`) in a file that appears at `out` only once all of
    them arrived and `check(sha256)` returned without raising. Returns (sha256, the bytes or None)."""
    digest = hashlib.sha256()
    if out is None:
        parts = []
        for piece in pieces:
            digest.update(piece)
            parts.append(piece)
        check(digest.hexdigest())
        return digest.hexdigest(), b"".join(parts)
    with atomic_write(out) as f:
        for piece in pieces:
            digest.update(piece)
            f.write(piece)
        check(digest.hexdigest())
    return digest.hexdigest(), None


@contextlib.contextmanager
def cancelling(stream: Any) -> Iterator[Any]:
    """Cancels a response stream on the way out: a no-op once it ended; otherwise the server stops sending."""
    try:
        yield stream
    finally:
        stream.cancel()


class _WriteBehind:
    """A thread that writes and hashes the pieces handed to it, in order. Both release the GIL for large pieces, so
    receiving the next piece (and decrypting it) overlaps writing and hashing this one."""

    def __init__(self, f: BinaryIO, digest: Any, depth: int):
        self._f, self._digest = f, digest
        self._pieces: queue.Queue[bytes | None] = queue.Queue(depth)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="write-behind")
        self._thread.start()

    def _run(self) -> None:
        while (piece := self._pieces.get()) is not None:
            if self.error is None:  # after a failure it only drains, so that the producer never blocks
                try:
                    self._f.write(piece)
                    self._digest.update(piece)
                except BaseException as e:  # noqa: BLE001 - raised in the producer's thread
                    self.error = e

    def write(self, piece: bytes) -> None:
        if self.error is not None:
            raise self.error
        self._pieces.put(piece)

    def join(self) -> None:
        self._pieces.put(None)
        self._thread.join()


@contextlib.contextmanager
def write_behind(f: BinaryIO, digest: Any, depth: int = 8) -> Iterator[Callable[[bytes], None]]:
    """A `write(piece)` that appends to `f` and feeds `digest` in a background thread, at most `depth` pieces behind.
    On the way out every piece has been written (or the writer's error is raised)."""
    writer = _WriteBehind(f, digest, depth)
    try:
        yield writer.write
    except BaseException:
        writer.join()
        raise
    writer.join()
    if writer.error is not None:
        raise writer.error
