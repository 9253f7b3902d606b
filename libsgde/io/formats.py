"""Output formats of sampled data, written chunk by chunk, and readers back.

- CSV (tabular only): a header row of the schema's column names in schema order (the label column included, by its
  name), then one row per sample. Floats are written as Python's repr (the shortest text that reads back to the same
  float64), integers as integers, categories as their names (quoted as RFC 4180 asks when they hold a comma, a quote
  or a line break). Lines end in "\\n"; the text is UTF-8. A missing value (nullable columns) is an empty field,
  whatever the schema's csv.na_tokens: every CSV reader reads an empty field as missing (ours always does), and no
  category is empty; a table of one column writes it as "" so that the row is not a blank line.
- NPY (tabular and images): one .npy array whose header, written first, carries the request's total N, so that the
  chunks concatenate into a valid file as they arrive. Images: N x H x W x C of the decoded dtype (uint8, uint16 or
  float32, from the schema's pixel_max). Tabular: a structured array [N] with one field per column in schema order:
  continuous '<f8', integer the narrowest type that holds its bounds ('|u1' for [0, 255], then '<u2', '<u4', or
  '|i1', '<i2', '<i4' when the lower bound is negative, else '<i8'; the values are those of int64), categorical
  '<U{L}' with L the schema's longest category (so the width is known before the first sample). Missing values
  (nullable columns): NaN in a float field, and a nullable integer column is '<f8' (int64 has no NaN); "" in a
  categorical field (no category is empty). A table of a few hundred columns has a header over numpy's default
  10,000-byte cap: read it with np.load(..., max_header_size=...), as `read_samples` does.
- Parquet (tabular only, and only where `pyarrow` is importable; it is not a dependency): one row group per chunk;
  float64, int64 and string columns; missing values are nulls (a nullable column's field is nullable).

The bytes depend only on the values (and, for Parquet, the pyarrow version): the same request gives the same bytes.
"""

from __future__ import annotations

import csv
import io
import math
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from libsgde.io.sampling import DEFAULT_MAX_REQUEST_BYTES, CompiledSampler, SamplingError, integer_dtype
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from libsgde.wire.proto.sgde.v1 import sampler_pb2 as spb

FORMATS = {"csv": spb.OUTPUT_FORMAT_CSV, "npy": spb.OUTPUT_FORMAT_NPY, "parquet": spb.OUTPUT_FORMAT_PARQUET}
FORMAT_NAMES = {v: k for k, v in FORMATS.items()}
SUFFIXES = {".csv": "csv", ".npy": "npy", ".parquet": "parquet", ".pq": "parquet"}


class FormatUnavailable(SamplingError):
    """The format is valid for the data but this installation cannot write it (Parquet without pyarrow)."""

    status = "FAILED_PRECONDITION"


def format_name(fmt: str | int) -> str:
    """'csv' | 'npy' | 'parquet' from a name or an OutputFormat value (UNSPECIFIED means npy)."""
    if isinstance(fmt, str):
        name = fmt.lower().lstrip(".")
        if name not in FORMATS:
            raise SamplingError("format", f"unknown format {fmt[:40]!r}; choose csv, npy or parquet")
        return name
    if fmt == spb.OUTPUT_FORMAT_UNSPECIFIED:
        return "npy"
    if fmt not in FORMAT_NAMES:
        raise SamplingError("format", f"unknown OutputFormat {fmt}; choose CSV, NPY or PARQUET")
    return FORMAT_NAMES[spb.OutputFormat.ValueType(fmt)]


def _kind(schema: pb.DataSchema) -> str:
    return "image" if schema.WhichOneof("kind") == "image" else "tabular"


def check_format(fmt: str | int, kind: str | pb.DataSchema) -> str:
    """The format's name, if it can carry data of this kind ('tabular' | 'image', or a schema) here; raises
    SamplingError (wrong kind) or FormatUnavailable (no pyarrow)."""
    name = format_name(fmt)
    kind = kind if isinstance(kind, str) else _kind(kind)
    if kind == "image" and name != "npy":
        raise SamplingError("format", f"{name} holds tables; this model generates images: ask for npy")
    if name == "parquet":
        try:
            import pyarrow
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise FormatUnavailable(
                "format",
                "parquet needs the pyarrow package, which this installation lacks "
                "(pip install pyarrow, where the sampling runs); or ask for csv or "
                "npy",
            ) from None
    return name


# -- NPY ----------------------------------------------------------------------------------------------------------

_NPY_ALIGN = 64
MAX_NPY_HEADER = 1 << 24  # what read_samples accepts (a schema's 4096 columns with long names stay far below)


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The .npy header (format 1.0, or 2.0 / 3.0 when it is too long or not Latin-1) of an array of this dtype
    and shape, as numpy writes it, so that `np.load` reads the concatenated chunks."""
    d = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": tuple(int(s) for s in shape),
    }
    text = "{" + "".join(f"'{k}': {d[k]!r}, " for k in sorted(d)) + "}"
    for version, fmt, encoding in (((1, 0), "<H", "latin1"), ((2, 0), "<I", "latin1"), ((3, 0), "<I", "utf8")):
        try:
            raw = text.encode(encoding)
        except UnicodeEncodeError:
            continue
        hlen = len(raw) + 1
        pad = _NPY_ALIGN - ((8 + struct.calcsize(fmt) + hlen) % _NPY_ALIGN)
        if fmt == "<H" and hlen + pad > 0xFFFF:
            continue
        return b"\x93NUMPY" + bytes(version) + struct.pack(fmt, hlen + pad) + raw + b" " * pad + b"\n"
    raise ValueError("cannot write this .npy header")  # unreachable: utf8 encodes everything


def tabular_dtype(schema: pb.DataSchema) -> np.dtype:
    """The structured dtype of tabular NPY output (see the module docstring)."""
    fields = []
    for col in schema.tabular.columns:
        if col.type == pb.COLUMN_TYPE_CATEGORICAL:
            fields.append((col.name, f"<U{max([1, *(len(c) for c in col.categories)])}"))
        elif col.type == pb.COLUMN_TYPE_INTEGER and not col.nullable:
            fields.append((col.name, integer_dtype(col).str))  # the narrowest that holds the bounds
        else:
            fields.append((col.name, "<f8"))
    return np.dtype(fields)


def image_dtype(schema: pb.DataSchema) -> np.dtype:
    """The decoded pixel dtype (libsgde.io.encoding.ImageEncoder.decode), little-endian."""
    from libsgde.io.encoding import ImageEncoder

    im = schema.image
    probe = ImageEncoder(im).decode(np.zeros((1, im.height, im.width, im.channels), np.float32))
    return probe.dtype.newbyteorder("<")


class Writer:
    """Bytes of one request's output: `begin()`, then `write(values)` per decoded chunk, then `end()`."""

    def __init__(self, schema: pb.DataSchema, total: int):
        self.schema, self.total = schema, int(total)

    def begin(self) -> bytes:
        return b""

    def write(self, values) -> bytes:
        raise NotImplementedError

    def end(self) -> bytes:
        return b""


class NpyWriter(Writer):
    def __init__(self, schema: pb.DataSchema, total: int):
        super().__init__(schema, total)
        self.shape: tuple[int, ...]
        if _kind(schema) == "image":
            im = schema.image
            self.dtype, self.shape = image_dtype(schema), (self.total, im.height, im.width, im.channels)
        else:
            self.dtype, self.shape = tabular_dtype(schema), (self.total,)
        self.names: tuple[str, ...] = self.dtype.names or ()
        self._nullable_text = {
            col.name for col in schema.tabular.columns if col.nullable and col.type == pb.COLUMN_TYPE_CATEGORICAL
        }

    def begin(self) -> bytes:
        return npy_header(self.dtype, self.shape)

    def write(self, values) -> bytes:
        if isinstance(values, np.ndarray):
            return np.ascontiguousarray(values, self.dtype).tobytes()
        n = len(next(iter(values.values())))
        rows = np.empty(n, self.dtype)
        for name in self.names:
            column = values[name]
            if name in self._nullable_text:  # None (missing) is written as "", not as the text "None"
                column = np.asarray(column, dtype=object)
                column = np.where(column == np.asarray(None, dtype=object), "", column)
            rows[name] = column
        return rows.tobytes()


def _csv_field(text: str) -> str:
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


class CsvWriter(Writer):
    def __init__(self, schema: pb.DataSchema, total: int):
        super().__init__(schema, total)
        self.columns = list(schema.tabular.columns)
        self._categories = {
            col.name: {c: _csv_field(c) for c in col.categories}
            for col in self.columns
            if col.type == pb.COLUMN_TYPE_CATEGORICAL
        }
        self._missing = '""' if len(self.columns) == 1 else ""  # a lone empty field would be a blank line

    def begin(self) -> bytes:
        return (",".join(_csv_field(col.name) for col in self.columns) + "\n").encode()

    def _texts(self, col: pb.Column, values: np.ndarray) -> list[str]:
        if col.type == pb.COLUMN_TYPE_CATEGORICAL:
            quoted = self._categories[col.name]
            if col.nullable:
                return [self._missing if v is None else quoted[v] for v in values.tolist()]
            return [quoted[v] for v in values.tolist()]
        if col.nullable:
            spell = int if col.type == pb.COLUMN_TYPE_INTEGER else float
            return [self._missing if v != v else repr(spell(v)) for v in values.tolist()]  # v != v: NaN
        if col.type == pb.COLUMN_TYPE_INTEGER:
            return [str(int(v)) for v in values.tolist()]
        return [repr(float(v)) for v in values.tolist()]

    def write(self, values) -> bytes:
        texts = [self._texts(col, np.asarray(values[col.name])) for col in self.columns]
        if not texts[0]:
            return b""
        return ("\n".join(map(",".join, zip(*texts))) + "\n").encode()


class _Drain(io.RawIOBase):
    """A write-only file that keeps what is written until `take()` (pyarrow writes Parquet into it)."""

    def __init__(self):
        super().__init__()
        self._parts: list[bytes] = []
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        data = bytes(b)
        self._parts.append(data)
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


class ParquetWriter(Writer):
    def __init__(self, schema: pb.DataSchema, total: int):
        super().__init__(schema, total)
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        types = {pb.COLUMN_TYPE_CATEGORICAL: pa.string(), pb.COLUMN_TYPE_INTEGER: pa.int64()}
        self.columns = list(schema.tabular.columns)
        self.arrow_schema = pa.schema(
            [(col.name, types.get(col.type, pa.float64()), col.nullable) for col in self.columns]
        )
        self._sink = _Drain()
        self._writer = pq.ParquetWriter(self._sink, self.arrow_schema)

    def write(self, values) -> bytes:
        pa = self._pa
        arrays = [
            self._array(col, np.asarray(values[col.name]), field.type)
            for col, field in zip(self.columns, self.arrow_schema)
        ]
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.arrow_schema))
        return self._sink.take()

    def _array(self, col: pb.Column, values: np.ndarray, kind):
        if col.type == pb.COLUMN_TYPE_CATEGORICAL:
            return self._pa.array(values.tolist(), type=kind)  # None is null
        if not col.nullable:
            return self._pa.array(values, type=kind)
        missing = np.isnan(values)
        numbers = np.where(missing, 0, values).astype(np.int64) if col.type == pb.COLUMN_TYPE_INTEGER else values
        return self._pa.array(numbers, type=kind, mask=missing)

    def end(self) -> bytes:
        self._writer.close()
        return self._sink.take()


def writer(fmt: str | int, schema: pb.DataSchema, total: int) -> Writer:
    """A writer of `total` samples of `schema` in `fmt`; raises SamplingError / FormatUnavailable."""
    name = check_format(fmt, schema)
    return {"csv": CsvWriter, "npy": NpyWriter, "parquet": ParquetWriter}[name](schema, total)


def encode_stream(
    sampler: CompiledSampler,
    labels_or_n: np.ndarray | int,
    seed: int,
    fmt: str | int,
    chunk_samples: int = 0,
    should_stop: Callable[[], bool] | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> Iterator[tuple[bytes, int]]:
    """A request's output as (bytes, samples done so far) pieces: the format's header, one piece per chunk, its
    footer. Empty pieces are skipped. Ends early (without a footer) when `should_stop` says so. A request whose plan
    needs more memory than `max_request_bytes` raises Exhausted before its first piece (`CompiledSampler.plan`)."""
    total = int(labels_or_n) if isinstance(labels_or_n, (int, np.integer)) else len(labels_or_n)
    sampler.plan(total, chunk_samples, max_request_bytes)  # Exhausted before the header: the request does not fit
    out = writer(fmt, sampler.schema, total)
    head = out.begin()
    if head:
        yield head, 0
    done = 0
    for chunk in sampler.iter_chunks(labels_or_n, seed, chunk_samples, should_stop, max_request_bytes):
        done += len(chunk)
        data = out.write(chunk.values)
        del chunk  # its values, and below its bytes, are released before the next chunk is generated
        if data:
            yield data, done
        del data
    if done < total:
        return
    tail = out.end()
    if tail:
        yield tail, done


# -- reading back -------------------------------------------------------------------------------------------------


def _label_indices(schema: pb.DataSchema, names: np.ndarray) -> np.ndarray:
    t = schema.tabular
    col = next(c for c in t.columns if c.name == t.label_column)
    index = {c: i for i, c in enumerate(col.categories)}
    try:
        return np.fromiter((index[v] for v in names.tolist()), np.int32, count=len(names))
    except KeyError as e:
        raise ValueError(f"label {e.args[0]!r} is not a class of the schema") from None


def _tabular_result(schema: pb.DataSchema, values: dict[str, np.ndarray]):
    t = schema.tabular
    labels = _label_indices(schema, values[t.label_column]) if t.label_column else None
    return values, labels


def _read_npy(data: bytes, schema: pb.DataSchema, class_counts):
    array = np.load(io.BytesIO(data), allow_pickle=False, max_header_size=MAX_NPY_HEADER)
    if _kind(schema) == "image":
        im = schema.image
        if array.ndim != 4 or array.shape[1:] != (im.height, im.width, im.channels):
            raise ValueError(f"expected images [N, {im.height}, {im.width}, {im.channels}], got {array.shape}")
        labels = None
        if class_counts is not None and len(class_counts):
            counts = list(class_counts)
            if sum(counts) != len(array):
                raise ValueError(f"class counts add up to {sum(counts)}, the array holds {len(array)} images")
            labels = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        return array, labels
    expected = tabular_dtype(schema)
    if array.dtype.names != expected.names:
        raise ValueError(f"expected the columns {list(expected.names or ())}, got {array.dtype.names}")
    values = {}
    for col in schema.tabular.columns:
        field = array[col.name]
        if col.type == pb.COLUMN_TYPE_CATEGORICAL:
            values[col.name] = field.astype(object)
            if col.nullable:
                values[col.name][field == ""] = None
        else:
            values[col.name] = field.astype(_number_dtype(col))
    return _tabular_result(schema, values)


def _number_dtype(col: pb.Column) -> type:
    """What a numeric column decodes to: int64 for an integer column that is not nullable, else float64."""
    return np.int64 if col.type == pb.COLUMN_TYPE_INTEGER and not col.nullable else np.float64


def _read_csv(data: bytes, schema: pb.DataSchema):
    rows = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    columns = list(schema.tabular.columns)
    header = next(rows, None)
    if header != [col.name for col in columns]:
        raise ValueError(f"expected the header {[c.name for c in columns]}, got {header}")
    cells = list(zip(*rows)) or [() for _ in columns]
    values = {}
    for col, texts in zip(columns, cells):
        if col.type == pb.COLUMN_TYPE_CATEGORICAL:
            values[col.name] = np.asarray([None if col.nullable and not v else v for v in texts], dtype=object)
        elif col.type == pb.COLUMN_TYPE_INTEGER and not col.nullable:
            values[col.name] = np.asarray([int(v) for v in texts], np.int64)
        else:
            values[col.name] = np.asarray([math.nan if col.nullable and not v else float(v) for v in texts])
    return _tabular_result(schema, values)


def _read_parquet(data: bytes, schema: pb.DataSchema):
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    values = {}
    for col in schema.tabular.columns:
        column = table.column(col.name)
        if col.type == pb.COLUMN_TYPE_CATEGORICAL:
            values[col.name] = np.asarray(column.to_pylist(), dtype=object)
        elif col.nullable:
            values[col.name] = np.asarray(column.to_numpy(zero_copy_only=False), np.float64)  # nulls read as NaN
        else:
            values[col.name] = column.to_numpy().astype(_number_dtype(col))
    return _tabular_result(schema, values)


def read_samples(
    source: bytes | str | Path, fmt: str | int, schema: pb.DataSchema, class_counts: Mapping | list[int] | None = None
):
    """(values, labels) of sampled output, in the types the encoder decodes to: tabular -> ({column: array}, with
    the label column as str; int32 label indices or None), images -> ([N, H, W, C], labels). Image files carry no
    labels: give the per-class counts (schema order; SampleMetadata.class_counts) to rebuild them, since the output
    is grouped by class. `source` is the bytes or a file path."""
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
    name = format_name(fmt)
    if name == "npy":
        return _read_npy(data, schema, class_counts)
    if _kind(schema) == "image":
        raise ValueError(f"{name} holds tables; images come as npy")
    return _read_csv(data, schema) if name == "csv" else _read_parquet(data, schema)
