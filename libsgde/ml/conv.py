"""Convolutions as ghost clipping sees them: a geometry, the forward map, and each example's kernel gradient as a
product of two factors (libsgde.ml.layers builds layers from it; libsgde.ml.privacy.ghost takes norms from it).

For y = conv(x, W) + b, example i's kernel gradient is a sum over positions t of outer products,
G_i = sum_t l_{i,t} (x) r_{i,t} = L_i^T R_i, with L_i [T, P] and R_i [T, Q]:

- windows on x (a convolution): t runs over output positions, l = the input patch under the kernel at t (im2col,
  P = prod(kernel) * C_in) and r = g_t = dl_i/dy_t (Q = C_out);
- windows on g (a transposed convolution, input dilated by its stride s, or a window-stride-1 convolution): t runs
  over INPUT positions m, l = x_m (P = C_in) and r = the output gradients that x_m reached, g[s m + pad - d k] for
  each kernel offset k (Q = prod(kernel) * C_out). For a transposed convolution this skips the dilated input's
  zeros (T is s^2 times smaller); for a convolution to few channels (the cvae's last, to pixels) the windows are
  that much smaller than im2col's.

The batch's kernel gradient is the same product summed over examples, one matrix product. Transposed convolutions
take theirs that way: XLA on CPU computes it as a convolution with a dilated window that it runs very slowly
(seconds per step for the conv cvae's decoder; the other convolutions keep XLA's own).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """y = conv_general_dilated(x, kernel, window_strides, padding, input_dilation, kernel_dilation) in NHWC / HWIO
    layout (any number of spatial dimensions). A convolution has input_dilation 1; a transposed convolution is a
    convolution of the input dilated by its stride, with window stride 1."""

    kernel_size: tuple[int, ...]
    window_strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    input_dilation: tuple[int, ...]
    kernel_dilation: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.transposed and any(s != 1 for s in self.window_strides):
            raise ValueError("a convolution with both a window stride and an input dilation is not supported")

    @property
    def transposed(self) -> bool:
        return any(s != 1 for s in self.input_dilation)

    def apply(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        return _apply_transposed(self, x, kernel) if self.transposed else self.lax_apply(x, kernel)

    def lax_apply(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        spatial = "HWDXYZ"[: len(self.kernel_size)]
        return lax.conv_general_dilated(
            x,
            kernel,
            self.window_strides,
            self.padding,
            lhs_dilation=self.input_dilation,
            rhs_dilation=self.kernel_dilation,
            dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
        )


def factors(geometry: ConvGeometry, x: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array, bool]:
    """(L [B, T, P], R [B, T, Q], on_gradient) with L_i^T R_i = example i's kernel gradient, in the layout
    `to_kernel` undoes; x is the layer's input, g the gradient with respect to its output. on_gradient: the
    windows are taken on g (t = input positions), else on x (t = output positions)."""
    batch = x.shape[0]
    offsets = list(itertools.product(*(range(k) for k in geometry.kernel_size)))  # row-major, as kernels flatten
    dims = list(zip(geometry.kernel_dilation, geometry.padding))
    if not _windows_on_gradient(geometry, x.shape, g.shape):
        starts = [tuple(d * k - p[0] for k, (d, p) in zip(offset, dims)) for offset in offsets]
        left = _windows(x, starts, geometry.window_strides, g.shape[1:-1])  # [B, *out, K, C_in]
        return left.reshape(batch, -1, left.shape[-2] * left.shape[-1]), g.reshape(batch, -1, g.shape[-1]), False
    starts = [tuple(p[0] - d * k for k, (d, p) in zip(offset, dims)) for offset in offsets]
    right = _windows(g, starts, geometry.input_dilation, x.shape[1:-1])  # [B, *in, K, C_out]
    return x.reshape(batch, -1, x.shape[-1]), right.reshape(batch, -1, right.shape[-2] * right.shape[-1]), True


def to_kernel(matrix: jax.Array, kernel_shape: tuple[int, ...], on_gradient: bool) -> jax.Array:
    """A [P, Q] sum of L_i^T R_i (`factors`) as a kernel [*kernel_size, C_in, C_out]."""
    if not on_gradient:
        return matrix.reshape(kernel_shape)  # P = (kernel offsets, C_in), Q = C_out: already HWIO order
    c_in, c_out = kernel_shape[-2], kernel_shape[-1]
    per_offset = matrix.reshape(c_in, math.prod(kernel_shape[:-2]), c_out)  # P = C_in, Q = (offsets, C_out)
    return jnp.moveaxis(per_offset, 0, 1).reshape(kernel_shape)


def _windows_on_gradient(geometry: ConvGeometry, x_shape: tuple[int, ...], g_shape: tuple[int, ...]) -> bool:
    """Windows on g where they must be (a transposed convolution) or where they are smaller than windows on x (a
    window-stride-1 convolution with fewer output than input channels, such as a last layer to pixels)."""
    if geometry.transposed:
        return True
    if any(s != 1 for s in geometry.window_strides):
        return False
    return math.prod(x_shape[1:-1]) * g_shape[-1] < math.prod(g_shape[1:-1]) * x_shape[-1]


def _windows(a: jax.Array, starts: list[tuple[int, ...]], step: tuple[int, ...], count: tuple[int, ...]) -> jax.Array:
    """Stack over offsets j of a[:, start_j + step * m, :] for m in range(count) per spatial dimension (zero
    outside a): [B, *count, len(starts), C]."""
    rank = a.ndim - 2
    low = [max(0, -min(s[i] for s in starts)) for i in range(rank)]
    high = [max(0, max(s[i] for s in starts) + step[i] * (count[i] - 1) + 1 - a.shape[1 + i]) for i in range(rank)]
    padded = jnp.pad(a, ((0, 0), *zip(low, high), (0, 0)))
    slices = [
        lax.slice(
            padded,
            (0, *(s[i] + low[i] for i in range(rank)), 0),
            (a.shape[0], *(s[i] + low[i] + step[i] * (count[i] - 1) + 1 for i in range(rank)), a.shape[-1]),
            (1, *step, 1),
        )
        for s in starts
    ]
    return jnp.stack(slices, axis=-2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _apply_transposed(geometry: ConvGeometry, x: jax.Array, kernel: jax.Array) -> jax.Array:
    return geometry.lax_apply(x, kernel)


def _apply_transposed_fwd(
    geometry: ConvGeometry, x: jax.Array, kernel: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return geometry.lax_apply(x, kernel), (x, kernel)


def _apply_transposed_bwd(
    geometry: ConvGeometry, residuals: tuple[jax.Array, jax.Array], g: jax.Array
) -> tuple[jax.Array, jax.Array]:
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x: geometry.lax_apply(x, kernel), x)  # a strided convolution: XLA does it well
    (dx,) = input_vjp(g)
    left, right, on_gradient = factors(geometry, x, g)
    matrix = left.reshape(-1, left.shape[-1]).T @ right.reshape(-1, right.shape[-1])
    return dx, to_kernel(matrix, kernel.shape, on_gradient)


_apply_transposed.defvjp(_apply_transposed_fwd, _apply_transposed_bwd)
