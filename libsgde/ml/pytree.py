"""Parameter pytrees (`Params`), and typed wrappers of the flax calls `libsgde.ml` makes on them.

`flax.traverse_util`'s dict flattening is unannotated, and `Module.apply` is annotated to return either the output or
the (output, state) pair that `mutable` asks for; the wrappers say which, once. Below `architectures` and `privacy`,
so both can import it.
"""

from __future__ import annotations

from typing import Any, cast

import flax.linen as nn
import jax
from flax import traverse_util

Params = Any  # a pytree of jax.Array: flax's nested {"scope": {"layer": {"kernel": array, ...}}} parameters


def flatten_dict(tree: Params) -> dict[tuple[str, ...], Any]:
    """{("decoder", "dense0", "kernel"): leaf, ...}: the leaves of a nested dict by their key paths."""
    flat: dict[tuple[str, ...], Any] = traverse_util.flatten_dict(tree)  # type: ignore[no-untyped-call]
    return flat


def unflatten_dict(flat: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    """The nested dict of `flatten_dict`'s output."""
    tree: dict[str, Any] = traverse_util.unflatten_dict(flat)  # type: ignore[no-untyped-call]
    return tree


def apply_array(module: nn.Module, params: Params, *args: jax.Array, method: str | None = None) -> jax.Array:
    """`module.apply({"params": params}, *args, method=method)` for a method that returns one array: without
    `mutable`, flax returns the method's output alone."""
    out = (
        module.apply({"params": params}, *args)
        if method is None
        else module.apply({"params": params}, *args, method=method)
    )
    return cast(jax.Array, out)
