"""Data files read into model space, checked against a schema; and first-draft schemas proposed from files.

Files are untrusted: sizes are checked before memory is allocated, npz archives are read without pickles, and anything
malformed is a `DataError` that says what to fix. Formats: CSV (tabular; the first row names the columns), npz
(images in an array `x` or `images`, labels in `y` or `labels`) and MNIST-style idx files (optionally gzipped).
"""

from __future__ import annotations

import csv
import gzip
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
IMAGE_KEYS, LABEL_KEYS = ("x", "images"), ("y", "labels")
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
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
        return _load_csv(path, encoder, max_bytes, limit, coerce, should_stop or (lambda: False))
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
    max_bytes: int,
    max_encoded_bytes: int,
    coerce: bool,
    should_stop: Callable[[], bool],
) -> EncodedData:
    parts: list[EncodedData] = []
    encoded_bytes, row_bytes = 0, 4 * (encoder.space.shape[0] + 1)
    for columns, lines in _csv_chunks(path, max_bytes, encoder, CSV_CHUNK_ROWS):
        if should_stop():
            raise LoadCancelled(path.name)
        encoded_bytes += len(lines) * row_bytes
        if encoded_bytes > max_encoded_bytes:
            raise DataError(_too_big(path.name, encoded_bytes, max_encoded_bytes))
        try:
            parts.append(encoder.encode(columns, coerce=coerce))
        except DataError as e:
            line = None if e.row is None else lines[e.row]
            raise DataError(e.detail, column=e.column, row=e.row, where=path.name, line=line) from None
    if not parts:
        raise DataError(f"{path.name} has a header but no data rows")
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


def _csv_chunks(
    path: Path, max_bytes: int, encoder: TabularEncoder | None, chunk_rows: int | None
) -> Iterator[tuple[dict[str, list[str]], list[int]]]:
    """(column name -> strings, file line of each row) per chunk of at most `chunk_rows` data rows (None: one
    chunk); the header is checked first (by the encoder too, when given)."""
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(f"{path.name} is {size:,} bytes, over the limit of {max_bytes:,}; raise max_bytes")
    line = 1
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise DataError(f"{path.name} is empty: its first row must be a header naming the columns")
            twice = sorted(name for name, count in Counter(header).items() if count > 1)
            if twice:
                raise DataError(f"{path.name}: the header names columns {twice[:10]} more than once; rename them")
            if encoder is not None:
                try:
                    encoder.check_columns(header)
                except DataError as e:
                    raise DataError(e.detail, column=e.column, where=path.name) from None
            columns: list[list[str]] = [[] for _ in header]
            lines: list[int] = []
            for fields in reader:
                line = reader.line_num
                if not fields:
                    continue  # a blank line
                if len(fields) != len(header):
                    raise DataError(
                        f"has {len(fields)} fields but the header has {len(header)}", where=path.name, line=line
                    )
                for values, value in zip(columns, fields):
                    values.append(value)
                lines.append(line)
                if chunk_rows is not None and len(lines) >= chunk_rows:
                    yield dict(zip(header, columns)), lines
                    columns, lines = [[] for _ in header], []
            if lines:
                yield dict(zip(header, columns)), lines
    except UnicodeDecodeError:
        raise DataError(f"{path.name} is not UTF-8 text; save it as UTF-8") from None
    except csv.Error as e:
        raise DataError(f"not valid CSV ({e})", where=path.name, line=line) from None


def _read_csv(path: Path, max_bytes: int) -> tuple[list[str], dict[str, list[str]]]:
    """(header, column name -> list of strings) of a whole CSV file."""
    chunks = list(_csv_chunks(path, max_bytes, None, None))
    if not chunks:
        raise DataError(f"{path.name} has a header but no data rows")
    columns = chunks[0][0]
    return list(columns), columns


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
    path: Path, label_column: str | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[pb.DataSchema, list[str]]:
    """A first-draft schema read from a data file, and warnings to act on. The first warning is always that the
    draft is NOT private: its bounds and categories come from the data and must be replaced by public knowledge."""
    path = Path(path)
    warnings = [PRIVACY_WARNING]
    kind = _file_kind(path)
    if kind == "csv":
        header, columns = _read_csv(path, max_bytes)
        if label_column is not None and label_column not in columns:
            raise DataError(f"{path.name} has no column {label_column!r} to use as the label (it has {header[:10]})")
        schema = pb.DataSchema(
            tabular=pb.TabularSchema(
                columns=[_infer_column(n, columns[n], n == label_column, warnings) for n in header],
                label_column=label_column or "",
            )
        )
    else:
        if label_column is not None:
            raise DataError(
                "a label column is for CSV files; image labels come from the file's y or labels array "
                "(or the labels-idx1 file)"
            )
        schema = pb.DataSchema(image=_infer_image(path, kind, max_bytes, warnings))
    validate_schema(schema)
    return schema, warnings


def _as_numbers(values: list[str]) -> np.ndarray | None:
    try:
        numbers = np.asarray(values).astype(np.float64)
    except ValueError:
        return None
    return numbers if np.isfinite(numbers).all() else None


def _infer_column(name: str, values: list[str], is_label: bool, warnings: list[str]) -> pb.Column:
    present = [v for v in values if v.strip()]
    if len(present) < len(values):
        warnings.append(
            f"column {name!r} has {len(values) - len(present)} empty values: missing values are not "
            "supported yet; fill or drop those rows before training"
        )
    if not present:
        raise DataError("has no values to infer a type from; drop it or declare it by hand", column=name)
    numbers = _as_numbers(present)
    if numbers is not None and not is_label:
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
            "looks like an identifier, free text, or numbers with some text in them: drop the column, "
            "fix its values, or declare it by hand",
            column=name,
        )
    ordered = sorted(distinct, key=float) if numbers is not None else sorted(distinct)
    return pb.Column(name=name, type=pb.COLUMN_TYPE_CATEGORICAL, categories=ordered)


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
