"""One error hierarchy: each class is one gRPC status, and an error survives the wire (code, message, violations)."""

from __future__ import annotations

import grpc
import pytest

import libsgde
from libsgde import errors
from libsgde.wire.status import field_violations, from_rpc_error, to_status


class _Answer(grpc.RpcError):
    """A failed call as the client sees it, made from the status a server aborts with."""

    def __init__(self, status: grpc.Status):
        self._status = status

    def code(self):
        return self._status.code

    def details(self):
        return self._status.details

    def trailing_metadata(self):
        return self._status.trailing_metadata


def across_the_wire(error: errors.SgdeError) -> errors.SgdeError:
    return from_rpc_error(_Answer(to_status(error)))


@pytest.mark.parametrize(
    "error",
    [
        errors.FieldError.many([("spec.epochs", "must be >= 1"), ("dataset", "not found")]),
        errors.NotFound.hidden("models/alice/x"),
        errors.PermissionDenied("only the owner may"),
        errors.Unauthenticated("run `sgde login`"),
        errors.Unavailable("the registry is down"),
        errors.Conflict("username 'alice' is taken"),
        errors.Exhausted("try again in 30 s"),
        errors.FailedPrecondition("publish it first"),
        errors.DataLoss("the blob is missing"),
        errors.Internal("a bug"),
    ],
)
def test_an_error_keeps_its_class_message_and_violations_across_the_wire(error):
    back = across_the_wire(error)
    assert type(back) is type(error) and back.status == error.status and back.code == error.code
    assert back.message == error.message and back.violations == error.violations
    assert back.remote and str(back) == f"{error.status}: {error.message}"
    # ...and across a second service, which re-raises what the first answered (no string surgery).
    again = across_the_wire(back)
    assert type(again) is type(error) and again.message == error.message and again.violations == error.violations


def test_field_violations_and_the_first_field():
    error = errors.FieldError.many([("a", "x"), ("b", "y")])
    assert (error.field, error.description) == ("a", "x") and str(error) == "a: x; b: y"
    back = across_the_wire(error)
    assert isinstance(back, errors.FieldError) and isinstance(back, ValueError)
    assert (back.field, back.description) == ("a", "x")
    assert field_violations(_Answer(to_status(error))) == [("a", "x"), ("b", "y")]


def test_a_status_without_a_class_of_its_own_keeps_its_code():
    back = errors.from_status("CANCELLED", "the caller went away")
    assert type(back) is errors.SgdeError and back.code == grpc.StatusCode.CANCELLED


def test_domain_errors_are_in_the_hierarchy():
    from libsgde.io.artifact import ArtifactError
    from libsgde.io.formats import FormatUnavailable
    from libsgde.io.sampling import SamplingError
    from libsgde.io.schema import SchemaError
    from libsgde.ml.architectures import ConfigError
    from libsgde.ml.privacy.accounting import PrivacyError

    for cls in (ArtifactError, SamplingError, SchemaError, ConfigError, PrivacyError):
        assert issubclass(cls, errors.FieldError) and cls.status == "INVALID_ARGUMENT"
    assert issubclass(FormatUnavailable, errors.FieldError) and FormatUnavailable.status == "FAILED_PRECONDITION"
    assert libsgde.NotFound is errors.NotFound and libsgde.SgdeError is errors.SgdeError


def test_importing_the_errors_loads_no_grpc():
    import subprocess
    import sys

    code = "import sys, libsgde.errors as e; e.NotFound('x'); print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
