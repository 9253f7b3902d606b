"""cvae: a conditional beta-VAE (the SGDE paper's generator).

Tabular: MLP encoder and decoder; the likelihood is per column type: Gaussian with fixed scale `numeric_sigma` on a
numeric column's [0, 1] value, softmax cross-entropy on a categorical one-hot block. Images: a Bernoulli likelihood
on pixels in [0, 1], with an MLP encoder/decoder (`network: mlp`, the default) or a convolutional one
(`network: conv`). Both are built from ghost-aware layers (libsgde.ml.layers), so DP-SGD clips per example without
vmap(grad) for either (benchmarks/dp_overhead.py times both). The MLP is the default: on digits at epsilon 10 it gave
better samples for the same epochs, and its step is the cheaper on CPU. Loss per example: reconstruction +
beta * KL(q(z|x,y) || N(0, I)).
Conditioning on the label is by concatenating its one-hot code to the encoder input and to z. The class prior (the
label proportions of unlabelled samples) is released with DP beside the DP-SGD run (`class_prior_share`).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from libsgde.ml.architectures.base import Architecture, Option, decode_tabular_sample, one_hot, row_normals
from libsgde.ml.layers import MLP, Conv, ConvTranspose, Dense
from libsgde.ml.mechanisms import CLASS_PRIOR_SHARE, DP_SGD
from libsgde.ml.space import ModelSpace


class TabularCVAE(nn.Module):
    space: ModelSpace
    hidden: tuple[int, ...]
    latent_dim: int
    beta: float
    numeric_sigma: float

    def setup(self) -> None:
        self.encoder = MLP((*self.hidden, 2 * self.latent_dim))
        self.decoder = MLP((*self.hidden[::-1], self.space.shape[0]))

    def __call__(self, x: jax.Array, labels: jax.Array, keys: jax.Array) -> jax.Array:
        y = one_hot(labels, self.space.num_classes)
        mu, logvar = jnp.split(self.encoder(jnp.concatenate([x, y], 1)), 2, axis=1)
        eps = jax.vmap(lambda k: jax.random.normal(k, (self.latent_dim,)))(keys)
        z = mu + jnp.exp(0.5 * logvar) * eps
        out = self.decoder(jnp.concatenate([z, y], 1))
        recon: jax.Array | float = 0.0
        # A numeric value with a mode block is learned only where its mode is continuous (slot 0): elsewhere it
        # holds a fixed position (a point mass's, or missing's), which the latent code need not explain.
        continuous = {b.mode_of: x[:, b.start] for b in self.space.blocks if b.mode_of}
        for block in self.space.blocks:
            h, t = out[:, block.start : block.start + block.width], x[:, block.start : block.start + block.width]
            if block.kind == "numeric":
                error = jnp.sum((jax.nn.sigmoid(h) - t) ** 2, 1) * continuous.get(block.name, 1.0)
                recon = recon + error / (2 * self.numeric_sigma**2)
            else:
                recon = recon - jnp.sum(t * jax.nn.log_softmax(h), 1)
        return recon + self.beta * kl_standard_normal(mu, logvar)

    def generate(self, labels: jax.Array, keys: jax.Array) -> jax.Array:
        z = row_normals(keys, self.latent_dim)
        out = self.decoder(jnp.concatenate([z, one_hot(labels, self.space.num_classes)], 1))
        return decode_tabular_sample(out, self.space, keys)


class ConvEncoder(nn.Module):
    channels: tuple[int, ...]
    out: int

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        h = images
        for c in self.channels:
            h = nn.relu(Conv(c, (3, 3), strides=(2, 2))(h))
        return Dense(self.out)(h.reshape(h.shape[0], -1))


class ConvDecoder(nn.Module):
    shape: tuple[int, int, int]
    channels: tuple[int, ...]

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        height, width, c_out = self.shape
        scale = 2 ** len(self.channels)
        h0, w0 = math.ceil(height / scale), math.ceil(width / scale)
        h = nn.relu(Dense(h0 * w0 * self.channels[-1])(z)).reshape(z.shape[0], h0, w0, self.channels[-1])
        for c in self.channels[::-1]:
            h = nn.relu(ConvTranspose(c, (3, 3), strides=(2, 2))(h))
        return Conv(c_out, (3, 3))(h)[:, :height, :width, :]  # logits


class ImageCVAE(nn.Module):
    space: ModelSpace
    network: str
    channels: tuple[int, ...]
    hidden: tuple[int, ...]
    latent_dim: int
    beta: float

    def setup(self) -> None:
        size = math.prod(self.space.shape)
        if self.network == "conv":
            height, width, c = self.space.shape  # an image space's shape is (H, W, C)
            self.encoder: ConvEncoder | MLP = ConvEncoder(self.channels, 2 * self.latent_dim)
            self.decoder: ConvDecoder | MLP = ConvDecoder((height, width, c), self.channels)
        else:
            self.encoder = MLP((*self.hidden, 2 * self.latent_dim))
            self.decoder = MLP((*self.hidden[::-1], size))

    def _encode(self, images: jax.Array, y: jax.Array) -> jax.Array:
        if self.network == "conv":  # the label enters as extra constant channels
            planes = jnp.broadcast_to(y[:, None, None, :], (*images.shape[:3], y.shape[1]))
            return self.encoder(jnp.concatenate([images, planes], 3))
        return self.encoder(jnp.concatenate([images.reshape(images.shape[0], -1), y], 1))

    def _decode(self, z: jax.Array, y: jax.Array) -> jax.Array:
        return self.decoder(jnp.concatenate([z, y], 1)).reshape(z.shape[0], *self.space.shape)

    def __call__(self, x: jax.Array, labels: jax.Array, keys: jax.Array) -> jax.Array:
        y = one_hot(labels, self.space.num_classes)
        mu, logvar = jnp.split(self._encode(x, y), 2, axis=1)
        eps = jax.vmap(lambda k: jax.random.normal(k, (self.latent_dim,)))(keys)
        logits = self._decode(mu + jnp.exp(0.5 * logvar) * eps, y)
        bce = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x).reshape(x.shape[0], -1), 1)
        return bce + self.beta * kl_standard_normal(mu, logvar)

    def generate(self, labels: jax.Array, keys: jax.Array) -> jax.Array:
        z = row_normals(keys, self.latent_dim)
        return jax.nn.sigmoid(self._decode(z, one_hot(labels, self.space.num_classes)))


def kl_standard_normal(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mu, exp(logvar)) || N(0, I)) per example."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + mu**2 - 1.0 - logvar, 1)


class CVAE(Architecture):
    name = "cvae"
    mechanism = DP_SGD
    sampling_scopes = ("decoder",)

    def options(self, space: ModelSpace) -> dict[str, Option]:
        common = {
            "latent_dim": Option(16, 1, 1024),
            "beta": Option(1.0, 1e-3, 1e3),
            "hidden": Option([256, 256], 1, 8192),
            # The DP class prior's share of the target epsilon (libsgde.ml.mechanisms.release_class_prior); 0 keeps a
            # uniform prior and releases nothing. An unconditional model has no classes to count.
            CLASS_PRIOR_SHARE: Option(0.25 if space.num_classes >= 2 else 0.0, 0.0, 0.5),
        }
        if space.kind == "tabular":
            return {**common, "numeric_sigma": Option(0.1, 1e-3, 10.0)}
        return {**common, "network": Option("mlp", choices=("mlp", "conv")), "channels": Option([32, 64], 1, 1024)}

    def module(self, space: ModelSpace, config: dict[str, Any]) -> nn.Module:
        if space.kind == "tabular":
            return TabularCVAE(
                space, tuple(config["hidden"]), config["latent_dim"], config["beta"], config["numeric_sigma"]
            )
        return ImageCVAE(
            space,
            config["network"],
            tuple(config["channels"]),
            tuple(config["hidden"]),
            config["latent_dim"],
            config["beta"],
        )
