"""A Sample stream's pieces made one chunk ahead, in a thread of their own.

gRPC's synchronous server sends a message from the handler's thread, and the send waits until the client has taken
the bytes (flow control). Made in that same thread, chunk k + 1 would wait for chunk k to reach the client. Made
here, the next chunk is generated, decoded, encoded and hashed while this one is sent, as in-process sampling makes
it while the caller stores this one.

At most two chunks are held at once: the one being sent and the one being made (libsgde.io.sampling.RowCost.ahead
counts the second in the request's memory plan).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Generator, Iterator

_END = object()


class MadeAhead:
    """Iterates `pieces` ((bytes, samples done) from libsgde.io.formats.encode_stream), made one ahead in a thread,
    and hashes them there (`sha256` once the iteration ended). An exception the pieces raise is raised here, in
    order. `close()` (also on leaving a `with` block) stops the thread after the piece it is making."""

    def __init__(self, pieces: Generator[tuple[bytes, int]]):
        self._pieces = pieces
        self._digest = hashlib.sha256()
        self._made: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = threading.Semaphore(2)  # a piece takes one until it has been sent: two held at most
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._make, name="sampler-ahead", daemon=True)
        self._thread.start()

    def _make(self) -> None:
        try:
            while True:
                self._slots.acquire()
                if self._stopped.is_set():
                    return
                piece = next(self._pieces, None)
                if piece is None:
                    self._made.put(_END)
                    return
                self._digest.update(piece[0])
                self._made.put(piece)
        except BaseException as e:  # noqa: BLE001 - raised again in the consumer's thread
            self._made.put(e)
        finally:
            self._pieces.close()  # the generator's cleanup runs in the thread that ran it

    def __iter__(self) -> Iterator[tuple[bytes, int]]:
        while True:
            piece = self._made.get()
            if piece is _END:
                return
            if isinstance(piece, BaseException):
                raise piece
            yield piece
            self._slots.release()  # asked for the next piece: this one has been sent

    def sha256(self) -> str:
        """The hex sha256 of every piece's bytes, once the iteration has ended."""
        return self._digest.hexdigest()

    def close(self) -> None:
        self._stopped.set()
        self._slots.release()  # wakes the thread if it waits for a slot

    def __enter__(self) -> MadeAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
