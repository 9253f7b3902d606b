"""Layers that DP-SGD's ghost clipping understands: Dense, Conv and ConvTranspose.

Each records its input (with, for convolutions, the static geometry of the linear map: libsgde.ml.conv) and
exposes the gradient with respect to its output through a zero "perturbation" added to the output, whose gradient
is dL/dy. From the two, libsgde.ml.privacy.ghost gets every example's gradient norm without per-example gradients
of the whole model.

Parameter names, shapes, initialisers and outputs are those of flax's nn.Dense, nn.Conv and nn.ConvTranspose (and
the class names, hence flax's automatic layer names, are the same), so artifacts written with the flax layers load
into these and compute the same function.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import flax.struct
import jax
import numpy as np
from jax import lax

from libsgde.ml.conv import ConvGeometry

GHOST_INPUTS = "ghost_inputs"  # collection where each layer sows a Recorded input
GHOST_GRADS = "ghost_grads"  # collection of zero perturbations on layer outputs: their gradient is dL/dy

Padding = str | int | Sequence[int | tuple[int, int]]


@flax.struct.dataclass
class Recorded:
    """A layer's input as ghost clipping needs it; `geometry` is None for Dense and static (not traced)."""

    x: jax.Array
    geometry: ConvGeometry | None = flax.struct.field(pytree_node=False, default=None)  # type: ignore[no-untyped-call]


class Dense(nn.Module):
    """y = x W + b on [batch, features] inputs, ghost-clipping aware (otherwise the same as flax's Dense)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        self.sow(GHOST_INPUTS, "x", Recorded(x))
        return self.perturb("y", x @ kernel + bias, collection=GHOST_GRADS)


class Conv(nn.Module):
    """flax's nn.Conv on [batch, *spatial, channels] inputs (padding "SAME", "VALID", an int or (low, high) pairs),
    ghost-clipping aware."""

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Padding = "SAME"
    kernel_dilation: int | Sequence[int] = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_size = tuple(self.kernel_size)
        rank = len(kernel_size)
        strides, dilation = _per_dim(self.strides, rank), _per_dim(self.kernel_dilation, rank)
        span = tuple((k - 1) * d + 1 for k, d in zip(kernel_size, dilation))
        if isinstance(self.padding, str):
            if self.padding not in ("SAME", "VALID"):
                raise ValueError(f"Conv padding {self.padding!r}: use 'SAME', 'VALID', an int or (low, high) pairs")
            pads = tuple(lax.padtype_to_pads(x.shape[1:-1], span, strides, self.padding))
        else:
            pads = _pairs(self.padding, rank)
        geometry = ConvGeometry(kernel_size, strides, pads, (1,) * rank, dilation)
        return _conv_layer(self, x, geometry, kernel_size, self.features)


class ConvTranspose(nn.Module):
    """flax's nn.ConvTranspose (transpose_kernel False; padding "SAME", "VALID", or explicit (low, high) pairs, which
    flax and lax.conv_transpose apply to the dilated input), ghost-clipping aware."""

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Padding = "SAME"
    kernel_dilation: int | Sequence[int] = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_size = tuple(self.kernel_size)
        rank = len(kernel_size)
        strides, dilation = _per_dim(self.strides, rank), _per_dim(self.kernel_dilation, rank)
        if isinstance(self.padding, str):
            if self.padding not in ("SAME", "VALID"):
                raise ValueError(
                    f"ConvTranspose padding {self.padding!r}: use 'SAME', 'VALID', an int or (low, high) pairs"
                )
            span = tuple((k - 1) * d + 1 for k, d in zip(kernel_size, dilation))
            pads = tuple(_transpose_pads(k, s, self.padding) for k, s in zip(span, strides))
        else:
            pads = _pairs(self.padding, rank)
        geometry = ConvGeometry(kernel_size, (1,) * rank, pads, strides, dilation)
        return _conv_layer(self, x, geometry, kernel_size, self.features)


def _conv_layer(
    layer: nn.Module, x: jax.Array, geometry: ConvGeometry, kernel_size: tuple[int, ...], features: int
) -> jax.Array:
    if x.ndim != len(kernel_size) + 2:
        raise ValueError(
            f"{type(layer).__name__} with a {len(kernel_size)}-d kernel needs inputs [batch, *spatial, channels], "
            f"got shape {x.shape}"
        )
    kernel = layer.param("kernel", nn.initializers.lecun_normal(), (*kernel_size, x.shape[-1], features))
    bias = layer.param("bias", nn.initializers.zeros_init(), (features,))
    layer.sow(GHOST_INPUTS, "x", Recorded(x, geometry))
    return layer.perturb("y", geometry.apply(x, kernel) + bias, collection=GHOST_GRADS)


def _per_dim(value: int | Sequence[int], rank: int) -> tuple[int, ...]:
    out = (value,) * rank if isinstance(value, int) else tuple(value)
    if len(out) != rank:
        raise ValueError(f"{value!r} gives {len(out)} values for a {rank}-d kernel")
    return out


def _pairs(padding: int | Sequence[int | tuple[int, int]], rank: int) -> tuple[tuple[int, int], ...]:
    """flax's explicit padding forms: an int for every side, or per dimension an int (both sides) or a pair."""
    if isinstance(padding, int):
        return ((padding, padding),) * rank
    pairs = tuple((p, p) if isinstance(p, int) else (int(p[0]), int(p[1])) for p in padding)
    if len(pairs) != rank:
        raise ValueError(f"padding {padding!r} gives {len(pairs)} pairs for a {rank}-d kernel")
    return pairs


def _transpose_pads(span: int, stride: int, padding: str) -> tuple[int, int]:
    """The padding lax.conv_transpose applies to the dilated input for "SAME" / "VALID" (its
    _conv_transpose_padding), so that the output has size in * stride (SAME) or (in - 1) * stride + span (VALID)."""
    if padding == "SAME":
        total = span + stride - 2
        low = span - 1 if stride > span - 1 else int(np.ceil(total / 2))
    else:
        total = span + stride - 2 + max(span - stride, 0)
        low = span - 1
    return low, total - low


class MLP(nn.Module):
    """Ghost-aware Dense layers with ReLU between them (none after the last)."""

    widths: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.widths):
            x = Dense(width, name=f"dense{i}")(x)
            if i < len(self.widths) - 1:
                x = nn.relu(x)
        return x
