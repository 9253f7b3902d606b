"""The generator interface: an Architecture builds a Flax module from a model space and a config.

The module has two methods:
- ``__call__(x, labels, keys) -> losses [B]``: per-example training losses (DP-SGD architectures); x is a batch in
  model space, labels int32 [B] (zeros when unconditional), keys one PRNG key per example.
- ``generate(labels, keys) -> x``: samples in model space for int32 labels [n], one PRNG key per row. Row i depends
  on keys[i] and labels[i] alone, so a sample does not change with the batch it is generated in.
Only the parameters under `sampling_scopes` are exported to an artifact: what `generate` needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from libsgde.errors import FieldError
from libsgde.ml.mechanisms import Mechanism
from libsgde.ml.pytree import Params, apply_array, flatten_dict, unflatten_dict
from libsgde.ml.space import ModelSpace


class ConfigError(FieldError):
    """A bad architecture config; `key` (the field) names the offending setting."""

    @property
    def key(self) -> str:
        return self.field


@dataclass(frozen=True)
class Option:
    """One config setting: its default and allowed values (lists are lists of ints in [low, high])."""

    default: Any
    low: float = 0
    high: float = 0
    choices: tuple[str, ...] = ()  # for string options

    def check(self, key: str, value: Any) -> Any:
        if self.choices:
            if value not in self.choices:
                raise ConfigError(key, f"must be one of {', '.join(self.choices)} (got {value!r})")
            return value
        if isinstance(self.default, list):
            if (
                not isinstance(value, list)
                or not 1 <= len(value) <= 8
                or not all(_is_int(v) and self.low <= v <= self.high for v in value)
            ):
                raise ConfigError(
                    key, f"must be a list of 1 to 8 integers in [{self.low}, {self.high}] (got {value!r})"
                )
            return [int(v) for v in value]
        if isinstance(self.default, int):
            if not (_is_int(value) and self.low <= value <= self.high):
                raise ConfigError(key, f"must be an integer in [{self.low}, {self.high}] (got {value!r})")
            return int(value)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not self.low <= value <= self.high
        ):
            raise ConfigError(key, f"must be a number in [{self.low}, {self.high}] (got {value!r})")
        return float(value)


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and float(v).is_integer()


class Architecture:
    """An allow-listed generator family."""

    name: ClassVar[str]
    mechanism: ClassVar[Mechanism]  # how its training is privatised (and accounted)
    kinds: ClassVar[tuple[str, ...]] = ("tabular", "image")
    sampling_scopes: ClassVar[tuple[str, ...]]

    def options(self, space: ModelSpace) -> dict[str, Option]:
        raise NotImplementedError

    def configure(self, raw: dict[str, Any] | None, space: ModelSpace) -> dict[str, Any]:
        """The full config: defaults filled in, every value checked; raises ConfigError."""
        if space.kind not in self.kinds:
            raise ConfigError("architecture", f"{self.name} does not model {space.kind} data")
        options, raw = self.options(space), dict(raw or {})
        unknown = sorted(set(raw) - set(options))
        if unknown:
            raise ConfigError(unknown[0], f"unknown setting for {self.name}; known: {', '.join(sorted(options))}")
        return {k: opt.check(k, raw.get(k, opt.default)) for k, opt in options.items()}

    def module(self, space: ModelSpace, config: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    def init(self, key: jax.Array, space: ModelSpace, config: dict[str, Any]) -> Params:
        """Fresh trainable parameters (jitted: flax's init run op by op takes seconds)."""
        return jax.jit(lambda k: self._init(k, self.module(space, config), space))(key)

    def _init(self, key: jax.Array, module: nn.Module, space: ModelSpace) -> Params:
        x = jnp.zeros((1, *space.shape), jnp.float32)
        return module.init(key, x, jnp.zeros((1,), jnp.int32), jax.random.split(key, 1))["params"]

    def sampling_params(self, params: Params) -> dict[str, Params]:
        return {scope: params[scope] for scope in self.sampling_scopes}

    def tensor_shapes(self, space: ModelSpace, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every tensor an artifact of this architecture and config holds (all float32)."""
        module = self.module(space, config)
        shapes = jax.eval_shape(lambda: self.sampling_params(self._init(jax.random.key(0), module, space)))
        return {name: tuple(s.shape) for name, s in flatten(shapes).items()}

    def generate(
        self, params: Params, keys: jax.Array, labels: jax.Array, space: ModelSpace, config: dict[str, Any]
    ) -> jax.Array:
        """Samples in model space, [n, *space.shape], from the sampling parameters; one key per row."""
        return apply_array(self.module(space, config), params, labels, keys, method="generate")


def flatten(params: Params) -> dict[str, Any]:
    """{"decoder/dense0/kernel": array, ...}: the tensor names used in artifacts."""
    return {"/".join(path): v for path, v in flatten_dict(params).items()}


def unflatten(tensors: dict[str, Any]) -> dict[str, Any]:
    return unflatten_dict({tuple(name.split("/")): v for name, v in tensors.items()})


def one_hot(labels: jax.Array, num_classes: int) -> jax.Array:
    """[n, K] one-hot labels, or [n, 0] for an unconditional model."""
    return jax.nn.one_hot(labels, num_classes) if num_classes else jnp.zeros((labels.shape[0], 0))


def row_normals(keys: jax.Array, dim: int) -> jax.Array:
    """[n, dim] standard normals, row i from keys[i] alone."""
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), (dim,)))(keys)


def decode_tabular_sample(out: jax.Array, space: ModelSpace, keys: jax.Array) -> jax.Array:
    """Raw generator outputs [n, D] -> model space: numeric blocks squashed to [0, 1], each categorical block a
    one-hot category drawn from its softmax (row i's draws from keys[i] alone)."""
    parts = []
    for j, block in enumerate(space.blocks):
        h = out[:, block.start : block.start + block.width]
        if block.kind == "numeric":
            parts.append(jax.nn.sigmoid(h))
        else:

            def draw(k: jax.Array, logits: jax.Array, j: int = j) -> jax.Array:
                return jax.random.categorical(jax.random.fold_in(k, 1 + j), logits)

            parts.append(jax.nn.one_hot(jax.vmap(draw)(keys, h), block.width))
    return jnp.concatenate(parts, axis=1)
