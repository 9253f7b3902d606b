"""One check shared by the ghost-clipping tests: a DP-SGD step through ghost clipping equals the vmap(grad) step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from libsgde.ml.train import dpsgd_step


def assert_ghost_step_equals_vmap_step(module, params, x, labels, mask, clip_norm: float = 1.0) -> None:
    """One step of `dpsgd_step` (noise multiplier 1.1, the same noise key) with ghost clipping and with vmap(grad):
    the same loss and the same parameters after it."""
    optimizer = optax.sgd(1.0)
    state, indices = (params, optimizer.init(params)), jnp.arange(len(mask))
    (ghost_params, _), ghost_loss = dpsgd_step(
        module, optimizer, x, labels, len(mask), 1.0, 1.1, clip_norm, True, jax.random.key(2)
    )(state, indices, mask, 0)
    (vmap_params, _), vmap_loss = dpsgd_step(
        module, optimizer, x, labels, len(mask), 1.0, 1.1, clip_norm, False, jax.random.key(2)
    )(state, indices, mask, 0)
    np.testing.assert_allclose(ghost_loss, vmap_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ghost_params), jax.tree.leaves(vmap_params)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
