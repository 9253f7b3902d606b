"""Fidelity sanity: identical data is at distance 0, shifted data at a known distance."""

from __future__ import annotations

import numpy as np
import pytest

from libsgde.evaluate.fidelity import (
    image_fidelity,
    nearest_neighbours,
    tabular_fidelity,
    total_variation,
    wasserstein_1d,
)
from libsgde.ml.space import Block, ModelSpace

# Two numeric columns and a categorical one of 3 categories; 2 classes.
SPACE = ModelSpace(
    "tabular",
    (5,),
    (Block("a", "numeric", 0, 1), Block("b", "numeric", 1, 1), Block("colour", "categorical", 2, 3)),
    num_classes=2,
)


def _table(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 5), np.float32)
    x[:, 0] = rng.uniform(0.0, 0.8, n)
    x[:, 1] = np.clip(x[:, 0] + rng.normal(0, 0.05, n), 0, 1)  # correlated with a
    x[np.arange(n), 2 + rng.integers(0, 3, n)] = 1.0
    return x, (x[:, 0] > 0.4).astype(np.int64)


def test_identical_tables_are_at_distance_zero_and_a_shift_at_its_size():
    x, y = _table(500, seed=1)
    same = tabular_fidelity(x, y, x, y, SPACE, {"colour": ["red", "green", "blue"]})
    assert [c.column for c in same.columns] == ["a", "b", "colour", "label"]
    assert same.marginal_mean == 0.0 and same.marginal_max == 0.0
    assert same.correlation_mean_abs_diff == pytest.approx(0.0, abs=1e-12)
    assert same.feature_names == ["a", "b", "colour=red", "colour=green", "colour=blue", "label=0", "label=1"]
    assert same.real_correlation[0, 1] > 0.9

    shifted = x.copy()
    shifted[:, 0] += 0.2  # stays inside [0, 1]: the mass moves 0.2 of the public range
    moved = tabular_fidelity(x, y, shifted, y, SPACE)
    assert moved.columns[0].distance == pytest.approx(0.2, abs=1e-6)
    assert [c.distance for c in moved.columns[1:]] == [0.0, 0.0, 0.0]
    assert moved.correlation_max_abs_diff == pytest.approx(0.0, abs=1e-6)  # a shift keeps correlations

    # Categories all moved to one: TV = 1 - its real share; independent b: the a-b correlation is lost.
    other = x.copy()
    other[:, 2:] = [1.0, 0.0, 0.0]
    other[:, 1] = np.random.default_rng(2).permutation(other[:, 1])
    changed = tabular_fidelity(x, y, other, y, SPACE)
    assert changed.columns[2].distance == pytest.approx(1 - np.mean(x[:, 2]))
    assert changed.correlation_max_abs_diff > 0.8


def test_one_dimensional_distances():
    assert wasserstein_1d(np.array([0.0, 1.0]), np.array([0.5])) == pytest.approx(0.5)
    assert wasserstein_1d(np.zeros(3), np.full(7, 0.25)) == pytest.approx(0.25)
    assert total_variation(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0]), 3) == pytest.approx(0.5)


def test_image_means_and_nearest_neighbours():
    rng = np.random.default_rng(0)
    real = rng.random((40, 4, 4, 1), dtype=np.float32)
    labels = np.arange(40) % 2
    same = image_fidelity(real, labels, real, labels, shown_per_class=3)
    assert same.classes == [0, 1] and same.mean_image_rms == [0.0, 0.0]
    assert len(same.neighbour_synthetic) == 6 and same.neighbour_real == same.neighbour_synthetic
    assert same.neighbour_rms == pytest.approx([0.0] * 6, abs=1e-6)
    brighter = image_fidelity(real, labels, np.clip(real + 0.1, 0, 1.1), labels)
    assert brighter.mean_image_rms_mean == pytest.approx(0.1, abs=1e-6)
    index, distance = nearest_neighbours(real[:5] + 0.01, real, max_block=7)  # chunked: 7 distances at a time
    assert index.tolist() == [0, 1, 2, 3, 4] and distance == pytest.approx(np.full(5, 0.04), abs=1e-6)
    others, gaps = nearest_neighbours(real, real, max_block=50, exclude_self=True)  # the nearest other row
    assert not np.any(others == np.arange(40)) and np.all(gaps > 0)
    brute = np.sqrt(((real.reshape(40, 1, -1) - real.reshape(1, 40, -1)) ** 2).sum(axis=2)) + np.diag(np.full(40, 9.0))
    assert gaps == pytest.approx(brute.min(axis=1), rel=1e-6)
