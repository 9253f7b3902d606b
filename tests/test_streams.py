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
