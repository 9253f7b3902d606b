"""DP-SGD as training runs it (libsgde.ml.train.dpsgd_step) against a per-example loop reference, on a small real
model; its pieces' bounds; Poisson batches."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_breast_cancer

from libsgde.ml.privacy.dpsgd import clipped_sum, padded_batch_size, poisson_batch
from libsgde.ml.train import dpsgd_step

C = 0.5


def loss(params, example):
    x, y = example
    hidden = jnp.tanh(x @ params["w1"] + params["b1"])
    logit = hidden @ params["w2"] + params["b2"]
    return jnp.logaddexp(0.0, logit) - y * logit  # logistic loss


class PerExample:
    """A per-example loss as dpsgd_step's module: apply({"params": p}, x, y, keys) -> each example's loss."""

    def __init__(self, example_loss):
        self.example_loss = example_loss

    def apply(self, variables, x, y, keys):
        return jax.vmap(self.example_loss, in_axes=(None, 0))(variables["params"], (x, y))


def step_gradient(example_loss, params, x, y, mask, sigma, expected, key, step=0):
    """The privatised gradient one training step applies, read back from plain SGD with learning rate 1 (the
    update is -g), and the step's reported loss. Batch i is example i: indices 0 .. n-1."""
    optimizer = optax.sgd(1.0)
    step_fn = dpsgd_step(PerExample(example_loss), optimizer, x, y, len(mask), C, sigma, expected, False, key)
    (new, _), mean_loss = step_fn((params, optimizer.init(params)), jnp.arange(len(mask)), mask, step)
    return jax.tree.map(jnp.subtract, params, new), float(mean_loss)


@pytest.fixture(scope="module")
def problem():
    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)[:32]  # scaling is irrelevant to what is tested here
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "w1": jax.random.normal(k1, (30, 8)) * 0.3,
        "b1": jnp.zeros(8),
        "w2": jax.random.normal(k2, (8,)) * 0.3,
        "b2": jnp.zeros(()),
    }
    return params, (jnp.asarray(x), jnp.asarray(y[:32], jnp.float32))


def reference(params, batch, mask, expected):
    """Clip each example's gradient in a Python loop, sum, divide by the expected batch size."""
    total = jax.tree.map(jnp.zeros_like, params)
    for i in range(len(mask)):
        if mask[i] == 0:
            continue
        g = jax.grad(loss)(params, (batch[0][i], batch[1][i]))
        scale = min(1.0, C / float(jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree.leaves(g)))))
        total = {k: total[k] + scale * g[k] for k in total}
    return jax.tree.map(lambda v: v / expected, total)


def test_the_training_step_equals_the_per_example_loop_plus_data_independent_noise(problem):
    params, batch = problem
    mask = jnp.asarray(np.r_[np.ones(24), np.zeros(8)], jnp.float32)
    key = jax.random.key(7)
    clean, mean_loss = step_gradient(loss, params, *batch, mask, 0.0, 20.0, key)
    for a, b in zip(jax.tree.leaves(clean), jax.tree.leaves(reference(params, batch, mask, 20.0))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    losses = [float(loss(params, (batch[0][i], batch[1][i]))) for i in range(24)]
    assert mean_loss == pytest.approx(np.mean(losses), rel=1e-5)  # the real examples' mean, padding left out
    # With noise, the step adds to that exactly the noise it adds to an empty batch: N(0, (sigma C)^2) / (q N),
    # whatever the data (its scale is checked below).
    noisy, _ = step_gradient(loss, params, *batch, mask, 1.1, 20.0, key)
    noise, _ = step_gradient(loss, params, *batch, jnp.zeros(32), 1.1, 20.0, key)
    for n, c, z in zip(jax.tree.leaves(noisy), jax.tree.leaves(clean), jax.tree.leaves(noise)):
        assert float(jnp.max(jnp.abs(z))) > 1e-3  # there is noise
        np.testing.assert_allclose(n - c, z, rtol=1e-4, atol=1e-6)


def test_clipped_norms_never_exceed_c_and_padding_contributes_nothing(problem):
    params, batch = problem
    mask = jnp.asarray(np.r_[np.ones(16), np.zeros(16)], jnp.float32)
    summed, norms, _ = clipped_sum(loss, params, batch, mask, C)
    assert float(jnp.max(norms)) > C  # some examples really were clipped
    # Each real example adds at most C: the sum's norm is at most 16 C.
    total = float(jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree.leaves(summed))))
    assert total <= 16 * C + 1e-5
    garbage = (batch[0].at[16:].set(1e3), batch[1].at[16:].set(1.0))
    summed2, _, _ = clipped_sum(loss, params, garbage, mask, C)
    for a, b in zip(jax.tree.leaves(summed), jax.tree.leaves(summed2)):
        np.testing.assert_array_equal(a, b)


def test_the_training_steps_noise_is_centred_sigma_c_over_expected_batch_and_fresh_each_step():
    params = {"w": jnp.zeros((200, 50))}  # 10,000 draws: sd of the estimated sd ~0.7%

    def linear(p, example):
        return jnp.sum(p["w"]) * jnp.sum(example[0])

    x, y, empty = jnp.ones((4, 3)), jnp.zeros(4), jnp.zeros(4)  # an empty Poisson batch: the update is the noise
    noise, _ = step_gradient(linear, params, x, y, empty, 1.5, 10.0, jax.random.key(3))
    sd = 1.5 * C / 10.0
    assert abs(float(jnp.std(noise["w"])) - sd) < 0.02 * sd
    assert abs(float(jnp.mean(noise["w"]))) < 4 * sd / 100  # unbiased: 4 sd of the mean of 10,000 draws
    again, _ = step_gradient(linear, params, x, y, empty, 1.5, 10.0, jax.random.key(3))
    np.testing.assert_array_equal(noise["w"], again["w"])  # from the mechanism key and the step number alone
    later, _ = step_gradient(linear, params, x, y, empty, 1.5, 10.0, jax.random.key(3), step=1)
    assert abs(float(jnp.corrcoef(noise["w"].ravel(), later["w"].ravel())[0, 1])) < 0.05  # a new draw each step


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
