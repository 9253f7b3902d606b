"""Layers that DP-SGD's ghost clipping understands.

`Dense` records its input and exposes the gradient with respect to its output (a zero "perturbation" added to the
output, whose gradient is dL/dy). For y_i = x_i W + b, example i's gradient is (x_i^T g_i, g_i) with g_i = dl_i/dy_i,
so its squared norm is ||x_i||^2 ||g_i||^2 + ||g_i||^2: per-example norms without per-example gradients
(libsgde.ml.privacy.ghost).
"""

from __future__ import annotations

import flax.linen as nn
import jax

GHOST_INPUTS = "ghost_inputs"  # collection where Dense sows its input x
GHOST_GRADS = "ghost_grads"  # collection of zero perturbations on Dense outputs: their gradient is dL/dy


class Dense(nn.Module):
    """y = x W + b on [batch, features] inputs, ghost-clipping aware (otherwise the same as flax's Dense)."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        self.sow(GHOST_INPUTS, "x", x)
        return self.perturb("y", x @ kernel + bias, collection=GHOST_GRADS)


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
