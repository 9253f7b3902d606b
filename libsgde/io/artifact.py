"""The model artifact: one .safetensors file whose header metadata holds the manifest, and a strict loader for it.

Layout (the safetensors format): an 8-byte little-endian u64 N, N bytes of UTF-8 JSON header, then the data buffer.
The header maps tensor names to ``{"dtype", "shape", "data_offsets"}`` and holds ``{"__metadata__": {MANIFEST_KEY:
<manifest JSON>}}``. Artifacts come from other people, so the header is parsed here, strictly and within size caps,
before any byte of the buffer is read; nothing in a file is ever executed (no pickle).

BF16 tensors load as ``ml_dtypes.bfloat16`` arrays (the dtype JAX uses), so they round-trip unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from google.protobuf import json_format
from safetensors.numpy import save as _st_save

from libsgde.domain.privacy import COMPONENT_KINDS
from libsgde.errors import FieldError
from libsgde.io.atomic import write_atomic
from libsgde.io.schema import SchemaError, data_kind, schema_from_dict, schema_to_dict
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

FORMAT = "sgde-artifact"
FORMAT_VERSION = 1
MANIFEST_KEY = "sgde.manifest"
MAX_HEADER_BYTES = 8 << 20
MAX_TENSORS = 4096
MAX_RANK = 8
MAX_ARTIFACT_BYTES = 1 << 30
ALLOWED_DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I64": 8, "U8": 1}
_NUMPY_DTYPES = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "U8": np.dtype("u1"),
}
_CODE_OF_NAME = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int32": "I32", "int64": "I64", "uint8": "U8"}
_TENSOR_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,256}")
_ARCHITECTURE = re.compile(r"[a-z][a-z0-9-]{0,63}")
_MECHANISM = re.compile(r"[a-z][a-z0-9-]{0,31}")
_PURPOSE = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # a privacy component's purpose, e.g. "class_prior"
_MANIFEST_KEYS = ("format", "format_version", "architecture", "config", "data_schema", "privacy", "training")


class ArtifactError(FieldError):
    """An artifact that is malformed, unsafe or not ours. The message says what is wrong and, where useful, what to
    do; `field` names the offending manifest field (dotted path) when there is one."""

    def __init__(self, message: str, field: str = ""):
        super().__init__(field, message, message=message)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets relative to the start of the data buffer
    end: int


@dataclass(frozen=True)
class Manifest:
    format_version: int
    architecture: str
    config: dict
    data_schema: pb.DataSchema
    privacy: pb.PrivacyReport
    training: dict
    raw: dict  # the manifest as parsed

    @property
    def data_kind(self) -> pb.DataKind:
        return data_kind(self.data_schema)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, compact, ASCII); protos in their proto3 JSON form."""
        return _manifest_json(
            self.format_version, self.architecture, self.config, self.data_schema, self.privacy, self.training
        )


def _manifest_json(version, architecture, config, data_schema, privacy, training) -> str:
    return json.dumps(
        {
            "format": FORMAT,
            "format_version": version,
            "architecture": architecture,
            "config": config,
            "data_schema": schema_to_dict(data_schema),
            "training": training,
            "privacy": json_format.MessageToDict(privacy, preserving_proto_field_name=True),
        },
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    )


@dataclass(frozen=True)
class ArtifactHeader:
    manifest: Manifest
    tensors: dict[str, TensorInfo]
    data_offset: int  # 8 + N: where the data buffer starts in the file
    total_size: int


# Called with the parsed manifest and tensor table; raises ArtifactError when the tensors are not the ones the
# architecture implies. The check is libsgde.io.generator.check_tensors (it needs JAX): the strict loader and the
# registry's publish pass it here.
TensorCheck = Callable[[Manifest, dict[str, TensorInfo]], None]


def _short(value: Any, limit: int = 80) -> str:
    """repr() of an untrusted value, cut short so that messages stay readable."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _too_deep(obj: Any, limit: int = 32) -> bool:
    stack = [(obj, 1)]
    while stack:
        o, depth = stack.pop()
        if isinstance(o, dict | list):
            if depth > limit:
                return True
            stack.extend((c, depth + 1) for c in (o.values() if isinstance(o, dict) else o))
    return False


def strict_json(data: bytes | str, what: str) -> Any:
    def no_duplicates(pairs):
        obj = {}
        for k, v in pairs:
            if k in obj:
                raise ArtifactError(f"{what}: key {k!r} appears more than once")
            obj[k] = v
        return obj

    def no_constants(name):
        raise ArtifactError(f"{what}: {name} is not allowed in JSON")

    def finite_float(text):
        if not math.isfinite(value := float(text)):
            raise ArtifactError(f"{what}: number {text[:40]} is out of range")
        return value

    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants, parse_float=finite_float)
    except ArtifactError:
        raise
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ArtifactError(f"{what} is not valid UTF-8 JSON ({type(e).__name__}: {str(e)[:200]})") from None


def header_length(prefix8: bytes | bytearray) -> int:
    """N, the header length declared by the first 8 bytes; refused if over MAX_HEADER_BYTES."""
    if len(prefix8) < 8:
        raise ArtifactError(f"file is truncated: it has {len(prefix8)} bytes, fewer than the 8-byte header length")
    n = int.from_bytes(prefix8[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise ArtifactError(
            f"declared header length {n} is over the limit of {MAX_HEADER_BYTES} bytes; "
            "this is not an SGDE artifact (or it is corrupt)"
        )
    return n


def parse_header(prefix: bytes, total_size: int, check_tensors: TensorCheck | None = None) -> ArtifactHeader:
    """Parse and check the header in `prefix` (at least 8 + N bytes) of a file of `total_size` bytes."""
    n = header_length(prefix)
    data_offset = 8 + n
    if data_offset > total_size:
        raise ArtifactError(f"file is truncated: the header declares {n} bytes but the file has only {total_size}")
    if len(prefix) < data_offset:
        raise ArtifactError(f"header is truncated: {len(prefix)} bytes given, {data_offset} needed")
    header = strict_json(bytes(prefix[8:data_offset]), "safetensors header")
    if not isinstance(header, dict):
        raise ArtifactError(f"safetensors header must be a JSON object, not {type(header).__name__}")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ArtifactError(
            "safetensors header has no __metadata__ object of strings; write artifacts with "
            "libsgde.io.artifact.write_artifact"
        )
    if MANIFEST_KEY not in meta:
        raise ArtifactError(f"__metadata__ has no {MANIFEST_KEY!r}: this safetensors file is not an SGDE artifact")
    tensors = parse_tensors(header, total_size - data_offset)
    manifest = _manifest_from_dict(strict_json(meta[MANIFEST_KEY], "manifest"))
    if check_tensors is not None:
        check_tensors(manifest, tensors)
    return ArtifactHeader(manifest, tensors, data_offset, total_size)


def parse_tensors(entries: dict, buffer_len: int) -> dict[str, TensorInfo]:
    if len(entries) > MAX_TENSORS:
        raise ArtifactError(f"artifact has {len(entries)} tensors, over the limit of {MAX_TENSORS}")
    tensors = {}
    for name, e in entries.items():
        if not _TENSOR_NAME.fullmatch(name):
            raise ArtifactError(f"tensor name {_short(name)} must be 1-256 characters of A-Z a-z 0-9 _ . : / -")
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise ArtifactError(f"tensor {name!r} must be an object with exactly dtype, shape and data_offsets")
        dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
        if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
            raise ArtifactError(f"tensor {name!r} has dtype {_short(dtype)}; allowed: {', '.join(ALLOWED_DTYPES)}")
        if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(type(d) is int and d >= 0 for d in shape):
            raise ArtifactError(f"tensor {name!r} shape must be a list of at most {MAX_RANK} integers >= 0")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise ArtifactError(f"tensor {name!r} data_offsets must be [begin, end] with 0 <= begin <= end")
        begin, end = offsets
        nbytes = math.prod(shape) * ALLOWED_DTYPES[dtype]
        if end - begin != nbytes:
            need = nbytes if nbytes <= buffer_len else "more than the whole data buffer"
            raise ArtifactError(f"tensor {name!r} spans {end - begin} bytes but its shape and dtype need {need}")
        tensors[name] = TensorInfo(name, dtype, tuple(shape), begin, end)
    pos = 0
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin != pos:
            what = "overlaps the tensor before it" if t.begin < pos else "leaves a gap before it"
            raise ArtifactError(f"tensor {t.name!r} at byte {t.begin} {what} (expected byte {pos})")
        pos = t.end
    if pos != buffer_len:
        raise ArtifactError(
            f"tensors cover {pos} bytes but the data buffer has {buffer_len}: the file is "
            f"{'truncated' if pos > buffer_len else 'followed by extra bytes'}"
        )
    return tensors


def _manifest_from_dict(raw: Any) -> Manifest:
    if not isinstance(raw, dict):
        raise ArtifactError("manifest must be a JSON object")
    if unknown := sorted(set(raw) - set(_MANIFEST_KEYS)):
        raise ArtifactError(f"manifest has unknown keys {unknown}; allowed: {list(_MANIFEST_KEYS)}")
    if missing := [k for k in _MANIFEST_KEYS if k not in raw]:
        raise ArtifactError(f"manifest is missing {missing}")
    if raw["format"] != FORMAT:
        raise ArtifactError(f"manifest format is {_short(raw['format'])}, expected {FORMAT!r}", "format")
    version = raw["format_version"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise ArtifactError(
            f"artifact format_version {_short(version)} is not supported (this sgde reads version "
            f"{FORMAT_VERSION}); upgrade sgde or re-export the model",
            "format_version",
        )
    arch = raw["architecture"]
    if not isinstance(arch, str) or not _ARCHITECTURE.fullmatch(arch):
        raise ArtifactError(f"architecture {_short(arch)} must match {_ARCHITECTURE.pattern}", "architecture")
    for key in ("config", "training", "data_schema", "privacy"):
        if not isinstance(raw[key], dict):
            raise ArtifactError(f"manifest {key} must be a JSON object", key)
        if _too_deep(raw[key]):
            raise ArtifactError(f"manifest {key} is nested too deeply (at most 32 levels)", key)
    try:
        schema = schema_from_dict(raw["data_schema"])
    except SchemaError as e:
        field = f"data_schema.{e.field}" if e.field else "data_schema"
        raise ArtifactError(f"manifest {field}: {e.description}", field) from None
    return Manifest(version, arch, raw["config"], schema, _parse_privacy(raw["privacy"]), raw["training"], raw)


MAX_PRIVACY_COMPONENTS = 16  # a run's further releases; more would only make the registry's recomputation slow


def _parse_privacy(d: dict) -> pb.PrivacyReport:
    p = pb.PrivacyReport()
    try:
        json_format.ParseDict(d, p, ignore_unknown_fields=False)
    except Exception as e:  # noqa: BLE001 - ParseDict can raise more than ParseError on hostile input
        raise ArtifactError(f"manifest privacy is not a valid PrivacyReport: {str(e)[:300]}", "privacy") from None

    def bad(field: str, why: str):
        return ArtifactError(f"manifest privacy.{field}: {why}", f"privacy.{field}")

    if not _MECHANISM.fullmatch(p.mechanism):
        raise bad("mechanism", f"{_short(p.mechanism)} must match {_MECHANISM.pattern}, e.g. 'dp-sgd' or 'none'")
    if p.mechanism == "none":
        if p.epsilon != math.inf:
            raise bad("epsilon", "a model trained without DP must declare epsilon = Infinity")
    else:
        if not (math.isfinite(p.epsilon) and p.epsilon > 0):
            raise bad("epsilon", f"must be a finite number > 0 (got {p.epsilon})")
        if not p.accountant:
            raise bad("accountant", "name the accountant that computed epsilon, e.g. 'pld'")
    if not 0 <= p.delta < 1:
        raise bad("delta", f"must be in [0, 1) (got {p.delta})")
    if not 0 <= p.sampling_rate <= 1:
        raise bad("sampling_rate", f"must be in [0, 1] (got {p.sampling_rate})")
    for field in ("noise_multiplier", "clip_norm", "rdp_epsilon", "steps", "dataset_size"):
        value = getattr(p, field)  # all >= 0; only rdp_epsilon may be Infinity (a model trained without DP)
        if not 0 <= value < math.inf and not (field == "rdp_epsilon" and value == math.inf):
            raise bad(field, f"must be a finite number >= 0 (got {value})")
    if len(p.components) > MAX_PRIVACY_COMPONENTS:
        raise bad("components", f"at most {MAX_PRIVACY_COMPONENTS} (got {len(p.components)})")
    for i, c in enumerate(p.components):
        where = f"components[{i}]"
        if not _PURPOSE.fullmatch(c.purpose):
            raise bad(f"{where}.purpose", f"{_short(c.purpose)} must match {_PURPOSE.pattern}")
        if c.kind not in COMPONENT_KINDS:
            raise bad(f"{where}.kind", f"{_short(c.kind)} is not one of {', '.join(COMPONENT_KINDS)}")
        if not 0 <= c.sampling_rate <= 1:
            raise bad(f"{where}.sampling_rate", f"must be in [0, 1] (got {c.sampling_rate})")
        for field in ("noise_multiplier", "clip_norm", "pure_epsilon", "steps"):
            if not 0 <= getattr(c, field) < math.inf:
                raise bad(f"{where}.{field}", f"must be a finite number >= 0 (got {getattr(c, field)})")
    return p


class HeaderSniffer:
    """Feed the first chunks of a stream; returns the parsed header as soon as it is complete. For validating uploads
    as they stream (never buffers more than 8 + MAX_HEADER_BYTES).

    `feed` returns the header once, on the chunk that completes it, and None before and after (see `header`).
    """

    def __init__(self, total_size: int, check_tensors: TensorCheck | None = None):
        if total_size < 8:
            raise ArtifactError(f"an upload of {total_size} bytes is too small to be an artifact")
        self.total_size = total_size
        self._check = check_tensors
        self._buf = bytearray()
        self._need = 8
        self.header: ArtifactHeader | None = None

    @property
    def done(self) -> bool:
        return self.header is not None

    def feed(self, chunk: bytes) -> ArtifactHeader | None:
        if self.header is not None:
            return None
        view = memoryview(chunk)
        while True:
            take = self._need - len(self._buf)
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) < self._need:
                return None
            if self._need == 8:
                self._need = 8 + header_length(self._buf)
                if self._need > self.total_size:
                    raise ArtifactError(
                        f"declared header length {self._need - 8} is larger than the upload ({self.total_size} bytes)"
                    )
                continue
            self.header = parse_header(bytes(self._buf), self.total_size, self._check)
            self._buf = bytearray()
            return self.header


def _read_header(f, total_size: int, check_tensors: TensorCheck | None) -> ArtifactHeader:
    prefix = f.read(8)
    n = header_length(prefix)
    if 8 + n > total_size:
        raise ArtifactError(f"file is truncated: the header declares {n} bytes but the file has only {total_size}")
    return parse_header(prefix + f.read(n), total_size, check_tensors)


def read_header(path: Path, check_tensors: TensorCheck | None = None) -> ArtifactHeader:
    """Parse the header of the artifact at `path` without reading its tensors."""
    with open(path, "rb") as f:
        return _read_header(f, os.fstat(f.fileno()).st_size, check_tensors)


def load_artifact(
    path: Path, max_bytes: int = MAX_ARTIFACT_BYTES, check_tensors: TensorCheck | None = None
) -> tuple[ArtifactHeader, dict[str, np.ndarray]]:
    """Strictly parse the header, then read the tensors (little-endian, in their declared dtype and shape)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise ArtifactError(f"artifact is {size} bytes, over the limit of {max_bytes}")
        header = _read_header(f, size, check_tensors)
        buf = bytearray(size - header.data_offset)
        view, got = memoryview(buf), 0
        while got < len(buf) and (n := f.readinto(view[got:])):
            got += n
        if got != len(buf) or f.read(1):
            raise ArtifactError("artifact changed size while it was read; try again")
    arrays = {}
    for t in header.tensors.values():
        dt = _NUMPY_DTYPES[t.dtype]
        arrays[t.name] = (
            np.frombuffer(buf, dt, count=(t.end - t.begin) // dt.itemsize, offset=t.begin).reshape(t.shape)
            if t.end > t.begin
            else np.zeros(t.shape, dt)
        )
    return header, arrays


def parse_manifest(text: str) -> Manifest:
    """A manifest from its JSON (as `Manifest.to_json` wrote it, e.g. stored by the registry), checked as the strict
    reader checks one; raises ArtifactError."""
    return _manifest_from_dict(strict_json(text, "manifest"))


def build_manifest(
    architecture: str, config: dict, data_schema: pb.DataSchema, privacy: pb.PrivacyReport, training: dict
) -> Manifest:
    """A validated manifest (checked exactly as the parser checks one); config and training must be plain JSON."""
    try:
        text = _manifest_json(FORMAT_VERSION, architecture, config, data_schema, privacy, training)
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"config and training must be plain JSON (no NaN/Infinity, str keys): {e}") from None
    return _manifest_from_dict(strict_json(text, "manifest"))


def write_artifact(path: Path, tensors: dict[str, np.ndarray], manifest: Manifest) -> str:
    """Write the artifact atomically and return the hex sha256 of the file."""
    arrays = {}
    for name, a in tensors.items():
        if not isinstance(name, str) or not _TENSOR_NAME.fullmatch(name):
            raise ArtifactError(f"tensor name {name!r} must be 1-256 characters of A-Z a-z 0-9 _ . : / -")
        a = np.asarray(a)
        if a.dtype.name == "float64":
            raise ArtifactError(f"tensor {name!r} is float64; cast it to float32 first (a.astype(np.float32))")
        if (code := _CODE_OF_NAME.get(a.dtype.name)) is None:
            raise ArtifactError(f"tensor {name!r} has dtype {a.dtype}; allowed: {', '.join(_CODE_OF_NAME)}")
        arrays[name] = np.asarray(a, dtype=_NUMPY_DTYPES[code], order="C")  # keeps 0-d shapes
    data = _st_save(arrays, metadata={MANIFEST_KEY: manifest.to_json()})
    parse_header(data, len(data))  # never write what the loader would refuse (too many tensors, header over cap)
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> Any:
    """The running sha256 of a file's bytes (call .hexdigest(), or .update() to continue it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest


def sha256_file(path: Path) -> str:
    return file_digest(path).hexdigest()
