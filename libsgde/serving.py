"""What every SGDE server shares: mutual TLS, health, reflection, message limits, structured logs, Prometheus
metrics, ApiError -> rich status, and a graceful stop on SIGTERM."""
from __future__ import annotations

import json
import logging
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

from libsgde.errors import ApiError

log = logging.getLogger("sgde")

# Chunks are at most 1 MiB; a message never needs much more than that.
MAX_MESSAGE_BYTES = 4 << 20

RPC_TOTAL = Counter("sgde_rpc_total", "Finished RPCs", ["service", "method", "code"])
RPC_SECONDS = Histogram("sgde_rpc_seconds", "RPC latency in seconds", ["service", "method"],
                        buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2, 10, 60, 600))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    _skip = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                "msg": record.getMessage()}
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
    """Logs each call, counts it, times it, and turns ApiError (or a crash) into a proper status."""

    def __init__(self, service: str):
        self.service = service

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        full = handler_call_details.method
        wrap = self._wrap_stream if handler.response_streaming else self._wrap_unary
        kind = ("stream" if handler.request_streaming else "unary") + "_" + (
            "stream" if handler.response_streaming else "unary")
        behaviour = getattr(handler, f"{kind}")
        return handler._replace(**{kind: wrap(behaviour, method, full)})

    def _finish(self, method: str, full: str, context, started: float, error: BaseException | None) -> None:
        code = context.code() if hasattr(context, "code") else None
        code_name = code.name if isinstance(code, grpc.StatusCode) else "OK"
        if isinstance(error, ApiError):
            code_name = error.code.name
        elif error is not None and code is None:
            code_name = "INTERNAL"
        seconds = time.perf_counter() - started
        RPC_TOTAL.labels(self.service, method, code_name).inc()
        RPC_SECONDS.labels(self.service, method).observe(seconds)
        level = logging.ERROR if code_name in ("INTERNAL", "UNKNOWN") else logging.INFO
        log.log(level, "rpc", extra={"service": self.service, "method": full, "code": code_name,
                                     "ms": round(seconds * 1000, 2), "peer": _peer_cn(context),
                                     "detail": str(error) if error is not None else None})

    @contextmanager
    def _observed(self, method: str, full: str, context) -> Iterator[None]:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            yield
        except ApiError as e:
            error = e
            context.abort_with_status(e.to_status())
        except Exception as e:  # an abort() raises a plain Exception too; keep its status
            error = e
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


@dataclass
class ServerHandle:
    """A running server: stop it, wait for it, or flip its health status."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: list[str]
    # Called when the server stops (background watchers end here).
    on_stop: list[Callable[[], None]] = field(default_factory=list)

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            self.health.set(name, status)

    def stop(self, grace: float = 10.0) -> None:
        self.set_serving(False)
        self.server.stop(grace).wait()
        for callback in self.on_stop:
            callback()

    def wait(self) -> None:
        self.server.wait_for_termination()


def start_server(*, service: str, address: str, credentials: grpc.ServerCredentials,
                 add_servicers: Callable[[grpc.Server], list[str]], metrics_port: int = 0,
                 max_workers: int = 64) -> ServerHandle:
    """Starts a gRPC server on `address` that only speaks mutual TLS.

    `add_servicers(server)` registers the service implementations and returns their full names (for health
    and reflection).
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=service),
        interceptors=[_ObservingInterceptor(service)],
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=max_workers * 4,
    )
    names = add_servicers(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server)
    port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {address}: is another server using it?")
    server.start()
    if metrics_port:
        start_http_server(metrics_port, addr="127.0.0.1" if address.startswith("127.") else "0.0.0.0")
    handle = ServerHandle(server, port, health_servicer, names)
    handle.set_serving(True)
    log.info("serving", extra={"service": service, "address": address, "port": port, "metrics_port": metrics_port})
    return handle


def run_until_signalled(handles: list[ServerHandle], grace: float = 10.0) -> None:
    """Blocks until SIGTERM or SIGINT, then stops every server gracefully (in-flight calls get `grace` seconds)."""
    done = threading.Event()

    def on_signal(signum, _frame):
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    for handle in handles:
        handle.stop(grace)
