"""Privacy accounting for DP-SGD with Google's dp-accounting: PLD for the reported epsilon, RDP as a cross-check,
and noise calibration to a target epsilon before training.

DP-SGD with Poisson sampling rate q, noise multiplier sigma (noise std = sigma * clip norm) and T steps is the
T-fold composition of the Poisson-subsampled Gaussian mechanism; its epsilon at a given delta comes from the
accountant, never from a formula of our own.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable

import dp_accounting as dpa
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from libsgde.errors import FieldError

# PLD value discretisation. Coarser intervals (1e-2) are badly pessimistic over thousands of steps.
DEFAULT_DISCRETIZATION = 1e-3


class PrivacyError(FieldError):
    """A privacy setting that cannot be honoured; .field names the offending setting."""


def check_delta(delta: float, dataset_size: int) -> None:
    """delta must lie in (0, 1/N): a delta of 1/N or more allows releasing a whole record outright."""
    if dataset_size < 1:
        raise PrivacyError("dataset_size", "must be at least 1")
    if not (math.isfinite(delta) and 0 < delta < 1 / dataset_size):
        raise PrivacyError(
            "delta",
            "must be in (0, 1/N), N the number of training examples; 1e-5 or 1/(10 N) are common choices",
        )


def _check_mechanism(noise_multiplier: float, sampling_rate: float, steps: int) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise PrivacyError("noise_multiplier", "must be finite and > 0")
    if not 0 < sampling_rate <= 1:
        raise PrivacyError("sampling_rate", "must be in (0, 1]")
    if steps < 1:
        raise PrivacyError("steps", "must be at least 1")


def dpsgd_event(noise_multiplier: float, sampling_rate: float, steps: int) -> dpa.DpEvent:
    """The DpEvent of `steps` DP-SGD steps with Poisson sampling."""
    _check_mechanism(noise_multiplier, sampling_rate, steps)
    step = dpa.PoissonSampledDpEvent(sampling_rate, dpa.GaussianDpEvent(noise_multiplier))
    return dpa.SelfComposedDpEvent(step, steps)


def gaussian_event(noise_multiplier: float) -> dpa.DpEvent:
    """One release of a sum of vectors of norm <= 1 plus N(0, sigma^2 I) noise (DP-MERF's mean embedding)."""
    _check_mechanism(noise_multiplier, 1.0, 1)
    return dpa.GaussianDpEvent(noise_multiplier)


def event_pld_epsilon(event: dpa.DpEvent, delta: float, discretization: float = DEFAULT_DISCRETIZATION) -> float:
    """Epsilon of any mechanism at `delta` from the privacy-loss-distribution accountant (the figure we report)."""
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=discretization)
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def event_rdp_epsilon(event: dpa.DpEvent, delta: float) -> float:
    """Epsilon of any mechanism at `delta` from the RDP accountant: an upper bound, used as a cross-check."""
    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


class RdpConvergenceFilter(logging.Filter):
    """Drops the RDP accountant's warning for an order whose series fails to converge (it then excludes that
    order, which can only make its bound looser); there is one per order per call and they drown the user's logs.

    Installed once on the absl logger at import: a filter decides per record, so accounting in concurrent job
    threads never touches the process-global logger level, and every other absl warning still shows."""

    PREFIX = "_compute_log_a_frac failed to converge"  # dp_accounting.rdp.rdp_privacy_accountant

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.PREFIX))


def _install_filter() -> RdpConvergenceFilter:
    logger = logging.getLogger("absl")  # dp_accounting logs through absl.logging, whose logger this is
    for existing in logger.filters:
        if isinstance(existing, RdpConvergenceFilter):
            return existing
    installed = RdpConvergenceFilter()
    logger.addFilter(installed)
    return installed


RDP_CONVERGENCE_FILTER = _install_filter()


@functools.lru_cache(maxsize=1024)
def pld_epsilon(
    noise_multiplier: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    discretization: float = DEFAULT_DISCRETIZATION,
) -> float:
    """Epsilon of DP-SGD at `delta` from the PLD accountant."""
    return event_pld_epsilon(dpsgd_event(noise_multiplier, sampling_rate, steps), delta, discretization)


def rdp_epsilon(noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> float:
    """Epsilon of DP-SGD at `delta` from the RDP accountant."""
    return event_rdp_epsilon(dpsgd_event(noise_multiplier, sampling_rate, steps), delta)


@functools.lru_cache(maxsize=256)  # pure and slow (seconds): a repeated setting costs nothing the second time
def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
    discretization: float = DEFAULT_DISCRETIZATION,
    tolerance: float = 1e-3,
) -> float:
    """The smallest DP-SGD noise multiplier (to within `tolerance`) whose PLD epsilon is at most `target_epsilon`."""
    _check_mechanism(1.0, sampling_rate, steps)
    return calibrate_event(
        lambda s: dpsgd_event(s, sampling_rate, steps), target_epsilon, delta, discretization, tolerance
    )


@functools.lru_cache(maxsize=256)
def calibrate_gaussian(target_epsilon: float, delta: float) -> float:
    """The noise multiplier of one Gaussian mechanism (sensitivity 1) at `target_epsilon`, `delta`."""
    return calibrate_event(gaussian_event, target_epsilon, delta)


def calibrate_event(
    make_event: Callable[[float], dpa.DpEvent],
    target_epsilon: float,
    delta: float,
    discretization: float = DEFAULT_DISCRETIZATION,
    tolerance: float = 1e-3,
) -> float:
    """The smallest noise multiplier s (to within `tolerance`) for which make_event(s) has PLD epsilon at most
    `target_epsilon` at `delta`."""
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise PrivacyError("target_epsilon", "must be finite and > 0")
    if not 0 < delta < 1:
        raise PrivacyError("delta", "must be in (0, 1)")
    # RDP is cheap and never below PLD, so its calibrated sigma bounds the answer from above; PLD then searches
    # a narrow bracket below it (each PLD evaluation is the expensive part).
    upper = dpa.calibrate_dp_mechanism(
        rdp_privacy_accountant.RdpAccountant,
        make_event,
        target_epsilon,
        delta,
        bracket_interval=dpa.LowerEndpointAndGuess(0.01, 1.0),
        tol=tolerance,
    )

    def pld_search(lower: float) -> float:
        return float(
            dpa.calibrate_dp_mechanism(
                lambda: pld_privacy_accountant.PLDAccountant(value_discretization_interval=discretization),
                make_event,
                target_epsilon,
                delta,
                bracket_interval=dpa.ExplicitBracketInterval(lower, upper),
                tol=tolerance,
            )
        )

    try:
        return pld_search(upper / 2)
    except ValueError:  # the bracket missed (PLD far below RDP): search the whole range
        return pld_search(1e-3)
