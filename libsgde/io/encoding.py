"""Encoders between a schema's own values and the model space generators work in.

Bounds and categories come from the schema (public), never from the data. Model space:
- tabular: one float32 row of width `ModelSpace.shape[0]`; a continuous or integer column is one value
  (v - lower) / (upper - lower) in [0, 1]; a categorical column is a one-hot block of width len(categories). The
  label column (if any) is not in the row: it is the int32 label (its category index).
- image: float32 [H, W, C] in [0, 1] (pixel / pixel_max); the label is the class index.

Values that do not fit the schema are refused with a `DataError` that says where (`coerce=False`, for the data's
owner), or mapped into it by fixed public rules (`coerce=True`, for a user who may train on the data but not read it:
an error that depended on the values would tell them about the values). The rules, which depend only on the schema:
a number is clipped into [lower, upper] (an integer column rounds to the nearest integer); a missing or unreadable
number becomes the middle of the bounds; a value that is not exactly one declared category (label included) becomes
the first category; a NaN pixel becomes 0; a label that is not a class index becomes class 0. How many values each
rule changed is counted in `EncodedData.coerced`, for the data's owner only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from libsgde.io.schema import SchemaError, validate_schema
from libsgde.ml.space import Block, ModelSpace
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb


@dataclass
class EncodedData:
    """A dataset in model space. `labels` is None when the schema declares no label."""

    x: np.ndarray  # float32 [N, *space.shape]
    labels: np.ndarray | None  # int32 [N]
    space: ModelSpace
    clipped: dict[str, int] = field(default_factory=dict)  # column (or "pixels") -> values clipped into bounds
    coerced: dict[str, int] = field(default_factory=dict)  # column (or "pixels", "labels") -> values replaced

    def __len__(self) -> int:
        return int(self.x.shape[0])


MAX_EXACT_INTEGER = 2**53  # integer bounds beyond this are not exact in float64 (and decode through int64)


class DataError(ValueError):
    """Data that does not fit its schema. `where` names the file, `line` its line, `column` and `row` (0-based) say
    where, when known; `detail` says what."""

    def __init__(
        self,
        detail: str,
        *,
        column: str | None = None,
        row: int | None = None,
        where: str | None = None,
        line: int | None = None,
    ):
        parts = [
            where if line is None else f"{where} line {line}",
            None if column is None else f"column {column!r}",
            None if row is None or line is not None else f"row {row}",
        ]
        location = ", ".join(p for p in parts if p)
        super().__init__(f"{location}: {detail}" if location else detail)
        self.detail, self.column, self.row, self.where, self.line = detail, column, row, where, line


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def model_space(schema: pb.DataSchema) -> ModelSpace:
    """The model space of a (valid) schema; raises `SchemaError` for an invalid one."""
    validate_schema(schema)
    if schema.WhichOneof("kind") == "image":
        im = schema.image
        return ModelSpace("image", (im.height, im.width, im.channels), num_classes=len(im.class_names))
    t = schema.tabular
    blocks, start, num_classes = [], 0, 0
    for col in t.columns:
        if col.name == t.label_column:
            num_classes = len(col.categories)
            continue
        categorical = col.type == pb.COLUMN_TYPE_CATEGORICAL
        width = len(col.categories) if categorical else 1
        blocks.append(Block(col.name, "categorical" if categorical else "numeric", start, width))
        start += width
    return ModelSpace("tabular", (start,), tuple(blocks), num_classes)


def _category_index(col: pb.Column, coerce: bool = False) -> Callable[[object, int], int]:
    """A matcher of values to category indices. Strings match exactly (no trimming). A number matches the category
    spelled str(number), and a float holding an integer also the one spelled as that integer (1.0 -> "1"); a value
    that matches two categories ("1" and "1.0") is refused as ambiguous. With `coerce`, a value that matches no
    category or several is category 0 instead (the caller counts them)."""
    index = {name: i for i, name in enumerate(col.categories)}

    def match(value: object, row: int) -> int:
        if isinstance(value, str):
            hits = {index[value]} if value in index else set()
        else:
            if isinstance(value, np.generic):
                value = value.item()
            spellings = {str(value)}
            if isinstance(value, float) and value.is_integer():
                spellings.add(str(int(value)))
            hits = {index[s] for s in spellings if s in index}
        if len(hits) == 1:
            return hits.pop()
        if coerce:
            return -1
        if hits:
            raise DataError(
                f"{_short(value)} matches several categories ({sorted(col.categories[h] for h in hits)});"
                " give the value as a string",
                column=col.name,
                row=row,
            )
        allowed = ", ".join(repr(c) for c in col.categories[:10]) + (", ..." if len(col.categories) > 10 else "")
        raise DataError(
            f"{_short(value)} is not a declared category (allowed: {allowed}); add it to the schema's "
            "categories or fix the value",
            column=col.name,
            row=row,
        )

    return match


def _coerce_numbers(col: pb.Column, values: Sequence) -> tuple[np.ndarray, int]:
    """float64 values of a numeric column by the public rules (module docstring), and how many were replaced or
    rounded; clipping into bounds is left to the caller, which counts it as for any data."""
    middle = (col.lower + col.upper) / 2
    if col.type == pb.COLUMN_TYPE_INTEGER:
        middle = float(np.floor(middle))
    replaced = 0
    try:
        numbers = np.asarray(values).astype(np.float64)  # the common case: every value reads as a number
    except (ValueError, TypeError):
        numbers = np.empty(len(values), np.float64)
        for row, value in enumerate(values):
            try:
                numbers[row] = float(value)
            except (ValueError, TypeError):
                numbers[row] = math.nan
    missing = np.isnan(numbers)
    if missing.any():
        replaced = int(np.count_nonzero(missing))
        numbers[missing] = middle
    if col.type == pb.COLUMN_TYPE_INTEGER:
        finite = np.isfinite(numbers)
        rounded = np.where(finite, np.round(numbers), numbers)
        replaced += int(np.count_nonzero(rounded != numbers))
        numbers = rounded
    return numbers, replaced


def _parse_numbers(col: pb.Column, values: Sequence) -> np.ndarray:
    """float64 values of a numeric column; refuses text, missing values, infinities and (integer columns) fractions."""
    try:
        numbers = np.asarray(values).astype(np.float64)
    except (ValueError, TypeError):
        numbers = None
    if numbers is None or numbers.ndim != 1 or not np.isfinite(numbers).all():
        numbers = np.empty(len(values), np.float64)
        for row, value in enumerate(values):
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DataError(
                    "missing value; missing values are not supported yet: fill or drop the row",
                    column=col.name,
                    row=row,
                )
            try:
                numbers[row] = float(value)
            except (ValueError, TypeError):
                raise DataError(f"{_short(value)} is not a number", column=col.name, row=row) from None
            if np.isnan(numbers[row]):
                raise DataError(
                    "missing value (NaN); missing values are not supported yet: fill or drop the row",
                    column=col.name,
                    row=row,
                )
            if not np.isfinite(numbers[row]):
                raise DataError(f"{_short(value)} is not a finite number", column=col.name, row=row)
    if col.type == pb.COLUMN_TYPE_INTEGER:
        fractional = np.flatnonzero(numbers != np.round(numbers))
        if fractional.size:
            row = int(fractional[0])
            raise DataError(
                f"{_short(values[row])} is not an integer; declare the column continuous or fix the value",
                column=col.name,
                row=row,
            )
    return numbers


class TabularEncoder:
    """Rows of a tabular schema to and from model space (see the module docstring)."""

    def __init__(self, schema: pb.TabularSchema):
        self.schema = schema
        self.space = model_space(pb.DataSchema(tabular=schema))
        for i, col in enumerate(schema.columns):
            if col.type == pb.COLUMN_TYPE_INTEGER and max(abs(col.lower), abs(col.upper)) > MAX_EXACT_INTEGER:
                raise SchemaError(
                    f"tabular.columns[{i}]", "integer bounds beyond 2**53 are not exact; declare the column continuous"
                )
        self._blocks = {b.name: b for b in self.space.blocks}

    def check_columns(self, names: Sequence[str]) -> None:
        """Refuse data whose columns differ from the schema's: every declared one present, none undeclared."""
        declared = {col.name for col in self.schema.columns}
        for name in names:
            if name not in declared:
                raise DataError(
                    "the data has this column but the schema does not declare it: declare it in the "
                    "schema (with public bounds or categories) or remove it from the data; training on "
                    "undeclared data is a privacy mistake",
                    column=name,
                )
        given = set(names)
        for col in self.schema.columns:
            if col.name not in given:
                raise DataError("the schema declares this column but the data lacks it", column=col.name)

    def encode(self, columns: Mapping[str, Sequence], *, coerce: bool = False) -> EncodedData:
        """Encode column name -> values (strings as read from a CSV, or numbers); values outside bounds are clipped
        and counted in `clipped`. With `coerce`, values that do not fit are mapped into the schema (module
        docstring) and counted in `coerced` instead of refused."""
        self.check_columns(list(columns))
        n = len(columns[self.schema.columns[0].name])
        for name, values in columns.items():
            if len(values) != n:
                raise DataError(
                    f"has {len(values)} values but column {self.schema.columns[0].name!r} has {n}; "
                    "give every column the same number of rows",
                    column=name,
                )
        if n == 0:
            raise DataError("the data has no rows")
        x = np.zeros((n, self.space.shape[0]), np.float32)
        labels, clipped, coerced = None, {}, {}
        for col in self.schema.columns:
            values = columns[col.name]
            if col.type == pb.COLUMN_TYPE_CATEGORICAL:
                match = _category_index(col, coerce)
                index = np.fromiter((match(v, row) for row, v in enumerate(values)), np.int64, count=n)
                unmatched = index < 0
                if unmatched.any():
                    coerced[col.name] = int(np.count_nonzero(unmatched))
                    index[unmatched] = 0
                if col.name == self.schema.label_column:
                    labels = index.astype(np.int32)
                else:
                    x[np.arange(n), self._blocks[col.name].start + index] = 1.0
                continue
            if coerce:
                numbers, replaced = _coerce_numbers(col, values)
                if replaced:
                    coerced[col.name] = replaced
            else:
                numbers = _parse_numbers(col, values)
            outside = int(np.count_nonzero((numbers < col.lower) | (numbers > col.upper)))
            if outside:
                clipped[col.name] = outside
            numbers = np.clip(numbers, col.lower, col.upper)
            x[:, self._blocks[col.name].start] = (numbers - col.lower) / (col.upper - col.lower)
        return EncodedData(x, labels, self.space, clipped, coerced)

    def decode(self, x: np.ndarray, labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Model-space rows back to column values, always inside the schema (NaN reads as 0, i.e. `lower`)."""
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != self.space.shape[0]:
            raise DataError(f"expected model-space rows of shape (N, {self.space.shape[0]}), got {x.shape}")
        x = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
        decoded: dict[str, np.ndarray] = {}
        for col in self.schema.columns:
            if col.name == self.schema.label_column:
                if labels is not None:
                    decoded[col.name] = self._label_names(col, labels, len(x))
                continue
            block = self._blocks[col.name]
            if block.kind == "categorical":
                chosen = np.argmax(x[:, block.start : block.start + block.width], axis=1)
                decoded[col.name] = np.asarray(list(col.categories), dtype=object)[chosen]
                continue
            values = np.clip(col.lower + x[:, block.start] * (col.upper - col.lower), col.lower, col.upper)
            if col.type == pb.COLUMN_TYPE_INTEGER:
                values = np.clip(np.rint(values), col.lower, col.upper).astype(np.int64)
            decoded[col.name] = values
        return decoded

    @staticmethod
    def _label_names(col: pb.Column, labels: np.ndarray, n: int) -> np.ndarray:
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"expected {n} integer labels, got {labels.dtype} of shape {labels.shape}", column=col.name)
        bad = np.flatnonzero((labels < 0) | (labels >= len(col.categories)))
        if bad.size:
            raise DataError(
                f"label {labels[bad[0]]} is outside [0, {len(col.categories)})", column=col.name, row=int(bad[0])
            )
        return np.asarray(list(col.categories), dtype=object)[labels]


class ImageEncoder:
    """Images of an image schema to and from model space: pixel / pixel_max in [0, 1], float32 [N, H, W, C]."""

    def __init__(self, schema: pb.ImageSchema):
        self.schema = schema
        self.space = model_space(pb.DataSchema(image=schema))

    def _shaped(self, images: np.ndarray, what: str) -> np.ndarray:
        h, w, c = self.space.shape
        shaped = images[..., np.newaxis] if images.ndim == 3 and c == 1 else images
        if shaped.ndim != 4 or shaped.shape[1:] != (h, w, c):
            grey = f" or (N, {h}, {w})" if c == 1 else ""
            raise DataError(f"expected {what} of shape (N, {h}, {w}, {c}){grey}, got {images.shape}")
        return shaped

    def encode(self, images: np.ndarray, labels: np.ndarray | None = None, *, coerce: bool = False) -> EncodedData:
        """Scale pixels into [0, 1], clipping (and counting) those outside [0, pixel_max]. Labels are class indices;
        they are ignored when the schema declares no classes. With `coerce`, NaN pixels and labels that are not
        class indices are replaced (module docstring) and counted in `coerced` instead of refused."""
        images = np.asarray(images)
        if images.dtype.kind not in "uif":
            raise DataError(f"images must hold real numbers, not {images.dtype}")
        images = self._shaped(images, "images")
        if len(images) == 0:
            raise DataError("there are no images")
        coerced: dict[str, int] = {}
        if images.dtype.kind == "f" and np.isnan(images).any():
            if not coerce:
                row = int(np.flatnonzero(np.isnan(images).any(axis=(1, 2, 3)))[0])
                raise DataError("has NaN pixels; missing values are not supported", row=row)
            coerced["pixels"] = int(np.count_nonzero(np.isnan(images)))
            images = np.nan_to_num(images, nan=0.0)
        pixel_max = self.schema.pixel_max
        outside = int(np.count_nonzero(images < 0) + np.count_nonzero(images > pixel_max))
        x = images.astype(np.float32)
        x /= np.float32(pixel_max)
        np.clip(x, 0.0, 1.0, out=x)
        classes = self._labels(labels, len(images), coerced if coerce else None)
        return EncodedData(x, classes, self.space, {"pixels": outside} if outside else {}, coerced)

    def _labels(self, labels: np.ndarray | None, n: int, coerced: dict[str, int] | None = None) -> np.ndarray | None:
        k = self.space.num_classes
        if k == 0:
            return None
        if labels is None:
            raise DataError(f"the schema declares {k} classes: give one label (class index) per image")
        labels = np.asarray(labels)
        if labels.shape != (n,) or labels.dtype.kind not in "uif":
            raise DataError(f"expected {n} integer labels, got {labels.dtype} of shape {labels.shape}")
        bad = np.flatnonzero(~((labels >= 0) & (labels < k) & (labels == np.floor(labels))))
        if bad.size and coerced is not None:
            coerced["labels"] = int(bad.size)
            labels = labels.copy()
            labels[bad] = 0
        elif bad.size:
            raise DataError(
                f"label {_short(labels[bad[0]].item())} is not a class index in [0, {k}); class names: "
                f"{list(self.schema.class_names)[:10]}",
                row=int(bad[0]),
            )
        return labels.astype(np.int32)

    def decode(self, x: np.ndarray) -> np.ndarray:
        """Model space back to pixels in [0, pixel_max]: uint8 for an integer pixel_max in [2, 255], uint16 for one up
        to 65535, else float32 (pixel_max 1 declares [0, 1] floats, not 1-bit integers)."""
        x = self._shaped(np.asarray(x, np.float32), "model-space images")
        x = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
        pixel_max = self.schema.pixel_max
        if float(pixel_max).is_integer() and 2 <= pixel_max <= 65535:
            dtype = np.uint8 if pixel_max <= 255 else np.uint16
            return np.clip(np.rint(x.astype(np.float64) * pixel_max), 0, pixel_max).astype(dtype)
        top = np.float32(pixel_max)
        if top > pixel_max:  # float32 rounded up past pixel_max: stay below it
            top = np.nextafter(top, np.float32(0))
        return np.clip(x * np.float32(pixel_max), np.float32(0), top)


def encoder_for(schema: pb.DataSchema) -> TabularEncoder | ImageEncoder:
    """The encoder of a schema's kind; raises `SchemaError` for an invalid schema."""
    validate_schema(schema)
    if schema.WhichOneof("kind") == "image":
        return ImageEncoder(schema.image)
    return TabularEncoder(schema.tabular)
