"""The one classifier family every arm trains, as pure JAX functions (jax, optax and numpy only, so Flower's own
environment imports this file as it is).

- Images: NIID-Bench's simple CNN (Li et al. 2022, the model behind its FedAvg / FedProx figures): conv 5x5 x6,
  ReLU, max-pool 2; conv 5x5 x16, ReLU, max-pool 2; dense 120, 84, classes (ReLU between).
- Tables: NIID-Bench's MLP for tabular sets, hidden 32, 16, 8.

Parameters are a dict name -> array in a fixed order (`names`), so they travel as a list of numpy arrays (Flower's
NDArrays) and back. Local training is minibatch SGD with momentum (NIID-Bench: lr 0.01, momentum 0.9, batch 64)
over shuffled epochs, optionally with FedProx's proximal term mu/2 ||w - w_global||^2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = dict[str, jax.Array]


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # "cnn" (images, input (h, w, c)) or "mlp" (tables, input (d,))
    input_shape: tuple[int, ...]
    num_classes: int
    hidden: tuple[int, ...] = (32, 16, 8)  # mlp only

    def shapes(self) -> dict[str, tuple[int, ...]]:
        if self.kind == "cnn":
            h, w, c = self.input_shape
            flat = 16 * (((h - 4) // 2 - 4) // 2) * (((w - 4) // 2 - 4) // 2)
            dense = [(flat, 120), (120, 84), (84, self.num_classes)]
            out = {"conv1/w": (5, 5, c, 6), "conv1/b": (6,), "conv2/w": (5, 5, 6, 16), "conv2/b": (16,)}
        elif self.kind == "mlp":
            widths = [self.input_shape[0], *self.hidden, self.num_classes]
            dense = list(zip(widths[:-1], widths[1:]))
            out = {}
        else:
            raise ValueError(f"unknown model kind {self.kind!r}")
        for i, (fan_in, fan_out) in enumerate(dense):
            out[f"dense{i}/w"] = (fan_in, fan_out)
            out[f"dense{i}/b"] = (fan_out,)
        return out

    def names(self) -> list[str]:
        return list(self.shapes())

    def size(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes().values())


def init(spec: ModelSpec, key: jax.Array) -> Params:
    """Weights uniform in +-1/sqrt(fan_in) (PyTorch's default scale for these layers), zero biases."""
    params = {}
    keys = jax.random.split(key, len(spec.shapes()))
    for k, (name, shape) in zip(keys, spec.shapes().items()):
        if name.endswith("/b"):
            params[name] = jnp.zeros(shape, jnp.float32)
        else:
            fan_in = int(np.prod(shape[:-1]))
            bound = 1.0 / np.sqrt(fan_in)
            params[name] = jax.random.uniform(k, shape, jnp.float32, -bound, bound)
    return params


def _conv(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + b


def _pool(x: jax.Array) -> jax.Array:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def logits(spec: ModelSpec, params: Params, x: jax.Array) -> jax.Array:
    """Class logits of a batch x: (n, *input_shape) float32."""
    if spec.kind == "cnn":
        x = _pool(jax.nn.relu(_conv(x, params["conv1/w"], params["conv1/b"])))
        x = _pool(jax.nn.relu(_conv(x, params["conv2/w"], params["conv2/b"])))
        x = x.reshape(x.shape[0], -1)
    layers = sum(1 for n in params if n.startswith("dense") and n.endswith("/w"))
    for i in range(layers):
        x = x @ params[f"dense{i}/w"] + params[f"dense{i}/b"]
        if i < layers - 1:
            x = jax.nn.relu(x)
    return x


def example_losses(spec: ModelSpec, params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits(spec, params, x), y)


def to_arrays(spec: ModelSpec, params: Params) -> list[np.ndarray]:
    return [np.asarray(params[n], np.float32) for n in spec.names()]


def from_arrays(spec: ModelSpec, arrays: list[np.ndarray]) -> Params:
    shapes = spec.shapes()
    if len(arrays) != len(shapes):
        raise ValueError(f"expected {len(shapes)} arrays, got {len(arrays)}")
    out = {}
    for (name, shape), a in zip(shapes.items(), arrays):
        if tuple(a.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(a.shape)}")
        out[name] = jnp.asarray(a, jnp.float32)
    return out


@dataclass(frozen=True)
class LocalTraining:
    epochs: int = 1
    batch_size: int = 64
    learning_rate: float = 0.01
    momentum: float = 0.9
    prox_mu: float = 0.0  # FedProx; 0 = plain local SGD


def _epoch_fn(spec: ModelSpec, cfg: LocalTraining) -> Callable:
    optimizer = optax.sgd(cfg.learning_rate, momentum=cfg.momentum)

    def batch_loss(params: Params, anchor: Params, xb: jax.Array, yb: jax.Array, mb: jax.Array) -> jax.Array:
        losses = example_losses(spec, params, xb, yb)
        loss = jnp.sum(losses * mb) / jnp.maximum(jnp.sum(mb), 1.0)
        if cfg.prox_mu:
            loss += 0.5 * cfg.prox_mu * sum(jnp.sum((params[n] - anchor[n]) ** 2) for n in params)
        return loss

    @jax.jit
    def epoch(params, opt_state, anchor, xs, ys, masks):
        def step(carry, batch):
            params, opt_state = carry
            grads = jax.grad(batch_loss)(params, anchor, *batch)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), (xs, ys, masks))
        return params, opt_state

    return epoch, optimizer


_EPOCHS: dict = {}  # (spec, cfg) -> the jitted epoch and its optimiser
_PREDICT: dict = {}


def train(spec: ModelSpec, params: Params, x: np.ndarray, y: np.ndarray, cfg: LocalTraining, seed: int) -> Params:
    """cfg.epochs of shuffled minibatch SGD on (x, y) from `params` (the global model, FedProx's anchor). A last
    partial batch is padded and masked, so every example counts once an epoch. Optimiser state starts fresh, as a
    Flower / NIID-Bench client's does each round."""
    if (spec, cfg) not in _EPOCHS:
        _EPOCHS[(spec, cfg)] = _epoch_fn(spec, cfg)
    epoch, optimizer = _EPOCHS[(spec, cfg)]
    rng = np.random.default_rng(seed)
    n, b = len(x), cfg.batch_size
    batches = -(-n // b)
    anchor, opt_state = params, optimizer.init(params)
    masks = (np.arange(batches * b) < n).astype(np.float32).reshape(batches, b)
    for _ in range(cfg.epochs):
        order = np.zeros(batches * b, np.int64)
        order[:n] = rng.permutation(n)
        xs = x[order].reshape(batches, b, *x.shape[1:])
        ys = y[order].reshape(batches, b)
        params, opt_state = epoch(params, opt_state, anchor, xs, ys, masks)
    return params


def predict(spec: ModelSpec, params: Params, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    fn = _PREDICT.setdefault(spec, jax.jit(lambda p, xb: jnp.argmax(logits(spec, p, xb), axis=1)))
    return np.concatenate([np.asarray(fn(params, x[i : i + batch])) for i in range(0, len(x), batch)])


def accuracy(spec: ModelSpec, params: Params, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(predict(spec, params, x) == np.asarray(y)))
