"""One error hierarchy for the whole project: each class is one gRPC status, so an error keeps its meaning (code,
message, field violations) wherever it is raised, and across services.

    SgdeError                   the root; `status` names its gRPC status code (UNKNOWN unless a subclass says)
      FieldError                INVALID_ARGUMENT, with field violations: (dotted field path, what to change)
      FailedPrecondition        FAILED_PRECONDITION (the request is fine; the state of things is not)
      NotFound                  NOT_FOUND (also what a caller who may not see a thing is told)
      PermissionDenied          PERMISSION_DENIED
      Unauthenticated           UNAUTHENTICATED
      Unavailable               UNAVAILABLE (try again later)
      Conflict                  ALREADY_EXISTS
      Exhausted                 RESOURCE_EXHAUSTED (a limit or a lockout; the message says when to retry)
      DataLoss                  DATA_LOSS (stored bytes are missing or do not verify)
        VerificationError       bytes that do not match their sha256 or their owner's signature
      Internal                  INTERNAL (a bug or a broken peer; the server log has more)

This module imports nothing (the pure layers raise these errors too). `libsgde.wire.status` turns an error into a
`grpc.Status` with `google.rpc` details and back, which is how servers answer and how clients read the answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple


class FieldViolation(NamedTuple):
    """One bad field: a dotted path such as ``spec.target_epsilon`` and a description saying what to change."""

    field: str
    description: str


class SgdeError(Exception):
    """An expected failure, with a message a person can act on.

    `remote` is True for an error read back from another service's answer; str() then starts with the status name,
    as a person reading a command's output expects ("NOT_FOUND: models/alice/x not found"). `retry_after` (seconds)
    says when trying again may succeed (a busy server, a lockout); it travels as a google.rpc.RetryInfo."""

    status: str = "UNKNOWN"  # an instance of the root class may carry a status without a class of its own

    def __init__(
        self,
        message: str,
        violations: Iterable[tuple[str, str]] = (),
        *,
        status: str | None = None,
        remote: bool = False,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.violations = [FieldViolation(*v) for v in violations]
        if status is not None and status != type(self).status:
            self.status = status
        self.remote = remote
        self.retry_after = retry_after

    @property
    def code(self) -> Any:
        """The status as a `grpc.StatusCode` (imported only when asked for)."""
        import grpc

        return grpc.StatusCode[self.status]

    def __str__(self) -> str:
        return f"{self.status}: {self.message}" if self.remote else self.message


class FieldError(SgdeError, ValueError):
    """INVALID_ARGUMENT naming the field at fault: ``FieldError("spec.epochs", "must be between 1 and 100000")``.

    `field` and `description` are those of the first violation; `many` builds one error from several."""

    status = "INVALID_ARGUMENT"

    def __init__(self, field: str, description: str, *, message: str | None = None):
        super().__init__(
            message if message is not None else (f"{field}: {description}" if field else description),
            [(field, description)] if field or description else [],
        )
        self.field = field
        self.description = description

    @classmethod
    def many(cls, violations: list[tuple[str, str]], *, message: str | None = None) -> FieldError:
        """One error of several violations (none: a message alone); the message joins them unless given."""
        first = violations[0] if violations else ("", "")
        error = cls(*first, message=message if message is not None else "; ".join(f"{f}: {d}" for f, d in violations))
        error.violations = [FieldViolation(*v) for v in violations]
        return error


class FailedPrecondition(SgdeError):
    status = "FAILED_PRECONDITION"


class NotFound(SgdeError):
    status = "NOT_FOUND"

    @classmethod
    def hidden(cls, what: str) -> NotFound:
        """What a caller hears about a thing that does not exist or that it may not see (the same words)."""
        return cls(f"{what} not found (or you may not see it)")


class PermissionDenied(SgdeError):
    status = "PERMISSION_DENIED"


class Unauthenticated(SgdeError):
    status = "UNAUTHENTICATED"


class Unavailable(SgdeError):
    status = "UNAVAILABLE"


class Conflict(SgdeError):
    status = "ALREADY_EXISTS"


class Exhausted(SgdeError):
    status = "RESOURCE_EXHAUSTED"


class DataLoss(SgdeError):
    status = "DATA_LOSS"


class Internal(SgdeError):
    status = "INTERNAL"


class VerificationError(DataLoss):
    """Downloaded or streamed bytes that do not match their sha256 or their owner's signature."""


BY_STATUS: dict[str, type[SgdeError]] = {
    cls.status: cls
    for cls in (
        FieldError,
        FailedPrecondition,
        NotFound,
        PermissionDenied,
        Unauthenticated,
        Unavailable,
        Conflict,
        Exhausted,
        DataLoss,
        Internal,
    )
}


def from_status(
    status: str,
    message: str,
    violations: Iterable[tuple[str, str]] = (),
    *,
    remote: bool = True,
    retry_after: float | None = None,
) -> SgdeError:
    """The error of this status name, as one of the classes above where one fits (the root class otherwise)."""
    violations = list(violations)
    cls = BY_STATUS.get(status)
    error: SgdeError
    if cls is FieldError:
        error = FieldError.many(violations, message=message)
    elif cls is not None:
        error = cls(message, violations)
    else:
        error = SgdeError(message, violations, status=status)
    error.remote = remote
    error.retry_after = retry_after
    return error
