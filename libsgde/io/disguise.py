"""Class disguise: a translator artifact loaded through the strict reader, and images translated with it.

A translator (libsgde.ml.architectures.translator) recognises an image's class and redraws it as the public class
its config maps it to (classes not hidden stay themselves). `load_translator` refuses any other architecture;
`Translator.translate` takes raw pixels as the schema declares them and gives decoded pixels, the public labels and
the hidden classes it recognised. Translation is deterministic (the style is the posterior mean) and runs in
power-of-two buckets, so a new number of images does not compile again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from libsgde.io.artifact import ArtifactError
from libsgde.io.encoding import ImageEncoder
from libsgde.io.generator import Generator, load_generator
from libsgde.io.sampling import MAX_BUCKET, MIN_BUCKET, TARGET_BUCKET_MEMORY, bucket_size, row_cost
from libsgde.ml.architectures.translator import HIDDEN_CLASSES, PUBLIC_CLASSES
from libsgde.ml.architectures.translator import Translator as TranslatorArchitecture
from libsgde.ml.rows import row_keys, seed_key

__all__ = ["TranslatedImages", "Translator", "load_translator"]

# Translating a row runs the encoder, the classifier and the decoder: about three times what generating one costs.
NETWORKS_PER_ROW = 3


@dataclass(frozen=True)
class TranslatedImages:
    images: np.ndarray  # decoded pixels [n, H, W, C] (ImageEncoder.decode's dtype: uint8 for pixel_max 255)
    labels: np.ndarray  # int32 [n]: the public class each image was drawn as
    predicted_hidden: np.ndarray  # int32 [n]: the class the translator recognised in each input image


class Translator:
    """A loaded translator: `.schema`, the class map (`.hidden_classes[i]` -> `.public_classes[i]`, and as
    `.class_map`), `.manifest`, and `.translate(images)`."""

    def __init__(self, generator: Generator):
        manifest = generator.manifest
        if manifest.architecture != TranslatorArchitecture.name:
            raise ArtifactError(
                f"this artifact holds a {manifest.architecture!r} model, not a translator; train one with "
                f"architecture {TranslatorArchitecture.name!r} and a class map in its config",
                "architecture",
            )
        self.generator = generator
        self.manifest = manifest
        self.schema = manifest.data_schema
        self.hidden_classes = [int(c) for c in manifest.config[HIDDEN_CLASSES]]
        self.public_classes = [int(c) for c in manifest.config[PUBLIC_CLASSES]]
        self.class_map = dict(zip(self.hidden_classes, self.public_classes, strict=True))
        self.encoder = ImageEncoder(self.schema.image)
        arch, space, config = generator.architecture, generator.space, generator.config
        module = arch.module(space, config)
        cost = row_cost(arch, space, config, self.schema)
        per_row = NETWORKS_PER_ROW * cost.bucket
        self.max_bucket = min(MAX_BUCKET, 1 << (max(TARGET_BUCKET_MEMORY // max(per_row, 1), 1).bit_length() - 1))
        self.min_bucket = min(MIN_BUCKET, self.max_bucket)
        self._translate = jax.jit(lambda params, x, keys: module.apply({"params": params}, x, keys, method="translate"))

    def translate(self, images: np.ndarray, seed: int = 0) -> TranslatedImages:
        """Translate raw images [n, H, W, C] (or [n, H, W] for one channel) in the schema's pixel scale; pixels
        outside [0, pixel_max] are clipped. Raises libsgde.io.encoding.DataError for images of another shape or
        type. Deterministic: the same images give the same output whatever the seed (the style drawn is the
        posterior mean); a row's pixels may differ by one level when it is translated in a bucket of another size
        (float rounding of matrix products of other shapes)."""
        images = np.asarray(images)
        n = len(images) if images.ndim else 0
        # encode() wants labels when the schema declares classes; translation needs none (the translator recognises
        # the class itself), so it gets placeholders.
        x = self.encoder.encode(images, np.zeros(n, np.int32)).x
        outputs, publics, hiddens = [], [], []
        for start in range(0, n, self.max_bucket):
            part = x[start : start + self.max_bucket]
            size = bucket_size(len(part), self.max_bucket, self.min_bucket)
            padded = np.zeros((size, *x.shape[1:]), np.float32)
            padded[: len(part)] = part
            keys = row_keys(seed_key(seed), start, size)
            out, public, hidden = self._translate(self.generator.params, jnp.asarray(padded), keys)
            outputs.append(np.asarray(out)[: len(part)])
            publics.append(np.asarray(public)[: len(part)])
            hiddens.append(np.asarray(hidden)[: len(part)])
        return TranslatedImages(
            self.encoder.decode(np.concatenate(outputs)),
            np.concatenate(publics).astype(np.int32),
            np.concatenate(hiddens).astype(np.int32),
        )


def load_translator(path: Path | str) -> Translator:
    """A translator artifact through the strict reader (libsgde.io.generator.load_generator: architecture,
    config and class map, every tensor's shape); raises ArtifactError, also for an artifact of another
    architecture."""
    return Translator(load_generator(Path(path)))
