"""Limits a client cannot hold a server past: the worker pool is small and synchronous (one thread per call in
progress), so a stream that sends nothing, or whose responses are never read, holds a worker for as long as the
client likes. Without limits 70 such streams pin all 64 workers and every other call times out.

What the interceptor here enforces, for every service alike (`ServerLimits`, from SGDE_<SERVICE>_* variables):
- a cap on streaming calls in progress (`max_streams`, below the worker count so that workers are always left for
  unary calls): a stream over it is refused at once with UNAVAILABLE (retry later);
- a cap per caller (`max_streams_per_caller`): over it, RESOURCE_EXHAUSTED. A caller is the verified client
  certificate's common name together with the peer's IP address: both are known, and trustworthy, before any
  servicer runs (the handshake proved the certificate; an established TCP connection proves the address). The bearer
  token's username is not verified at that point. Every end user presents the same `client` certificate, so the
  certificate alone would make all users one caller; the address alone would make the trainer and a user on one
  machine one caller. (All users behind one proxy or NAT still are: raise the cap there.);
- an idle limit (`stream_idle_seconds`): a client stream whose next message has not come for that long, or a
  response stream whose last message the client has not taken for that long, is cancelled;
- a maximum time per call (`max_rpc_seconds`, per method in `rpc_seconds`): WatchJob has none by default, because
  it legitimately lasts as long as the job (hours), the SDK does not reconnect it, and what it holds is bounded
  anyway: it counts against both stream caps, and a watcher that stops reading is cancelled by the idle limit;
- a busy-worker count for readiness: the server reports NOT_SERVING while no worker is free (`on_exhausted`).

A watchdog thread cancels what outlives a limit (`ServicerContext.cancel()`: the client sees CANCELLED; the server
log says which limit); a response stream past its time limit that is still producing is ended more cleanly, with
DEADLINE_EXCEEDED and a message, at its next message. Keepalive and connection options (`server_options`) close
connections to peers that vanished, whose calls would otherwise hold workers until the idle limit.

Not covered: gRPC reads a unary call's request in a worker before any interceptor runs, so a raw HTTP/2 client that
opens a unary call and never sends its message holds a worker where this module cannot see it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import grpc

from libsgde import errors
from libsgde.security.tls import peer_common_name

log = logging.getLogger("sgde")

# Methods whose calls have no time limit unless the environment gives one (see the module docstring).
UNLIMITED_METHODS: Mapping[str, float] = MappingProxyType({"WatchJob": 0.0})


def _parse_method_seconds(text: str, variable: str) -> dict[str, float]:
    """Parses "WatchJob=0,Sample=7200" into {"WatchJob": 0.0, "Sample": 7200.0}."""
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        method, sep, seconds = item.partition("=")
        try:
            if not sep or not method.strip():
                raise ValueError(item)
            out[method.strip()] = float(seconds)
        except ValueError:
            raise ValueError(f"{variable}: {item!r} is not METHOD=SECONDS (e.g. WatchJob=0,Sample=7200)") from None
    return out


@dataclass(frozen=True)
class ServerLimits:
    """How much a server takes on. 0 for `max_streams` / `max_streams_per_caller` means the default share of the
    workers (three quarters / half); 0 seconds means no limit."""

    workers: int = 64
    max_streams: int = 0
    max_streams_per_caller: int = 0
    stream_idle_seconds: float = 60.0
    max_rpc_seconds: float = 3600.0
    # method name (as in the .proto) -> its own time limit, over max_rpc_seconds; a mapping given replaces the
    # default one (UNLIMITED_METHODS), so name WatchJob in it to keep its rule
    rpc_seconds: Mapping[str, float] = field(default_factory=lambda: dict(UNLIMITED_METHODS))
    # Keepalive: a peer that stops answering pings for keepalive_timeout after keepalive_seconds of silence is
    # disconnected, which cancels its calls. Connections with no call for connection_idle_seconds are closed;
    # connections older than connection_age_seconds are asked to reconnect (GOAWAY; calls in progress go on).
    keepalive_seconds: float = 60.0
    keepalive_timeout_seconds: float = 20.0
    connection_idle_seconds: float = 300.0
    connection_age_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if self.workers < 2:
            raise ValueError("workers must be at least 2")
        if not 0 <= self.max_streams <= self.workers:
            raise ValueError(f"max_streams must be between 1 and the worker count ({self.workers}); 0: default")
        if self.max_streams_per_caller < 0:
            raise ValueError("max_streams_per_caller must be >= 1 (0: the default)")
        for name in ("stream_idle_seconds", "max_rpc_seconds", "keepalive_seconds", "keepalive_timeout_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: no limit)")
        if any(seconds < 0 for seconds in self.rpc_seconds.values()):
            raise ValueError("per-method time limits must be >= 0 (0: no limit)")

    @classmethod
    def from_env(cls, service: str) -> ServerLimits:
        """SGDE_<SERVICE>_WORKERS, _MAX_STREAMS, _MAX_STREAMS_PER_CALLER, _STREAM_IDLE_SECONDS, _MAX_RPC_SECONDS and
        _MAX_RPC_SECONDS_BY_METHOD ("WatchJob=0,Sample=7200", over the defaults); unset ones keep the defaults."""
        prefix = f"SGDE_{service.upper()}_"
        env = os.environ.get
        given: dict[str, Any] = {}
        for name, convert in (
            ("workers", int),
            ("max_streams", int),
            ("max_streams_per_caller", int),
            ("stream_idle_seconds", float),
            ("max_rpc_seconds", float),
        ):
            value = env(prefix + name.upper())
            if value:
                try:
                    given[name] = convert(value)
                except ValueError:
                    raise ValueError(f"{prefix}{name.upper()}: {value!r} is not a number") from None
        variable = prefix + "MAX_RPC_SECONDS_BY_METHOD"
        given["rpc_seconds"] = {**UNLIMITED_METHODS, **_parse_method_seconds(env(variable) or "", variable)}
        try:
            return cls(**given)
        except ValueError as e:
            raise ValueError(f"{prefix}*: {e}") from None

    @property
    def stream_cap(self) -> int:
        return self.max_streams or max(1, self.workers * 3 // 4)

    @property
    def caller_cap(self) -> int:
        return min(self.max_streams_per_caller or max(1, self.workers // 2), self.stream_cap)

    def time_limit(self, method: str) -> float | None:
        """Seconds a call of `method` (its name without the service) may take; None: no limit."""
        seconds = self.rpc_seconds.get(method, self.max_rpc_seconds)
        return seconds or None

    def server_options(self) -> list[tuple[str, int]]:
        """gRPC channel arguments for the server (keepalive and connection lifetimes)."""
        ms = [
            ("grpc.keepalive_time_ms", self.keepalive_seconds),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_seconds),
            ("grpc.max_connection_idle_ms", self.connection_idle_seconds),
            ("grpc.max_connection_age_ms", self.connection_age_seconds),
        ]
        # No max_connection_age_grace_ms: it would cut long streams (WatchJob) a while after the age is reached.
        options = [(name, int(seconds * 1000)) for name, seconds in ms if seconds > 0]
        # Keep pinging a connection whose only call is a quiet stream (a watch waiting for events, an idle upload):
        # by default gRPC stops after two pings without data, and a vanished peer would go unnoticed.
        return [*options, ("grpc.http2.max_pings_without_data", 0)]


def caller_of(context: grpc.ServicerContext) -> str:
    """Who a call comes from, as far as the server can trust before the servicer runs: the verified certificate's
    common name and the peer's IP address (without the port: one client opens many connections)."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    host = rest.rsplit(":", 1)[0] if kind in ("ipv4", "ipv6") else peer
    return f"{peer_common_name(context) or '?'}@{host}"


class _Call:
    """One call in progress, as the watchdog sees it."""

    __slots__ = ("method", "caller", "context", "started", "limit", "streaming", "waiting_since", "cancelled")

    def __init__(self, method: str, caller: str, context, limit: float | None, streaming: bool):
        self.method = method
        self.caller = caller
        self.context = context
        self.started = time.monotonic()
        self.limit = limit
        self.streaming = streaming
        # Since when the call has been waiting on the client: for its next message, or for it to take the last
        # response. None while the server itself is working.
        self.waiting_since: float | None = None
        self.cancelled: str | None = None  # why the watchdog cancelled it

    @contextmanager
    def waiting_on_client(self) -> Iterator[None]:
        self.waiting_since = time.monotonic()
        try:
            yield
        finally:
            self.waiting_since = None

    def over_time(self, now: float) -> bool:
        return self.limit is not None and now - self.started > self.limit


class _WatchedRequests:
    """A client stream's request iterator that tells its call when it waits for the client."""

    def __init__(self, requests: Iterator[Any], call: _Call):
        self._requests = requests
        self._call = call

    def __iter__(self) -> _WatchedRequests:
        return self

    def __next__(self) -> Any:
        with self._call.waiting_on_client():
            return next(self._requests)


class LimitingInterceptor(grpc.ServerInterceptor):
    """Enforces `limits` on every call of a server (see the module docstring). `on_exhausted(True)` is called when
    the last free worker is taken, `on_exhausted(False)` when one is free again. Call `close()` when the server
    stops (it ends the watchdog)."""

    def __init__(self, service: str, limits: ServerLimits):
        self.service = service
        self.limits = limits
        self.on_exhausted: Callable[[bool], None] = lambda exhausted: None
        self._lock = threading.Lock()
        self._calls: set[_Call] = set()
        self._streams_by_caller: dict[str, int] = {}
        self._streams = 0
        self._exhausted = False
        self._closed = threading.Event()
        idle = limits.stream_idle_seconds or 60.0
        self._tick = min(1.0, max(0.05, idle / 10))
        threading.Thread(target=self._watch, daemon=True, name=f"{service}-limits").start()

    def close(self) -> None:
        self._closed.set()

    # -- what tests and operators may read -----------------------------------------------------------------------

    @property
    def busy_workers(self) -> int:
        with self._lock:
            return len(self._calls)

    @property
    def open_streams(self) -> int:
        with self._lock:
            return self._streams

    # -- admission ----------------------------------------------------------------------------------------------

    @contextmanager
    def _running(self, method: str, context, streaming: bool) -> Iterator[_Call]:
        """Admits a call (or raises why not), and releases its place when its handler ends. A handler the watchdog
        cancelled fails in its next read or send: it ends as CANCELLED, saying why, not as a crash."""
        call = self._admit(method, context, streaming)
        try:
            yield call
        except Exception:
            if call.cancelled:
                raise errors.SgdeError(f"cancelled by the server: {call.cancelled}", status="CANCELLED") from None
            raise
        finally:
            self._release(call)

    def _admit(self, method: str, context, streaming: bool) -> _Call:
        caller = caller_of(context)
        call = _Call(method, caller, context, self.limits.time_limit(method), streaming)
        with self._lock:
            if streaming:
                held = self._streams_by_caller.get(caller, 0)
                if held >= self.limits.caller_cap:
                    raise errors.Exhausted(
                        f"you have {held} streaming calls open on the {self.service}, the most one caller may have; "
                        "finish or cancel one, or retry later"
                    )
                if self._streams >= self.limits.stream_cap:
                    raise errors.Unavailable(
                        f"the {self.service} is serving as many streaming calls as it takes "
                        f"({self.limits.stream_cap}); retry later"
                    )
                self._streams_by_caller[caller] = held + 1
                self._streams += 1
            self._calls.add(call)
            changed = self._update_exhausted()
        if changed:
            self._report_exhausted()
        return call

    def _release(self, call: _Call) -> None:
        with self._lock:
            self._calls.discard(call)
            if call.streaming:
                self._streams -= 1
                left = self._streams_by_caller.pop(call.caller) - 1
                if left:
                    self._streams_by_caller[call.caller] = left
            changed = self._update_exhausted()
        if changed:
            self._report_exhausted()

    def _update_exhausted(self) -> bool:
        """Under the lock: whether every worker is busy now; True when that changed."""
        exhausted = len(self._calls) >= self.limits.workers
        changed = exhausted != self._exhausted
        self._exhausted = exhausted
        return changed

    def _report_exhausted(self) -> None:
        # Reports from two threads may cross: each reads the latest state, so the last one says what holds.
        with self._lock:
            exhausted = self._exhausted
        if exhausted:
            log.warning("no worker free", extra={"service": self.service, "workers": self.limits.workers})
        else:
            log.info("a worker is free again", extra={"service": self.service})
        self.on_exhausted(exhausted)

    # -- the watchdog -------------------------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._closed.wait(self._tick):
            now = time.monotonic()
            idle = self.limits.stream_idle_seconds
            with self._lock:
                calls = list(self._calls)
            for call in calls:
                waiting = call.waiting_since
                if call.cancelled:
                    continue
                if call.over_time(now):
                    reason = f"ran past the limit of {call.limit:g} s per call"
                elif call.streaming and idle and waiting is not None and now - waiting > idle:
                    reason = f"the client sent or took nothing for {idle:g} s"
                else:
                    continue
                log.warning(
                    "call cancelled",
                    extra={"service": self.service, "method": call.method, "caller": call.caller, "reason": reason},
                )
                call.cancelled = reason
                # The handler ends once gRPC wakes it (a cancelled call raises in its reads and sends), and releases
                # its worker then.
                call.context.cancel()

    # -- wrapping the handlers ----------------------------------------------------------------------------------

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if handler.request_streaming and handler.response_streaming:
            return handler._replace(stream_stream=self._stream_stream(handler.stream_stream, method))
        if handler.request_streaming:
            return handler._replace(stream_unary=self._stream_unary(handler.stream_unary, method))
        if handler.response_streaming:
            return handler._replace(unary_stream=self._unary_stream(handler.unary_stream, method))
        return handler._replace(unary_unary=self._unary_unary(handler.unary_unary, method))

    def _unary_unary(self, behaviour: Callable, method: str) -> Callable:
        def call(request, context):
            with self._running(method, context, streaming=False):
                return behaviour(request, context)

        return call

    def _stream_unary(self, behaviour: Callable, method: str) -> Callable:
        def call(requests, context):
            with self._running(method, context, streaming=True) as watched:
                return behaviour(_WatchedRequests(requests, watched), context)

        return call

    def _unary_stream(self, behaviour: Callable, method: str) -> Callable:
        def call(request, context):
            with self._running(method, context, streaming=True) as watched:
                yield from self._watched_responses(behaviour(request, context), watched)

        return call

    def _stream_stream(self, behaviour: Callable, method: str) -> Callable:
        def call(requests, context):
            with self._running(method, context, streaming=True) as watched:
                yield from self._watched_responses(behaviour(_WatchedRequests(requests, watched), context), watched)

        return call

    @staticmethod
    def _watched_responses(responses: Iterator[Any], call: _Call) -> Iterator[Any]:
        """Yields `responses`, timing how long the client takes to take each (gRPC asks for the next response
        once the last one is sent), and ends a stream that has run past its time limit at its next message."""
        for response in responses:
            if call.over_time(time.monotonic()):
                raise errors.SgdeError(
                    f"this call ran past the server's limit of {call.limit:g} s per call; "
                    "ask for the rest in a new call",
                    status="DEADLINE_EXCEEDED",
                )
            with call.waiting_on_client():
                yield response
