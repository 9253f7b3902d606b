"""Differential privacy: the accountant (and, with the trainer issue, DP-SGD's sampling, clipping and noise)."""

from libsgde.ml.privacy.accounting import (
    DEFAULT_DISCRETIZATION,
    PrivacyError,
    calibrate_noise_multiplier,
    check_delta,
    dpsgd_event,
    pld_epsilon,
    rdp_epsilon,
)

__all__ = [
    "DEFAULT_DISCRETIZATION",
    "PrivacyError",
    "calibrate_noise_multiplier",
    "check_delta",
    "dpsgd_event",
    "pld_epsilon",
    "rdp_epsilon",
]
