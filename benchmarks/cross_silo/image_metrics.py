"""How close an attacker's image is to a true one: PSNR and SSIM, the best-PSNR pairing of a batch of
reconstructions with the batch of true images, and the nearest of a stream of synthetic samples (numpy and scipy).

Images are float arrays in [0, 1] (data range 1), shaped (h, w, c) or (h, w); a batch adds a leading axis.

- PSNR = 10 log10(1 / MSE) dB, MSE over every pixel of the image; identical images give +inf.
- SSIM (Wang, Bovik, Sheikh, Simoncelli 2004): with local means mu, variances sigma^2 and covariance sigma_xy under an
  11x11 Gaussian window (sigma 1.5, weights summing to 1), C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = 1,

      SSIM(x, y) = mean over window positions of
                   (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)),

  the window placed only where it lies wholly inside the image (the paper's reference code; the same as filtering
  with any padding and then cropping the 5-pixel border), and averaged over channels.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.optimize import linear_sum_assignment

WINDOW = 11
WINDOW_SIGMA = 1.5
K1, K2 = 0.01, 0.03
DATA_RANGE = 1.0


def psnr(true: np.ndarray, rec: np.ndarray) -> float | np.ndarray:
    """PSNR in dB of one image (any shape up to 3 axes) or of each image of a batch (n, h, w, c) -> (n,)."""
    true, rec = _pair(true, rec)
    axes = tuple(range(1, true.ndim)) if true.ndim == 4 else None
    mse = np.mean((true - rec) ** 2, axis=axes)
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(DATA_RANGE**2 / mse)
    return out if true.ndim == 4 else float(out)


def _gaussian_window() -> np.ndarray:
    r = np.arange(WINDOW) - (WINDOW - 1) / 2
    g = np.exp(-(r**2) / (2 * WINDOW_SIGMA**2))
    w = np.outer(g, g)
    return w / w.sum()


def _ssim_2d(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of two single-channel images (h, w), h, w >= 11."""
    w = _gaussian_window()

    def filt(a: np.ndarray) -> np.ndarray:  # valid-mode weighted window sums: (h - 10, w - 10)
        return np.einsum("ijkl,kl->ij", sliding_window_view(a, (WINDOW, WINDOW)), w)

    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x**2
    var_y = filt(y * y) - mu_y**2
    cov = filt(x * y) - mu_x * mu_y
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def ssim(true: np.ndarray, rec: np.ndarray) -> float | np.ndarray:
    """SSIM of one image (h, w) or (h, w, c), or of each image of a batch (n, h, w, c) -> (n,)."""
    true, rec = _pair(true, rec)
    if true.ndim == 4:
        return np.array([ssim(a, b) for a, b in zip(true, rec)])
    if true.ndim == 2:
        true, rec = true[..., None], rec[..., None]
    if true.ndim != 3 or min(true.shape[:2]) < WINDOW:
        raise ValueError(f"SSIM needs images (h, w[, c]) of at least {WINDOW}x{WINDOW} pixels, got {true.shape}")
    return float(np.mean([_ssim_2d(true[..., c], rec[..., c]) for c in range(true.shape[-1])]))


def match(true: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """`rec` reordered so that rec[i] is the reconstruction paired with true[i], by the assignment that maximises
    the summed PSNR (Hungarian method): a batch attack returns its images in no particular order."""
    true, rec = _pair(true, rec)
    n = len(true)
    t, r = true.reshape(n, -1), rec.reshape(n, -1)
    mse = np.mean((t[:, None, :] - r[None, :, :]) ** 2, axis=2)  # (n true, n rec)
    # maximise sum of -10 log10(mse); the floor keeps exact copies finite (the best possible pairing either way)
    _, cols = linear_sum_assignment(np.log10(np.maximum(mse, 1e-30)))
    return rec[cols]


def nearest_samples(
    true_images: np.ndarray, sample_batches: Iterable[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each true image, the sample closest in MSE (= highest PSNR) among all samples streamed in chunks.

    true_images: (m, h, w, c) in [0, 1]; each chunk: (k, h, w, c) or (k, h*w*c) in [0, 1]. Only one chunk is
    held at a time. Squared distances of a chunk come from one matrix product,
    ||t - s||^2 = ||t||^2 - 2 t.s + ||s||^2 (float32); the chosen candidate's MSE is then recomputed exactly in
    float64 before it is compared with the best so far, so float32 cancellation cannot hide an exact copy.
    Returns (best samples (m, h, w, c), their PSNR (m,), their SSIM (m,))."""
    true_images = np.asarray(true_images, np.float64)
    if true_images.ndim != 4:
        raise ValueError(f"true_images must be a batch (m, h, w, c), got shape {true_images.shape}")
    m, shape = len(true_images), true_images.shape[1:]
    t = true_images.reshape(m, -1)
    t32 = t.astype(np.float32)
    t_sq = np.sum(t32**2, axis=1)
    best = np.zeros_like(t)
    best_mse = np.full(m, np.inf)
    seen = 0
    for chunk in sample_batches:
        s = np.asarray(chunk, np.float32).reshape(len(chunk), -1)
        if s.shape[1] != t.shape[1]:
            raise ValueError(f"samples have {s.shape[1]} values each, the true images {t.shape[1]}")
        seen += len(s)
        d2 = t_sq[:, None] - 2.0 * (t32 @ s.T) + np.sum(s**2, axis=1)[None, :]  # (m, k)
        candidates = s[np.argmin(d2, axis=1)].astype(np.float64)
        mse = np.mean((candidates - t) ** 2, axis=1)
        better = mse < best_mse
        best[better], best_mse[better] = candidates[better], mse[better]
    if seen == 0:
        raise ValueError("no samples to search")
    best = best.reshape(m, *shape)
    return best, psnr(true_images, best), ssim(true_images, best)


def _pair(true: np.ndarray, rec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true, rec = np.asarray(true, np.float64), np.asarray(rec, np.float64)
    if true.shape != rec.shape:
        raise ValueError(f"shapes differ: {true.shape} vs {rec.shape}")
    return true, rec
