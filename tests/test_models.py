"""Generators: ghost clipping equals the per-example reference, configs are checked, and the strict reader refuses
artifacts whose tensors do not match the architecture."""

import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libsgde.io.artifact import ArtifactError, build_manifest, write_artifact
from libsgde.io.encoding import model_space
from libsgde.io.generator import load_generator
from libsgde.ml.architectures import CLASS_PRIOR, ConfigError, artifact_tensor_shapes, get_architecture
from libsgde.ml.architectures.base import flatten
from libsgde.ml.privacy import dpsgd, ghost
from libsgde.ml.space import Block, ModelSpace
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from tests.support.dp_steps import assert_ghost_step_equals_vmap_step

TABULAR = ModelSpace(
    "tabular",
    (9,),
    (
        Block("a", "numeric", 0, 1),
        Block("b", "categorical", 1, 4),
        Block("c", "numeric", 5, 1),
        Block("d", "categorical", 6, 3),
    ),
    3,
)
IMAGE = ModelSpace("image", (8, 8, 1), (), 10)


def batch(space, n=12, real=9, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.uniform(k1, (n, *space.shape))
    labels = jax.random.randint(k2, (n,), 0, max(space.num_classes, 1))
    mask = jnp.asarray(np.r_[np.ones(real), np.zeros(n - real)], jnp.float32)
    return (x, labels, jax.random.split(k3, n)), mask


def per_example_reference(module, params, args, mask, clip):
    """Clip each example's own gradient in a Python loop and sum."""
    grad_one = jax.jit(jax.grad(lambda p, example: module.apply({"params": p}, *example)[0]))
    total = jax.tree.map(jnp.zeros_like, params)
    for i in range(len(mask)):
        if mask[i] == 0:
            continue
        g = grad_one(params, tuple(a[i : i + 1] for a in args))
        norm = float(jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree.leaves(g))))
        total = jax.tree.map(lambda t, v, scale=min(1.0, clip / norm): t + v * scale, total, g)
    return total


@pytest.mark.parametrize(
    "space,config",
    [(TABULAR, {"hidden": [16, 8], "latent_dim": 3}), (IMAGE, {"network": "mlp", "hidden": [16], "latent_dim": 2})],
)
def test_ghost_clipping_equals_the_per_example_loop(space, config):
    arch = get_architecture("cvae")
    config = arch.configure(config, space)
    module, params = arch.module(space, config), arch.init(jax.random.key(1), space, config)
    args, mask = batch(space)
    summed, norms, _ = jax.jit(lambda p, a, m: ghost.clipped_sum(module, p, a, m, 1.0))(params, args, mask)
    assert float(jnp.max(norms)) > 1.0  # clipping really happened
    reference = per_example_reference(module, params, args, mask, 1.0)
    for a, b in zip(jax.tree.leaves(summed), jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    vmap_sum, vmap_norms, _ = jax.jit(
        lambda p, a, m: dpsgd.clipped_sum(
            lambda p, e: module.apply({"params": p}, *(x[None] for x in e))[0], p, a, m, 1.0
        )
    )(params, args, mask)
    np.testing.assert_allclose(norms[:9], vmap_norms[:9], rtol=1e-4)
    assert np.all(np.asarray(norms[9:]) == 0)  # padding has no gradient at all


def test_the_training_steps_ghost_and_vmap_branches_take_the_same_step():
    arch = get_architecture("cvae")
    config = arch.configure({"hidden": [16, 8], "latent_dim": 3}, TABULAR)
    module, params = arch.module(TABULAR, config), arch.init(jax.random.key(1), TABULAR, config)
    (x, labels, _), mask = batch(TABULAR)
    assert ghost.is_ghostable(params)
    assert_ghost_step_equals_vmap_step(module, params, x, labels, mask, clip_norm=9.0)


def test_convolutions_are_ghostable_so_the_conv_cvae_trains_without_vmap():
    # (tests/test_ghost_conv.py checks the conv layers' norms and clipped sums against per-example loops)
    arch = get_architecture("cvae")
    config = arch.configure({"network": "conv", "channels": [4], "hidden": [8], "latent_dim": 2}, IMAGE)
    assert ghost.is_ghostable(jax.eval_shape(lambda: arch.init(jax.random.key(0), IMAGE, config)))


@pytest.mark.parametrize(
    "raw,key",
    [
        ({"latent_dim": 0}, "latent_dim"),
        ({"hidden": [4, "x"]}, "hidden"),
        ({"hiden": [4]}, "hiden"),
        ({"beta": float("nan")}, "beta"),
        ({"network": "resnet"}, "network"),
        ({"latent_dim": True}, "latent_dim"),
    ],
)
def test_bad_configs_name_the_setting(raw, key):
    with pytest.raises(ConfigError) as e:
        get_architecture("cvae").configure(raw, IMAGE)
    assert e.value.key == key


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ConfigError, match="cvae, dp-merf"):
        get_architecture("gan")


# -- the strict reader's architecture check ---------------------------------------------------------------------

SCHEMA = pb.DataSchema(
    image=pb.ImageSchema(height=8, width=8, channels=1, pixel_max=16, class_names=[str(i) for i in range(10)])
)
PRIVACY = pb.PrivacyReport(
    mechanism="dp-sgd",
    epsilon=1.0,
    delta=1e-5,
    accountant="pld",
    noise_multiplier=1.0,
    sampling_rate=0.01,
    steps=10,
    clip_norm=1.0,
    dataset_size=1000,
    rdp_epsilon=1.1,
)


def artifact(tmp_path, arch_name="cvae", config=None, mutate=None, architecture=None):
    arch = get_architecture(arch_name)
    space = model_space(SCHEMA)
    config = arch.configure(config or {"hidden": [8], "latent_dim": 2, "channels": [4]}, space)
    tensors = {
        k: np.asarray(v, np.float32)
        for k, v in flatten(arch.sampling_params(arch.init(jax.random.key(0), space, config))).items()
    }
    tensors[CLASS_PRIOR] = np.full(10, 0.1, np.float32)
    if mutate:
        mutate(tensors)
    manifest = build_manifest(architecture or arch_name, config, SCHEMA, PRIVACY, {})
    path = tmp_path / "model.safetensors"
    write_artifact(path, tensors, manifest)
    return path


def test_a_well_formed_artifact_loads_and_samples_inside_the_schema(tmp_path):
    generator = load_generator(artifact(tmp_path))
    images, labels = generator.sample(7, seed=3)
    assert images.shape == (7, 8, 8, 1) and images.dtype == np.uint8 and images.max() <= 16
    assert labels.shape == (7,) and set(labels) <= set(range(10))


def first_name(tensors, part):
    return sorted(k for k in tensors if part in k)[0]


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda t: t.__setitem__(first_name(t, "kernel"), np.zeros((3, 3), np.float32)), "implies F32"),
        (lambda t: t.__setitem__("decoder/extra/kernel", np.zeros(2, np.float32)), "unexpected"),
        (lambda t: t.pop(first_name(t, "bias")), "missing"),
        (lambda t: t.__setitem__(CLASS_PRIOR, np.zeros(10, np.float16)), "implies F32"),
        # On the first release these loaded, and sampling failed with INTERNAL (and a traceback in the log).
        (lambda t: t.__setitem__(CLASS_PRIOR, np.array([-1.0] + [0.2] * 9, np.float32)), "non-negative"),
        (lambda t: t.__setitem__(CLASS_PRIOR, np.array([np.nan] + [0.1] * 9, np.float32)), "finite"),
    ],
)
def test_tensors_that_do_not_match_the_architecture_are_refused(tmp_path, mutate, message):
    with pytest.raises(ArtifactError, match=message):
        load_generator(artifact(tmp_path, mutate=mutate))


def test_unknown_architecture_and_bad_config_are_refused(tmp_path):
    path = artifact(tmp_path)
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    manifest = json.loads(header["__metadata__"]["sgde.manifest"])
    for change, field in (
        ({"architecture": "evil-net"}, "architecture"),
        ({"config": {**manifest["config"], "latent_dim": 10**9}}, "config.latent_dim"),
    ):
        header["__metadata__"]["sgde.manifest"] = json.dumps({**manifest, **change})
        text = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
        with pytest.raises(ArtifactError) as e:
            load_generator(path)
        assert e.value.field == field


def test_truncated_and_huge_header_artifacts_are_refused(tmp_path):
    path = artifact(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-5])
    with pytest.raises(ArtifactError):
        load_generator(path)
    path.write_bytes(struct.pack("<Q", 1 << 40) + raw[8:])
    with pytest.raises(ArtifactError):
        load_generator(path)


def test_every_architecture_declares_its_tensors_for_both_kinds():
    for name in ("cvae", "dp-merf"):
        arch = get_architecture(name)
        for space in (TABULAR, IMAGE):
            shapes = artifact_tensor_shapes(arch, space, arch.configure({}, space))
            assert shapes[CLASS_PRIOR] == (max(space.num_classes, 1),)
            assert all(not k.startswith("encoder") for k in shapes)  # only what sampling needs is published


@pytest.mark.parametrize("arch_name", ["cvae", "dp-merf"])
def test_a_row_does_not_depend_on_the_batch_it_was_generated_in(tmp_path, arch_name):
    generator = load_generator(artifact(tmp_path, arch_name, config={"hidden": [8], "latent_dim": 2}))
    labels = np.arange(10, dtype=np.int32) % 10
    whole = generator.sample_model_space(labels, seed=4)
    halves = np.concatenate(
        [
            generator.sample_model_space(labels[:3], seed=4),
            generator.sample_model_space(labels[3:], seed=4, first_row=3),
        ]
    )
    np.testing.assert_allclose(whole, halves, rtol=1e-6, atol=1e-6)  # matmul blocking may differ by an ulp
    assert not np.array_equal(whole, generator.sample_model_space(labels, seed=5))
