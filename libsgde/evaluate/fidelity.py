"""Fidelity: how close the synthetic distribution is to the real one, measured in the schema's model space.

Tabular (rows from libsgde.io.encoding, numeric columns already scaled to [0, 1] by the schema's PUBLIC bounds):
- per column: Wasserstein-1 distance between the real and synthetic values of a continuous or integer column (in
  [0, 1]: 0.1 means the mass moves a tenth of the public range on average), total variation distance
  (1/2 sum |p - q|, in [0, 1]) between the category frequencies of a categorical column and of the label;
- pairwise: the Pearson correlation matrix of the model-space features (a numeric column, or one indicator per
  category, and the label's indicators), real minus synthetic.

Images (float32 [N, H, W, C] in [0, 1]): the per-class mean image, real and synthetic, with the RMS difference of the
two; and the nearest real neighbour (Euclidean in pixel space) of a few synthetic images, with its distance as an
RMS per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from libsgde.ml.space import ModelSpace

__all__ = [
    "ColumnDistance",
    "ImageFidelity",
    "TabularFidelity",
    "correlation_features",
    "image_fidelity",
    "nearest_neighbours",
    "tabular_fidelity",
    "total_variation",
    "wasserstein_1d",
]

MAX_CORRELATION_FEATURES = 400  # beyond this the matrix is not computed (wide one-hot blocks); the marginals are


@dataclass
class ColumnDistance:
    column: str
    kind: str  # "numeric" (Wasserstein-1 on [0, 1]), "categorical" or "label" (total variation)
    distance: float


@dataclass
class TabularFidelity:
    columns: list[ColumnDistance]
    marginal_mean: float  # mean of the per-column distances (the label included)
    marginal_max: float
    feature_names: list[str]  # the correlation matrices' rows and columns
    real_correlation: np.ndarray | None  # [F, F], None when there are too many features
    synthetic_correlation: np.ndarray | None
    correlation_mean_abs_diff: float | None  # mean |real - synthetic| over the pairs (upper triangle)
    correlation_max_abs_diff: float | None


@dataclass
class ImageFidelity:
    classes: list[int]  # the class indices with real and synthetic images (all images as one class: [-1])
    real_means: np.ndarray  # [len(classes), H, W, C]
    synthetic_means: np.ndarray
    mean_image_rms: list[float]  # per class: sqrt(mean over pixels of (real mean - synthetic mean)^2)
    mean_image_rms_mean: float
    neighbour_synthetic: list[int] = field(default_factory=list)  # indices of the synthetic images shown
    neighbour_real: list[int] = field(default_factory=list)  # index of each one's nearest real image
    neighbour_rms: list[float] = field(default_factory=list)  # their distance, as an RMS per pixel


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 distance between two samples of real numbers: the integral of |F_a - F_b|."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    if len(a) == 0 or len(b) == 0:
        raise ValueError("Wasserstein distance of an empty sample")
    points = np.concatenate([a, b])
    points.sort()
    widths = np.diff(points)
    cdf_a = np.searchsorted(a, points[:-1], side="right") / len(a)
    cdf_b = np.searchsorted(b, points[:-1], side="right") / len(b)
    return float(np.sum(np.abs(cdf_a - cdf_b) * widths))


def total_variation(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Total variation distance between the frequencies of integer categories [0, k) in a and in b."""
    p = np.bincount(np.asarray(a, np.int64), minlength=k)[:k] / max(len(a), 1)
    q = np.bincount(np.asarray(b, np.int64), minlength=k)[:k] / max(len(b), 1)
    return float(0.5 * np.abs(p - q).sum())


def correlation_features(
    x: np.ndarray, labels: np.ndarray | None, space: ModelSpace, category_names: dict[str, list[str]] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Model-space rows, with the label's one-hot indicators appended, and a name for each feature ("column" for a
    numeric column, "column=category" for an indicator; categories by index unless `category_names` has them, the
    label's under "label")."""
    given = category_names or {}

    def named(column: str, width: int) -> list[str]:
        return [f"{column}={c}" for c in (given.get(column) or range(width))]

    names: list[str] = []
    for block in space.blocks:
        names += [block.name] if block.kind == "numeric" else named(block.name, block.width)
    features = np.asarray(x, np.float64)
    if labels is not None and space.num_classes:
        names += named("label", space.num_classes)
        features = np.concatenate([features, np.eye(space.num_classes)[np.asarray(labels, np.int64)]], axis=1)
    return features, names


def _correlation(features: np.ndarray) -> np.ndarray:
    """Pearson correlations; a constant feature correlates 0 with everything (and 1 with itself)."""
    centred = features - features.mean(axis=0)
    scale = np.sqrt((centred**2).sum(axis=0))
    constant = scale < 1e-12
    centred[:, constant] = 0.0
    scale[constant] = 1.0
    normed = centred / scale
    corr = normed.T @ normed
    np.fill_diagonal(corr, 1.0)
    return np.clip(corr, -1.0, 1.0)


def tabular_fidelity(
    real_x: np.ndarray,
    real_labels: np.ndarray | None,
    syn_x: np.ndarray,
    syn_labels: np.ndarray | None,
    space: ModelSpace,
    category_names: dict[str, list[str]] | None = None,
) -> TabularFidelity:
    """Per-column distances and the correlation difference of two model-space tables of the same `space`.

    `category_names` (optional): column (and "label") -> category names, for the features' names."""
    real_x, syn_x = np.asarray(real_x, np.float64), np.asarray(syn_x, np.float64)
    if real_x.shape[1:] != space.shape or syn_x.shape[1:] != space.shape:
        raise ValueError(f"expected model-space rows of shape (N, {space.shape[0]})")
    columns = []
    for block in space.blocks:
        cut = slice(block.start, block.start + block.width)
        if block.kind == "numeric":
            distance = wasserstein_1d(real_x[:, block.start], syn_x[:, block.start])
        else:
            distance = total_variation(real_x[:, cut].argmax(axis=1), syn_x[:, cut].argmax(axis=1), block.width)
        columns.append(ColumnDistance(block.name, block.kind, distance))
    labelled = space.num_classes > 0 and real_labels is not None and syn_labels is not None
    if labelled:
        assert real_labels is not None and syn_labels is not None  # what `labelled` says
        columns.append(ColumnDistance("label", "label", total_variation(real_labels, syn_labels, space.num_classes)))
    distances = [c.distance for c in columns]
    real_f, feature_names = correlation_features(real_x, real_labels if labelled else None, space, category_names)
    real_corr = syn_corr = mean_diff = max_diff = None
    if len(feature_names) <= MAX_CORRELATION_FEATURES and len(feature_names) >= 2:
        syn_f, _ = correlation_features(syn_x, syn_labels if labelled else None, space)
        real_corr, syn_corr = _correlation(real_f), _correlation(syn_f)
        upper = np.triu_indices(len(feature_names), k=1)
        diff = np.abs(real_corr - syn_corr)[upper]
        mean_diff, max_diff = float(diff.mean()), float(diff.max())
    return TabularFidelity(
        columns,
        float(np.mean(distances)) if distances else 0.0,
        float(np.max(distances)) if distances else 0.0,
        feature_names,
        real_corr,
        syn_corr,
        mean_diff,
        max_diff,
    )


def nearest_neighbours(
    queries: np.ndarray, references: np.ndarray, max_block: int = 1 << 24, *, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the index of its nearest reference row and the Euclidean distance to it (rows are
    flattened). Brute force in chunks of queries, with at most `max_block` distances in memory at once: the
    neighbour is found with float32 BLAS (|q|^2 - 2 q.r + |r|^2), and its distance recomputed exactly in float64, so
    that an exact copy measures 0 (float32 rounding alone would blur it to ~0.01 for 784 pixels).

    `exclude_self`: the queries ARE the references, and row i's nearest is sought among the others."""
    q = np.asarray(queries, np.float64).reshape(len(queries), -1)
    r = np.asarray(references, np.float64).reshape(len(references), -1)
    if len(r) < (2 if exclude_self else 1):
        raise ValueError("no reference rows")
    if exclude_self and len(q) != len(r):
        raise ValueError("exclude_self needs the queries to be the references")
    q32, r32 = q.astype(np.float32), r.astype(np.float32)
    r_sq = (r32**2).sum(axis=1)
    chunk = max(1, max_block // len(r))
    index = np.empty(len(q), np.int64)
    for start in range(0, len(q), chunk):
        part = q32[start : start + chunk]
        d2 = r_sq[None, :] - 2.0 * (part @ r32.T)  # + |q|^2, the same along each row, does not move the argmin
        if exclude_self:
            rows = np.arange(len(part))
            d2[rows, start + rows] = np.inf
        index[start : start + chunk] = d2.argmin(axis=1)
    return index, np.sqrt(((q - r[index]) ** 2).sum(axis=1))


def image_fidelity(
    real: np.ndarray,
    real_labels: np.ndarray | None,
    synthetic: np.ndarray,
    syn_labels: np.ndarray | None,
    *,
    neighbours_real: np.ndarray | None = None,
    shown_per_class: int = 4,
    seed: int = 0,
) -> ImageFidelity:
    """Per-class mean images and their RMS difference; the nearest image of `neighbours_real` (default `real`) to a
    few synthetic images per class (chosen at random by `seed`)."""
    real, synthetic = np.asarray(real, np.float32), np.asarray(synthetic, np.float32)
    if real.ndim != 4 or synthetic.shape[1:] != real.shape[1:]:
        raise ValueError("expected images of the same shape [N, H, W, C]")
    conditional = real_labels is not None and syn_labels is not None
    real_labels = np.asarray(real_labels) if conditional else np.full(len(real), -1)
    syn_labels = np.asarray(syn_labels) if conditional else np.full(len(synthetic), -1)
    classes = [int(c) for c in np.unique(real_labels) if np.any(syn_labels == c)]
    real_means = (
        np.stack([real[real_labels == c].mean(axis=0) for c in classes])
        if classes
        else np.zeros((0,) + real.shape[1:], np.float32)
    )
    syn_means = (
        np.stack([synthetic[syn_labels == c].mean(axis=0) for c in classes]) if classes else np.zeros_like(real_means)
    )
    rms = [float(np.sqrt(np.mean((a - b) ** 2))) for a, b in zip(real_means, syn_means)]
    rng = np.random.default_rng(seed)
    shown: list[int] = []
    for c in np.unique(syn_labels):
        pool = np.flatnonzero(syn_labels == c)
        shown += sorted(rng.choice(pool, min(shown_per_class, len(pool)), replace=False).tolist())
    reference = real if neighbours_real is None else np.asarray(neighbours_real, np.float32)
    index, distance = nearest_neighbours(synthetic[shown], reference) if shown else (np.zeros(0), np.zeros(0))
    pixels = int(np.prod(real.shape[1:]))
    return ImageFidelity(
        classes,
        real_means,
        syn_means,
        rms,
        float(np.mean(rms)) if rms else float("nan"),
        shown,
        [int(i) for i in index],
        [float(d / np.sqrt(pixels)) for d in distance],
    )
