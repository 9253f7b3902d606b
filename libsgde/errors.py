"""gRPC errors a person can act on: status codes with google.rpc.Status details (BadRequest field violations).

Servicers raise `ApiError`; the serving layer turns it into a rich status. Clients get the message back through
`describe_rpc_error`.
"""
from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


class ApiError(Exception):
    """An expected failure of a call: a status code, a message and optional field violations."""

    def __init__(self, code: grpc.StatusCode, message: str, violations: Iterable[tuple[str, str]] = ()):
        super().__init__(message)
        self.code = code
        self.message = message
        self.violations = list(violations)

    def to_status(self) -> grpc.Status:
        detail = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.violations:
            bad = error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in self.violations])
            packed = any_pb2.Any()
            packed.Pack(bad)
            detail.details.append(packed)
        return rpc_status.to_status(detail)


def invalid(field: str, description: str) -> ApiError:
    """INVALID_ARGUMENT naming one field."""
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {description}", [(field, description)])


def invalid_many(violations: list[tuple[str, str]]) -> ApiError:
    message = "; ".join(f"{f}: {d}" for f, d in violations)
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message, violations)


def not_found(what: str) -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, f"{what} not found (or you may not see it)")


def unauthenticated(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, message)


def permission_denied(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.PERMISSION_DENIED, message)


def unavailable(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAVAILABLE, message)


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The BadRequest field violations carried by a failed call, if any."""
    status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    out: list[tuple[str, str]] = []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.extend((v.field, v.description) for v in bad.field_violations)
    return out


def describe_rpc_error(error: grpc.RpcError) -> str:
    """One line for a person: the status name and the server's message."""
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    name = code.name if code is not None else "ERROR"
    return f"{name}: {details}"


assert code_pb2.INVALID_ARGUMENT == grpc.StatusCode.INVALID_ARGUMENT.value[0]
