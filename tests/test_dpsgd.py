"""DP-SGD pieces against a per-example loop reference, on a small real model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from libsgde.ml.privacy.dpsgd import add_noise, clipped_sum, dp_gradient, padded_batch_size, poisson_batch

C = 0.5


def loss(params, example):
    x, y = example
    hidden = jnp.tanh(x @ params["w1"] + params["b1"])
    logit = hidden @ params["w2"] + params["b2"]
    return jnp.logaddexp(0.0, logit) - y * logit  # logistic loss


@pytest.fixture(scope="module")
def problem():
    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)[:32]  # scaling is irrelevant to what is tested here
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"w1": jax.random.normal(k1, (30, 8)) * 0.3, "b1": jnp.zeros(8),
              "w2": jax.random.normal(k2, (8,)) * 0.3, "b2": jnp.zeros(())}
    return params, (jnp.asarray(x), jnp.asarray(y[:32], jnp.float32))


def reference(params, batch, mask, key, sigma, expected):
    """Clip each example's gradient in a Python loop, sum, add the same noise."""
    total = jax.tree.map(jnp.zeros_like, params)
    for i in range(len(mask)):
        if mask[i] == 0:
            continue
        g = jax.grad(loss)(params, (batch[0][i], batch[1][i]))
        norm = jnp.sqrt(sum(jnp.sum(v ** 2) for v in jax.tree.leaves(g)))
        g = jax.tree.map(lambda v: v * min(1.0, C / float(norm)), g)
        total = jax.tree.map(jnp.add, total, g)
    return add_noise(key, total, C, sigma, expected)


def test_dp_gradient_equals_the_per_example_loop(problem):
    params, batch = problem
    mask = jnp.asarray(np.r_[np.ones(24), np.zeros(8)], jnp.float32)
    key = jax.random.key(7)
    ours = dp_gradient(loss, params, batch, mask, key, clip_norm=C, noise_multiplier=1.1, expected_batch_size=20.0)
    ref = reference(params, batch, mask, key, 1.1, 20.0)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_clipped_norms_never_exceed_c_and_padding_contributes_nothing(problem):
    params, batch = problem
    mask = jnp.asarray(np.r_[np.ones(16), np.zeros(16)], jnp.float32)
    summed, norms, _ = clipped_sum(loss, params, batch, mask, C)
    assert float(jnp.max(norms)) > C  # some examples really were clipped
    # Each real example adds at most C: the sum's norm is at most 16 C.
    total = float(jnp.sqrt(sum(jnp.sum(v ** 2) for v in jax.tree.leaves(summed))))
    assert total <= 16 * C + 1e-5
    garbage = (batch[0].at[16:].set(1e3), batch[1].at[16:].set(1.0))
    summed2, _, _ = clipped_sum(loss, params, garbage, mask, C)
    for a, b in zip(jax.tree.leaves(summed), jax.tree.leaves(summed2)):
        np.testing.assert_array_equal(a, b)


def test_noise_standard_deviation_is_sigma_c_over_expected_batch():
    zeros = {"w": jnp.zeros((200, 50))}
    noisy = add_noise(jax.random.key(3), zeros, clip_norm=2.0, noise_multiplier=1.5, expected_batch_size=10.0)
    std = float(jnp.std(noisy["w"]))
    assert abs(std - 1.5 * 2.0 / 10.0) < 0.02 * (1.5 * 2.0 / 10.0)  # 10,000 draws: sd of the estimate ~0.7%


def test_poisson_batches_are_padded_masked_and_reproducible():
    n, q = 10_000, 0.01
    size = padded_batch_size(n, q)
    sizes = []
    for seed in range(200):
        idx, mask = poisson_batch(np.random.default_rng(seed), n, q, size)
        assert idx.shape == mask.shape == (size,)
        real = int(mask.sum())
        assert np.all(mask[:real] == 1) and np.all(mask[real:] == 0) and len(set(idx[:real])) == real
        sizes.append(real)
    assert abs(np.mean(sizes) - n * q) < 3  # mean 100, sd of the mean ~0.7
    a = poisson_batch(np.random.default_rng(5), n, q, size)
    b = poisson_batch(np.random.default_rng(5), n, q, size)
    np.testing.assert_array_equal(a[0], b[0])
