"""The downstream classifiers that utility is measured with: logistic regression and an MLP (scikit-learn, inputs
standardised in a pipeline) for tables and images, and a small Flax CNN for images.

Every classifier takes x float32 [N, D] (tabular) or [N, H, W, C] with pixels in [0, 1] (images; [N, H*W*C] is
accepted too when `image_shape` is given) and y int [N] in [0, num_classes). A training set holding a single class
predicts that class (a generator that collapsed onto one label still gets a score: the share of that class).
"""

from __future__ import annotations

import math
import warnings
from functools import partial
from typing import Any, Protocol, runtime_checkable

import flax.linen as nn
import jax
import numpy as np
import optax

CLASSIFIERS: dict[str, tuple[str, ...]] = {"tabular": ("logreg", "mlp"), "image": ("logreg", "mlp", "cnn")}

__all__ = ["CLASSIFIERS", "CNNClassifier", "Classifier", "SklearnClassifier", "make_classifier"]


@runtime_checkable
class Classifier(Protocol):
    def fit(self, x: np.ndarray, y: np.ndarray, num_classes: int) -> Classifier: ...

    def predict(self, x: np.ndarray) -> np.ndarray: ...


def _labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional (got shape {y.shape})")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) (got {y.min()}..{y.max()})")
    return y


class _ConstantWhenOneClass:
    """Shared fit/predict skeleton: checks the labels, and predicts the only class when the training set has one."""

    _constant: int | None = None

    def fit(self, x: np.ndarray, y: np.ndarray, num_classes: int):
        y = _labels(y, num_classes)
        x = np.asarray(x, np.float32)
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        classes = np.unique(y)
        if len(classes) == 0:
            raise ValueError("an empty training set")
        self._constant = int(classes[0]) if len(classes) == 1 else None
        if self._constant is None:
            self._fit(x, y, num_classes)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if self._constant is not None:
            return np.full(len(x), self._constant, np.int64)
        return np.asarray(self._predict(x), np.int64)

    def _fit(self, x, y, num_classes): ...

    def _predict(self, x): ...


class SklearnClassifier(_ConstantWhenOneClass):
    """A scikit-learn estimator behind StandardScaler; images are flattened to vectors."""

    def __init__(self, make_estimator):
        self._make_estimator = make_estimator
        self._pipeline: Any = None

    def _fit(self, x, y, num_classes):
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self._pipeline = make_pipeline(StandardScaler(), self._make_estimator())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings: the test accuracy says how good the fit is
            self._pipeline.fit(x.reshape(len(x), -1), y)

    def _predict(self, x):
        return self._pipeline.predict(x.reshape(len(x), -1))


class CNNClassifier(_ConstantWhenOneClass):
    """Two 3x3 convolutions (32, 64 channels), each with ReLU and 2x2 max-pooling, a dense layer of 128 and the
    logits; Adam on the cross-entropy, jit-compiled with static batch shapes, deterministic given the seed.

    Trains for `epochs` passes over the data but at least `min_steps` steps (small data sets still get a real fit)."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        *,
        seed: int = 0,
        epochs: int = 2,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        min_steps: int = 300,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
    ):
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape is (height, width, channels) (got {image_shape})")
        if epochs < 1 or batch_size < 1 or min_steps < 0 or not (learning_rate > 0 and math.isfinite(learning_rate)):
            raise ValueError("epochs and batch_size must be >= 1, min_steps >= 0, learning_rate > 0")
        self.image_shape = tuple(int(s) for s in image_shape)
        self.seed, self.epochs, self.batch_size = seed, epochs, batch_size
        self.learning_rate, self.min_steps = learning_rate, min_steps
        self.channels, self.hidden = tuple(channels), hidden
        self._params: Any = None
        self._module: _ConvNet | None = None

    def _images(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.reshape((len(x),) + self.image_shape), dtype=np.float32)

    def _fit(self, x, y, num_classes):
        x = self._images(x)
        module = self._module = _ConvNet(self.channels, self.hidden, num_classes)
        batch = min(self.batch_size, len(x))
        per_epoch = len(x) // batch
        steps = max(self.epochs * per_epoch, self.min_steps)
        key = jax.random.PRNGKey(self.seed)
        params = module.init(key, x[:1])
        state = optax.adam(self.learning_rate).init(params)
        rng = np.random.default_rng(self.seed)
        order, position = rng.permutation(len(x)), 0
        for _ in range(steps):
            if position + batch > len(x):  # a fresh shuffle per epoch; the remainder is dropped (static shapes)
                order, position = rng.permutation(len(x)), 0
            chosen = order[position : position + batch]
            position += batch
            params, state = _train_step(module, self.learning_rate, params, state, x[chosen], y[chosen])
        self._params = params

    def _predict(self, x):
        x = self._images(x)
        chunk = 512
        out = []
        for start in range(0, len(x), chunk):
            part = x[start : start + chunk]
            padded = np.zeros((chunk,) + self.image_shape, np.float32)  # one compiled shape for every chunk
            padded[: len(part)] = part
            out.append(np.asarray(_logits(self._module, self._params, padded))[: len(part)].argmax(axis=1))
        return np.concatenate(out) if out else np.zeros(0, np.int64)


class _ConvNet(nn.Module):
    channels: tuple[int, ...]
    hidden: int
    num_classes: int

    @nn.compact
    def __call__(self, x):
        for width in self.channels:
            x = nn.relu(nn.Conv(width, (3, 3), padding="SAME")(x))
            if min(x.shape[1:3]) >= 2:  # tiny images keep their last pixels
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.num_classes)(x)


# Module-level jitted functions, keyed by the (hashable) module and learning rate: every fit of the same network
# shape reuses one compilation instead of compiling afresh.
@partial(jax.jit, static_argnums=(0, 1))
def _train_step(module: _ConvNet, learning_rate: float, params, state, x, y):
    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(module.apply(p, x), y).mean()

    grads = jax.grad(loss)(params)
    updates, state = optax.adam(learning_rate).update(grads, state, params)
    return optax.apply_updates(params, updates), state


@partial(jax.jit, static_argnums=0)
def _logits(module: _ConvNet, params, x):
    return module.apply(params, x)


def _logreg(seed: int, image: bool, max_iter: int | None = None, C: float = 1.0):
    from sklearn.linear_model import LogisticRegression

    return lambda: LogisticRegression(max_iter=max_iter or (300 if image else 2000), C=C, random_state=seed)


def _mlp(
    seed: int,
    image: bool,
    hidden: tuple[int, ...] | None = None,
    max_iter: int | None = None,
    batch_size: int | None = None,
    learning_rate: float = 1e-3,
    alpha: float = 1e-4,
):
    from sklearn.neural_network import MLPClassifier

    # Images: one hidden layer of 256 and early stopping on a 10% split keep 60k x 784 to about a minute.
    hidden = tuple(hidden) if hidden else ((256,) if image else (32,))
    batch: int | str = batch_size or (256 if image else "auto")  # auto: min(200, N)
    return lambda: MLPClassifier(
        hidden,
        max_iter=max_iter or (30 if image else 500),
        batch_size=batch,
        learning_rate_init=learning_rate,
        alpha=alpha,
        early_stopping=image,
        random_state=seed,
    )


def make_classifier(
    name: str, *, image_shape: tuple[int, int, int] | None = None, seed: int = 0, **options
) -> Classifier:
    """A fresh, unfitted classifier by name ("logreg", "mlp", "cnn"); `image_shape` (H, W, C) for image data.

    Options: logreg: max_iter, C; mlp: hidden, max_iter, batch_size, learning_rate, alpha; cnn: epochs, batch_size,
    learning_rate, min_steps, channels, hidden."""
    image = image_shape is not None
    allowed = CLASSIFIERS["image" if image else "tabular"]
    if name not in allowed:
        raise ValueError(
            f"unknown classifier {name!r} for {'image' if image else 'tabular'} data; choose one of "
            f"{', '.join(allowed)}"
        )
    if name == "cnn":
        assert image_shape is not None  # "cnn" is allowed for image data only
        return CNNClassifier(image_shape, seed=seed, **options)
    return SklearnClassifier((_logreg if name == "logreg" else _mlp)(seed, image, **options))
