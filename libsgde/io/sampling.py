"""Sampling a loaded generator for a request: which labels, in which chunks, through one compiled function.

A request is (model version, number of samples or per-class counts, seed, format, chunk size). Its output is the same
bytes every time, whoever else is sampling at once:

- Labels (conditional models) are grouped by class in the SCHEMA's class order: the label column's categories, or the
  image schema's class names. With `class_counts` the counts are the caller's; without, they are drawn from the
  model's class prior (`Generator.labels(n, seed)`, counted per class). A protobuf map has no order, so "the order
  given" cannot be honoured; the schema's order can, and lets a reader rebuild the labels from the counts alone.
- Row r of a request (0-based, numbered within the request) comes from the key fold_in(key(seed), r) alone, where
  key(seed) takes all 64 bits of the seed.
- Rows are generated in power-of-two buckets (labels padded to the next power of two >= the chunk, at least
  `MIN_BUCKET`, at most `MAX_BUCKET`; the padding is sliced off), so an odd request size never recompiles: a model
  compiles at most log2(MAX_BUCKET / MIN_BUCKET) + 1 shapes, once, shared by every request.

No gRPC; the one file read is an artifact, by `CompiledCache.load`. `libsgde.io.formats` turns the decoded chunks
into CSV, NPY or Parquet bytes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from libsgde.errors import FieldError
from libsgde.ml.rows import row_keys, seed_key
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

MIN_BUCKET = 64
MAX_BUCKET = 8192
MAX_CHUNK_SAMPLES = 65536  # largest chunk_samples a request may ask for
DEFAULT_MAX_CHUNK = 4096  # largest chunk the sampler chooses itself
TARGET_CHUNK_BYTES = 1 << 20  # the sampler's own choice of chunk aims at about 1 MiB of NPY output


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


def bucket_size(n: int, max_bucket: int = MAX_BUCKET) -> int:
    """The padded batch size that generates n rows (n <= max_bucket): the next power of two, at least MIN_BUCKET."""
    return min(max_bucket, max(MIN_BUCKET, 1 << max(int(n) - 1, 0).bit_length()))


def row_bytes(schema: pb.DataSchema) -> int:
    """Bytes of one sample in NPY output (see libsgde.io.formats)."""
    if schema.WhichOneof("kind") == "image":
        im = schema.image
        pixel = (
            1
            if float(im.pixel_max).is_integer() and 2 <= im.pixel_max <= 255
            else (2 if float(im.pixel_max).is_integer() and 2 <= im.pixel_max <= 65535 else 4)
        )
        return im.height * im.width * im.channels * pixel
    total = 0
    for col in schema.tabular.columns:
        total += 4 * max([1, *(len(c) for c in col.categories)]) if col.type == pb.COLUMN_TYPE_CATEGORICAL else 8
    return total


def default_chunk_samples(schema: pb.DataSchema) -> int:
    """The chunk a request gets with chunk_samples 0: the largest power of two whose NPY bytes fit in about 1 MiB,
    at most DEFAULT_MAX_CHUNK (and at least 1). A function of the schema alone, so that the service and
    `sample_local` split (and so generate) a request alike."""
    fit = max(1, TARGET_CHUNK_BYTES // max(row_bytes(schema), 1))
    return min(DEFAULT_MAX_CHUNK, 1 << (fit.bit_length() - 1))


def check_chunk_samples(chunk_samples: int) -> int:
    if chunk_samples < 0 or chunk_samples > MAX_CHUNK_SAMPLES:
        raise SamplingError("chunk_samples", f"must be between 1 and {MAX_CHUNK_SAMPLES} (0 lets the sampler choose)")
    return int(chunk_samples)


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
    """A loaded generator compiled for sampling in power-of-two buckets. Thread-safe: concurrent requests share the
    compiled executables, and each bucket compiles once however requests race."""

    def __init__(self, generator, max_bucket: int = MAX_BUCKET):
        if max_bucket < MIN_BUCKET or max_bucket & (max_bucket - 1):
            raise ValueError(f"max_bucket must be a power of two >= {MIN_BUCKET}")
        self.generator = generator
        self.max_bucket = max_bucket
        self.schema = generator.manifest.data_schema
        self.space = generator.space
        arch, space, config = generator.architecture, generator.space, generator.config

        def run(params, key, first_row, labels):
            return arch.generate(params, row_keys(key, first_row, labels.shape[0]), labels, space, config)

        self._jit = jax.jit(run)
        self._compiled: dict[int, Callable] = {}
        self._compile_lock = threading.Lock()

    @property
    def compiled_buckets(self) -> list[int]:
        """The bucket sizes compiled so far."""
        return sorted(self._compiled)

    def _executable(self, bucket: int) -> Callable:
        fn = self._compiled.get(bucket)
        if fn is None:
            with self._compile_lock:
                fn = self._compiled.get(bucket)
                if fn is None:
                    fn = self._jit.lower(
                        self.generator.params,
                        seed_key(0),
                        jax.ShapeDtypeStruct((), jnp.uint32),
                        jax.ShapeDtypeStruct((bucket,), jnp.int32),
                    ).compile()
                    self._compiled[bucket] = fn
        return fn

    def model_space(self, labels: np.ndarray, seed: int, first_row: int = 0) -> np.ndarray:
        """Model-space samples [n, *shape] for int32 labels [n] (zeros when unconditional), rows numbered from
        first_row; generated in buckets of at most max_bucket."""
        labels = np.asarray(labels, np.int32)
        key = seed_key(seed)
        parts = []
        for start in range(0, len(labels), self.max_bucket):
            part = labels[start : start + self.max_bucket]
            bucket = bucket_size(len(part), self.max_bucket)
            padded = np.zeros(bucket, np.int32)
            padded[: len(part)] = part
            row = first_row + start
            if row + bucket > 1 << 32:
                raise SamplingError("num_samples", "rows are numbered with 32 bits: ask for fewer samples")
            out = self._executable(bucket)(self.generator.params, key, np.uint32(row), padded)
            parts.append(np.asarray(out)[: len(part)])
        if not parts:
            return np.zeros((0, *self.space.shape), np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def decode(self, x: np.ndarray, labels: np.ndarray | None):
        encoder = self.generator.encoder
        return encoder.decode(x) if self.space.kind == "image" else encoder.decode(x, labels)

    def iter_chunks(
        self,
        labels_or_n: np.ndarray | int,
        seed: int,
        chunk_samples: int = 0,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[Chunk]:
        """Decoded chunks of a request, in order. `labels_or_n`: planned labels (see `plan_labels`), or a number of
        samples (labels then planned from the class prior with `seed`; none for an unconditional model).
        `chunk_samples` 0 means `default_chunk_samples`. `should_stop` is asked before each chunk: True ends the
        iteration there (a cancelled or expired request generates nothing more)."""
        if isinstance(labels_or_n, (int, np.integer)):
            n = int(labels_or_n)
            labels = plan_labels(self.generator, n, None, seed)
        else:
            labels = np.asarray(labels_or_n, np.int32)
            n = len(labels)
        chunk = check_chunk_samples(chunk_samples) or default_chunk_samples(self.schema)
        conditional = self.space.num_classes > 0
        for start in range(0, n, chunk):
            if should_stop is not None and should_stop():
                return
            size = min(chunk, n - start)
            part = labels[start : start + size] if labels is not None else np.zeros(size, np.int32)
            x = self.model_space(part, seed, start)
            yield Chunk(self.decode(x, part if conditional else None), part if conditional else None, start)


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
