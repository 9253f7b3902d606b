"""DataSchema: what a dataset holds, declared by its owner (PUBLIC bounds and categories, never statistics of the data).

This module validates schemas and converts them to and from JSON dicts. Every check raises `SchemaError`, which names
the offending field as a dotted path (``tabular.columns[2].upper``) and says what to change.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import json_format

from libsgde.errors import FieldError
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

MAX_COLUMNS = 4096
MAX_COLUMN_NAME = 128
MAX_CATEGORIES = 10_000
MAX_POINT_MASSES = 32
MAX_NA_TOKENS = 64
MAX_NA_TOKEN = 64
MODE_SUFFIX = ":mode"  # a numeric column's mode block is named column + MODE_SUFFIX (libsgde.io.encoding)
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_VALUES = 2**24
IMAGE_CHANNELS = (1, 3, 4)


class SchemaError(FieldError):
    """An invalid schema. `field` is a dotted path to the offending field; `description` says what is wrong."""


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def data_kind(schema: pb.DataSchema) -> pb.DataKind:
    """The kind of data a schema describes (DATA_KIND_UNSPECIFIED if its `kind` is unset)."""
    which = schema.WhichOneof("kind")
    return {"tabular": pb.DATA_KIND_TABULAR, "image": pb.DATA_KIND_IMAGE}.get(which, pb.DATA_KIND_UNSPECIFIED)


def validate_schema(schema: pb.DataSchema) -> None:
    """Raise `SchemaError` unless `schema` is complete and consistent."""
    which = schema.WhichOneof("kind")
    if which == "tabular":
        _validate_tabular(schema.tabular)
    elif which == "image":
        _validate_image(schema.image)
    else:
        raise SchemaError("kind", "set either `tabular` or `image`")


def _validate_tabular(t: pb.TabularSchema) -> None:
    if not 1 <= len(t.columns) <= MAX_COLUMNS:
        raise SchemaError("tabular.columns", f"declare between 1 and {MAX_COLUMNS} columns (got {len(t.columns)})")
    seen: dict[str, int] = {}
    for i, col in enumerate(t.columns):
        at = f"tabular.columns[{i}]"
        if not 1 <= len(col.name) <= MAX_COLUMN_NAME:
            raise SchemaError(f"{at}.name", f"give every column a name of 1 to {MAX_COLUMN_NAME} characters")
        if col.name in seen:
            raise SchemaError(f"{at}.name", f"column name {col.name!r} is already used by column {seen[col.name]}")
        seen[col.name] = i
        if col.type in (pb.COLUMN_TYPE_CONTINUOUS, pb.COLUMN_TYPE_INTEGER):
            _validate_bounds(col, at)
            _validate_point_masses(col, at)
        elif col.type == pb.COLUMN_TYPE_CATEGORICAL:
            _validate_categories(col, at)
            if col.point_masses:
                raise SchemaError(f"{at}.point_masses", "only continuous and integer columns have point masses")
        else:
            raise SchemaError(
                f"{at}.type", "set the type: COLUMN_TYPE_CONTINUOUS, COLUMN_TYPE_INTEGER or COLUMN_TYPE_CATEGORICAL"
            )
    for i, col in enumerate(t.columns):
        base = col.name[: -len(MODE_SUFFIX)] if col.name.endswith(MODE_SUFFIX) else None
        other = t.columns[seen[base]] if base in seen else None
        if other is not None and other.type != pb.COLUMN_TYPE_CATEGORICAL and (other.nullable or other.point_masses):
            raise SchemaError(
                f"tabular.columns[{i}].name",
                f"{col.name!r} is the name of column {base!r}'s mode block (its point masses and missing values): "
                "rename the column",
            )
    if t.label_column:
        label_index = seen.get(t.label_column)
        if label_index is None:
            raise SchemaError("tabular.label_column", f"no column is named {_short(t.label_column)}")
        if t.columns[label_index].type != pb.COLUMN_TYPE_CATEGORICAL:
            raise SchemaError("tabular.label_column", f"the label column {t.label_column!r} must be categorical")
        if t.columns[label_index].nullable:
            raise SchemaError(
                f"tabular.columns[{label_index}].nullable",
                "the label column cannot be nullable: every row needs a class; drop the rows without one",
            )
    _validate_csv(t)


def _validate_bounds(col: pb.Column, at: str) -> None:
    for side in ("lower", "upper"):
        v = getattr(col, side)
        if not math.isfinite(v):
            raise SchemaError(f"{at}.{side}", f"must be a finite number (got {v})")
        if col.type == pb.COLUMN_TYPE_INTEGER and not float(v).is_integer():
            raise SchemaError(f"{at}.{side}", f"an integer column needs integer bounds (got {v})")
    if not col.lower < col.upper:
        raise SchemaError(
            f"{at}.upper",
            f"must be greater than lower ({col.lower}); declare the public range "
            "the values can take, not one taken from the data",
        )
    if col.categories:
        raise SchemaError(f"{at}.categories", "only categorical columns have categories")


def _validate_point_masses(col: pb.Column, at: str) -> None:
    masses = list(col.point_masses)
    if len(masses) > MAX_POINT_MASSES:
        raise SchemaError(f"{at}.point_masses", f"declare at most {MAX_POINT_MASSES} point masses (got {len(masses)})")
    for j, m in enumerate(masses):
        where = f"{at}.point_masses[{j}]"
        if not math.isfinite(m):
            raise SchemaError(where, f"must be a finite number (got {m})")
        if col.type == pb.COLUMN_TYPE_INTEGER and not float(m).is_integer():
            raise SchemaError(where, f"an integer column's point masses are integers (got {m})")
        if not col.lower <= m <= col.upper:
            raise SchemaError(where, f"{m:g} is outside the column's bounds [{col.lower:g}, {col.upper:g}]")
        if j and not masses[j - 1] < m:
            raise SchemaError(where, f"point masses must be distinct and ascending ({masses[j - 1]:g}, then {m:g})")


def _validate_csv(t: pb.TabularSchema) -> None:
    csv = t.csv
    if len(csv.delimiter) > 1 or csv.delimiter in ('"', "\r", "\n"):
        raise SchemaError(
            "tabular.csv.delimiter", f"must be one character other than a quote or a line break (got {csv.delimiter!r})"
        )
    if len(csv.na_tokens) > MAX_NA_TOKENS:
        raise SchemaError("tabular.csv.na_tokens", f"declare at most {MAX_NA_TOKENS} tokens (got {len(csv.na_tokens)})")
    categories = {c: col.name for col in t.columns if col.type == pb.COLUMN_TYPE_CATEGORICAL for c in col.categories}
    seen: set[str] = set()
    for j, token in enumerate(csv.na_tokens):
        where = f"tabular.csv.na_tokens[{j}]"
        if not token.strip() or token != token.strip() or len(token) > MAX_NA_TOKEN:
            raise SchemaError(
                where,
                f"must be 1 to {MAX_NA_TOKEN} characters with no spaces around them (got {_short(token)}); "
                "a blank field is always missing",
            )
        if any(c in token for c in '"\r\n') or (csv.delimiter or ",") in token:
            raise SchemaError(where, f"must not hold a quote, a line break or the delimiter (got {_short(token)})")
        if token in seen:
            raise SchemaError(where, f"{_short(token)} appears more than once")
        if token in categories:
            raise SchemaError(
                where,
                f"{_short(token)} is a category of column {categories[token]!r}: a value cannot be both; remove "
                "one of them",
            )
        seen.add(token)


def _validate_categories(col: pb.Column, at: str) -> None:
    if not 1 <= len(col.categories) <= MAX_CATEGORIES:
        raise SchemaError(
            f"{at}.categories",
            f"a categorical column needs 1 to {MAX_CATEGORIES} categories (got {len(col.categories)})",
        )
    _check_unique_names(col.categories, f"{at}.categories")
    if col.lower != 0 or col.upper != 0:
        raise SchemaError(f"{at}.lower", "a categorical column has no bounds; leave lower and upper at 0")


def _validate_image(im: pb.ImageSchema) -> None:
    for side in ("height", "width"):
        v = getattr(im, side)
        if not 1 <= v <= MAX_IMAGE_SIDE:
            raise SchemaError(f"image.{side}", f"must be between 1 and {MAX_IMAGE_SIDE} pixels (got {v})")
    if im.channels not in IMAGE_CHANNELS:
        raise SchemaError("image.channels", f"must be 1 (grey), 3 (RGB) or 4 (RGBA) (got {im.channels})")
    if not (math.isfinite(im.pixel_max) and im.pixel_max > 0):
        raise SchemaError(
            "image.pixel_max", f"must be a finite number > 0, e.g. 255 for 8-bit images (got {im.pixel_max})"
        )
    _check_unique_names(im.class_names, "image.class_names")
    values = im.height * im.width * im.channels
    if values > MAX_IMAGE_VALUES:
        raise SchemaError("image", f"height * width * channels = {values} is over the limit of {MAX_IMAGE_VALUES}")


def _check_unique_names(names, field: str) -> None:
    seen = set()
    for j, name in enumerate(names):
        if not name:
            raise SchemaError(f"{field}[{j}]", "must not be empty")
        if name in seen:
            raise SchemaError(f"{field}[{j}]", f"{_short(name)} appears more than once")
        seen.add(name)


def schema_to_dict(schema: pb.DataSchema) -> dict[str, Any]:
    """The proto3 JSON form of `schema`, with field names as in the .proto (``label_column``, not ``labelColumn``)."""
    return json_format.MessageToDict(schema, preserving_proto_field_name=True)


def schema_from_dict(d: dict[str, Any]) -> pb.DataSchema:
    """Parse and validate a schema from its JSON form; raises `SchemaError`."""
    if not isinstance(d, dict):
        raise SchemaError("", f"a data schema is a JSON object (got {type(d).__name__})")
    schema = pb.DataSchema()
    try:
        json_format.ParseDict(d, schema)
    except Exception as e:  # noqa: BLE001 - ParseDict can raise more than ParseError on hostile input
        raise SchemaError("", f"not a valid DataSchema: {str(e)[:300]}") from None
    validate_schema(schema)
    return schema


def data_part(schema: pb.DataSchema) -> pb.DataSchema:
    """The schema without `tabular.csv`: what it says about the data, not about how files of it are written."""
    if schema.WhichOneof("kind") != "tabular" or not schema.tabular.HasField("csv"):
        return schema
    copy = pb.DataSchema()
    copy.CopyFrom(schema)
    copy.tabular.ClearField("csv")
    return copy


def schemas_equal(a: pb.DataSchema, b: pb.DataSchema) -> bool:
    """Whether two schemas describe the same data, compared through their deterministic serialization. Their CSV
    options (`tabular.csv`) are not compared: they say how files are written, not what the data is."""
    a, b = data_part(a), data_part(b)
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def first_difference(a: pb.DataSchema, b: pb.DataSchema) -> str | None:
    """The path of the first field where two schemas differ ("tabular.columns[2].upper"), or None if they describe
    the same data (`tabular.csv` is not compared, as in `schemas_equal`). The comparison is canonical: their proto3
    JSON forms, key by key in sorted order (unset fields are absent)."""
    return _first_difference(schema_to_dict(data_part(a)), schema_to_dict(data_part(b)), "")


def _first_difference(a: Any, b: Any, path: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            found = _first_difference(a[i] if i < len(a) else None, b[i] if i < len(b) else None, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else path or "data_schema"
