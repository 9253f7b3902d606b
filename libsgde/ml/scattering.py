"""Scattering-network features of images (Mallat's scattering transform through kymatio's JAX frontend), normalised
per example so that every example's feature vector has norm at most 1, whatever its pixels.

`Scattering2D(J, shape)` with L = 8 orientations maps an image [H, W] to 1 + J L + L^2 J (J - 1) / 2 channels (order
0, order 1, order 2) of (H / 2^J) x (W / 2^J) averages: for 28 x 28 at J = 2, 81 x 7 x 7. The filters are fixed
wavelets, built without data, so the features are a public function of an example.

The sensitivity argument. `normalise` divides each group g of G groups by max(||s_g||, tau) and by sqrt(G):
||s_g / max(||s_g||, tau)|| = ||s_g|| / max(||s_g||, tau) <= 1 for every vector s_g, so the whole vector has norm at
most 1 for ANY input, in the schema's range or not (tau > 0 only keeps a blank image's zero features at zero instead
of dividing 0 by 0). The factor NORM_MARGIN absorbs float32 rounding, so the computed norm is <= 1 too. tau is a
public constant: `tau_fraction` times the norm of a blank white image's features, a function of the shape alone.

Pure functions of arrays; the kymatio object (its filter bank) is built once per (J, shape) and cached.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

ORIENTATIONS = 8  # kymatio's default L
NORM_MARGIN = 1.0 - 1e-6  # float32 rounding of a division by the norm may overshoot 1 by an ulp or two
NORMALISATIONS = ("global", "by-order")


def max_j(height: int, width: int) -> int:
    """The largest scale kymatio accepts for this shape (2^J must not exceed the image's sides)."""
    return max(1, int(math.floor(math.log2(min(height, width)))))


def default_j(height: int, width: int) -> int:
    """A data-free choice of scale: J = 2 (4 x 4 averaging) from 16 pixels a side, else J = 1 (digits' 8 x 8 keep
    4 x 4 positions instead of 2 x 2)."""
    return 2 if min(height, width) >= 16 else 1


def channels(j: int) -> tuple[int, int, int]:
    """The channels of orders 0, 1 and 2 (kymatio's output order) at scale J."""
    return 1, j * ORIENTATIONS, ORIENTATIONS**2 * j * (j - 1) // 2


@functools.lru_cache(maxsize=16)
def _scattering(j: int, height: int, width: int) -> Any:
    from kymatio.jax import Scattering2D  # imported on first use: building the module pulls in scipy

    return Scattering2D(J=j, shape=(height, width), L=ORIENTATIONS)


def raw_features(images: jax.Array, j: int) -> jax.Array:
    """Scattering coefficients [n, C, K, H / 2^J, W / 2^J] of images [n, H, W, C] (each colour channel apart)."""
    n, h, w, c = images.shape
    out = _scattering(j, h, w)(jnp.moveaxis(images, 3, 1))  # kymatio takes [..., H, W]
    return jnp.asarray(out)


def feature_dim(shape: tuple[int, ...], j: int) -> int:
    """D, the length of an example's flat features."""
    out = jax.eval_shape(lambda: raw_features(jnp.zeros((1, *shape), jnp.float32), j))
    return math.prod(out.shape[1:])


def normalise(raw: jax.Array, j: int, mode: str, tau: float) -> jax.Array:
    """Flat features [n, D] of norm <= 1 from raw_features' output (see the module docstring).

    mode "global": one group (the whole vector). "by-order": orders 0, 1 and 2 normalised apart, so the small
    second-order coefficients are not drowned by the low-pass average."""
    n = raw.shape[0]
    if mode == "global":
        groups = [raw.reshape(n, -1)]
    elif mode == "by-order":
        sizes = [c for c in channels(j) if c]
        bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        groups = [raw[:, :, a:b].reshape(n, -1) for a, b in zip(bounds[:-1], bounds[1:])]
    else:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}")
    scale = NORM_MARGIN / math.sqrt(len(groups))
    parts = [g * (scale / jnp.maximum(jnp.linalg.norm(g, axis=1, keepdims=True), tau)) for g in groups]
    return jnp.concatenate(parts, axis=1)


def tau_for(shape: tuple[int, ...], j: int, tau_fraction: float) -> float:
    """The public floor tau: `tau_fraction` times the feature norm of an all-white image of this shape."""
    return tau_fraction * _white_norm(tuple(shape), j)


@functools.lru_cache(maxsize=16)
def _white_norm(shape: tuple[int, ...], j: int) -> float:
    h, w, c = shape
    with jax.ensure_compile_time_eval():  # a constant even when called while a jit traces (modules are built there)
        return float(jnp.linalg.norm(raw_features(jnp.ones((1, h, w, c), jnp.float32), j)))


def features(images: jax.Array, j: int, mode: str = "by-order", tau: float = 1e-3) -> jax.Array:
    """Normalised scattering features [n, D] (norm <= 1 each) of images [n, H, W, C]; differentiable."""
    return normalise(raw_features(images, j), j, mode, tau)


def features_in_chunks(images: Any, j: int, mode: str, tau: float, chunk: int = 512) -> jax.Array:
    """`features` of a large array, `chunk` images at a time (bounded memory; one compilation per chunk shape)."""
    fn = jax.jit(lambda x: features(x, j, mode, tau))
    parts = [fn(jnp.asarray(images[start : start + chunk])) for start in range(0, images.shape[0], chunk)]
    return jnp.concatenate(parts, axis=0)
