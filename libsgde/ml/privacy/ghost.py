"""Ghost clipping with book-keeping: DP-SGD's clipped gradient sum for models made of ghost-aware Dense layers,
without materialising per-example gradients.

One forward pass records each Dense layer's input x [B, in]; one backward pass, taken with respect to zero
perturbations on the layer outputs only (not the weights), gives g = dL/dy [B, out] where L = sum_i mask_i l_i.
Then, per example,

    ||grad l_i||^2 = sum over layers ( ||x_i||^2 ||g_i||^2 + ||g_i||^2 ),

and with w_i = mask_i min(1, C / ||grad l_i||) the clipped sum is, per layer, W: x^T (w g) and b: sum_i w_i g_i:
one extra matrix product per layer. (Bu et al., "Differentially private optimization on large model at small
cost", 2023, call this book-keeping.) Layers with parameters that are not ghost-aware are refused; the caller then
uses vmap(grad) (libsgde.ml.privacy.dpsgd).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from libsgde.ml.layers import GHOST_GRADS, GHOST_INPUTS
from libsgde.ml.pytree import Params, flatten_dict, unflatten_dict


class NotGhostable(ValueError):
    """The model has parameters outside ghost-aware Dense layers."""


def ghost_layers(params: Params) -> list[tuple[str, ...]]:
    """Paths of the ghost-aware Dense layers holding every parameter; raises NotGhostable otherwise."""
    flat = flatten_dict(params)
    layers = sorted({path[:-1] for path in flat})
    for layer in layers:
        names = {path[-1] for path in flat if path[:-1] == layer}
        if names != {"kernel", "bias"} or flat[layer + ("kernel",)].ndim != 2:
            raise NotGhostable(f"layer {'/'.join(layer)} is not a ghost-aware Dense layer")
    return layers


def is_ghostable(params: Params) -> bool:
    try:
        ghost_layers(params)
        return True
    except NotGhostable:
        return False


def clipped_sum(
    module: nn.Module, params: Params, args: tuple[jax.Array, ...], mask: jax.Array, clip_norm: float
) -> tuple[Params, jax.Array, jax.Array]:
    """Sum over the real examples of their gradients clipped to `clip_norm`; returns (sum, per-example norms,
    per-example losses).

    `module.apply({"params": params}, *args)` must return per-example losses [B]; every parameter must live in a
    libsgde.ml.layers.Dense used once per forward pass."""
    layers = ghost_layers(params)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args))[GHOST_GRADS]
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def total(perturbations: Params) -> tuple[jax.Array, tuple[Any, jax.Array]]:
        losses, state = module.apply({"params": params, GHOST_GRADS: perturbations}, *args, mutable=[GHOST_INPUTS])
        return jnp.sum(losses * mask), (state[GHOST_INPUTS], losses)

    out_grads, (inputs, losses) = jax.grad(total, has_aux=True)(zeros)
    out_grads, inputs = flatten_dict(out_grads), flatten_dict(inputs)
    squares: jax.Array | float = 0.0
    for layer in layers:
        (x,), g = inputs[layer + ("x",)], out_grads[layer + ("y",)]
        if x.ndim != 2:
            raise NotGhostable(
                f"layer {'/'.join(layer)} sees inputs of rank {x.ndim}; ghost clipping needs [batch, features]"
            )
        squares = squares + (jnp.sum(x * x, 1) + 1.0) * jnp.sum(g * g, 1)
    norms = jnp.sqrt(squares)
    weights = mask * jnp.minimum(1.0, clip_norm / jnp.maximum(norms, 1e-12))
    summed: dict[tuple[str, ...], jax.Array] = {}
    for layer in layers:
        (x,), g = inputs[layer + ("x",)], out_grads[layer + ("y",)]
        wg = g * weights[:, None]
        summed[layer + ("kernel",)] = x.T @ wg
        summed[layer + ("bias",)] = jnp.sum(wg, 0)
    return unflatten_dict(summed), norms, losses
