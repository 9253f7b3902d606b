"""Data files read into model space, checked against a schema; and first-draft schemas proposed from files.

Files are untrusted: sizes are checked before memory is allocated, npz archives are read without pickles, and anything
malformed is a `DataError` that says what to fix. Formats: CSV (tabular; read as the schema's `tabular.csv` declares:
a header naming the columns or none, the delimiter, whitespace stripped or not, NA tokens), npz (images in an array
`x` or `images`, labels in `y` or `labels`) and MNIST-style idx files (optionally gzipped).
"""

from __future__ import annotations

import csv
import gzip
import itertools
import math
import struct
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from libsgde.io.encoding import DataError, EncodedData, TabularEncoder, encoder_for
from libsgde.io.schema import IMAGE_CHANNELS, MAX_CATEGORIES, validate_schema
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

DEFAULT_MAX_BYTES = 2 * 1024**3  # raw data read from one file (decompressed); model space is up to 4x that for bytes
MAX_INFERRED_CATEGORIES = 1000
CSV_CHUNK_ROWS = 65_536  # rows of strings held at once while a CSV is encoded
CSV_WHITESPACE = " \t"  # what csv.strip_whitespace removes around a field
IMAGE_KEYS, LABEL_KEYS = ("x", "images"), ("y", "labels")
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# Field values that `sgde schema infer` reads as missing unless told otherwise: the ones pandas reads as missing by
# default (less spreadsheet error codes) and "?", which UCI data sets use.
COMMON_NA_TOKENS = tuple("? NA N/A n/a #N/A #NA <NA> NaN nan -NaN -nan NULL null None".split())
POINT_MASS_SHARE = 0.5  # a numeric value this common is proposed (in a warning) as a public point mass
PRIVACY_WARNING = (
    "PRIVACY: the bounds, categories and class names in this schema were read from the data itself and "
    "are NOT private: they reveal e.g. the smallest and largest values and every rare category. "
    "Replace them with public knowledge (e.g. age 0 to 120, the official list of categories) before "
    "training a private model."
)


def load_dataset(
    path: Path,
    schema: pb.DataSchema,
    *,
    labels_path: Path | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_encoded_bytes: int | None = None,
    coerce: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> EncodedData:
    """Read `path` (.csv, .npz, or idx[.gz]) and encode it with `schema`. An idx images file finds its labels file by
    replacing ``images-idx3`` with ``labels-idx1`` in its name unless `labels_path` is given.

    `max_bytes` bounds what is read from the file (decompressed), `max_encoded_bytes` (default 4 x max_bytes) the
    model-space arrays; a CSV is read and encoded in chunks of rows, so that memory stays near the encoded size.
    `coerce` maps values that do not fit the schema into it instead of refusing them (libsgde.io.encoding).
    `should_stop` is asked between chunks; when it answers True, LoadCancelled is raised."""
    path = Path(path)
    encoder = encoder_for(schema)
    kind = _file_kind(path)
    declared = schema.WhichOneof("kind")
    if (kind == "csv") != (declared == "tabular"):
        what = "a CSV (tabular) file" if kind == "csv" else "an image file"
        raise DataError(
            f"{path.name} is {what} but the schema declares {declared} data; give a file of that kind "
            "or the schema that belongs to this file"
        )
    limit = 4 * max_bytes if max_encoded_bytes is None else max_encoded_bytes
    if isinstance(encoder, TabularEncoder):
        options = schema.tabular.csv
        return _load_csv(path, encoder, options, max_bytes, limit, coerce, should_stop or (lambda: False))
    h, w, c = encoder.space.shape
    shapes: set[tuple[int, ...]] = {(h, w, c), (h, w)} if c == 1 else {(h, w, c)}
    need_labels = encoder.space.num_classes > 0
    images, labels = _read_image_file(path, kind, labels_path, max_bytes, shapes, need_labels)
    encoded_bytes = len(images) * h * w * c * 4
    if encoded_bytes > limit:
        raise DataError(_too_big(path.name, encoded_bytes, limit))
    return encoder.encode(images, labels, coerce=coerce)


class LoadCancelled(Exception):
    """load_dataset stopped because its `should_stop` said so."""


def _too_big(name: str, encoded_bytes: int, limit: int) -> str:
    return (
        f"{name} takes {encoded_bytes:,} bytes or more in model space (one float32 per number, one per category of "
        f"each categorical column), over the limit of {limit:,}; use fewer categories or rows, or raise the limit"
    )


def _load_csv(
    path: Path,
    encoder: TabularEncoder,
    options: pb.CsvOptions,
    max_bytes: int,
    max_encoded_bytes: int,
    coerce: bool,
    should_stop: Callable[[], bool],
) -> EncodedData:
    parts: list[EncodedData] = []
    encoded_bytes, row_bytes = 0, 4 * (encoder.space.shape[0] + 1)
    for columns, lines in _csv_chunks(path, max_bytes, options, encoder, CSV_CHUNK_ROWS):
        if should_stop():
            raise LoadCancelled(path.name)
        encoded_bytes += len(lines) * row_bytes
        if encoded_bytes > max_encoded_bytes:
            raise DataError(_too_big(path.name, encoded_bytes, max_encoded_bytes))
        try:
            parts.append(encoder.encode(columns, coerce=coerce))
        except DataError as e:
            line = None if e.row is None else lines[e.row]
            detail = e.detail
            value = None if e.row is None or e.column not in columns else columns[e.column][e.row]
            if isinstance(value, str) and value != value.strip(CSV_WHITESPACE):
                detail += "; the value has spaces around it: to remove them, set csv.strip_whitespace (--strip)"
            raise DataError(detail, column=e.column, row=e.row, where=path.name, line=line) from None
    if not parts:
        raise DataError(f"{path.name} has no data rows")
    return _concatenate(parts)


def _concatenate(parts: list[EncodedData]) -> EncodedData:
    if len(parts) == 1:
        return parts[0]
    counts: list[dict[str, int]] = [{}, {}]
    for part in parts:
        for total, more in zip(counts, (part.clipped, part.coerced)):
            for name, n in more.items():
                total[name] = total.get(name, 0) + n
    first = parts[0]
    labels = None if first.labels is None else np.concatenate([p.labels for p in parts if p.labels is not None])
    x = np.concatenate([p.x for p in parts])
    return EncodedData(x, labels, first.space, counts[0], counts[1])


def _file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".npz"):
        return "npz"
    if name.endswith((".gz", ".idx", "-ubyte")):
        return "idx"
    raise DataError(
        f"{path.name}: unknown file type; give a .csv file (tabular data), or an .npz or MNIST-style idx "
        "file (.idx, -ubyte, .gz) of images"
    )


def _delimiter(options: pb.CsvOptions) -> str:
    delimiter = options.delimiter or ","
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise DataError(
            f"csv.delimiter {delimiter!r} is not usable: give one character other than a quote or a line break "
            "(',', ';', '|', a tab)"
        )
    return delimiter


def _missing_values(options: pb.CsvOptions) -> frozenset[str]:
    """The field values that read as missing: a blank field, and the schema's NA tokens."""
    return frozenset(("", *options.na_tokens))


def _cleaned(values: list[str], strip: bool, missing: frozenset[str]) -> list[str | None]:
    """A column's fields as the schema declares them read: stripped of spaces and tabs if `strip`, None if missing."""
    if strip:
        values = [v.strip(CSV_WHITESPACE) for v in values]
    if missing.isdisjoint(values):  # the common case, checked in C
        return list(values)
    return [None if v in missing else v for v in values]


def _csv_records(
    path: Path, max_bytes: int, options: pb.CsvOptions, encoder: TabularEncoder | None, chunk_rows: int | None
) -> Iterator[tuple[list[str], list[list[str]], list[int]]]:
    """(column names, raw fields of each column, file line of each row) per chunk of at most `chunk_rows` data rows
    (None: one chunk). The header is checked first (by the encoder too, when given). A file without a header
    (`options.no_header`) has the schema's columns in order, or, with no encoder, columns named c0, c1, ..."""
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(f"{path.name} is {size:,} bytes, over the limit of {max_bytes:,}; raise max_bytes")
    delimiter = _delimiter(options)
    reader = None
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            first = next(reader, None)
            while first == []:  # blank lines before the first row
                first = next(reader, None)
            if not first:
                what = "data" if options.no_header else "a header naming the columns"
                raise DataError(f"{path.name} is empty: its first row must be {what}")
            pending: list[list[str]] = []
            if options.no_header:
                # The first row is data, whatever it looks like: guessing would drop a row or read one as names.
                header = [c.name for c in encoder.schema.columns] if encoder else [f"c{i}" for i in range(len(first))]
                pending.append(first)
            else:
                header = [n.strip(CSV_WHITESPACE) for n in first] if options.strip_whitespace else first
                _check_header(path, header, encoder)
            columns: list[list[str]] = [[] for _ in header]
            lines: list[int] = []
            for fields in itertools.chain(pending, reader):
                if not fields:
                    continue  # a blank line
                if len(fields) != len(header):
                    raise DataError(
                        _wrong_width(len(fields), len(header), options.no_header, encoder is not None),
                        where=path.name,
                        line=reader.line_num,
                    )
                for values, value in zip(columns, fields):
                    values.append(value)
                lines.append(reader.line_num)
                if chunk_rows is not None and len(lines) >= chunk_rows:
                    yield header, columns, lines
                    columns, lines = [[] for _ in header], []
            if lines:
                yield header, columns, lines
    except UnicodeDecodeError:
        raise DataError(f"{path.name} is not UTF-8 text; save it as UTF-8") from None
    except csv.Error as e:
        raise DataError(f"not valid CSV ({e})", where=path.name, line=reader.line_num if reader else 1) from None


def _check_header(path: Path, header: list[str], encoder: TabularEncoder | None) -> None:
    twice = sorted(name for name, count in Counter(header).items() if count > 1)
    if twice:
        raise DataError(f"{path.name}: the header names columns {twice[:10]} more than once; rename them")
    if encoder is None:
        return
    try:
        encoder.check_columns(header)
    except DataError as e:
        detail, declared = e.detail, encoder.schema.columns
        if len(header) == 1 and len(declared) > 1:
            detail += "; the first line is one field: is the delimiter right? (csv.delimiter, --delimiter)"
        elif not {c.name for c in declared} & set(header):
            detail += (
                f"; the first line names none of the schema's columns: if {path.name} has no header (its first "
                "line is data), declare csv.no_header in the schema or give --no-header"
            )
        raise DataError(detail, column=e.column, where=path.name) from None


def _wrong_width(fields: int, width: int, no_header: bool, declared: bool) -> str:
    if fields == 1 and width > 1:
        return f"has 1 field but {width} columns are expected: is the delimiter right? (csv.delimiter, --delimiter)"
    if not no_header:
        return f"has {fields} fields but the header has {width}"
    if declared:
        return (
            f"has {fields} fields but the schema declares {width} columns (the file has no header: its fields are "
            "the schema's columns, in order)"
        )
    return f"has {fields} fields but the first line has {width}"


def _csv_chunks(
    path: Path, max_bytes: int, options: pb.CsvOptions, encoder: TabularEncoder | None, chunk_rows: int | None
) -> Iterator[tuple[dict[str, list[str | None]], list[int]]]:
    """(column name -> values, file line of each row) per chunk, read as `options` declare: fields stripped when
    `strip_whitespace`, and None where a field is blank or one of `na_tokens` (the encoder decides whether the
    column may be missing)."""
    missing = _missing_values(options)
    for header, columns, lines in _csv_records(path, max_bytes, options, encoder, chunk_rows):
        yield {n: _cleaned(v, options.strip_whitespace, missing) for n, v in zip(header, columns)}, lines


def _read_csv(path: Path, max_bytes: int, options: pb.CsvOptions) -> tuple[list[str], list[list[str]]]:
    """(column names, raw fields of each column) of a whole CSV file (neither stripped nor read for NA tokens)."""
    chunks = list(_csv_records(path, max_bytes, options, None, None))
    if not chunks:
        raise DataError(f"{path.name} has no data rows")
    header, columns, _ = chunks[0]
    return header, columns


def _read_image_file(
    path: Path,
    kind: str,
    labels_path: Path | None,
    max_bytes: int,
    shapes: set[tuple[int, ...]] | None,
    need_labels: bool,
):
    """(images, labels or None) from an npz or idx file; `shapes` are the allowed per-image shapes (None: any)."""
    if kind == "npz":
        arrays = _read_npz(path, max_bytes)
        return arrays["images"], arrays.get("labels")
    images = _read_idx(path, max_bytes, (3, 4), shapes, "images")
    if labels_path is None:
        guess = path.name.replace("images-idx3", "labels-idx1")
        if guess != path.name and (need_labels or path.with_name(guess).exists()):
            labels_path = path.with_name(guess)
    if labels_path is None:
        if need_labels:
            raise DataError(
                f"{path.name}: the schema declares classes but no labels file is known; name it like the "
                "images file with labels-idx1 for images-idx3, or give labels_path"
            )
        return images, None
    labels = _read_idx(Path(labels_path), max_bytes, (1,), {()}, "labels")
    if len(labels) != len(images):
        raise DataError(f"{Path(labels_path).name} has {len(labels)} labels for {len(images)} images in {path.name}")
    return images, labels


def _read_npz(path: Path, max_bytes: int) -> dict[str, np.ndarray]:
    """The images (and labels, if any) of an npz archive, sizes checked from the array headers before loading."""
    with path.open("rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise DataError(f"{path.name} is not an npz (zip) archive; save it with numpy.savez")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            chosen = {}
            for role, keys in (("images", IMAGE_KEYS), ("labels", LABEL_KEYS)):
                found = [k for k in keys if k in members]
                if len(found) > 1:
                    raise DataError(f"{path.name} has both arrays {found}; keep one")
                if found:
                    chosen[role] = found[0]
                    _check_npy_header(archive, members[found[0]], path.name, max_bytes)
            if "images" not in chosen:
                raise DataError(
                    f"{path.name} has no array named {' or '.join(IMAGE_KEYS)} (it has "
                    f"{sorted(members)[:10]}); save the images as x=..."
                )
        with np.load(path, allow_pickle=False) as npz:
            return {role: npz[key] for role, key in chosen.items()}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path.name}: not a readable npz archive ({str(e)[:200]})") from None


def _check_npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, max_bytes: int) -> None:
    if info.file_size > max_bytes:
        raise DataError(
            f"{name}: array {info.filename} is {info.file_size:,} bytes uncompressed, over the limit of "
            f"{max_bytes:,}; raise max_bytes"
        )
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise DataError(f"{name}: array {info.filename} uses .npy format {version}; save plain numeric arrays")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
    if dtype.hasobject:
        raise DataError(
            f"{name}: array {info.filename} holds Python objects (pickles), which are refused; save "
            "plain numeric arrays"
        )
    if math.prod(shape) * dtype.itemsize > info.file_size:
        raise DataError(f"{name}: array {info.filename} declares shape {shape} but holds fewer bytes; it is truncated")


def _read_idx(
    path: Path, max_bytes: int, ndims: tuple[int, ...], shapes: set[tuple[int, ...]] | None, what: str
) -> np.ndarray:
    """An idx array (gzipped if the name ends in .gz); dims are checked against `shapes`, `max_bytes` and the file
    size before anything is allocated."""
    gzipped = path.name.lower().endswith(".gz")
    try:
        with gzip.open(path, "rb") if gzipped else path.open("rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in IDX_DTYPES or magic[3] not in ndims:
                expected = " or ".join(f"0x0000 08 {n:02x}" for n in ndims)
                raise DataError(
                    f"{path.name} is not an idx file of {what}: its magic number is {magic.hex()}, expected {expected}"
                )
            dtype, ndim = IDX_DTYPES[magic[2]], magic[3]
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataError(f"{path.name} is truncated inside its header")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            if shapes is not None and dims[1:] not in shapes:
                raise DataError(
                    f"{path.name} holds {what} of shape {dims[1:]} but the schema declares "
                    f"{' or '.join(str(s) for s in sorted(shapes))}"
                )
            nbytes = math.prod(dims) * dtype.itemsize
            if nbytes > max_bytes:
                raise DataError(
                    f"{path.name} declares {dims} {what}: {nbytes:,} bytes, over the limit of "
                    f"{max_bytes:,}; raise max_bytes if that is right"
                )
            if not gzipped and path.stat().st_size != 4 + 4 * ndim + nbytes:
                raise DataError(
                    f"{path.name} is {path.stat().st_size:,} bytes but its header declares "
                    f"{4 + 4 * ndim + nbytes:,}; it is truncated or has trailing data"
                )
            data = f.read(nbytes)
            if len(data) < nbytes:
                raise DataError(f"{path.name} is truncated: {len(data):,} of {nbytes:,} data bytes")
            if f.read(1):
                raise DataError(f"{path.name} has data after the {dims} {what} its header declares")
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path.name}: cannot read it ({str(e)[:200]})") from None
    return np.frombuffer(data, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def infer_schema(
    path: Path,
    label_column: str | None = None,
    *,
    csv_options: pb.CsvOptions | None = None,
    detect_na: bool = True,
    detect_strip: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[pb.DataSchema, list[str]]:
    """A first-draft schema read from a data file, and warnings to act on. The first warning is always that the
    draft is NOT private: its bounds and categories come from the data and must be replaced by public knowledge.

    A CSV file is read as `csv_options` declare (default: a header, commas, nothing stripped, blank fields
    missing). With `detect_strip`, fields with spaces or tabs around them turn `strip_whitespace` on; with
    `detect_na`, the COMMON_NA_TOKENS found in the file join `na_tokens`. Columns with missing values are declared
    `nullable`. Each of these decisions is said in the warnings, with the columns and rows it concerns."""
    path = Path(path)
    warnings = [PRIVACY_WARNING]
    kind = _file_kind(path)
    if kind == "csv":
        options = pb.CsvOptions()
        if csv_options is not None:
            options.CopyFrom(csv_options)
        tabular = _infer_tabular(path, label_column, options, detect_na, detect_strip, max_bytes, warnings)
        schema = pb.DataSchema(tabular=tabular)
    else:
        if label_column is not None:
            raise DataError(
                "a label column is for CSV files; image labels come from the file's y or labels array "
                "(or the labels-idx1 file)"
            )
        if csv_options is not None and csv_options.ListFields():
            raise DataError(f"{path.name} is not a CSV file: CSV options (header, delimiter, NA tokens) do not apply")
        schema = pb.DataSchema(image=_infer_image(path, kind, max_bytes, warnings))
    validate_schema(schema)
    return schema, warnings


def _infer_tabular(
    path: Path,
    label_column: str | None,
    options: pb.CsvOptions,
    detect_na: bool,
    detect_strip: bool,
    max_bytes: int,
    warnings: list[str],
) -> pb.TabularSchema:
    header, raw = _read_csv(path, max_bytes, options)
    rows = len(raw[0])
    if detect_strip and not options.strip_whitespace:
        _detect_padding(path, header, raw, options, warnings)
        if options.strip_whitespace:
            header = [name.strip(CSV_WHITESPACE) for name in header]
            _check_header(path, header, None)
    if options.no_header:
        warnings.append(
            f"{path.name} has no header: its {len(header)} columns are named c0 to c{len(header) - 1} here, in "
            "the file's order; rename them in the schema (keep the order)"
        )
    elif any(_as_numbers([name]) is not None for name in header):
        warnings.append(
            f"the first line of {path.name} names columns {[n for n in header if _as_numbers([n]) is not None][:5]}, "
            "which look like data: if the file has no header, infer again with --no-header"
        )
    if label_column is not None and label_column not in header:
        raise DataError(f"{path.name} has no column {label_column!r} to use as the label (it has {header[:10]})")
    strip = options.strip_whitespace
    columns = [[v.strip(CSV_WHITESPACE) for v in values] for values in raw] if strip else raw
    if detect_na:
        _detect_na_tokens(header, columns, options, warnings)
    missing = _missing_values(options)
    inferred = []
    for name, values in zip(header, columns):
        found = Counter(v for v in values if v in missing)
        column = _infer_column(name, [None if v in missing else v for v in values], name == label_column, warnings)
        if found:
            counts = ", ".join(f"{'blank' if t == '' else repr(t)}: {c:,}" for t, c in found.most_common())
            if name == label_column:  # every row needs a class: a label column cannot be nullable
                warnings.append(
                    f"the label column {name!r} is missing in {found.total():,} of {rows:,} rows ({counts}): "
                    "every row needs a class, so those rows will be refused; drop them before training"
                )
            else:
                column.nullable = True
                warnings.append(
                    f"column {name!r} is missing in {found.total():,} of {rows:,} rows ({counts}): it is declared "
                    "nullable, so generators learn how often it is missing (nothing is imputed)"
                )
        inferred.append(column)
    tabular = pb.TabularSchema(columns=inferred, label_column=label_column or "")
    if options.ListFields():  # only what differs from a plain CSV file
        tabular.csv.CopyFrom(options)
    return tabular


def _detect_padding(
    path: Path, header: list[str], raw: list[list[str]], options: pb.CsvOptions, warnings: list[str]
) -> None:
    """Turn `strip_whitespace` on if fields have spaces or tabs around them (" State-gov"), saying where."""
    padded: dict[str, int] = {}
    example = None
    for name, values in zip(header, raw):
        count = sum(1 for v in values if v != v.strip(CSV_WHITESPACE))
        if count:
            padded[name.strip(CSV_WHITESPACE)] = count
            example = example or next(v for v in values if v != v.strip(CSV_WHITESPACE))
    names_padded = [n for n in header if n != n.strip(CSV_WHITESPACE)]
    if not padded and not names_padded:
        return
    options.strip_whitespace = True
    where = ", ".join(f"{n!r} ({c:,} rows)" for n, c in list(padded.items())[:10]) + (
        ", ..." if len(padded) > 10 else ""
    )
    warnings.append(
        f"fields of {path.name} have spaces or tabs around them (e.g. {(example or names_padded[0])!r}; "
        f"{'columns ' + where if padded else 'the header only'}): csv.strip_whitespace is set, so they are read "
        "without them; if the spaces are part of the values, infer again with --no-strip"
    )


def _detect_na_tokens(header: list[str], columns: list[list[str]], options: pb.CsvOptions, warnings: list[str]) -> None:
    """Add the COMMON_NA_TOKENS that the file holds to `na_tokens`, saying in which columns."""
    seen: dict[str, list[str]] = {}
    for name, values in zip(header, columns):
        for token in set(values).intersection(COMMON_NA_TOKENS):
            seen.setdefault(token, []).append(name)
    delimiter = options.delimiter or ","
    new = [t for t in COMMON_NA_TOKENS if t in seen and t not in options.na_tokens and delimiter not in t]
    if not new:
        return
    options.na_tokens.extend(new)
    found = "; ".join(f"{t!r} in {', '.join(repr(n) for n in seen[t][:10])}" for t in new)
    warnings.append(
        f"read as missing values (csv.na_tokens): {found}. If one of them is a real value, infer again with "
        "--na TOKEN for each token that does mean missing (--na '' for none: blank fields are always missing)"
    )


def _as_numbers(values: list[str]) -> np.ndarray | None:
    try:
        numbers = np.asarray(values).astype(np.float64)
    except ValueError:
        return None
    return numbers if np.isfinite(numbers).all() else None


def _infer_column(name: str, values: list[str | None], is_label: bool, warnings: list[str]) -> pb.Column:
    present = [v for v in values if v is not None]
    if not present:
        raise DataError("has no values to infer a type from (all missing); drop it or declare it by hand", column=name)
    numbers = _as_numbers(present)
    if numbers is not None and not is_label:
        _point_mass_candidate(name, numbers, len(values), warnings)
        integer = bool(np.all(numbers == np.round(numbers)))
        lower, upper = float(numbers.min()), float(numbers.max())
        if lower == upper:
            upper = lower + 1
            warnings.append(
                f"column {name!r} holds one value only ({lower:g}); its bounds were widened to [{lower:g}, {upper:g}]"
            )
        return pb.Column(
            name=name, type=pb.COLUMN_TYPE_INTEGER if integer else pb.COLUMN_TYPE_CONTINUOUS, lower=lower, upper=upper
        )
    distinct = set(present)
    if len(distinct) > MAX_INFERRED_CATEGORIES:
        raise DataError(
            f"has {len(distinct):,} distinct values, more than {MAX_INFERRED_CATEGORIES} categories; it "
            "looks like an identifier, free text, or numbers with some text in them (an NA token not "
            "recognised? give it with --na): drop the column, fix its values, or declare it by hand",
            column=name,
        )
    ordered = sorted(distinct, key=float) if numbers is not None else sorted(distinct)
    return pb.Column(name=name, type=pb.COLUMN_TYPE_CATEGORICAL, categories=ordered)


def _point_mass_candidate(name: str, numbers: np.ndarray, rows: int, warnings: list[str]) -> None:
    """Propose (never set) a point mass: a value that covers POINT_MASS_SHARE of the rows or more."""
    values, counts = np.unique(numbers, return_counts=True)
    top = int(np.argmax(counts))
    share = counts[top] / rows
    if share >= POINT_MASS_SHARE and len(values) > 1:
        value = float(values[top])
        warnings.append(
            f"column {name!r} is {value:g} in {share:.0%} of rows: if {value:g} is a value it is publicly known "
            f"to take often (e.g. 0 for an amount), declare point_masses: [{value:g}] so that generators reproduce "
            "it; it is not set here, because point masses must be public knowledge, not read from the data"
        )


def _infer_image(path: Path, kind: str, max_bytes: int, warnings: list[str]) -> pb.ImageSchema:
    images, labels = _read_image_file(path, kind, None, max_bytes, None, need_labels=False)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4 or images.shape[3] not in IMAGE_CHANNELS or images.dtype.kind not in "uif":
        raise DataError(
            f"{path.name}: expected numeric images of shape (N, H, W) or (N, H, W, C) with C in "
            f"{IMAGE_CHANNELS}, got {images.dtype} {images.shape}"
        )
    if len(images) == 0:
        raise DataError(f"{path.name} holds no images")
    if images.dtype == np.uint8:
        pixel_max = 255.0
    else:
        top = float(images.max())
        if not math.isfinite(top):
            raise DataError(f"{path.name}: the images hold NaN or infinite pixels; fix them first")
        pixel_max = 1.0 if top <= 1 else float(math.ceil(top))
        warnings.append(
            f"pixel_max {pixel_max:g} was read from the data (its largest pixel); if the format has a "
            "known range (e.g. 65535 for 16-bit images) declare that instead"
        )
    schema = pb.ImageSchema(
        height=images.shape[1], width=images.shape[2], channels=images.shape[3], pixel_max=pixel_max
    )
    if labels is None:
        warnings.append(
            "no labels found (an array y or labels, or a labels-idx1 file): the schema declares no "
            "classes, so generation will be unconditional"
        )
        return schema
    labels = np.asarray(labels)
    if labels.shape[:1] != images.shape[:1]:
        raise DataError(f"{path.name} has {len(labels)} labels for {len(images)} images; give one label per image")
    if labels.ndim != 1 or labels.dtype.kind not in "uif" or not np.all(labels == np.floor(labels)) or labels.min() < 0:
        raise DataError(f"{path.name}: labels must be class indices 0, 1, ... (got {labels.dtype} {labels.shape})")
    classes = int(labels.max()) + 1
    if classes > MAX_CATEGORIES:
        raise DataError(f"{path.name}: labels go up to {classes - 1}, over {MAX_CATEGORIES} classes")
    schema.class_names.extend(str(i) for i in range(classes))
    warnings.append(f"class names are '0' to '{classes - 1}'; rename them if you like (a label is its class's index)")
    return schema
