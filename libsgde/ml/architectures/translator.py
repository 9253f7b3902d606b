"""translator: turns images of hidden classes into images of public ones (class disguise, issue 17).

A data owner declares a class map, `hidden_classes[i] -> public_classes[i]` (class indices of the schema), and
trains this model locally, with DP-SGD, on labelled images of all the schema's classes it has. An untrusted party
then trains a classifier on translated images only, and the owner runs translator + that classifier on real images.

Translation must work on an image whose class is unknown, so the model recognises the class itself. It is cvae's
image network (libsgde.ml.architectures.cvae, `network` mlp or conv) with three parts:
- an UNCONDITIONAL encoder E(x) -> (mu, logvar) over the style code z;
- cvae's class-conditional decoder D(z, y): the image of class y in style z;
- a classifier head C(x) -> logits over the schema's K classes (the encoder's network, with K outputs).
Loss per example: Bernoulli reconstruction of x from D(z, y_true), z ~ q(z|x), + beta * KL(q(z|x) || N(0, I))
+ classifier_weight * cross-entropy(C(x), y_true).

translate(x): h = argmax C(x); p = map(h) (a class that is not hidden maps to itself); image = D(mu(x), p): the
style of x drawn as class p. It is also a generator like cvae (generate(labels) = D(z ~ N(0, I), label)), so the
registry, the strict loader and the sampler take it as any other architecture. Its artifact holds all three parts
(translation needs them), so publishing it publishes the classifier of the hidden task too: the translator solves
the hidden task itself, and a cloud classifier only relabels its answer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from libsgde.ml.architectures.base import Architecture, ConfigError, Option, one_hot
from libsgde.ml.architectures.cvae import CVAE, ConvEncoder, ImageCVAE, kl_standard_normal
from libsgde.ml.layers import MLP
from libsgde.ml.mechanisms import DP_SGD
from libsgde.ml.space import ModelSpace

HIDDEN_CLASSES = "hidden_classes"
PUBLIC_CLASSES = "public_classes"
CLASSIFIER_WEIGHT = "classifier_weight"


class ImageTranslator(ImageCVAE):
    """cvae's image network with an unconditional encoder and a classifier head. `public_of[k]` is the class that
    class k is drawn as (k itself unless k is hidden)."""

    classifier_weight: float
    public_of: tuple[int, ...]

    def setup(self) -> None:
        super().setup()  # encoder (2 * latent_dim outputs) and decoder, as cvae builds them
        k = self.space.num_classes
        self.classifier: ConvEncoder | MLP = (
            ConvEncoder(self.channels, k) if self.network == "conv" else MLP((*self.hidden, k))
        )

    def _net_input(self, images: jax.Array) -> jax.Array:
        return images if self.network == "conv" else images.reshape(images.shape[0], -1)

    def _posterior(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        mu, logvar = jnp.split(self.encoder(self._net_input(images)), 2, axis=1)
        return mu, logvar

    def __call__(self, x: jax.Array, labels: jax.Array, keys: jax.Array) -> jax.Array:
        y = one_hot(labels, self.space.num_classes)
        mu, logvar = self._posterior(x)
        eps = jax.vmap(lambda k: jax.random.normal(k, (self.latent_dim,)))(keys)
        logits = self._decode(mu + jnp.exp(0.5 * logvar) * eps, y)
        bce = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x).reshape(x.shape[0], -1), 1)
        cross_entropy = -jnp.sum(y * jax.nn.log_softmax(self.classifier(self._net_input(x))), 1)
        return bce + self.beta * kl_standard_normal(mu, logvar) + self.classifier_weight * cross_entropy

    def translate(self, x: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(images [n, H, W, C] in [0, 1], public labels int32 [n], hidden predictions int32 [n]) for model-space
        images x [n, H, W, C]. Deterministic: the style is the posterior mean, so `keys` (one per row, for the
        generator interface) draw nothing."""
        del keys
        predicted = jnp.argmax(self.classifier(self._net_input(x)), axis=1).astype(jnp.int32)
        public = jnp.asarray(self.public_of, jnp.int32)[predicted]
        mu, _ = self._posterior(x)
        images = jax.nn.sigmoid(self._decode(mu, one_hot(public, self.space.num_classes)))
        return images, public, predicted


def public_of(config: dict[str, Any], num_classes: int) -> tuple[int, ...]:
    """The class each of the K classes is drawn as: its public class if it is hidden, else itself."""
    mapping = dict(zip(config[HIDDEN_CLASSES], config[PUBLIC_CLASSES], strict=True))
    return tuple(mapping.get(k, k) for k in range(num_classes))


class Translator(Architecture):
    name = "translator"
    mechanism = DP_SGD
    kinds = ("image",)
    sampling_scopes = ("encoder", "decoder", "classifier")  # translation needs all three

    def options(self, space: ModelSpace) -> dict[str, Option]:
        top = max(space.num_classes - 1, 0)
        return {
            **CVAE().options(space),
            # Required (configure refuses a config without them); the defaults only say that they are lists.
            HIDDEN_CLASSES: Option([0], 0, top),
            PUBLIC_CLASSES: Option([1], 0, top),
            CLASSIFIER_WEIGHT: Option(1.0, 0.0, 1e3),
        }

    def configure(self, raw: dict[str, Any] | None, space: ModelSpace) -> dict[str, Any]:
        """Also checks the class map: both lists given, as long as each other, each class once, none both hidden
        and public, all classes of the schema."""
        if space.kind in self.kinds and space.num_classes < 2:
            raise ConfigError(
                "architecture",
                f"{self.name} maps classes to classes: the image schema must declare at least 2 class_names",
            )
        for key in (HIDDEN_CLASSES, PUBLIC_CLASSES):
            if space.kind in self.kinds and key not in (raw or {}):
                raise ConfigError(
                    key,
                    f"required: the class indices (0 to {space.num_classes - 1}, in the schema's class_names order) "
                    f"of the {key.split('_')[0]} classes, e.g. {HIDDEN_CLASSES} [0, 1] and {PUBLIC_CLASSES} [2, 3]",
                )
        config = super().configure(raw, space)
        hidden, public = config[HIDDEN_CLASSES], config[PUBLIC_CLASSES]
        for key, classes in ((HIDDEN_CLASSES, hidden), (PUBLIC_CLASSES, public)):
            twice = sorted({c for c in classes if classes.count(c) > 1})
            if twice:
                raise ConfigError(key, f"lists class {twice[0]} more than once; each class may appear once")
        if len(hidden) != len(public):
            raise ConfigError(
                PUBLIC_CLASSES,
                f"must name one public class per hidden class: {len(hidden)} hidden, {len(public)} public",
            )
        both = sorted(set(hidden) & set(public))
        if both:
            raise ConfigError(
                PUBLIC_CLASSES, f"class {both[0]} is both hidden and public; the two lists must not share a class"
            )
        return config

    def module(self, space: ModelSpace, config: dict[str, Any]) -> ImageTranslator:
        return ImageTranslator(
            space,
            config["network"],
            tuple(config["channels"]),
            tuple(config["hidden"]),
            config["latent_dim"],
            config["beta"],
            config[CLASSIFIER_WEIGHT],
            public_of(config, space.num_classes),
        )
