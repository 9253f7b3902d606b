"""Ghost clipping with book-keeping: DP-SGD's clipped gradient sum for models made of ghost-aware layers
(libsgde.ml.layers: Dense, Conv, ConvTranspose), without per-example gradients of the whole model.

One forward pass records each layer's input; one backward pass, taken with respect to zero perturbations on the
layer outputs only (not the weights), gives g = dL/dy where L = sum_i mask_i l_i. Every layer's kernel gradient for
example i is then G_i = L_i^T R_i, a sum over positions t of outer products (Dense: one position, L_i = x_i,
R_i = g_i, or one per entry of the middle axes when it sees [B, ..., features]; convolutions: libsgde.ml.conv),
and its bias gradient b_i = sum_t g_{i,t}. Per layer, ||G_i||^2 is computed one of two ways (mixed ghost
clipping, Bu et al., "Scalable and efficient training of large convolutional neural networks with differential
privacy", 2022):

- ghost norm: ||L_i^T R_i||^2 = sum_{t,t'} <l_t, l_t'> <r_t, r_t'>, two [T, T] Gram matrices per example: cheap when
  T^2 (P + Q) is small against P Q (always for Dense, where T = 1);
- direct: G_i itself, [P, Q] per example, one batched matrix product: cheap when there are many positions and few
  weights (early, wide-image convolutions).

With w_i = mask_i min(1, C / ||grad l_i||), the clipped sum per layer is sum_i w_i G_i: from the G_i kept by the
direct way, else L^T (w R) for all examples at once, one more matrix product, no second backward pass (Bu et al.,
"Differentially private optimization on large model at small cost", 2023, call this book-keeping). Layers with
parameters that are not ghost-aware are refused; the caller then uses vmap(grad) (libsgde.ml.privacy.dpsgd).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from libsgde.ml import conv
from libsgde.ml.layers import GHOST_GRADS, GHOST_INPUTS, Recorded
from libsgde.ml.pytree import Params, flatten_dict, unflatten_dict

NormMethod = Literal["ghost", "direct"]
# Both ways pay T P Q multiply-adds per example for their products. The ghost way adds T^2 (P + Q) for its Gram
# matrices; the direct way writes, squares and re-reads [P, Q] per example, worth about this many multiply-adds per
# element on a CPU (the crossover measured on the conv cvae's layers, batch 256: the ghost way wins below it).
DIRECT_COST_PER_ELEMENT = 32


class NotGhostable(ValueError):
    """The model has parameters outside ghost-aware layers."""


def ghost_layers(params: Params) -> list[tuple[str, ...]]:
    """Paths of the layers holding every parameter, each a kernel and a bias as ghost-aware Dense (kernel
    [in, out]) and convolution (kernel [*spatial, in, out]) layers have them; raises NotGhostable otherwise.
    Whether each really is a libsgde.ml.layers layer is checked when clipped_sum traces the model."""
    flat = flatten_dict(params)
    layers = sorted({path[:-1] for path in flat})
    for layer in layers:
        names = {path[-1] for path in flat if path[:-1] == layer}
        if names != {"kernel", "bias"} or flat[layer + ("kernel",)].ndim < 2:
            raise NotGhostable(f"layer {'/'.join(layer)} is not a ghost-aware Dense or convolution layer")
    return layers


def is_ghostable(params: Params) -> bool:
    try:
        ghost_layers(params)
        return True
    except NotGhostable:
        return False


@dataclass(frozen=True)
class _Factors:
    """One layer's per-example gradients: kernel G_i = left_i^T right_i, bias b_i = bias_rows_i."""

    left: jax.Array  # [B, T, P]
    right: jax.Array  # [B, T, Q]
    bias_rows: jax.Array  # [B, C_out]
    kernel_shape: tuple[int, ...]
    on_gradient: bool = False  # a convolution's windows are on g (libsgde.ml.conv.factors)

    def method(self) -> NormMethod:
        _, t, p = self.left.shape
        q = self.right.shape[2]
        return "ghost" if t * t * (p + q) < DIRECT_COST_PER_ELEMENT * p * q else "direct"

    def to_kernel(self, matrix: jax.Array) -> jax.Array:
        return conv.to_kernel(matrix, self.kernel_shape, self.on_gradient)


def clipped_sum(
    module: nn.Module,
    params: Params,
    args: tuple[jax.Array, ...],
    mask: jax.Array,
    clip_norm: float,
    method: NormMethod | None = None,
) -> tuple[Params, jax.Array, jax.Array]:
    """Sum over the real examples of their gradients clipped to `clip_norm`; returns (sum, per-example norms,
    per-example losses).

    `module.apply({"params": params}, *args)` must return per-example losses [B]; every parameter must live in a
    libsgde.ml.layers layer used once per forward pass. `method` forces one way of computing norms for every layer
    (tests compare them); by default each layer takes the cheaper."""
    layers = ghost_layers(params)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args)).get(GHOST_GRADS, {})
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def total(perturbations: Params) -> tuple[jax.Array, tuple[Any, jax.Array]]:
        losses, state = module.apply({"params": params, GHOST_GRADS: perturbations}, *args, mutable=[GHOST_INPUTS])
        return jnp.sum(losses * mask), (state.get(GHOST_INPUTS, {}), losses)

    out_grads, (inputs, losses) = jax.grad(total, has_aux=True)(zeros)
    out_grads, inputs, flat_params = flatten_dict(out_grads), flatten_dict(inputs), flatten_dict(params)
    per_layer = [
        _factors(layer, inputs.get(layer + ("x",)), out_grads.get(layer + ("y",)), flat_params[layer + ("kernel",)])
        for layer in layers
    ]
    chosen = [method or f.method() for f in per_layer]
    squares: jax.Array | float = 0.0
    kept: list[jax.Array | None] = []  # the direct way's per-example kernel gradients, reused for the sum
    for f, how in zip(per_layer, chosen):
        if how == "ghost":
            grams = jnp.einsum("btp,bsp->bts", f.left, f.left) * jnp.einsum("btq,bsq->bts", f.right, f.right)
            squares = squares + jnp.sum(grams, (1, 2))
            kept.append(None)
        else:
            grads = jnp.einsum("btp,btq->bpq", f.left, f.right)
            squares = squares + jnp.sum(grads * grads, (1, 2))
            kept.append(grads)
        squares = squares + jnp.sum(f.bias_rows * f.bias_rows, 1)
    norms = jnp.sqrt(squares)
    weights = mask * jnp.minimum(1.0, clip_norm / jnp.maximum(norms, 1e-12))
    summed: dict[tuple[str, ...], jax.Array] = {}
    for layer, f, per_example in zip(layers, per_layer, kept):
        if per_example is None:
            matrix = jnp.einsum("btp,btq->pq", f.left, f.right * weights[:, None, None])
        else:
            matrix = jnp.einsum("b,bpq->pq", weights, per_example)
        summed[layer + ("kernel",)] = f.to_kernel(matrix)
        summed[layer + ("bias",)] = weights @ f.bias_rows
    return unflatten_dict(summed), norms, losses


def _factors(layer: tuple[str, ...], recorded: Any, g: jax.Array | None, kernel: jax.Array) -> _Factors:
    name = "/".join(layer)
    if recorded is None or g is None:
        raise NotGhostable(
            f"layer {name} records no ghost inputs: build it from libsgde.ml.layers (Dense, Conv, ConvTranspose)"
        )
    if len(recorded) != 1:
        raise NotGhostable(f"layer {name} is applied {len(recorded)} times per forward pass; ghost clipping needs once")
    record: Recorded = recorded[0]
    x, batch = record.x, g.shape[0]
    positions = g.reshape(batch, -1, g.shape[-1])  # [B, T, C_out]
    if record.geometry is None:  # Dense, on [B, features] (T = 1) or [B, ..., features] (T = the middle axes)
        return _Factors(x.reshape(batch, -1, x.shape[-1]), positions, jnp.sum(positions, 1), kernel.shape)
    left, right, on_gradient = conv.factors(record.geometry, x, g)
    return _Factors(left, right, jnp.sum(positions, 1), kernel.shape, on_gradient)
