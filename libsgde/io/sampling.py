"""Sampling a loaded generator for a request: which labels, in which chunks, through one compiled function.

A request is (model version, number of samples or per-class counts, seed, format, chunk size). Its output is the same
bytes every time, whoever else is sampling at once:

- Labels (conditional models) are grouped by class in the SCHEMA's class order: the label column's categories, or the
  image schema's class names. With `class_counts` the counts are the caller's; without, they are drawn from the
  model's class prior (`Generator.labels(n, seed)`, counted per class). A protobuf map has no order, so "the order
  given" cannot be honoured; the schema's order can, and lets a reader rebuild the labels from the counts alone.
- Row r of a request (0-based, numbered within the request) comes from the key fold_in(key(seed), r) alone, where
  key(seed) takes all 64 bits of the seed.
- Rows are generated in power-of-two buckets (labels padded to the next power of two >= the chunk, at least the
  model's smallest bucket, at most its largest; the padding is sliced off), so an odd request size never recompiles:
  a model compiles at most log2(largest / smallest) + 1 shapes, once, shared by every request.
- Images whose schema declares integer pixel levels (an integer pixel_max in [2, 65535]) are rounded to uint8 or
  uint16 on the device, right after generation (`pixel_levels`): the host receives a quarter (or half) of the bytes
  and decodes nothing. The rounding is ImageEncoder.decode's, in float64 (exact: a float32 times an integer below
  2**16 has at most 40 significant bits), so the levels are those the float32 path gives.
- The next bucket is dispatched before the current one is handed over (JAX runs it asynchronously), so the device
  generates while the caller decodes, encodes and streams: one bucket ahead, never more.
- Memory is bounded per request, from bytes per row rather than rows (`row_cost`, `plan_sampling`): a model's
  largest bucket is the largest power of two <= MAX_BUCKET whose generation and decoding take about
  TARGET_BUCKET_MEMORY, its smallest MIN_BUCKET or the largest if that is smaller (a 2048 x 2048 image: one row, and
  one compiled shape); each bucket is decoded as soon as it is generated; the chunk the sampler chooses keeps its
  values and encoded bytes within about TARGET_CHUNK_MEMORY. A request whose plan would need more than the caller's
  limit (the sampler's SGDE_SAMPLER_MAX_REQUEST_BYTES, `sample_local`'s max_request_bytes; DEFAULT_MAX_REQUEST_BYTES)
  is refused with RESOURCE_EXHAUSTED before anything is generated. The plan depends on the model and the request,
  never on the limit, so the sampler and `sample_local` generate a request alike (and so give the same bytes)
  whatever their limits.

No gRPC; the one file read is an artifact, by `CompiledCache.load`. `libsgde.io.formats` turns the decoded chunks
into CSV, NPY or Parquet bytes.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from libsgde.errors import Exhausted, FieldError
from libsgde.ml.architectures import Architecture
from libsgde.ml.architectures.base import unflatten
from libsgde.ml.rows import row_keys, seed_key
from libsgde.ml.space import ModelSpace
from libsgde.wire.limits import CHUNK_SIZE, SAMPLE_REQUEST_BYTES
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

MIN_BUCKET = 64
MAX_BUCKET = 8192
MAX_CHUNK_SAMPLES = 65536  # largest chunk_samples a request may ask for
DEFAULT_MAX_CHUNK = 4096  # largest chunk the sampler chooses itself
TARGET_CHUNK_BYTES = 1 << 20  # the sampler's own choice of chunk aims at about 1 MiB of NPY output
TARGET_BUCKET_MEMORY = 64 << 20  # a model's largest bucket is generated and decoded within about this
TARGET_CHUNK_MEMORY = 64 << 20  # the sampler's own chunk holds its values and encoded bytes within about this
DEFAULT_MAX_REQUEST_BYTES = SAMPLE_REQUEST_BYTES  # what a request may need, unless the caller says otherwise
# The host decoders' temporaries per model-space value, beyond their input and output (measured with tracemalloc:
# images 20, as float32 copies then float64 for rounding; tables 24, float64 copies). Images with integer pixel levels
# are rounded on the device instead (`pixel_levels`), in one fused loop with no temporaries (XLA's memory analysis).
DECODE_BYTES = {"image": 20, "tabular": 24}
CSV_CELL_BYTES = 96  # a CSV cell's Python objects besides its text (a str, its list slot, the number on the way)
LABEL_BYTES = 4  # per sample of a request: its int32 label, held for the whole request


class SamplingError(FieldError):
    """A request that cannot be sampled as asked. `field` names the request field at fault (a SampleRequest field
    name: num_samples, class_counts, format, chunk_samples); `description` says what to change."""


def class_names(schema: pb.DataSchema) -> list[str]:
    """The schema's classes in order: the label column's categories, or the image class names ([] when
    unconditional)."""
    if schema.WhichOneof("kind") == "image":
        return list(schema.image.class_names)
    t = schema.tabular
    for col in t.columns:
        if t.label_column and col.name == t.label_column:
            return list(col.categories)
    return []


def check_class_counts(schema: pb.DataSchema, class_counts: Mapping[str, int]) -> list[int]:
    """Per-class counts in the schema's class order, from a {class name: count} mapping; raises SamplingError for an
    unconditional model, names the schema does not declare (all of them, in the message), negative counts or a
    total of zero."""
    names = class_names(schema)
    if not names:
        raise SamplingError(
            "class_counts", "this model is unconditional (its schema declares no classes); ask for num_samples instead"
        )
    unknown = sorted(set(class_counts) - set(names))
    if unknown:
        shown = ", ".join(repr(u[:60]) for u in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        allowed = ", ".join(repr(n) for n in names[:20]) + (", ..." if len(names) > 20 else "")
        raise SamplingError(
            "class_counts",
            f"unknown class{'es' if len(unknown) > 1 else ''} {shown}; the schema's classes are {allowed}",
        )
    negative = sorted(name for name, count in class_counts.items() if int(count) < 0)
    if negative:
        raise SamplingError("class_counts", f"counts must be >= 0 (negative for {', '.join(map(repr, negative))})")
    counts = [int(class_counts.get(name, 0)) for name in names]
    if sum(counts) == 0:
        raise SamplingError("class_counts", "ask for at least one sample")
    return counts


def plan_labels(generator, num_samples: int, class_counts: Mapping[str, int] | None, seed: int) -> np.ndarray | None:
    """The int32 labels [N] of a request, grouped by class in the schema's class order (see the module docstring).

    With `class_counts` ({class name: count}; `num_samples` is then ignored) the counts are exactly those; without,
    `num_samples` labels are drawn from the generator's class prior with `seed`, then grouped. None for an
    unconditional model (which refuses `class_counts`). Raises SamplingError."""
    schema = generator.manifest.data_schema
    if class_counts:
        counts = check_class_counts(schema, class_counts)
        return np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    if num_samples <= 0:
        raise SamplingError("num_samples", "must be > 0 (or give class_counts)")
    if not generator.space.num_classes:
        return None
    return np.sort(generator.labels(int(num_samples), seed), kind="stable").astype(np.int32)


def label_counts(labels: np.ndarray | None, num_classes: int) -> list[int]:
    """Samples per class (schema order) of planned labels; [] for an unconditional model."""
    if labels is None or not num_classes:
        return []
    return np.bincount(labels, minlength=num_classes).astype(int).tolist()


def bucket_size(n: int, max_bucket: int = MAX_BUCKET, min_bucket: int = MIN_BUCKET) -> int:
    """The padded batch size that generates n rows (n <= max_bucket): the next power of two, at least min_bucket."""
    return min(max_bucket, max(min_bucket, 1 << max(int(n) - 1, 0).bit_length()))


def _power_of_two_at_most(n: int) -> int:
    """The largest power of two <= n (1 for n < 1)."""
    return 1 << (max(int(n), 1).bit_length() - 1)


def pixel_levels(schema: pb.DataSchema) -> np.dtype | None:
    """The integer dtype an image schema's pixels decode to (libsgde.io.encoding.ImageEncoder.decode): uint8 for an
    integer pixel_max in [2, 255], uint16 for one up to 65535; None for float pixels, and for tables."""
    if schema.WhichOneof("kind") != "image":
        return None
    top = schema.image.pixel_max
    if not (float(top).is_integer() and 2 <= top <= 65535):
        return None
    return np.dtype(np.uint8 if top <= 255 else np.uint16)


def integer_dtype(col: pb.Column) -> np.dtype:
    """The narrowest integer dtype that holds every value of an integer column: its bounds rounded outwards, unsigned
    when the lower one is >= 0 (u1, u2, u4), else signed (i1, i2, i4); int64 beyond."""
    low, high = math.floor(col.lower), math.ceil(col.upper)
    for kind in ("u1", "u2", "u4") if low >= 0 else ("i1", "i2", "i4"):
        info = np.iinfo(np.dtype(kind))
        if info.min <= low and high <= info.max:
            return np.dtype(kind).newbyteorder("<")
    return np.dtype("<i8")


def level_fn(pixel_max: float, dtype: np.dtype) -> Callable:
    """ImageEncoder.decode's rounding of model-space images to integer pixel levels, as a device function: NaN reads
    as 0, values are clipped into [0, 1], multiplied by pixel_max in float64 (exact), rounded half to even, clipped
    and cast. Trace it inside `float64_tracing()`, or float64 silently becomes float32."""

    def levels(x):
        x = jnp.clip(jnp.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
        return jnp.clip(jnp.rint(x.astype(jnp.float64) * pixel_max), 0, pixel_max).astype(dtype)

    return levels


def float64_tracing() -> AbstractContextManager:
    """A context in which this thread traces with 64-bit types (other threads trace as before): `jax.enable_x64`
    from JAX 0.8, `jax.experimental.enable_x64` before it."""
    enable = getattr(jax, "enable_x64", None)
    if callable(enable):
        return enable(True)
    from jax.experimental import enable_x64  # type: ignore[attr-defined]  # JAX < 0.8

    return enable_x64(True)


def row_bytes(schema: pb.DataSchema) -> int:
    """Bytes of one sample in NPY output (see libsgde.io.formats)."""
    if schema.WhichOneof("kind") == "image":
        im = schema.image
        levels = pixel_levels(schema)
        return im.height * im.width * im.channels * (4 if levels is None else levels.itemsize)
    total = 0
    for col in schema.tabular.columns:
        if col.type == pb.COLUMN_TYPE_CATEGORICAL:
            total += 4 * max([1, *(len(c) for c in col.categories)])
        elif col.type == pb.COLUMN_TYPE_INTEGER and not col.nullable:
            total += integer_dtype(col).itemsize
        else:
            total += 8
    return total


def csv_row_bytes(schema: pb.DataSchema) -> int:
    """An upper bound on the memory one tabular row takes while it is written as CSV (libsgde.io.formats.CsvWriter):
    per cell CSV_CELL_BYTES of Python objects and its text three times (the row's text, the chunk's, its UTF-8
    bytes); a number's text is at most 25 characters with its comma, a category's its name quoted, 4 bytes a
    character."""
    total = 0
    for col in schema.tabular.columns:
        longest = max([1, *(len(c) for c in col.categories)])
        text = 4 * (2 * longest + 2) + 1 if col.type == pb.COLUMN_TYPE_CATEGORICAL else 25
        total += CSV_CELL_BYTES + 3 * text
    return total


@dataclass(frozen=True)
class RowCost:
    """The memory sampling a model takes, in bytes (upper-bound estimates; see `row_cost`): `bucket` per row of a
    bucket (generated, then decoded, together), `chunk` per row of a chunk (its decoded values and their encoded
    bytes, held until streamed), `ahead` per row of the chunk made while the one before it is streamed (its encoded
    bytes, held with it), `fixed` per request whatever its sizes."""

    bucket: int
    chunk: int
    fixed: int
    ahead: int = 0

    def peak(self, bucket: int, chunk: int, total: int) -> int:
        """The memory of a request of `total` samples in chunks of `chunk` rows and buckets of `bucket` rows."""
        return self.fixed + bucket * self.bucket + chunk * (self.chunk + self.ahead) + LABEL_BYTES * total


def _traced_bytes(jaxpr: jax_core.Jaxpr) -> int:
    """The bytes of every value a traced function computes (a nested function counted by what it computes)."""
    total = 0
    for eqn in jaxpr.eqns:
        inner = list(jax_core.jaxprs_in_params(eqn.params))
        if inner:
            total += sum(_traced_bytes(j) for j in inner)
            continue
        for var in eqn.outvars:
            aval = var.aval
            shape, dtype = getattr(aval, "shape", ()), getattr(aval, "dtype", None)
            total += math.prod(shape) * int(getattr(dtype, "itemsize", 8))
    return total


def generator_fn(arch: Architecture, space: ModelSpace, config: dict) -> Callable:
    """The function a sampler compiles: (params, key, first row, labels [n]) -> model-space rows [n, *shape]."""

    def run(params, key, first_row, labels):
        return arch.generate(params, row_keys(key, first_row, labels.shape[0]), labels, space, config)

    return run


def row_cost(arch: Architecture, space: ModelSpace, config: dict, schema: pb.DataSchema, params=None) -> RowCost:
    """What sampling a model costs in memory, from its architecture's tensor shapes alone (no weights needed;
    `params`, when given, must have those shapes):

    - generating: every value the traced generator computes, summed (its output included), per row (a trace of two
      rows less a trace of one) and fixed. XLA fuses operations and reuses buffers, so its own buffers stay below
      this (a 2048 x 2048 conv model: 112 MiB a row here, 32 MiB in XLA's memory analysis); the margin covers the
      scratch space of CPU kernels, which neither sees;
    - decoding, per row of a bucket: the model-space rows copied to the host and DECODE_BYTES per value; images with
      integer pixel levels: their levels on the device and on the host, nothing else;
    - a chunk, per row: its decoded values (tables: twice, the buckets' parts then joined) and their encoded bytes
      in the costliest format the data allows (NPY: twice the row's bytes, the rows and their bytes; CSV:
      `csv_row_bytes`; Parquet's arrays stay below CSV's strings);
    - ahead, per row: the encoded bytes of one more chunk, since the sampler makes the next chunk while it streams
      one (services/sampler/ahead.py); NPY's, or CSV's as `csv_row_bytes` bounds them;
    - fixed: the generator's batch-independent values, and two messages of streamed bytes."""
    if params is None:
        tensors = arch.tensor_shapes(space, config)
        params = unflatten({name: jax.ShapeDtypeStruct(shape, jnp.float32) for name, shape in tensors.items()})
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    run = generator_fn(arch, space, config)

    def traced(n: int) -> int:
        rows = jax.ShapeDtypeStruct((n,), jnp.int32)
        return _traced_bytes(jax.make_jaxpr(run)(shapes, seed_key(0), jax.ShapeDtypeStruct((), jnp.uint32), rows).jaxpr)

    one, two = traced(1), traced(2)
    values = math.prod(space.shape)
    output = row_bytes(schema)
    levels = pixel_levels(schema)
    if levels is not None:
        decode = 2 * levels.itemsize * values
        chunk = output + 2 * output
    elif space.kind == "image":
        decode = 4 * values + DECODE_BYTES["image"] * values
        chunk = output + 2 * output
    else:
        columns = len(schema.tabular.columns)
        decode = 4 * values + DECODE_BYTES["tabular"] * values + 8 * columns
        chunk = 2 * 8 * columns + max(2 * output, csv_row_bytes(schema))
    ahead = output if space.kind == "image" else max(output, csv_row_bytes(schema))
    return RowCost(
        bucket=max(two - one, 0) + decode, chunk=chunk, fixed=max(2 * one - two, 0) + 2 * CHUNK_SIZE, ahead=ahead
    )


def model_buckets(cost: RowCost, max_bucket: int = MAX_BUCKET) -> tuple[int, int]:
    """A model's smallest and largest bucket: the largest is the largest power of two <= max_bucket whose rows take
    about TARGET_BUCKET_MEMORY at most (at least 1), the smallest MIN_BUCKET or the largest if below."""
    largest = min(max_bucket, _power_of_two_at_most(TARGET_BUCKET_MEMORY // max(cost.bucket, 1)))
    return min(MIN_BUCKET, largest), largest


def default_chunk_samples(schema: pb.DataSchema, cost: RowCost | None = None) -> int:
    """The chunk a request gets with chunk_samples 0: the largest power of two whose NPY bytes fit in about 1 MiB,
    at most DEFAULT_MAX_CHUNK (and at least 1), and, with the model's `cost`, whose rows take about
    TARGET_CHUNK_MEMORY at most. A function of the model alone, so that the service and `sample_local` split (and
    so generate) a request alike."""
    chunk = min(DEFAULT_MAX_CHUNK, _power_of_two_at_most(TARGET_CHUNK_BYTES // max(row_bytes(schema), 1)))
    if cost is not None:
        chunk = min(chunk, _power_of_two_at_most(TARGET_CHUNK_MEMORY // max(cost.chunk, 1)))
    return chunk


def check_chunk_samples(chunk_samples: int) -> int:
    if chunk_samples < 0 or chunk_samples > MAX_CHUNK_SAMPLES:
        raise SamplingError("chunk_samples", f"must be between 1 and {MAX_CHUNK_SAMPLES} (0 lets the sampler choose)")
    return int(chunk_samples)


@dataclass(frozen=True)
class SamplingPlan:
    """How a request is generated: in chunks of `chunk` rows, each in power-of-two buckets of `min_bucket` to
    `max_bucket` rows; `peak_bytes` bounds the memory it takes (RowCost.peak)."""

    chunk: int
    min_bucket: int
    max_bucket: int
    peak_bytes: int


def _size(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{max(1, math.ceil(n / (1 << 20)))} MiB"


def plan_sampling(
    cost: RowCost,
    schema: pb.DataSchema,
    total: int,
    chunk_samples: int = 0,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    *,
    max_bucket: int = MAX_BUCKET,
    limit_name: str = "max_request_bytes",
) -> SamplingPlan:
    """The plan of a request of `total` samples with `chunk_samples` (0: the sampler chooses) for a model of this
    cost and schema. Raises SamplingError for a chunk_samples out of range, and Exhausted (RESOURCE_EXHAUSTED)
    when the plan would need more than `max_request_bytes`: saying which chunk_samples fits, or, when not even one
    sample does, what limit it takes. `limit_name` says where the limit is set, for that message."""
    chunk_samples = check_chunk_samples(chunk_samples)
    low, high = model_buckets(cost, max_bucket)
    chunk = chunk_samples or default_chunk_samples(schema, cost)

    def peak(c: int) -> int:
        rows = max(1, min(c, total))  # a chunk never holds more rows than the request
        return cost.peak(bucket_size(min(rows, high), high, low), rows, total)

    need = peak(chunk)
    if need <= max_request_bytes:
        return SamplingPlan(chunk, low, high, need)
    over = f"over the limit of {_size(max_request_bytes)} per request ({limit_name})"
    smallest = cost.peak(low, 1, 1)
    if smallest > max_request_bytes:
        raise Exhausted(
            f"one sample of this model needs about {_size(smallest)} of memory to generate, {over}: sampling it "
            f"takes a limit of at least {_size(smallest)}"
        )
    if peak(1) > max_request_bytes:
        raise Exhausted(
            f"{total} samples need about {_size(peak(1))} of memory for their labels alone, {over}: ask for fewer "
            "samples per request",
            [("num_samples", "ask for fewer samples per request")],
        )
    fits, too_many = 1, chunk  # the largest chunk that fits: peak grows with the chunk
    while too_many - fits > 1:
        middle = (fits + too_many) // 2
        fits, too_many = (middle, too_many) if peak(middle) <= max_request_bytes else (fits, middle)
    asked = f"chunk_samples={chunk}" if chunk_samples else f"the default chunk of {chunk} samples"
    raise Exhausted(
        f"{asked} needs about {_size(need)} of memory for this model, {over}: ask for chunk_samples <= {fits}",
        [("chunk_samples", f"at most {fits} for this model within {_size(max_request_bytes)} per request")],
    )


@dataclass
class Chunk:
    """One decoded chunk: `values` as the encoder decodes them (tabular: column -> array, the label column
    included; images: [n, H, W, C]), `labels` int32 [n] (None when unconditional), and where it starts."""

    values: dict[str, np.ndarray] | np.ndarray
    labels: np.ndarray | None
    start: int

    def __len__(self) -> int:
        return int(
            len(self.labels)
            if self.labels is not None
            else (len(self.values) if isinstance(self.values, np.ndarray) else len(next(iter(self.values.values()))))
        )


class CompiledSampler:
    """A loaded generator compiled for sampling in power-of-two buckets, its memory bounded per request (`plan`).
    Thread-safe: concurrent requests share the compiled executables, and each bucket compiles once however requests
    race. `max_bucket` caps the model's largest bucket (`model_buckets` derives it from the model's row cost).
    `device_levels` False decodes images on the host from their float32 rows, as `Generator.sample` does: the
    reference the device's rounding is tested against (the values are the same; the memory plan stays that of the
    device path)."""

    def __init__(self, generator, max_bucket: int = MAX_BUCKET, *, device_levels: bool = True):
        if max_bucket < 1 or max_bucket & (max_bucket - 1):
            raise ValueError("max_bucket must be a power of two")
        self.generator = generator
        self.schema = generator.manifest.data_schema
        self.space = generator.space
        arch, space, config = generator.architecture, generator.space, generator.config
        self.cost = row_cost(arch, space, config, self.schema, generator.params)
        self.min_bucket, self.max_bucket = model_buckets(self.cost, max_bucket)
        self._jit = jax.jit(generator_fn(arch, space, config))
        # Images rounded to integer levels on the device (their dtype), or None.
        self.levels = pixel_levels(self.schema) if device_levels else None
        self._compiled: dict[int, Callable] = {}
        self._compile_lock = threading.Lock()

    @property
    def compiled_buckets(self) -> list[int]:
        """The bucket sizes compiled so far."""
        return sorted(self._compiled)

    def plan(
        self,
        total: int,
        chunk_samples: int = 0,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        limit_name: str = "max_request_bytes",
    ) -> SamplingPlan:
        """The plan of a request of `total` samples (`plan_sampling`): raises Exhausted when it would need more
        memory than `max_request_bytes`, SamplingError for a bad chunk_samples."""
        return plan_sampling(
            self.cost,
            self.schema,
            total,
            chunk_samples,
            max_request_bytes,
            max_bucket=self.max_bucket,
            limit_name=limit_name,
        )

    def _executable(self, bucket: int) -> Callable:
        """The compiled function of a bucket: (params, key, first row, labels [bucket]) -> a device array of
        model-space rows, or of pixel levels (`pixel_levels`). Called, it returns at once (JAX dispatches
        asynchronously); reading the array waits for it."""
        fn = self._compiled.get(bucket)
        if fn is None:
            with self._compile_lock:
                fn = self._compiled.get(bucket)
                if fn is None:
                    fn = self._compile(bucket)
                    self._compiled[bucket] = fn
        return fn

    def _compile(self, bucket: int) -> Callable:
        generate = self._jit.lower(
            self.generator.params,
            seed_key(0),
            jax.ShapeDtypeStruct((), jnp.uint32),
            jax.ShapeDtypeStruct((bucket,), jnp.int32),
        ).compile()
        if self.levels is None:
            return generate
        rows = jax.ShapeDtypeStruct((bucket, *self.space.shape), jnp.float32)
        with float64_tracing():
            levels = jax.jit(level_fn(self.schema.image.pixel_max, self.levels)).lower(rows).compile()
        return lambda *args: levels(generate(*args))

    def decode(self, x: np.ndarray, labels: np.ndarray | None):
        """Decoded values of rows the compiled function returned (pixel levels are decoded already)."""
        if self.levels is not None:
            return x
        encoder = self.generator.encoder
        return encoder.decode(x) if self.space.kind == "image" else encoder.decode(x, labels)

    def _dispatched(self, labels: np.ndarray, seed: int, plan: SamplingPlan) -> Generator[tuple[np.ndarray, Any]]:
        """(labels, device output) of each bucket of a request in order, the next bucket dispatched
        before one is handed over: the device generates it while the caller decodes and streams this one. Chunks
        of the plan are split into buckets as if each were generated alone, so any chunk gives the same bytes."""
        key = seed_key(seed)
        ahead = None
        for chunk_start in range(0, len(labels), plan.chunk):
            chunk = labels[chunk_start : chunk_start + plan.chunk]
            for start in range(0, len(chunk), plan.max_bucket):
                part = chunk[start : start + plan.max_bucket]
                bucket = bucket_size(len(part), plan.max_bucket, plan.min_bucket)
                row = chunk_start + start
                if row + bucket > 1 << 32:
                    raise SamplingError("num_samples", "rows are numbered with 32 bits: ask for fewer samples")
                padded = np.zeros(bucket, np.int32)
                padded[: len(part)] = part
                launched = (part, self._executable(bucket)(self.generator.params, key, np.uint32(row), padded))
                if ahead is not None:
                    yield ahead
                ahead = launched
        if ahead is not None:
            yield ahead

    def _decoded_chunk(self, buckets: Iterator[tuple[np.ndarray, Any]], size: int, conditional: bool):
        """The decoded values of the next `size` rows, taken bucket by bucket from `buckets` (`_dispatched`)."""
        images: np.ndarray | None = None
        tables: list[dict[str, np.ndarray]] = []
        done = 0
        while done < size:
            part, out = next(buckets)
            values = self.decode(np.asarray(out)[: len(part)], part if conditional else None)
            del out
            if isinstance(values, dict):
                tables.append(values)
            elif len(part) == size:
                return values  # the whole chunk in one bucket: no copy
            else:
                if images is None:
                    images = np.empty((size, *values.shape[1:]), values.dtype)
                images[done : done + len(part)] = values
            done += len(part)
        if images is not None:
            return images
        if len(tables) == 1:
            return tables[0]
        return {name: np.concatenate([t[name] for t in tables]) for name in tables[0]}

    def iter_chunks(
        self,
        labels_or_n: np.ndarray | int,
        seed: int,
        chunk_samples: int = 0,
        should_stop: Callable[[], bool] | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> Iterator[Chunk]:
        """Decoded chunks of a request, in order. `labels_or_n`: planned labels (see `plan_labels`), or a number of
        samples (labels then planned from the class prior with `seed`; none for an unconditional model).
        `chunk_samples` 0 means `default_chunk_samples`. `should_stop` is asked before each chunk: True ends the
        iteration there (a cancelled or expired request generates nothing more than the one bucket dispatched
        ahead). Raises Exhausted, before generating anything, when the request's plan needs more than
        `max_request_bytes` (`plan`).

        Each bucket is decoded as soon as it is ready, so that no more than one bucket of model-space rows is held
        besides the one the device is generating."""
        if isinstance(labels_or_n, (int, np.integer)):
            n = int(labels_or_n)
            labels = plan_labels(self.generator, n, None, seed)
        else:
            labels = np.asarray(labels_or_n, np.int32)
            n = len(labels)
        conditional = self.space.num_classes > 0
        plan = self.plan(n, chunk_samples, max_request_bytes)
        rows = labels if labels is not None else np.zeros(n, np.int32)
        buckets = self._dispatched(rows, seed, plan)
        try:
            for start in range(0, n, plan.chunk):
                if should_stop is not None and should_stop():
                    return
                size = min(plan.chunk, n - start)
                chunk_values = self._decoded_chunk(buckets, size, conditional)
                part = rows[start : start + size]
                yield Chunk(chunk_values, part if conditional else None, start)
        finally:
            buckets.close()


class CompiledCache:
    """Compiled generators in memory, by artifact sha256: at most `capacity`, the least recently used evicted.
    Thread-safe. The sampler service keeps one (its `ArtifactCache`), and so does local sampling in the SDK."""

    def __init__(self, capacity: int):
        self.capacity = max(1, int(capacity))
        self._items: OrderedDict[str, CompiledSampler] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str) -> CompiledSampler | None:
        """The generator compiled for this artifact, if in memory (it becomes the most recently used)."""
        with self._lock:
            found = self._items.get(sha256)
            if found is not None:
                self._items.move_to_end(sha256)
            return found

    def load(self, sha256: str, path: Path) -> CompiledSampler:
        """The compiled generator of the artifact at `path`, whose sha256 the caller computed or verified; loaded
        through the strict reader (ArtifactError) unless it is in memory already."""
        found = self.get(sha256)
        if found is not None:
            return found
        from libsgde.io.generator import load_generator

        sampler = CompiledSampler(load_generator(path))
        with self._lock:
            self._items[sha256] = sampler
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return sampler

    def discard(self, sha256: str) -> None:
        with self._lock:
            self._items.pop(sha256, None)

    def keys(self) -> list[str]:
        """The sha256 of the generators in memory, least recently used first."""
        with self._lock:
            return list(self._items)
