"""A model's privacy report: the (epsilon, delta) guarantee an accountant computed from the mechanism actually run,
with the mechanism's parameters (so that anyone can recompute it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PrivacyReport:
    mechanism: str  # "dp-sgd", "dp-merf", or "none" (no DP: epsilon is +inf)
    epsilon: float
    delta: float
    accountant: str  # "pld": dp-accounting's privacy loss distributions
    noise_multiplier: float
    sampling_rate: float
    steps: int
    clip_norm: float
    dataset_size: int
    rdp_epsilon: float  # the same mechanism accounted with RDP, a cross-check (an upper bound)
