"""TSTR vs TRTR on toy problems whose answer is known, and the classifiers behind them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from libsgde.evaluate.classifiers import CLASSIFIERS, make_classifier
from libsgde.evaluate.utility import accuracy_per_class, utility


def _linear_task(n: int, seed: int, dim: int = 256, k: int = 4, rng_w: int = 99):
    """x ~ N(0, I) in `dim` dimensions, y = argmax(W x) for one fixed random W: linearly separable, K classes."""
    w = np.random.default_rng(rng_w).normal(size=(k, dim))
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x, (x @ w.T).argmax(axis=1)


def _digit_images(n: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:n, :, :, None] / 16.0).astype(np.float32), d.target[:n]


def test_a_generator_that_returns_the_real_data_gives_tstr_equal_to_trtr():
    x_train, y_train = _linear_task(600, seed=1, dim=16)
    x_test, y_test = _linear_task(400, seed=2, dim=16)
    results = utility(x_train, y_train, x_test, y_test, 4, x_real=x_train, y_real=y_train)
    assert [r.classifier for r in results] == list(CLASSIFIERS["tabular"])
    for r in results:  # the classifiers are deterministic given the seed: equal, not merely close
        assert r.tstr_accuracy == r.trtr_accuracy > 0.8, r
        assert r.tstr_per_class == r.trtr_per_class and len(r.tstr_per_class) == 4
        assert r.seconds >= 0

    images, labels = _digit_images(500)
    results = utility(
        images[:300],
        labels[:300],
        images[300:],
        labels[300:],
        10,
        x_real=images[:300],
        y_real=labels[:300],
        image_shape=(8, 8, 1),
        classifiers={"cnn": {"min_steps": 150, "batch_size": 64}},
    )
    (cnn,) = results
    assert cnn.classifier == "cnn" and cnn.tstr_accuracy == cnn.trtr_accuracy > 0.7
    assert cnn.tstr_per_class == cnn.trtr_per_class


def test_a_generator_of_noise_gives_chance_accuracy():
    k, n_test = 4, 1000
    x_train, y_train = _linear_task(1000, seed=1)
    x_test, y_test = _linear_task(n_test, seed=2)
    rng = np.random.default_rng(3)
    # Noise: the same marginal for x, labels drawn independently of x.
    x_noise = rng.normal(size=x_train.shape).astype(np.float32)
    y_noise = rng.integers(0, k, len(x_noise))
    # Fewer iterations than the defaults: a fit to noise never converges, and the tolerance below does not need it.
    results = utility(
        x_noise,
        y_noise,
        x_test,
        y_test,
        k,
        x_real=x_train,
        y_real=y_train,
        classifiers={"logreg": {"max_iter": 100}, "mlp": {"max_iter": 100, "hidden": (16,)}},
    )
    # A classifier fitted on noise is independent of the real labels: over the noise its accuracy is 1/K in
    # expectation, spread by the test set's binomial error (sd sqrt(p(1-p)/n) = 0.014) and by how far a random
    # direction in 256 dimensions happens to align with the real ones (about as much again); 5 binomial sd = 0.068.
    tolerance = 5 * math.sqrt((1 / k) * (1 - 1 / k) / n_test)
    for r in results:
        assert abs(r.tstr_accuracy - 1 / k) <= tolerance, r
        assert r.trtr_accuracy > 1 / k + 0.3, r  # the real task is learnable, so chance is the generator's fault


def test_per_class_accuracy_and_a_single_class_training_set():
    assert accuracy_per_class(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3)[:2] == [0.5, 1.0]
    assert math.isnan(accuracy_per_class(np.array([0]), np.array([0]), 2)[1])
    x = np.random.default_rng(0).random((20, 8, 8, 1), dtype=np.float32)
    for name in CLASSIFIERS["image"]:
        model = make_classifier(name, image_shape=(8, 8, 1)).fit(x, np.full(20, 3), 5)
        assert model.predict(x[:7]).tolist() == [3] * 7
    [r] = utility(x, np.full(20, 1), x, np.arange(20) % 2, 2, classifiers=["logreg"], image_shape=(8, 8, 1))
    assert r.tstr_accuracy == 0.5 and r.tstr_per_class == [0.0, 1.0] and r.trtr_accuracy is None


def test_classifier_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown classifier 'cnn' for tabular"):
        make_classifier("cnn")
    with pytest.raises(ValueError, match="labels must lie in"):
        make_classifier("logreg").fit(np.zeros((3, 2)), np.array([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="both x_real and y_real"):
        utility(np.zeros((2, 2)), np.zeros(2), np.zeros((2, 2)), np.zeros(2), 2, x_real=np.zeros((2, 2)))
    # Flattened images are accepted when the shape is known.
    images, labels = _digit_images(200)
    flat = images.reshape(200, -1)
    cnn = make_classifier("cnn", image_shape=(8, 8, 1), min_steps=20, epochs=1, batch_size=64)  # compiled above
    assert cnn.fit(flat, labels, 10).predict(flat).shape == (200,)
