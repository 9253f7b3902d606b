"""Errors on the wire: an SgdeError becomes a `grpc.Status` (code, message, google.rpc BadRequest field violations,
and a google.rpc RetryInfo when it says when to retry), and a failed call becomes the SgdeError of its code again,
so an error that crosses services keeps its meaning."""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from libsgde.errors import SgdeError, from_status


def to_status(error: SgdeError) -> grpc.Status:
    """The rich status a server aborts a call with."""
    detail = status_pb2.Status(code=error.code.value[0], message=error.message)
    if error.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        detail.details.append(packed)
    if error.retry_after is not None:
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=math.ceil(error.retry_after)))
        packed = any_pb2.Any()
        packed.Pack(retry)
        detail.details.append(packed)
    return rpc_status.to_status(detail)


def _details(error: grpc.RpcError) -> list[any_pb2.Any]:
    try:
        status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    except ValueError:  # a status whose details disagree with its code: keep the code and message
        status = None
    return list(status.details) if status else []


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The BadRequest field violations carried by a failed call, if any."""
    out: list[tuple[str, str]] = []
    for detail in _details(error):
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.extend((v.field, v.description) for v in bad.field_violations)
    return out


def retry_after(error: grpc.RpcError) -> float | None:
    """The seconds a failed call's RetryInfo says to wait before trying again, or None."""
    for detail in _details(error):
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            return retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return None


def from_rpc_error(error: grpc.RpcError) -> SgdeError:
    """The SgdeError a failed call stands for: its class from the status code, the server's message and
    violations (`remote` is set: str() starts with the status name)."""
    code = error.code() if hasattr(error, "code") else None
    message = error.details() if hasattr(error, "details") else str(error)
    return from_status(
        code.name if code is not None else "UNKNOWN",
        message or "",
        field_violations(error),
        retry_after=retry_after(error),
    )
