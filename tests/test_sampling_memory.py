"""Memory per sampling request, bounded from bytes per row (libsgde.io.sampling): the plan of the largest image the
schema allows stays within the limit, one that cannot fit is refused before anything is generated, and a model's
rows do not depend on the chunk they are generated in. Unit tests: no sockets (the sampler service's refusal is in
tests/test_sampler.py)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libsgde.client import sample_local
from libsgde.errors import Exhausted
from libsgde.io import formats, sampling
from libsgde.io.encoding import model_space
from libsgde.io.generator import load_generator
from libsgde.ml.architectures import get_architecture
from libsgde.ml.architectures.base import unflatten
from libsgde.ml.rows import seed_key
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from services.sampler.server import SamplerConfig
from tests.support.sampler import make_generator_artifact

MiB = 1 << 20
CAP = 256 * MiB  # the documented default limit per request


def image_model(height: int, width: int, channels: int, architecture: str, config: dict):
    schema = pb.DataSchema(image=pb.ImageSchema(height=height, width=width, channels=channels, pixel_max=255))
    arch = get_architecture(architecture)
    space = model_space(schema)
    return schema, arch, space, arch.configure(config, space)


def test_a_2048_by_2048_image_is_planned_within_the_limit_and_what_cannot_fit_is_refused():
    # The issue's model: conv cvae, 8 MiB of weights, 3.6 GiB for one sample on main (a 64-row bucket).
    conv = {"network": "conv", "channels": [1], "latent_dim": 1}
    schema, arch, space, config = image_model(2048, 2048, 1, "cvae", conv)
    shapes = arch.tensor_shapes(space, config)
    assert 7 * MiB < 4 * sum(math.prod(s) for s in shapes.values()) < 9 * MiB
    cost = sampling.row_cost(arch, space, config, schema)

    # The estimate bounds XLA's own buffers for one row of the generator (compiled from the shapes, no weights).
    params = unflatten({name: jax.ShapeDtypeStruct(s, jnp.float32) for name, s in shapes.items()})
    run = sampling.generator_fn(arch, space, config)
    one_row = jax.ShapeDtypeStruct((1,), jnp.int32)
    memory = jax.jit(run).lower(params, seed_key(0), jax.ShapeDtypeStruct((), jnp.uint32), one_row).compile()
    stats = memory.memory_analysis()
    assert stats.temp_size_in_bytes + stats.output_size_in_bytes <= cost.bucket

    plan = sampling.plan_sampling(cost, schema, 1)
    assert (plan.min_bucket, plan.max_bucket, plan.chunk) == (1, 1, 1)  # one row per bucket, not 64
    assert plan.peak_bytes <= CAP
    for chunk_samples in (1, 2, 3):
        assert sampling.plan_sampling(cost, schema, 1000, chunk_samples).peak_bytes <= CAP

    with pytest.raises(Exhausted) as info:
        sampling.plan_sampling(cost, schema, 10_000, 8192)
    error = info.value
    fits = int(error.message.rsplit("chunk_samples <= ", 1)[1])
    assert error.status == "RESOURCE_EXHAUSTED" and [v.field for v in error.violations] == ["chunk_samples"]
    assert "chunk_samples=8192" in error.message and "256 MiB per request (max_request_bytes)" in error.message
    assert 1 <= fits < 8192 and sampling.plan_sampling(cost, schema, 10_000, fits).peak_bytes <= CAP
    with pytest.raises(Exhausted):
        sampling.plan_sampling(cost, schema, 10_000, fits + 1)

    # Under a lower limit not even one sample fits: refused, saying what limit it takes.
    with pytest.raises(Exhausted, match=r"one sample of this model needs about \d+ MiB.*\(the operator's X\)"):
        sampling.plan_sampling(cost, schema, 1, 0, 64 * MiB, limit_name="the operator's X")

    # The largest image the schema allows (2048 x 2048 RGBA) does not fit the default limit at all.
    schema, arch, space, config = image_model(2048, 2048, 4, "dp-merf", {"hidden": [1], "latent_dim": 1})
    with pytest.raises(Exhausted, match="one sample of this model"):
        sampling.plan_sampling(sampling.row_cost(arch, space, config, schema), schema, 1)


def test_a_128_by_128_model_with_chunks_of_8192_is_refused_and_its_default_plan_fits():
    schema, arch, space, config = image_model(128, 128, 3, "dp-merf", {})
    cost = sampling.row_cost(arch, space, config, schema)
    plan = sampling.plan_sampling(cost, schema, 100_000)
    assert plan.peak_bytes <= CAP and plan.max_bucket * cost.bucket <= sampling.TARGET_BUCKET_MEMORY
    with pytest.raises(Exhausted, match=r"chunk_samples=8192 needs about 1\.\d GiB"):
        sampling.plan_sampling(cost, schema, 100_000, 8192)
    assert sampling.plan_sampling(cost, schema, 100, 8192).chunk == 8192  # a chunk holds at most the request


def test_large_rows_get_small_buckets_rows_do_not_depend_on_the_chunk_and_refusals_generate_nothing(tmp_path):
    schema = pb.DataSchema(image=pb.ImageSchema(height=256, width=256, channels=1, pixel_max=255))
    path = tmp_path / "wide.safetensors"
    make_generator_artifact(path, schema, {"hidden": [1], "latent_dim": 1, "features": 50, "generator_batch": 16})
    generator = load_generator(path)
    sampler = sampling.CompiledSampler(generator)
    one = list(sampler.iter_chunks(1, seed=1))
    assert len(one) == 1 and one[0].values.shape == (1, 256, 256, 1)
    assert sampler.compiled_buckets[-1] < sampling.MIN_BUCKET  # one sample is not padded to 64 rows of 256 KiB
    assert sampler.compiled_buckets[-1] * sampler.cost.bucket <= sampling.TARGET_BUCKET_MEMORY

    whole = [c.values for c in sampler.iter_chunks(40, seed=7)]
    for chunk_samples in (1, 5, 40):
        split = np.concatenate([c.values for c in sampler.iter_chunks(40, seed=7, chunk_samples=chunk_samples)])
        assert np.array_equal(split, np.concatenate(whole))
    assert sampler.compiled_buckets == [sampler.max_bucket]  # one compiled shape serves every chunk size

    fresh = sampling.CompiledSampler(generator)
    with pytest.raises(Exhausted, match="one sample of this model"):
        next(fresh.iter_chunks(10, seed=1, max_request_bytes=MiB))
    with pytest.raises(Exhausted, match="one sample of this model"):
        next(formats.encode_stream(fresh, 10, 1, "npy", max_request_bytes=MiB))  # before the .npy header
    assert fresh.compiled_buckets == []  # refused before anything was compiled or generated

    with pytest.raises(Exhausted, match=r"chunk_samples=1000 .*\(sample_local's max_request_bytes\).*<= \d+$"):
        sample_local(path, 1000, chunk_samples=1000, max_request_bytes=64 * MiB, out=tmp_path / "out.npy")
    assert not (tmp_path / "out.npy").exists()
    assert sample_local(path, 3, seed=2).values.shape == (3, 256, 256, 1)


def test_the_sampler_reads_its_limit_from_the_environment(monkeypatch):
    monkeypatch.setenv("SGDE_SAMPLER_MAX_REQUEST_BYTES", str(64 * MiB))
    assert SamplerConfig.from_env().max_request_bytes == 64 * MiB
    monkeypatch.delenv("SGDE_SAMPLER_MAX_REQUEST_BYTES")
    assert SamplerConfig.from_env().max_request_bytes == sampling.DEFAULT_MAX_REQUEST_BYTES == CAP
