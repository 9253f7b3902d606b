"""DP-MERF's private release: a noisy mean embedding with random Fourier features (Harder et al., "DP-MERF:
Differentially private mean embeddings with random features", AISTATS 2021).

phi(x) = [cos(x W), sin(x W)] / sqrt(F/2) with W ~ N(0, 1/lengthscale^2) approximates a Gaussian kernel and has
norm exactly 1. Each example contributes v_i = [phi(x_i) (x) onehot(y_i), onehot(y_i)] / sqrt(2), also of norm 1,
so adding or removing one example moves sum_i v_i by at most 1: releasing that sum plus N(0, sigma^2 I) noise is
one Gaussian mechanism with sensitivity 1, accounted as a GaussianDpEvent(sigma). Everything after (the
generator's training) is post-processing and costs no privacy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def frequencies(key: jax.Array, dim_in: int, n_features: int, lengthscale: float) -> jax.Array:
    """Random frequencies W [dim_in, n_features // 2] of a Gaussian kernel with this lengthscale (data-free)."""
    return jax.random.normal(key, (dim_in, n_features // 2)) / lengthscale


def feature_map(x: jax.Array, freqs: jax.Array) -> jax.Array:
    """phi(x) [n, F] for flat inputs x [n, dim_in]; every row has norm 1."""
    proj = x @ freqs
    return jnp.concatenate([jnp.cos(proj), jnp.sin(proj)], 1) / jnp.sqrt(freqs.shape[1])


def noisy_release(
    key: jax.Array, x: jax.Array, onehot: jax.Array, freqs: jax.Array, noise_multiplier: float, chunk: int = 4096
) -> tuple[jax.Array, jax.Array]:
    """The one private release: (noisy sum_i phi(x_i) onehot(y_i)^T [F, K], noisy class counts [K]).

    x [N, dim_in], onehot [N, K] (K >= 1: one column of ones for unconditional data)."""
    emb = jnp.zeros((2 * freqs.shape[1], onehot.shape[1]))
    for start in range(0, x.shape[0], chunk):  # bounded memory for large N
        emb = emb + feature_map(x[start : start + chunk], freqs).T @ onehot[start : start + chunk]
    counts = jnp.sum(onehot, 0)
    scale = jnp.sqrt(2.0)  # v_i = [emb_i, onehot_i] / sqrt(2) has norm 1; noise is added on that scale
    k_emb, k_counts = jax.random.split(key)
    noisy_emb = emb / scale + noise_multiplier * jax.random.normal(k_emb, emb.shape)
    noisy_counts = counts / scale + noise_multiplier * jax.random.normal(k_counts, counts.shape)
    return noisy_emb * scale, noisy_counts * scale


def mmd_loss(target: jax.Array, synthetic_phi: jax.Array, synthetic_onehot: jax.Array) -> jax.Array:
    """|| target - mean_j phi(g_j) onehot(y_j)^T ||^2 with target the real mean embedding [F, K]."""
    mean = synthetic_phi.T @ synthetic_onehot / synthetic_phi.shape[0]
    return jnp.sum((target - mean) ** 2)
