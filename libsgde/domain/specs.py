"""What a user asks a training run for. Zero fields mean "the default" (filled in by `libsgde.io.training.check_spec`,
which knows the data size).

Three defaults scale with the number of training examples N, by the rules here (the one place they are stated; the
README repeats them):

- epochs: about DEFAULT_STEPS DP-SGD steps, i.e. ceil(DEFAULT_STEPS * batch_size / N) epochs, clamped to
  [MIN_EPOCHS, MAX_EPOCHS]. The target epsilon is unchanged: the noise is calibrated to the steps actually run.
- batch_size: min(256, N // 10) (at least 1): a sampling rate of at most 0.1 where N allows, so that Poisson
  sampling amplifies privacy (a batch of the whole data would not).
- delta: min(1e-5, 0.1 / N), so that delta stays well below 1/N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# The defaults that do not depend on N (batch size and delta: before N is known); epochs, batch size and delta
# scale with N by the rules below.
DEFAULTS: dict[str, Any] = {"batch_size": 256, "clip_norm": 1.0, "learning_rate": 1e-3, "delta": 1e-5}

# Why 2,000 steps: a DP-SGD generator needs thousands of updates to move off its initialisation (a fixed 10 epochs
# gave 156 steps at N = 4,000, and a cvae that learned nothing). At a fixed epsilon, more steps cost a larger noise
# multiplier, but one that grows only about as the square root of the steps (small sampling rates), so DP practice
# runs thousands of steps ("How to DP-fy ML", Ponomareva et al. 2023, advises as many as compute allows). 2,000 is
# also what 10 epochs of 256 gave at N = 51,200, so large data sets train about as before (60,000: 9 epochs), and it
# keeps a default run on CPU in minutes for the MLP architectures.
DEFAULT_STEPS = 2_000
# At least one pass over the data; at most 500 passes, which bounds the run on tiny data (N near the batch size:
# sampling rate near 1, no amplification, where more steps only add noise).
MIN_EPOCHS, MAX_EPOCHS = 1, 500
MAX_DEFAULT_DELTA = 1e-5
MAX_DEFAULT_BATCH = 256


def default_batch_size(dataset_size: int) -> int:
    """min(256, N // 10), at least 1."""
    return max(1, min(MAX_DEFAULT_BATCH, dataset_size // 10))


def default_epochs(dataset_size: int, batch_size: int) -> int:
    """Epochs for about DEFAULT_STEPS steps of expected batch `batch_size` over `dataset_size` examples, clamped to
    [MIN_EPOCHS, MAX_EPOCHS]."""
    if dataset_size < 1 or batch_size < 1:
        raise ValueError("the data size and the batch size must be >= 1")
    return min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(DEFAULT_STEPS * batch_size / dataset_size)))


def dpsgd_steps(epochs: int, dataset_size: int, batch_size: int) -> int:
    """The steps a DP-SGD run of `epochs` takes (the mechanism's own count: libsgde.ml.mechanisms.DPSGD)."""
    return max(1, round(epochs * dataset_size / batch_size))


def default_delta(dataset_size: int) -> float:
    """min(1e-5, 0.1 / N)."""
    return min(MAX_DEFAULT_DELTA, 0.1 / dataset_size)


@dataclass(frozen=True)
class TrainSpec:
    architecture: str
    target_epsilon: float
    config: dict[str, Any] | None = None
    delta: float = 0.0  # 0: the default, min(1e-5, 0.1 / N)
    epochs: int = 0  # 0: the default, about DEFAULT_STEPS steps (default_epochs)
    batch_size: int = 0  # 0: the default, min(256, N // 10)
    clip_norm: float = 0.0
    learning_rate: float = 0.0
    seed: int = 0


def chosen_defaults(asked: TrainSpec, filled: TrainSpec, dataset_size: int, uses_epochs: bool = True) -> list[str]:
    """One line per default that scales with N and was chosen for `asked` (what was left 0), so that nobody is
    surprised by them: e.g. "delta 1e-05 (default: min(1e-5, 0.1/N), N=4000)". `uses_epochs`: whether the
    architecture's mechanism runs epochs of DP-SGD (others ignore them, and nothing is said)."""
    lines = []
    if not asked.delta:
        lines.append(f"delta {filled.delta:.3g} (default: min(1e-5, 0.1/N), N={dataset_size})")
    if not asked.batch_size and uses_epochs:
        lines.append(f"batch size {filled.batch_size} (default: min(256, N/10), N={dataset_size})")
    if not asked.epochs and uses_epochs:
        steps = dpsgd_steps(filled.epochs, dataset_size, filled.batch_size)
        lines.append(
            f"epochs {filled.epochs}: {steps} DP-SGD steps (default: about {DEFAULT_STEPS} steps, "
            f"ceil({DEFAULT_STEPS} * batch / N) epochs within [{MIN_EPOCHS}, {MAX_EPOCHS}], N={dataset_size})"
        )
    return lines


def spec_field(field: str) -> str:
    """The request field a spec error names: the accountant's errors name bare settings ("delta")."""
    if field.startswith(("spec.", "data_schema")):
        return field
    if field == "dataset_size":
        return "dataset"
    return f"spec.{field}"
