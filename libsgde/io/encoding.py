"""Encoders between a schema's own values and the model space generators work in.

Bounds and categories come from the schema (public), never from the data. Model space:
- tabular: one float32 row of width `ModelSpace.shape[0]`; a continuous or integer column is one value
  (v - lower) / (upper - lower) in [0, 1]; a categorical column is a one-hot block of width len(categories), plus
  one last "missing" slot when it is `nullable`. A numeric column with point masses or `nullable` is two blocks: its
  numeric value, then a one-hot mode block named column + ":mode" whose choices are "continuous", each point mass
  in order, and "missing" when nullable. A value exactly equal to a point mass is in that mass's mode (its numeric
  value is the mass's own position); a missing value is in the missing mode with the fixed numeric value 0.5.
  Missing values are modelled like any other category, never imputed. The label column (if any) is not in the row:
  it is the int32 label (its category index).
- image: float32 [H, W, C] in [0, 1] (pixel / pixel_max); the label is the class index.

Missing values: None, a float NaN, or a blank string (one that matches no category); only a `nullable` column may
hold them. A string that reads as NaN ("nan") is not missing: it is a token to declare in the schema's
csv.na_tokens (the CSV reader turns declared tokens into None).

Decoding: a mode block's choice decides the value: continuous -> the numeric part (moved off the point masses, so
that a value equals a mass exactly when its mode is that mass), a mass -> exactly the mass, missing -> NaN (numeric
columns; a nullable integer column decodes as float64, since int64 has no NaN) or None (categorical columns).

Values that do not fit the schema are refused with a `DataError` that says where (`coerce=False`, for the data's
owner), or mapped into it by fixed public rules (`coerce=True`, for a user who may train on the data but not read it:
an error that depended on the values would tell them about the values). The rules, which depend only on the schema:
a number is clipped into [lower, upper] (an integer column rounds to the nearest integer); a missing or unreadable
number becomes the middle of the bounds, or missing in a nullable column; a value that is not exactly one declared
category (label included) becomes the first category, or missing in a nullable column; a NaN pixel becomes 0; a
label that is not a class index becomes class 0. How many values each rule changed is counted in
`EncodedData.coerced`, for the data's owner only (missing values in a nullable column fit it: they are not counted).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from libsgde.io.schema import MODE_SUFFIX, SchemaError, validate_schema
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
        for name, choices in _column_blocks(col):
            width = 1 if choices is None else len(choices)
            mode_of = col.name if name != col.name else ""
            blocks.append(Block(name, "numeric" if choices is None else "categorical", start, width, mode_of))
            start += width
    return ModelSpace("tabular", (start,), tuple(blocks), num_classes)


MISSING = "(missing)"  # the name of a "missing" slot, where choices are shown (libsgde.evaluate)
CONTINUOUS = "continuous"  # the name of a mode block's continuous choice


def mode_block_name(column: str) -> str:
    """The name of a numeric column's mode block (its point masses and missing values)."""
    return column + MODE_SUFFIX


def has_mode(col: pb.Column) -> bool:
    """Whether a column is encoded with a mode block: a numeric column with point masses or missing values."""
    return col.type != pb.COLUMN_TYPE_CATEGORICAL and (col.nullable or len(col.point_masses) > 0)


def _column_blocks(col: pb.Column) -> list[tuple[str, list[str] | None]]:
    """(block name, choice names or None for a numeric block) of a non-label column, in row order."""
    missing = [MISSING] if col.nullable else []
    if col.type == pb.COLUMN_TYPE_CATEGORICAL:
        return [(col.name, [*col.categories, *missing])]
    if not has_mode(col):
        return [(col.name, None)]
    return [
        (col.name, None),
        (mode_block_name(col.name), [CONTINUOUS, *(f"{m:g}" for m in col.point_masses), *missing]),
    ]


def block_choices(schema: pb.DataSchema) -> dict[str, list[str]]:
    """Categorical block name -> the names of its choices (categories, "(missing)", a mode's "continuous" and point
    masses), for showing model-space rows; empty for images."""
    if schema.WhichOneof("kind") != "tabular":
        return {}
    t = schema.tabular
    return {
        name: choices
        for col in t.columns
        if col.name != t.label_column
        for name, choices in _column_blocks(col)
        if choices is not None
    }


def _is_missing(value: object) -> bool:
    """None, a float NaN, or a blank string (module docstring)."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, (float, np.floating)) and math.isnan(value)


NA_HINT = "if it marks a missing value, declare the column nullable and add it to the schema's csv.na_tokens"
MISSING_HINT = (
    "missing value; declare the column nullable in the schema to model missing values (they are never imputed), "
    "or fill or drop the row"
)
LABEL_MISSING = "missing label; every row needs a class (the label column cannot be nullable): drop the row"


def _category_index(col: pb.Column, coerce: bool = False, label: bool = False) -> Callable[[object, int], int]:
    """A matcher of values to category indices. Strings match exactly (no trimming). A number matches the category
    spelled str(number), and a float holding an integer also the one spelled as that integer (1.0 -> "1"); a value
    that matches two categories ("1" and "1.0") is refused as ambiguous. A missing value that matches no category
    is the "missing" slot (index len(categories)) of a nullable column, and refused elsewhere. With `coerce`, a value
    that matches no category or several is -1 instead (the caller counts and replaces them)."""
    index = {name: i for i, name in enumerate(col.categories)}
    missing_slot = len(col.categories)

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
        if not hits and _is_missing(value):
            if col.nullable:
                return missing_slot
            if not coerce:
                raise DataError(LABEL_MISSING if label else MISSING_HINT, column=col.name, row=row)
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
            f"categories or fix the value; {NA_HINT}",
            column=col.name,
            row=row,
        )

    return match


def _read_numbers(values: Sequence) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(float64 values, missing mask, first unreadable row or None) of a numeric column: missing values (module
    docstring) are NaN in the values and True in the mask; a value that is not a number (text, or text reading as
    NaN) is NaN there too, and the first one's row is returned."""
    array = np.asarray(values)
    if array.ndim == 1 and array.dtype.kind in "biuf":  # numbers (NaN: missing), the npz and dataframe case
        numbers = array.astype(np.float64)
        return numbers, np.isnan(numbers), None
    read: np.ndarray | None
    try:
        read = array.astype(np.float64)  # text that reads as numbers (None as NaN), the common CSV case
    except (ValueError, TypeError):
        read = None
    if read is not None and read.ndim == 1:
        numbers = read
        nan = np.flatnonzero(np.isnan(numbers))  # missing values, or text reading as NaN ("nan"): look at those only
        absent = np.fromiter((_is_missing(array[row]) for row in nan), bool, count=nan.size)
        missing = np.zeros(len(numbers), bool)
        missing[nan[absent]] = True
        unreadable = nan[~absent]
        return numbers, missing, int(unreadable[0]) if unreadable.size else None
    numbers = np.empty(len(values), np.float64)
    missing = np.zeros(len(values), bool)
    unreadable = None
    for row, value in enumerate(values):
        if _is_missing(value):
            numbers[row], missing[row] = math.nan, True
            continue
        try:
            numbers[row] = float(value)
        except (ValueError, TypeError):
            numbers[row] = math.nan
        if math.isnan(numbers[row]) and unreadable is None:
            unreadable = row  # not a number, or text that reads as NaN: an undeclared token
    return numbers, missing, unreadable


def _numbers(col: pb.Column, values: Sequence, coerce: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(float64 values, missing mask, values replaced) of a numeric column. Without `coerce`, refuses text,
    infinities, fractions in an integer column, and missing values in a column that is not nullable; with it,
    applies the public rules (module docstring; clipping into bounds is left to the caller, which counts it as for
    any data)."""
    numbers, missing, unreadable = _read_numbers(values)
    replaced = 0
    if not coerce:
        if unreadable is not None:
            raise DataError(f"{_short(values[unreadable])} is not a number; {NA_HINT}", column=col.name, row=unreadable)
        if missing.any() and not col.nullable:
            raise DataError(MISSING_HINT, column=col.name, row=int(np.flatnonzero(missing)[0]))
        infinite = np.flatnonzero(np.isinf(numbers))
        if infinite.size:
            row = int(infinite[0])
            raise DataError(f"{_short(values[row])} is not a finite number", column=col.name, row=row)
        if col.type == pb.COLUMN_TYPE_INTEGER:
            fractional = np.flatnonzero(~missing & (numbers != np.round(numbers)))
            if fractional.size:
                row = int(fractional[0])
                raise DataError(
                    f"{_short(values[row])} is not an integer; declare the column continuous or fix the value",
                    column=col.name,
                    row=row,
                )
        return numbers, missing, 0
    bad = np.isnan(numbers) & ~missing  # unreadable
    if col.nullable:
        replaced = int(np.count_nonzero(bad))
        missing = missing | bad
    else:
        replaced = int(np.count_nonzero(np.isnan(numbers)))
        middle = (col.lower + col.upper) / 2
        numbers[np.isnan(numbers)] = float(np.floor(middle)) if col.type == pb.COLUMN_TYPE_INTEGER else middle
        missing = np.zeros(len(numbers), bool)
    if col.type == pb.COLUMN_TYPE_INTEGER:
        rounded = np.where(np.isfinite(numbers), np.round(numbers), numbers)
        replaced += int(np.count_nonzero(rounded[~missing] != numbers[~missing]))
        numbers = rounded
    return numbers, missing, replaced


MISSING_POSITION = 0.5  # the numeric value of a missing row in model space: a fixed public constant


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
        """Encode column name -> values (strings as read from a CSV, or numbers; None, NaN or a blank string for a
        missing value); values outside bounds are clipped and counted in `clipped`. With `coerce`, values that do
        not fit are mapped into the schema (module docstring) and counted in `coerced` instead of refused."""
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
        rows = np.arange(n)
        labels, clipped, coerced = None, {}, {}
        for col in self.schema.columns:
            values = columns[col.name]
            if col.type == pb.COLUMN_TYPE_CATEGORICAL:
                is_label = col.name == self.schema.label_column
                match = _category_index(col, coerce, is_label)
                index = np.fromiter((match(v, row) for row, v in enumerate(values)), np.int64, count=n)
                unmatched = index < 0
                if unmatched.any():
                    coerced[col.name] = int(np.count_nonzero(unmatched))
                    index[unmatched] = len(col.categories) if col.nullable and not is_label else 0
                if is_label:
                    labels = index.astype(np.int32)
                else:
                    x[rows, self._blocks[col.name].start + index] = 1.0
                continue
            numbers, missing, replaced = _numbers(col, values, coerce)
            if replaced:
                coerced[col.name] = replaced
            present = ~missing
            outside = int(np.count_nonzero(present & ((numbers < col.lower) | (numbers > col.upper))))
            if outside:
                clipped[col.name] = outside
            numbers = np.clip(numbers, col.lower, col.upper)
            scaled = (numbers - col.lower) / (col.upper - col.lower)
            x[:, self._blocks[col.name].start] = np.where(missing, MISSING_POSITION, scaled)
            if has_mode(col):
                x[rows, self._blocks[mode_block_name(col.name)].start + self._modes(col, numbers, missing)] = 1.0
        return EncodedData(x, labels, self.space, clipped, coerced)

    @staticmethod
    def _modes(col: pb.Column, numbers: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """Each row's mode: 0 continuous, 1 + j the j-th point mass (a value exactly equal to it), the last missing."""
        masses = np.asarray(col.point_masses, np.float64)
        modes = np.zeros(len(numbers), np.int64)
        if masses.size:
            at = np.clip(np.searchsorted(masses, numbers), 0, masses.size - 1)
            hit = masses[at] == numbers
            modes[hit] = 1 + at[hit]
        modes[missing] = 1 + masses.size
        return modes

    def decode(self, x: np.ndarray, labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Model-space rows back to column values, always inside the schema (NaN reads as 0, i.e. `lower`); missing
        values are NaN (numeric) or None (categorical) in nullable columns only (module docstring)."""
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
                names = [*col.categories, None] if col.nullable else list(col.categories)
                decoded[col.name] = np.asarray(names, dtype=object)[chosen]
                continue
            values = np.clip(col.lower + x[:, block.start] * (col.upper - col.lower), col.lower, col.upper)
            if col.type == pb.COLUMN_TYPE_INTEGER:
                values = np.clip(np.rint(values), col.lower, col.upper)
            if has_mode(col):
                mode = self._blocks[mode_block_name(col.name)]
                values = _apply_modes(col, values, np.argmax(x[:, mode.start : mode.start + mode.width], axis=1))
            if col.type == pb.COLUMN_TYPE_INTEGER and not col.nullable:
                values = values.astype(np.int64)
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


def _apply_modes(col: pb.Column, values: np.ndarray, modes: np.ndarray) -> np.ndarray:
    """float64 values of a numeric column given each row's mode: continuous rows moved off the point masses, mass
    rows exactly their mass, missing rows NaN."""
    masses = np.asarray(col.point_masses, np.float64)
    values = _off_masses(col, values, masses) if masses.size else values.copy()
    for j, mass in enumerate(masses):
        values[modes == 1 + j] = mass
    values[modes == 1 + masses.size] = math.nan  # only a nullable column has this mode
    return values


def _off_masses(col: pb.Column, values: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Values equal to a point mass moved to the nearest value inside the bounds that is not one: the next float
    (continuous columns) or the nearest integer (integer columns), towards the upper bound first. A public rule, so
    that a continuous row never reads as a mass (the data's continuous rows are not masses, by definition)."""
    values = values.copy()
    hit = np.flatnonzero(np.isin(values, masses))
    if not hit.size:
        return values
    if col.type != pb.COLUMN_TYPE_INTEGER:
        up = values[hit] < col.upper
        values[hit] = np.nextafter(values[hit], np.where(up, col.upper, col.lower))
        return values
    base, pending = values[hit], np.ones(hit.size, bool)
    for step in range(1, masses.size + 2):  # len(masses) + 1 steps each way find a free integer when there is one
        for moved in (base + step, base - step):
            free = pending & (moved >= col.lower) & (moved <= col.upper) & ~np.isin(moved, masses)
            values[hit[free]] = moved[free]
            pending &= ~free
    return values


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
