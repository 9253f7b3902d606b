"""Loading a training run's data file, and saying what does not fit its schema: the same words from the trainer
(services/trainer/sources.py) and from a local run (libsgde.io.training.train_file).

Errors are FieldErrors whose field is the schema column concerned ("data_schema.tabular.columns[2]") or "dataset",
and whose description never repeats a value of the data, so that an error (which the trainer keeps in its job
records) carries none. For data the caller may train on but not read ("sealed": a silo's own files) they say even
less: no line, no row (services/trainer/sources.py has the why).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from libsgde.errors import FieldError
from libsgde.io.encoding import DataError, EncodedData
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

__all__ = ["DataMismatch", "describe_data_error", "load_training_data"]


class DataMismatch(FieldError):
    """The dataset does not fit the declared schema, described as much as the caller may be told."""


def load_training_data(
    path: Path,
    schema: pb.DataSchema,
    *,
    max_bytes: int | None = None,
    max_encoded_bytes: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EncodedData:
    """The caller's own data file encoded against `schema` (nothing coerced); DataMismatch when it does not fit,
    FieldError("dataset") when it cannot be read, LoadCancelled when `should_stop` answers True."""
    from libsgde.io.datasets import DEFAULT_MAX_BYTES, load_dataset  # numpy and the readers: loaded when used

    path = Path(path)
    if not path.is_file():
        raise FieldError("dataset", f"no file {str(path)[:200]!r}: name the data file to train on")
    try:
        return load_dataset(
            path,
            schema,
            max_bytes=max_bytes or DEFAULT_MAX_BYTES,
            max_encoded_bytes=max_encoded_bytes,
            should_stop=should_stop,
        )
    except DataError as e:
        raise DataMismatch(*describe_data_error(e, schema)) from None
    except OSError as e:
        raise FieldError("dataset", f"cannot read {path.name}: {e.strerror or type(e).__name__}") from None


# A DataError detail that starts with a value of the data ("'abc' is not a number", "label 7 is outside ...").
_VALUE_FIRST = re.compile(r"^(['\"]|b['\"]|label |-?[0-9])")


def describe_data_error(e: DataError, schema: pb.DataSchema, sealed: bool = False) -> tuple[str, str]:
    """(field, description) for a dataset that does not fit its schema, without echoing a value of the data. The
    field is the schema column concerned ("data_schema.tabular.columns[2]") or "dataset". For the data's owner:
    where (file, line, column) and what to change. For a sealed source: the column and the structural problem,
    never a line or row (module docstring)."""
    field, declared = "dataset", ""
    if e.column is not None and schema.WhichOneof("kind") == "tabular":
        for i, col in enumerate(schema.tabular.columns):
            if col.name == e.column:
                field, declared = f"data_schema.tabular.columns[{i}]", _declared(col)
                break
    if sealed:
        # Only a declared column is named: an undeclared "column" may be a data row read as a header.
        column = f" (column {e.column!r})" if field != "dataset" else ""
        detail = "" if _VALUE_FIRST.match(e.detail) else f": {e.detail}"
        return field, (
            f"the data does not fit the declared schema{column}{detail}; the trainer says no more about data you "
            "may train on but not read: ask the silo's operator, who can see its log"
        )
    message = str(e)
    if not _VALUE_FIRST.match(e.detail):
        return field, message
    location = message[: -len(e.detail)].rstrip(": ") if message.endswith(e.detail) else ""
    what = f"a value does not fit the declared column ({declared})" if declared else "a value does not fit the schema"
    return field, (
        f"{location}: " if location else ""
    ) + what + "; the value is not repeated here, so that the data stays in the silo"


def _declared(col: pb.Column) -> str:
    if col.type == pb.COLUMN_TYPE_CATEGORICAL:
        shown = ", ".join(repr(c) for c in col.categories[:10]) + (", ..." if len(col.categories) > 10 else "")
        return f"one of {shown}" + (" or missing" if col.nullable else "")
    kind = "an integer" if col.type == pb.COLUMN_TYPE_INTEGER else "a finite number"
    missing = ", or missing" if col.nullable else ", no missing values"
    return f"{kind} in [{col.lower:g}, {col.upper:g}]{missing}"
