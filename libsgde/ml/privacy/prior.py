"""A DP class prior: the label counts released once with Gaussian noise (a histogram: adding or removing one example
moves one count by 1, so the L2 sensitivity is 1), turned into proportions by post-processing. Without it a sampler
asked for unlabelled rows would draw classes uniformly, whatever the data's proportions."""

from __future__ import annotations

import jax
import jax.numpy as jnp

CLASS_PRIOR_PURPOSE = "class_prior"  # its PrivacyComponent's purpose


def noisy_class_counts(key: jax.Array, labels: jax.Array, num_classes: int, noise_multiplier: float) -> jax.Array:
    """Counts of labels in [0, num_classes) plus N(0, sigma^2) noise on each: [num_classes]."""
    counts = jnp.bincount(labels, length=num_classes).astype(jnp.float32)
    return counts + noise_multiplier * jax.random.normal(key, (num_classes,))


def class_prior(noisy_counts: jax.Array) -> jax.Array:
    """Class proportions from noisy counts (negative counts become 0; all-zero gives uniform)."""
    c = jnp.maximum(noisy_counts, 0.0)
    return jnp.where(jnp.sum(c) > 0, c / jnp.maximum(jnp.sum(c), 1e-12), 1.0 / c.shape[0])
