"""A generator loaded from an artifact: the strict reader's architecture check, and sampling in model space or in
the schema's own values."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from libsgde.io.artifact import ArtifactError, ArtifactHeader, Manifest, TensorInfo, load_artifact
from libsgde.io.encoding import ImageEncoder, encoder_for, model_space
from libsgde.ml.architectures import CLASS_PRIOR, ConfigError, artifact_tensor_shapes, get_architecture
from libsgde.ml.architectures.base import unflatten
from libsgde.ml.rows import row_keys, seed_key

__all__ = ["Generator", "check_tensors", "load_generator"]


def check_tensors(manifest: Manifest, tensors: dict[str, TensorInfo]) -> None:
    """The strict reader's architecture check: the tensors are exactly those the manifest's architecture and config
    imply, each float32 of the implied shape. Raises ArtifactError."""
    try:
        arch = get_architecture(manifest.architecture)
        space = model_space(manifest.data_schema)
        config = arch.configure(manifest.config, space)
        expected = artifact_tensor_shapes(arch, space, config)  # may refuse too: shapes written by training
    except ConfigError as e:
        field = "architecture" if e.key == "architecture" else f"config.{e.key}"
        raise ArtifactError(f"manifest {field}: {e.description}", field) from None
    if config != manifest.config:
        unstated = sorted(set(config) - set(manifest.config))
        raise ArtifactError(
            "manifest config: incomplete (every setting must be written out)"
            + (
                f"; it does not state {', '.join(unstated)}: an artifact written before that setting existed, "
                "retrain the model with this version of SGDE"
                if unstated
                else ""
            ),
            "config",
        )
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ArtifactError(
            f"tensors do not match architecture {arch.name!r} with this config: "
            f"missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for name, shape in expected.items():
        t = tensors[name]
        if t.dtype != "F32" or t.shape != shape:
            raise ArtifactError(
                f"tensor {name!r} is {t.dtype}{list(t.shape)}; architecture {arch.name!r} with "
                f"this config implies F32{list(shape)}"
            )


class Generator:
    """A generator loaded from an artifact: samples in model space, or decoded into the schema's own values."""

    def __init__(self, header: ArtifactHeader, tensors: dict[str, np.ndarray]):
        self.manifest = header.manifest
        self.architecture = get_architecture(self.manifest.architecture)
        self.space = model_space(self.manifest.data_schema)
        self.config = self.manifest.config
        self.encoder = encoder_for(self.manifest.data_schema)
        self.class_prior = np.asarray(tensors[CLASS_PRIOR], np.float64)
        if not (np.isfinite(self.class_prior).all() and (self.class_prior >= 0).all()):
            # Sampling would fail on it later, as an internal error anyone could trigger with such an artifact.
            raise ArtifactError(f"tensor {CLASS_PRIOR!r} must hold finite, non-negative class proportions")
        self.params = jax.tree.map(jnp.asarray, unflatten({k: v for k, v in tensors.items() if k != CLASS_PRIOR}))
        self._generate = jax.jit(
            lambda p, keys, labels: self.architecture.generate(p, keys, labels, self.space, self.config)
        )

    def labels(self, n: int, seed: int) -> np.ndarray:
        """n labels drawn from the class prior (all zeros for an unconditional model)."""
        prior = self.class_prior / self.class_prior.sum() if self.class_prior.sum() > 0 else None
        return np.random.default_rng(seed).choice(len(self.class_prior), size=n, p=prior).astype(np.int32)

    def sample_model_space(self, labels: np.ndarray, seed: int, first_row: int = 0) -> np.ndarray:
        """Samples for these labels [n] in model space [n, *shape]. Row r of a request (r = first_row + i) comes from
        the key fold_in(key(seed), r) alone, so any split of a request into chunks gives the same rows (up to float
        rounding of matrix products of other shapes; the same split gives the same bytes)."""
        keys = row_keys(seed_key(seed), first_row, len(labels))
        return np.asarray(self._generate(self.params, keys, jnp.asarray(labels, jnp.int32)))

    def sample(self, n: int, seed: int = 0, labels: np.ndarray | None = None):
        """n decoded samples: a dict column -> values (tabular) or images [n, H, W, C]; and their labels."""
        labels = self.labels(n, seed) if labels is None else np.asarray(labels, np.int32)
        x = self.sample_model_space(labels, seed)
        labels = labels if self.space.num_classes else None
        encoder = self.encoder
        values = encoder.decode(x) if isinstance(encoder, ImageEncoder) else encoder.decode(x, labels)
        return values, labels


def load_generator(path: Path) -> Generator:
    """Load an artifact through the strict reader with the architecture check."""
    header, tensors = load_artifact(Path(path), check_tensors=check_tensors)
    return Generator(header, tensors)
