"""The cross-silo benchmark's pure parts (benchmarks/cross_silo): the splits, FedAvg's aggregate, the classifier."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from benchmarks.cross_silo import aggregate, model, splits

LABELS = np.repeat(np.arange(10), 100)  # 1,000 examples, 100 a class


@pytest.mark.parametrize(
    "spec",
    [
        splits.SplitSpec("iid"),
        splits.SplitSpec("dirichlet", alpha=0.5),
        splits.SplitSpec("dirichlet", alpha=0.1),
        splits.SplitSpec("pathological", classes_per_silo=1),
        splits.SplitSpec("pathological", classes_per_silo=2),
    ],
    ids=lambda s: s.name,
)
def test_every_example_lands_in_exactly_one_silo_and_a_seed_reproduces_the_split(spec):
    split = splits.make_split(LABELS, spec)
    everything = np.concatenate([*split.train, *split.holdout])
    assert len(everything) == len(LABELS)
    assert np.array_equal(np.sort(everything), np.arange(len(LABELS)))
    assert len(split.train) == len(split.holdout) == spec.silos
    again = splits.make_split(LABELS, spec)
    assert all(np.array_equal(a, b) for a, b in zip(split.train + split.holdout, again.train + again.holdout))
    restored = splits.split_from_json(split.to_json())
    assert all(np.array_equal(a, b) for a, b in zip(split.train, restored.train))
    other = splits.make_split(LABELS, splits.SplitSpec(**{**spec.__dict__, "seed": 1}))
    assert any(not np.array_equal(a, b) for a, b in zip(split.train, other.train))


def test_pathological_silos_hold_only_their_classes_and_every_class_is_held():
    for c in (1, 2):
        split = splits.make_split(LABELS, splits.SplitSpec("pathological", classes_per_silo=c))
        counts = split.label_counts(LABELS, 10)
        assert all(np.count_nonzero(row) == c for row in counts)
        assert np.all(counts.sum(axis=0) > 0)


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = np.repeat(np.arange(10), 1000)

    def mean_top_share(alpha: float) -> float:
        counts = splits.make_split(labels, splits.SplitSpec("dirichlet", alpha=alpha, holdout=0)).label_counts(
            labels, 10
        )
        return float(np.mean(counts.max(axis=1) / counts.sum(axis=1)))

    iid = splits.make_split(labels, splits.SplitSpec("iid", holdout=0)).label_counts(labels, 10)
    assert np.mean(iid.max(axis=1) / iid.sum(axis=1)) < 0.15  # near 1/10
    assert 0.15 < mean_top_share(0.5) < mean_top_share(0.1)


def test_fedavg_is_the_example_weighted_mean():
    rng = np.random.default_rng(0)
    results = [([rng.normal(size=(3, 2)), rng.normal(size=4)], n) for n in (1, 5, 10)]
    merged = aggregate.fedavg(results)
    for i in range(2):
        expected = sum(layers[i] * n for layers, n in results) / 16
        np.testing.assert_allclose(merged[i], expected, rtol=1e-6)
    with pytest.raises(ValueError):
        aggregate.fedavg([])


def test_the_classifier_learns_a_separable_task_and_round_trips_as_arrays():
    spec = model.ModelSpec("mlp", (4,), 2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    params = model.init(spec, jax.random.key(0))
    trained = model.train(spec, params, x, y, model.LocalTraining(epochs=20, batch_size=32, learning_rate=0.1), 0)
    assert model.accuracy(spec, trained, x, y) > 0.9
    back = model.from_arrays(spec, model.to_arrays(spec, trained))
    assert all(np.array_equal(back[n], trained[n]) for n in spec.names())
    with pytest.raises(ValueError):
        model.from_arrays(spec, model.to_arrays(spec, trained)[:-1])
    cnn = model.ModelSpec("cnn", (28, 28, 1), 10)
    assert cnn.size() == 44426  # NIID-Bench's simple CNN on 28x28x1
    assert model.logits(cnn, model.init(cnn, jax.random.key(1)), np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 10)
