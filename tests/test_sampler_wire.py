"""What sampled data travels as, and how it is made: images with integer pixel levels rounded on the device (uint8,
uint16) give the values the float32 path gives, tables are written in their narrowest exact dtypes, and the sampler
makes the next chunk while it sends one, holding two at most. Unit tests: no sockets (tests/test_sampler.py streams
the same through the service)."""

from __future__ import annotations

import hashlib
import io
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libsgde.io import formats, sampling
from libsgde.io.encoding import ImageEncoder
from libsgde.io.generator import load_generator
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from services.sampler.ahead import MadeAhead
from tests.support.sampler import make_generator_artifact

SPECIALS = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, -1.0, 2.0, 1.0, 1e-45, 1 - 2**-24, 0.5], np.float32)


def near_boundaries(pixel_max: int) -> np.ndarray:
    """float32 model-space values at and around every rounding boundary (k + 1/2) / pixel_max: where float32
    arithmetic would round differently from float64."""
    middles = ((np.arange(pixel_max, dtype=np.float64) + 0.5) / pixel_max).astype(np.float32)
    values = [middles]
    for direction in (0.0, 2.0):
        step = middles
        for _ in range(3):
            step = np.nextafter(step, np.float32(direction))
            values.append(step)
    uniform = np.random.default_rng(pixel_max).random(4096, dtype=np.float32)
    return np.concatenate([*values, uniform, SPECIALS]).astype(np.float32)


@pytest.mark.parametrize(
    ("pixel_max", "dtype"), [(2, np.uint8), (255, np.uint8), (1000, np.uint16), (65535, np.uint16)]
)
def test_device_levels_equal_the_encoders_rounding_at_every_boundary(pixel_max, dtype):
    schema = pb.DataSchema(image=pb.ImageSchema(height=1, width=1, channels=1, pixel_max=pixel_max))
    assert sampling.pixel_levels(schema) == np.dtype(dtype)
    x = near_boundaries(pixel_max)
    rows = jax.ShapeDtypeStruct(x.shape, jnp.float32)
    with sampling.float64_tracing():
        levels = jax.jit(sampling.level_fn(float(pixel_max), np.dtype(dtype))).lower(rows).compile()
    on_device = np.asarray(levels(x))
    on_host = ImageEncoder(schema.image).decode(x.reshape(-1, 1, 1, 1)).reshape(-1)
    assert on_device.dtype == on_host.dtype == dtype
    assert np.array_equal(on_device, on_host), x[on_device != on_host][:5]
    # One fused loop: XLA holds nothing but the levels themselves (what row_cost counts for them).
    stats = levels.memory_analysis()
    assert stats.temp_size_in_bytes + stats.output_size_in_bytes <= x.size * np.dtype(dtype).itemsize


def test_float_pixels_and_tables_have_no_levels():
    for pixel_max in (1.0, 2.5, 70000.0):
        schema = pb.DataSchema(image=pb.ImageSchema(height=2, width=2, channels=1, pixel_max=pixel_max))
        assert sampling.pixel_levels(schema) is None and sampling.row_bytes(schema) == 4 * 4
    table = pb.DataSchema(tabular=pb.TabularSchema(columns=[pb.Column(name="x", lower=0, upper=1)]))
    assert sampling.pixel_levels(table) is None


@pytest.mark.parametrize("pixel_max", [255, 4095])
def test_the_uint8_path_gives_the_same_values_and_bytes_as_the_float32_path(tmp_path, pixel_max):
    schema = pb.DataSchema(
        image=pb.ImageSchema(height=6, width=5, channels=3, pixel_max=pixel_max, class_names=["a", "b", "c"])
    )
    make_generator_artifact(tmp_path / "im.safetensors", schema, prior=[0.2, 0.3, 0.5])
    generator = load_generator(tmp_path / "im.safetensors")
    device, host = sampling.CompiledSampler(generator), sampling.CompiledSampler(generator, device_levels=False)
    dtype = np.uint8 if pixel_max <= 255 else np.uint16
    assert device.levels == np.dtype(dtype) and host.levels is None
    labels = sampling.plan_labels(generator, 300, None, 4)
    for chunk_samples in (0, 64, 100):
        a = list(device.iter_chunks(labels, 4, chunk_samples))
        b = list(host.iter_chunks(labels, 4, chunk_samples))
        assert [len(c) for c in a] == [len(c) for c in b]
        for x, y in zip(a, b, strict=True):
            assert x.values.dtype == y.values.dtype == dtype and np.array_equal(x.values, y.values)
            assert np.array_equal(x.labels, y.labels)
        assert len(np.unique(np.concatenate([c.values for c in a]))) > 20  # levels spread, not one clipped value
    npy = [b"".join(p for p, _ in formats.encode_stream(s, labels, 4, "npy")) for s in (device, host)]
    assert npy[0] == npy[1]
    assert np.load(io.BytesIO(npy[0])).dtype == dtype
    # The device hands over levels, not float32 rows: a quarter (or half) of the bytes cross to the host.
    bucket = device.compiled_buckets[0]
    out = device._executable(bucket)(generator.params, jax.random.key(0), np.uint32(0), np.zeros(bucket, np.int32))
    assert out.dtype == dtype and out.shape == (bucket, 6, 5, 3)


def table_schema() -> pb.DataSchema:
    integer = pb.COLUMN_TYPE_INTEGER
    return pb.DataSchema(
        tabular=pb.TabularSchema(
            columns=[
                pb.Column(name="byte", type=integer, lower=0, upper=255),
                pb.Column(name="count", type=integer, lower=0, upper=256),
                pb.Column(name="offset", type=integer, lower=-1, upper=100),
                pb.Column(name="delta", type=integer, lower=-200, upper=200),
                pb.Column(name="big", type=integer, lower=0, upper=2**33),
                pb.Column(name="huge", type=integer, lower=-(2**40), upper=2**40),
                pb.Column(name="signed", type=integer, lower=-128, upper=127),
                pb.Column(name="x", type=pb.COLUMN_TYPE_CONTINUOUS, lower=-1, upper=1),
                pb.Column(name="kind", type=pb.COLUMN_TYPE_CATEGORICAL, categories=["a", "bb"]),
            ],
            label_column="kind",
        )
    )


def test_tables_travel_in_their_narrowest_exact_dtypes(tmp_path):
    schema = table_schema()
    dtype = formats.tabular_dtype(schema)
    assert [dtype[name].str for name in dtype.names] == ["|u1", "<u2", "|i1", "<i2", "<i8", "<i8", "|i1", "<f8", "<U2"]
    big = pb.Column(name="big", type=pb.COLUMN_TYPE_INTEGER, lower=0, upper=2**32 - 1)
    assert sampling.integer_dtype(big).str == "<u4"
    assert sampling.row_bytes(schema) == dtype.itemsize

    make_generator_artifact(tmp_path / "t.safetensors", schema)
    sampler = sampling.CompiledSampler(load_generator(tmp_path / "t.safetensors"))
    decoded = list(sampler.iter_chunks(500, seed=3, chunk_samples=200))
    values = {name: np.concatenate([c.values[name] for c in decoded]) for name in dtype.names}
    npy = b"".join(piece for piece, _ in formats.encode_stream(sampler, 500, 3, "npy", chunk_samples=200))
    array = np.load(io.BytesIO(npy))
    assert array.dtype == dtype
    read, labels = formats.read_samples(npy, "npy", schema)
    for name in dtype.names:
        assert read[name].tolist() == values[name].tolist() == array[name].tolist(), name
    for name in ("byte", "count", "offset", "delta", "big", "huge", "signed"):
        assert read[name].dtype == np.int64 and len(np.unique(read[name])) > 2, name  # as decoded: int64 values
    assert read["byte"].min() >= 0 and read["byte"].max() <= 255 and -128 <= read["signed"].min() <= 127
    csv = b"".join(piece for piece, _ in formats.encode_stream(sampler, 500, 3, "csv", chunk_samples=200))
    as_csv, _ = formats.read_samples(csv, "csv", schema)
    assert all(as_csv[name].tolist() == values[name].tolist() for name in dtype.names)


# -- made ahead ---------------------------------------------------------------------------------------------------


class Counted:
    """Pieces that count how many were made, each `delay` seconds after the one before."""

    def __init__(self, n: int, delay: float = 0.0, fail_at: int | None = None):
        self.n, self.delay, self.fail_at = n, delay, fail_at
        self.made = 0
        self.closed = threading.Event()

    def __iter__(self):
        try:
            for i in range(self.n):
                time.sleep(self.delay)
                if i == self.fail_at:
                    raise ValueError(f"piece {i} failed")
                self.made += 1
                yield bytes([i]) * 1000, i + 1
        finally:
            self.closed.set()


def test_pieces_are_made_one_ahead_two_held_at_most_and_hashed():
    source = Counted(20)
    taken, ahead_of_taken = [], []
    with MadeAhead(iter(source)) as ahead:
        for data, done in ahead:
            time.sleep(0.01)  # a slow client: the maker waits for it
            taken.append(data)
            ahead_of_taken.append(source.made - len(taken))
            assert done == len(taken)
    assert len(taken) == 20 and max(ahead_of_taken) <= 1 and max(ahead_of_taken[:-1]) == 1
    assert ahead.sha256() == hashlib.sha256(b"".join(taken)).hexdigest()
    assert source.closed.wait(5)


def test_an_error_arrives_in_order_and_closing_stops_the_maker():
    failing = Counted(10, fail_at=3)
    with pytest.raises(ValueError, match="piece 3 failed"), MadeAhead(iter(failing)) as ahead:
        assert [done for _, done in ahead] == "unreachable: the fourth piece raises"
    assert failing.made == 3 and failing.closed.wait(5)

    endless = Counted(10**6, delay=0.001)
    with MadeAhead(iter(endless)) as ahead:
        got = [done for _, (_, done) in zip(range(5), ahead)]
    assert got == [1, 2, 3, 4, 5] and endless.closed.wait(5)
    stopped_at = endless.made
    time.sleep(0.05)
    assert endless.made == stopped_at <= 7  # nothing made once closed: at most the two held ahead
