"""Ghost clipping for convolutions: per-example gradient norms and the clipped sum equal those of a per-example loop
for convolutions and transposed convolutions of many geometries, both ways of computing norms (ghost and direct);
the layers are flax's layers (same parameters, same outputs); the conv cvae's DP step equals its vmap(grad) step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from libsgde.ml.architectures import get_architecture
from libsgde.ml.layers import Conv, ConvTranspose, Dense
from libsgde.ml.privacy import dpsgd, ghost
from libsgde.ml.space import ModelSpace
from tests.support.dp_steps import assert_ghost_step_equals_vmap_step

GEOMETRIES = [  # (kernel size, keyword arguments): kernel sizes, strides, SAME / VALID / explicit padding, dilation
    ((3, 3), {}),
    ((3, 3), {"strides": (2, 2)}),
    ((2, 4), {"strides": (1, 2), "padding": "VALID"}),
    ((3, 2), {"strides": (3, 2), "padding": ((1, 2), (0, 1))}),
    ((5, 5), {"strides": 2, "padding": 1}),
    ((3, 3), {"kernel_dilation": (2, 1), "strides": (1, 2)}),
    ((1, 1), {"strides": 2}),
    ((2, 3), {"padding": ((2, 0), (1, 3)), "kernel_dilation": (1, 2)}),
]


class OneConv(nn.Module):
    """A convolution (or transposed one) between two ghost-aware Dense layers, per-example loss out."""

    layer: type[nn.Module]
    kernel_size: tuple[int, ...]
    options: dict
    channels: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = jnp.tanh(Dense(x.shape[-1])(x))  # so the convolution's input depends on parameters too
        h = jnp.tanh(self.layer(self.channels, self.kernel_size, **self.options)(h))
        out = Dense(3)(h.reshape(h.shape[0], -1))
        return jnp.sum(jnp.sin(out) + out**2, 1)


def loop_reference(module, params, x, mask, clip):
    """Each real example's gradient norm and the sum of the clipped gradients, one example at a time."""
    grad_one = jax.jit(jax.grad(lambda p, xi: module.apply({"params": p}, xi)[0]))
    total, norms = jax.tree.map(jnp.zeros_like, params), []
    for i in range(len(mask)):
        g = grad_one(params, x[i : i + 1])
        norm = float(jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree.leaves(g))))
        norms.append(norm)
        scale = float(mask[i]) * min(1.0, clip / norm)
        total = jax.tree.map(lambda t, v, s=scale: t + v * s, total, g)
    return total, np.asarray(norms)


def check_against_loop(module, x, mask, clip=0.5):
    """Both ways of computing norms (ghost, direct) give the loop's norms and clipped sum."""
    params = module.init(jax.random.key(1), x)["params"]
    reference, ref_norms = loop_reference(module, params, x, mask, clip)
    real = np.asarray(mask) > 0
    assert np.sum(ref_norms[real] > clip) >= 2  # clipping really happened
    for method in ("ghost", "direct"):
        summed, norms, _ = jax.jit(lambda p, x, m, how=method: ghost.clipped_sum(module, p, (x,), m, clip, how))(
            params, x, mask
        )
        np.testing.assert_allclose(np.asarray(norms)[real], ref_norms[real], rtol=1e-4, err_msg=method)
        assert np.all(np.asarray(norms)[~real] == 0)  # padding rows have no gradient at all
        flat, ref_flat = jax.tree_util.tree_leaves_with_path(summed), jax.tree_util.tree_leaves_with_path(reference)
        assert [p for p, _ in flat] == [p for p, _ in ref_flat]
        for (path, a), (_, b) in zip(flat, ref_flat):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=f"{method} {jax.tree_util.keystr(path)}")


# From 3 channels to 2, a Conv takes its windows on the output gradient where its stride is 1 and on the input
# where it is not; a ConvTranspose always on the output gradient (libsgde.ml.conv.factors).
@pytest.mark.parametrize("layer,channels", [(Conv, 2), (ConvTranspose, 4)])
@pytest.mark.parametrize("kernel_size,options", GEOMETRIES)
def test_conv_ghost_norms_equal_per_example_norms_from_a_loop(layer, channels, kernel_size, options):
    x = jax.random.normal(jax.random.key(0), (6, 9, 8, 3))
    mask = jnp.asarray([1, 1, 1, 1, 1, 0], jnp.float32)
    check_against_loop(OneConv(layer, kernel_size, options, channels), x, mask)


@pytest.mark.parametrize("layer", [Conv, ConvTranspose])
def test_one_dimensional_convolutions_too(layer):
    x = jax.random.normal(jax.random.key(0), (5, 11, 2))
    check_against_loop(OneConv(layer, (3,), {"strides": 2}, 3), x, jnp.ones(5, jnp.float32))


@pytest.mark.parametrize("layer,flax_layer", [(Conv, nn.Conv), (ConvTranspose, nn.ConvTranspose)])
@pytest.mark.parametrize("kernel_size,options", GEOMETRIES)
def test_the_layers_are_flax_layers_with_the_same_parameters_and_outputs(layer, flax_layer, kernel_size, options):
    """Artifacts written with flax's nn.Conv / nn.ConvTranspose load into these and compute the same function, with
    the same gradients."""
    x = jax.random.normal(jax.random.key(0), (2, 9, 8, 5))
    ours, theirs = layer(4, kernel_size, **options), flax_layer(4, kernel_size, **options)
    params = ours.init(jax.random.key(1), x)["params"]
    flax_params = theirs.init(jax.random.key(1), x)["params"]
    assert jax.tree.structure(params) == jax.tree.structure(flax_params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(flax_params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(
        ours.apply({"params": params}, x), theirs.apply({"params": params}, x), rtol=1e-5, atol=1e-6
    )
    # and the same gradients (a transposed convolution's kernel gradient is libsgde.ml.conv's, not XLA's)
    ours_grads, theirs_grads = (
        jax.grad(lambda p, x, m=m: jnp.sum(jnp.sin(m.apply({"params": p}, x))), argnums=(0, 1))(params, x)
        for m in (ours, theirs)
    )
    for a, b in zip(jax.tree.leaves(ours_grads), jax.tree.leaves(theirs_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_the_cost_rule_picks_direct_for_wide_images_and_ghost_for_dense():
    dense = ghost._Factors(jnp.zeros((2, 1, 300)), jnp.zeros((2, 1, 200)), jnp.zeros((2, 200)), (300, 200))
    conv = ghost._Factors(jnp.zeros((2, 196, 99)), jnp.zeros((2, 196, 32)), jnp.zeros((2, 32)), (3, 3, 11, 32))
    assert (dense.method(), conv.method()) == ("ghost", "direct")


def test_a_layer_that_is_not_ghost_aware_is_refused_by_name():
    class FlaxConv(nn.Module):
        @nn.compact
        def __call__(self, x):
            return jnp.sum(nn.Conv(2, (3, 3))(x), (1, 2, 3))

    x = jnp.ones((2, 5, 5, 1))
    module = FlaxConv()
    params = module.init(jax.random.key(0), x)["params"]
    with pytest.raises(ghost.NotGhostable, match="Conv_0 records no ghost inputs"):
        ghost.clipped_sum(module, params, (x,), jnp.ones(2), 1.0)


IMAGE = ModelSpace("image", (8, 8, 1), (), 10)
CONV_CONFIG = {"network": "conv", "channels": [3, 4], "hidden": [8], "latent_dim": 2}


def cvae_batch(n=10, real=8):
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    x = jax.random.uniform(k1, (n, *IMAGE.shape))
    labels = jax.random.randint(k2, (n,), 0, 10)
    mask = jnp.asarray(np.r_[np.ones(real), np.zeros(n - real)], jnp.float32)
    return (x, labels, jax.random.split(k3, n)), mask


def test_the_conv_cvae_is_ghostable_and_its_clipped_sum_equals_vmap():
    arch = get_architecture("cvae")
    config = arch.configure(CONV_CONFIG, IMAGE)
    module, params = arch.module(IMAGE, config), arch.init(jax.random.key(1), IMAGE, config)
    assert ghost.is_ghostable(params)
    args, mask = cvae_batch()

    def example_loss(p, example):
        return module.apply({"params": p}, *(a[None] for a in example))[0]

    vmap_sum, vmap_norms, _ = jax.jit(lambda p, a, m: dpsgd.clipped_sum(example_loss, p, a, m, 1.0))(params, args, mask)
    assert float(jnp.max(vmap_norms)) > 1.0
    for method in (None, "ghost", "direct"):
        summed, norms, _ = jax.jit(lambda p, a, m, how=method: ghost.clipped_sum(module, p, a, m, 1.0, how))(
            params, args, mask
        )
        np.testing.assert_allclose(norms[:8], vmap_norms[:8], rtol=1e-4)
        for a, b in zip(jax.tree.leaves(summed), jax.tree.leaves(vmap_sum)):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_the_conv_cvae_training_step_is_the_same_on_ghost_and_vmap():
    arch = get_architecture("cvae")
    config = arch.configure(CONV_CONFIG, IMAGE)
    module, params = arch.module(IMAGE, config), arch.init(jax.random.key(1), IMAGE, config)
    (x, labels, _), mask = cvae_batch()
    assert_ghost_step_equals_vmap_step(module, params, x, labels, mask, clip_norm=8.0)
