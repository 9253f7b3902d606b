import threading
import time

import pytest

from libsgde.server.streams import read_ahead


def test_read_ahead_keeps_order_and_raises_where_the_source_failed():
    def source():
        yield from (b"a", b"b", b"c")
        raise OSError("storage went away")

    got = []
    with pytest.raises(OSError, match="storage went away"):
        for item in read_ahead(source(), depth=2):
            got.append(item)
    assert got == [b"a", b"b", b"c"]


def test_closing_early_stops_the_reader():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield bytes([i % 256])
            i += 1

    before = threading.active_count()
    stream = read_ahead(endless(), depth=2)
    assert next(stream) == b"\x00"
    stream.close()
    time.sleep(1.2)  # the producer notices the stop within its 0.5 s put timeout
    count = len(produced)
    time.sleep(0.6)
    assert len(produced) == count and count <= 5
    assert threading.active_count() <= before


def _read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "read-ahead"]


@pytest.mark.parametrize("ending", ["finished", "failed"])
def test_producer_ends_when_the_consumer_goes_away_with_the_queue_full(ending):
    """A download stalled by its client, then cancelled: the source has no more than the queue holds, so the
    producer has read all of it and waits to queue its end (or its error) when the consumer goes."""
    read_all = threading.Event()

    def source():
        yield from (b"a" * 1024, b"b" * 1024, b"c" * 1024)  # the first is taken, the other two fill the queue
        read_all.set()
        if ending == "failed":
            raise OSError("storage went away")

    before = set(_read_ahead_threads())
    stream = read_ahead(source(), depth=2)
    assert next(stream) == b"a" * 1024
    assert read_all.wait(10)
    [producer] = set(_read_ahead_threads()) - before
    stream.close()
    producer.join(timeout=10)  # it notices the stop within its 0.5 s put timeout; 10 s only detects a hang
    assert not producer.is_alive()
