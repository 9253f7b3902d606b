"""DP-SGD pieces as pure functions of arrays: Poisson sampling into fixed-shape padded batches, per-example
clipping, Gaussian noise.

One DP-SGD step on a Poisson batch B (each example in with probability q) computes

    g = ( sum_{i in B} clip_C(grad l(theta, x_i)) + N(0, sigma^2 C^2 I) ) / (q N)

with clip_C(v) = v * min(1, C / ||v||). Dividing by the EXPECTED batch size q N (not |B|) keeps the sensitivity
at C, as the accountant assumes. Batches are padded to a fixed size with a mask so jit compiles once. The one
place these pieces are put together is the training step, libsgde.ml.train.dpsgd_step.

The per-example gradients here come from vmap(grad): correct for every layer. Models made only of ghost-aware
layers (libsgde.ml.layers: Dense, Conv, ConvTranspose) take the faster path in libsgde.ml.privacy.ghost, which
never materialises per-example gradients of the whole model; both give the same clipped sum, so the privacy
analysis (sensitivity C per example) is the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from libsgde.ml.pytree import Params

PerExampleLoss = Callable[..., jax.Array]  # (params, example) -> scalar loss


def padded_batch_size(dataset_size: int, sampling_rate: float, sigmas: float = 8.0) -> int:
    """A fixed batch shape that a Poisson batch exceeds with probability below ~1e-15 (mean + 8 sd)."""
    mean = dataset_size * sampling_rate
    return min(dataset_size, int(math.ceil(mean + sigmas * math.sqrt(mean * (1 - sampling_rate)) + 1)))


def poisson_batch(
    rng: np.random.Generator, dataset_size: int, sampling_rate: float, padded_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of one Poisson-sampled batch padded to `padded_size`, and its mask (1 = real, 0 = padding).

    Truncating an overfull batch would break the analysis, so an overfull batch (probability < 1e-15 with
    padded_batch_size) is an error rather than silently cut."""
    chosen = np.flatnonzero(rng.random(dataset_size) < sampling_rate)
    if len(chosen) > padded_size:
        raise RuntimeError(f"Poisson batch of {len(chosen)} exceeds the padded size {padded_size}")
    indices = np.zeros(padded_size, np.int32)
    indices[: len(chosen)] = chosen
    mask = np.zeros(padded_size, np.float32)
    mask[: len(chosen)] = 1.0
    return indices, mask


def per_example_grads(loss: PerExampleLoss, params: Params, batch: Any) -> Params:
    """Gradients of `loss` for each example of `batch` (leading axis), as a pytree with a leading batch axis."""
    return jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, batch)


def clipped_sum(
    loss: PerExampleLoss, params: Params, batch: Any, mask: jax.Array, clip_norm: float
) -> tuple[Params, jax.Array, jax.Array]:
    """Sum over real examples of their gradients clipped to norm `clip_norm`; returns (sum, per-example norms,
    per-example losses)."""
    losses, grads = jax.vmap(jax.value_and_grad(loss), in_axes=(None, 0))(params, batch)
    squares = sum(jnp.sum(jnp.reshape(g, (g.shape[0], -1)) ** 2, axis=1) for g in jax.tree.leaves(grads))
    norms = jnp.sqrt(squares)
    scale = mask * jnp.minimum(1.0, clip_norm / jnp.maximum(norms, 1e-12))
    summed = jax.tree.map(lambda g: jnp.tensordot(scale, g, axes=1), grads)
    return summed, norms, losses


def add_noise(
    key: jax.Array, summed: Params, clip_norm: float, noise_multiplier: float, expected_batch_size: float
) -> Params:
    """(summed + N(0, (sigma C)^2)) / expected batch size, with independent noise per parameter."""
    leaves, tree = jax.tree.flatten(summed)
    keys = jax.random.split(key, len(leaves))
    noisy = [
        (leaf + noise_multiplier * clip_norm * jax.random.normal(k, leaf.shape, leaf.dtype)) / expected_batch_size
        for leaf, k in zip(leaves, keys)
    ]
    return jax.tree.unflatten(tree, noisy)
