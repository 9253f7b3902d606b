"""A TCP relay that counts the bytes it carries, put between the SuperNodes and the SuperLink's Fleet API.

It never looks inside the stream: TLS passes through it untouched (the SuperNodes still verify the SuperLink's
certificate, whose name 127.0.0.1 is the same on both sides of the relay). Every chunk relayed is logged with its
wall-clock time (time.time(), the clock the ServerApp stamps its rounds with), so the bytes of one round are the
chunks between that round's start and end: `bytes_between(t0, t1)`. "Up" is SuperNode -> SuperLink, "down" the
reverse; the figures are TCP payload (TLS records, HTTP and all), not counting TCP/IP headers.
"""

from __future__ import annotations

import bisect
import socket
import threading
import time

_CHUNK = 1 << 16


class ByteCountingProxy:
    """Listens on 127.0.0.1:<port> (ephemeral) and relays every connection to `upstream`; use as a context manager."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._times: dict[str, list[float]] = {"up": [], "down": []}
        self._sizes: dict[str, list[int]] = {"up": [], "down": []}
        self._sockets: set[socket.socket] = set()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self.connections = 0
        self.first_bytes: list[bytes] = []  # each connection's first bytes upstream (0x16: a TLS handshake)

    def __enter__(self) -> ByteCountingProxy:
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            sockets = [self._listener, *self._sockets]
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for t in self._threads:
            t.join(timeout=5)

    def all_tls(self) -> bool:
        """Every connection so far opened with a TLS handshake record (content type 0x16, version 3.x)."""
        with self._lock:
            return bool(self.first_bytes) and all(b[:2] == b"\x16\x03" for b in self.first_bytes)

    def totals(self) -> tuple[int, int]:
        """(bytes up, bytes down) since the proxy started."""
        with self._lock:
            return sum(self._sizes["up"]), sum(self._sizes["down"])

    def bytes_between(self, start: float, end: float) -> tuple[int, int]:
        """(bytes up, bytes down) relayed at wall-clock times t with start <= t < end."""
        with self._lock:
            out = []
            for direction in ("up", "down"):
                times, sizes = self._times[direction], self._sizes[direction]
                lo, hi = bisect.bisect_left(times, start), bisect.bisect_left(times, end)
                out.append(sum(sizes[lo:hi]))
        return out[0], out[1]

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads = [old for old in self._threads if old.is_alive()]  # a long run opens many connections
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:
                downstream.close()
                continue
            with self._lock:
                self._sockets.update((downstream, upstream))
                self.connections += 1
            finished = [0]  # pumps of this connection that are done
            self._spawn(self._pump, downstream, upstream, "up", finished)
            self._spawn(self._pump, upstream, downstream, "down", finished)

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str, pair: list[int]) -> None:
        """Relays source -> sink. At EOF it passes the half-close on (sink.shutdown(SHUT_WR)) and leaves the other
        direction running; on an error it shuts both sockets. The second pump of a pair to finish closes them."""
        first = direction == "up"
        try:
            while chunk := source.recv(_CHUNK):
                sink.sendall(chunk)
                with self._lock:  # appended under the lock in time order, so the lists stay sorted
                    if first:
                        self.first_bytes.append(chunk[:3])
                        first = False
                    self._times[direction].append(time.time())
                    self._sizes[direction].append(len(chunk))
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        with self._lock:
            pair[0] += 1
            last = pair[0] == 2
            if last:
                self._sockets.difference_update((source, sink))
        if last:
            source.close()
            sink.close()
