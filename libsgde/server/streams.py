"""Helpers for gRPC streams: reading ahead, and the header an upload stream starts with."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from libsgde.errors import FieldError

_DONE = object()


def read_ahead(source: Iterable[bytes], depth: int = 4) -> Iterator[bytes]:
    """Yields what `source` yields, fetched by a background thread up to `depth` items ahead, so that reading
    (from S3) and sending (over gRPC) overlap. Errors of the source are raised where they occur in the sequence.
    Closing the returned generator early (a cancelled download closes it) stops the thread at its next item and
    closes the source; nothing the thread holds outlives it."""
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def hand_over(item: object) -> bool:
        """Queues `item` for the consumer; False once the consumer has gone. Every put checks: a consumer that
        stopped with the queue full would otherwise leave this thread, and what it queued, blocked for good."""
        while not stop.is_set():
            try:
                items.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        reader = iter(source)
        try:
            for item in reader:
                if not hand_over(item):
                    return
            hand_over(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            hand_over(e)
        finally:
            close = getattr(reader, "close", None)
            if stop.is_set() and close is not None:
                close()  # a generator's own cleanup (an open S3 response) runs now, not when collected

    threading.Thread(target=produce, daemon=True, name="read-ahead").start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def first_header(requests: Iterator[Any]) -> Any:
    """The `header` of a client stream whose first message must hold one (an upload's), or INVALID_ARGUMENT."""
    first = next(requests, None)
    if first is None or first.WhichOneof("payload") != "header":
        raise FieldError("header", "the first message must be the header")
    return first.header
