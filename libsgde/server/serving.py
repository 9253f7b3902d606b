"""What every SGDE server shares: mutual TLS, health, reflection, message limits, structured logs, Prometheus
metrics, SgdeError -> rich status, and a graceful stop on SIGTERM.

Health has two faces. The API port (mutual TLS) serves `grpc.health.v1` beside the API, for clients and balancers.
Kubernetes' gRPC probes cannot speak TLS, so a server may also open a plaintext health port that serves the same
health servicer and nothing else (no API, no reflection). Its overall status ("") and the API's names say whether
the server can serve (its dependencies are checked every few seconds: readiness); the `liveness` name says only that
the process answers, so that a dead dependency takes pods out of the Service without restarting them all. The
status is also NOT_SERVING while every worker is busy (`limits.py` counts them): the probe port has workers of its
own, so it can say so while the API port cannot answer.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram, start_http_server

from libsgde.errors import SgdeError
from libsgde.server.limits import LimitingInterceptor, ServerLimits
from libsgde.wire.limits import MAX_MESSAGE_BYTES
from libsgde.wire.status import to_status

log = logging.getLogger("sgde")


RPC_TOTAL = Counter("sgde_rpc_total", "Finished RPCs", ["service", "method", "code"])
RPC_SECONDS = Histogram(
    "sgde_rpc_seconds",
    "RPC latency in seconds",
    ["service", "method"],
    buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2, 10, 60, 600),
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    _skip = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in self._skip})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _peer_cn(context: grpc.ServicerContext) -> str | None:
    names = (context.auth_context() or {}).get("x509_common_name")
    return names[0].decode() if names else None


class _ObservingInterceptor(grpc.ServerInterceptor):
    """Logs each call, counts it, times it, and turns SgdeError (or a crash) into a proper status."""

    def __init__(self, service: str):
        self.service = service

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        full = handler_call_details.method
        wrap = self._wrap_stream if handler.response_streaming else self._wrap_unary
        kind = (
            ("stream" if handler.request_streaming else "unary")
            + "_"
            + ("stream" if handler.response_streaming else "unary")
        )
        behaviour = getattr(handler, f"{kind}")
        return handler._replace(**{kind: wrap(behaviour, method, full)})

    def _finish(self, method: str, full: str, context, started: float, error: BaseException | None) -> None:
        code = context.code() if hasattr(context, "code") else None
        code_name = code.name if isinstance(code, grpc.StatusCode) else "OK"
        if isinstance(error, SgdeError):
            code_name = error.status
        elif isinstance(error, _ClientGone):
            code_name = "CANCELLED"
        elif error is not None and code is None:
            code_name = "INTERNAL"
        seconds = time.perf_counter() - started
        RPC_TOTAL.labels(self.service, method, code_name).inc()
        RPC_SECONDS.labels(self.service, method).observe(seconds)
        level = logging.ERROR if code_name in ("INTERNAL", "UNKNOWN") else logging.INFO
        log.log(
            level,
            "rpc",
            extra={
                "service": self.service,
                "method": full,
                "code": code_name,
                "ms": round(seconds * 1000, 2),
                "peer": _peer_cn(context),
                "detail": str(error) if error is not None else None,
            },
        )

    @contextmanager
    def _observed(self, method: str, full: str, context) -> Iterator[None]:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            yield
        except SgdeError as e:
            error = e
            context.abort_with_status(to_status(e))
        except Exception as e:  # an abort() raises a plain Exception too; keep its status
            error = e
            if context.code() is None and not context.is_active():
                # The client went away (an upload aborted, a download dropped): its stream raises here. Nothing to
                # answer, and not a fault of ours worth a traceback that any client could write into the log.
                error = _ClientGone(f"the client went away ({type(e).__name__})")
                context.abort(grpc.StatusCode.CANCELLED, "the client went away")  # ends the call; grpc logs no trace
            if context.code() is None and isinstance(e, OSError) and e.errno in _DISK_FULL:
                log.error("disk full", extra={"method": full, "detail": str(e)})
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "the server's storage is full; nothing was kept: retry later, or tell its operator",
                )
            if context.code() is None:
                log.exception("unhandled error", extra={"method": full})
                context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the details")
            raise
        finally:
            self._finish(method, full, context, started, error)

    def _wrap_unary(self, behaviour: Callable, method: str, full: str) -> Callable:
        def call(request, context):
            with self._observed(method, full, context):
                return behaviour(request, context)

        return call

    def _wrap_stream(self, behaviour: Callable, method: str, full: str) -> Callable:
        def call(request, context) -> Iterator:
            with self._observed(method, full, context):
                yield from behaviour(request, context)

        return call


class _ClientGone(Exception):
    """Recorded (not raised) when a call fails because its client went away."""


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


# The health service name a liveness probe asks for: SERVING from start to stop, whatever the dependencies say.
LIVENESS = "liveness"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class ServerHandle:
    """A running server: stop it, wait for it, or flip its health status."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: list[str]
    # Called when the server stops (background watchers end here).
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    # The plaintext health-only port, 0 when there is none.
    health_port: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)
    # What the readiness status combines: the last dependency check, and whether every worker is busy.
    dependencies_ok: bool = False
    workers_exhausted: bool = False
    limiter: LimitingInterceptor | None = None
    _status_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set_serving(self, serving: bool) -> None:
        """Records the dependencies' state (reachable or not) and publishes the status it makes."""
        with self._status_lock:
            self.dependencies_ok = serving
            self._publish()

    def set_workers_exhausted(self, exhausted: bool) -> None:
        with self._status_lock:
            self.workers_exhausted = exhausted
            self._publish()

    def _publish(self) -> None:
        serving = self.dependencies_ok and not self.workers_exhausted and not self.stopping.is_set()
        status = _SERVING if serving else _NOT_SERVING
        for name in ["", *self.service_names]:
            self.health.set(name, status)

    def stop(self, grace: float = 10.0) -> None:
        self.stopping.set()  # from here on no dependency check may report SERVING again
        self.set_serving(False)
        self.server.stop(grace).wait()
        self.health.set(LIVENESS, _NOT_SERVING)
        for callback in self.on_stop:
            callback()

    def wait(self) -> None:
        self.server.wait_for_termination()


def _host(address: str) -> str:
    """The host part of HOST:PORT ("0.0.0.0", "127.0.0.1", "[::]")."""
    return address.rsplit(":", 1)[0]


def _start_health_server(servicer: health.HealthServicer, address: str) -> tuple[grpc.Server, int]:
    """A plaintext server for the kubelet's probes that registers only `servicer`: the API is not there."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="health"),
        options=[("grpc.max_receive_message_length", 4096), ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=16,
    )
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address} for health probes: is another server using it?")
    server.start()
    return server, port


def watch_health(handle: ServerHandle, check: Callable[[], object], every: float, service: str) -> None:
    """Sets the status from `check()` (raises when a dependency is unreachable) now, then every `every` seconds
    in a thread until the server stops. Logs only the changes."""
    stop = threading.Event()
    state: dict[str, bool | None] = {"ok": None}

    def probe() -> None:
        try:
            check()
            ok, error = True, None
        except Exception as e:  # noqa: BLE001 - any failure to reach a dependency means we cannot serve
            ok, error = False, str(e)
        if stop.is_set() or handle.stopping.is_set():  # stopping: its dependencies may go first; nothing to say
            return
        if ok != state["ok"]:
            if ok:
                log.info("dependencies reachable", extra={"service": service})
            else:
                log.warning("dependency unreachable", extra={"service": service, "error": error})
        state["ok"] = ok
        handle.set_serving(ok)

    def loop() -> None:
        while not stop.wait(every):
            probe()

    probe()
    threading.Thread(target=loop, daemon=True, name=f"{service}-health").start()
    handle.on_stop.append(stop.set)


def start_server(
    *,
    service: str,
    address: str,
    credentials: grpc.ServerCredentials,
    add_servicers: Callable[[grpc.Server], list[str]],
    metrics_port: int = 0,
    metrics_host: str = "127.0.0.1",
    health_port: int = 0,
    health_check: Callable[[], object] | None = None,
    health_every: float = 5.0,
    handle_type: type[ServerHandle] = ServerHandle,
    limits: ServerLimits | None = None,
) -> ServerHandle:
    """Starts a gRPC server on `address` that only speaks mutual TLS.

    `add_servicers(server)` registers the service implementations and returns their full names (for health
    and reflection). `health_port` opens the plaintext health-only port on the same host (0: none).
    `health_check()` raises while a dependency is unreachable: the status is NOT_SERVING until its first success,
    and follows it every `health_every` seconds; without it the server is SERVING once started.
    `handle_type` is the ServerHandle subclass to return. `limits` bound what calls may hold (workers, streams,
    idle and call time, keepalive: see `limits.py`; default `ServerLimits()`).
    """
    limits = limits or ServerLimits()
    limiter = LimitingInterceptor(service, limits)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix=service),
        # The observer is outermost: it logs and counts the calls the limiter refuses too.
        interceptors=[_ObservingInterceptor(service), limiter],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            *limits.server_options(),
        ],
        maximum_concurrent_rpcs=limits.workers * 4,
    )
    names = add_servicers(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    port = server.add_secure_port(address, credentials)
    if port == 0:
        limiter.close()
        raise OSError(f"cannot listen on {address}: is another server using it?")
    handle = handle_type(server, port, health_servicer, names, limiter=limiter)
    limiter.on_exhausted = handle.set_workers_exhausted  # before any call can come: the server starts below
    handle.on_stop.append(limiter.close)
    # The servicer answers SERVING for "" until told otherwise: say NOT_SERVING before any port opens.
    handle.set_serving(False)
    health_servicer.set(LIVENESS, _SERVING)
    server.start()
    if health_port:
        try:
            probe_server, handle.health_port = _start_health_server(health_servicer, f"{_host(address)}:{health_port}")
        except BaseException:
            server.stop(0)
            limiter.close()
            raise
        handle.on_stop.append(lambda: probe_server.stop(0))
    if metrics_port:
        # Plain HTTP, no authentication: on loopback unless the caller opens it (a pod, behind its NetworkPolicy).
        start_http_server(metrics_port, addr=metrics_host)
    if health_check is None:
        handle.set_serving(True)
    else:
        watch_health(handle, health_check, health_every, service)
    log.info(
        "serving",
        extra={
            "service": service,
            "address": address,
            "port": port,
            "metrics_port": metrics_port,
            "metrics_host": metrics_host,
            "health_port": handle.health_port,
        },
    )
    return handle


def stop_on_signal() -> threading.Event:
    """Makes SIGTERM and SIGINT set the returned event instead of killing the process. Call it BEFORE starting
    servers: a signal that arrives while they start (a pod deleted at once, a quick Ctrl-C) then still stops them
    gracefully instead of aborting half-started."""
    done = threading.Event()

    def on_signal(signum, _frame):
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return done


def run_until_signalled(handles: list[ServerHandle], stop: threading.Event, grace: float = 10.0) -> None:
    """Blocks until `stop` (from stop_on_signal) is set, then stops every server gracefully, in order (in-flight
    calls get `grace` seconds)."""
    stop.wait()
    for handle in handles:
        handle.stop(grace)


def serve_until_signalled(start: Callable[[object], ServerHandle], load_config: Callable[[], object]) -> None:
    """A service's `main`: JSON logs at $SGDE_LOG_LEVEL, configuration from the environment, then serve until SIGTERM
    or SIGINT (handled from the first moment, so a signal during start-up still stops gracefully)."""
    setup_logging(os.environ.get("SGDE_LOG_LEVEL", "INFO"))
    stop = stop_on_signal()
    run_until_signalled([start(load_config())], stop)
