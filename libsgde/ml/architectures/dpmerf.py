"""dp-merf: a generator trained to match a DP mean embedding of the data (libsgde.ml.privacy.merf).

The private data is touched once, for the noisy embedding; the generator (an MLP from noise and the one-hot label to
model space) then trains without further privacy cost. Good utility at low epsilon, where DP-SGD's noise per step
hurts most.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from libsgde.ml.architectures.base import Architecture, Option, decode_tabular_sample, one_hot, row_normals
from libsgde.ml.mechanisms import DP_MERF
from libsgde.ml.pytree import Params
from libsgde.ml.space import ModelSpace


class MerfGenerator(nn.Module):
    space: ModelSpace
    hidden: tuple[int, ...]
    latent_dim: int

    def setup(self) -> None:
        self.generator = _GeneratorMLP(self.hidden, math.prod(self.space.shape))

    def relaxed(self, labels: jax.Array, key: jax.Array) -> jax.Array:
        """Differentiable samples: numeric and pixels in [0, 1], categorical blocks as softmax probabilities."""
        out = self._raw(labels, jax.random.normal(key, (labels.shape[0], self.latent_dim)))
        if self.space.kind == "image":
            return jax.nn.sigmoid(out).reshape(labels.shape[0], *self.space.shape)
        parts = [
            jax.nn.sigmoid(out[:, b.start : b.start + b.width])
            if b.kind == "numeric"
            else jax.nn.softmax(out[:, b.start : b.start + b.width])
            for b in self.space.blocks
        ]
        return jnp.concatenate(parts, 1)

    def generate(self, labels: jax.Array, keys: jax.Array) -> jax.Array:
        out = self._raw(labels, row_normals(keys, self.latent_dim))
        if self.space.kind == "image":
            return jax.nn.sigmoid(out).reshape(labels.shape[0], *self.space.shape)
        return decode_tabular_sample(out, self.space, keys)

    def _raw(self, labels: jax.Array, z: jax.Array) -> jax.Array:
        return self.generator(jnp.concatenate([z, one_hot(labels, self.space.num_classes)], 1))


class _GeneratorMLP(nn.Module):
    hidden: tuple[int, ...]
    out: int

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        for i, width in enumerate(self.hidden):
            h = nn.relu(nn.Dense(width, name=f"dense{i}")(h))
        return nn.Dense(self.out, name=f"dense{len(self.hidden)}")(h)


class DPMERF(Architecture):
    name = "dp-merf"
    mechanism = DP_MERF
    sampling_scopes = ("generator",)

    def options(self, space: ModelSpace) -> dict[str, Option]:
        dim = math.prod(space.shape)
        return {
            "hidden": Option([256, 256], 1, 8192),
            "latent_dim": Option(16, 1, 1024),
            "features": Option(2000, 2, 200_000),
            # Gaussian-kernel lengthscale in model space (values in [0, 1]); a data-free default.
            "lengthscale": Option(round(0.4 * math.sqrt(dim), 3), 1e-3, 1e4),
            "generator_steps": Option(2000, 1, 10_000_000),
            "generator_batch": Option(512, 1, 65536),
        }

    def module(self, space: ModelSpace, config: dict[str, Any]) -> nn.Module:
        return MerfGenerator(space, tuple(config["hidden"]), config["latent_dim"])

    def _init(self, key: jax.Array, module: nn.Module, space: ModelSpace) -> Params:
        return module.init(key, jnp.zeros((1,), jnp.int32), jax.random.split(key, 1), method="generate")["params"]
