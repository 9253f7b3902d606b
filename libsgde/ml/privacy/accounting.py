"""Privacy accounting with Google's dp-accounting: PLD for the reported epsilon, RDP as a cross-check, and noise
calibration to a target epsilon before training.

DP-SGD with Poisson sampling rate q, noise multiplier sigma (noise std = sigma * clip norm) and T steps is the
T-fold composition of the Poisson-subsampled Gaussian mechanism; its epsilon at a given delta comes from the
accountant, never from a formula of our own. A run that releases more than its main mechanism (a DP class prior, a
teacher, selections: a report's components) is accounted as one composed event.

An exponential-mechanism selection of epsilon e is (e^2 / 8)-zCDP (Cesar and Rogers, "Bounding, Concentrating, and
Truncating: Unifying Privacy Loss Composition for Data Analytics", ALT 2021): the RDP accountant composes it, the
PLD accountant cannot, so a composition holding one is reported with RDP.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable

import dp_accounting as dpa
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from libsgde.domain.privacy import EXPONENTIAL, GAUSSIAN, POISSON_GAUSSIAN, PrivacyComponent
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


def exponential_event(pure_epsilon: float, steps: int = 1) -> dpa.DpEvent:
    """`steps` exponential-mechanism selections of `pure_epsilon` each, as (e^2 / 8)-zCDP (bounded range)."""
    if not (math.isfinite(pure_epsilon) and pure_epsilon > 0):
        raise PrivacyError("pure_epsilon", "must be finite and > 0")
    _check_mechanism(1.0, 1.0, steps)
    return _self_composed(dpa.ZCDpEvent(pure_epsilon**2 / 8), steps)


def _self_composed(event: dpa.DpEvent, steps: int) -> dpa.DpEvent:
    return event if steps == 1 else dpa.SelfComposedDpEvent(event, steps)


def component_event(component: PrivacyComponent) -> dpa.DpEvent:
    """The DpEvent of one component of a privacy report (libsgde.domain.privacy)."""
    c = component
    if c.kind == GAUSSIAN:
        return _self_composed(gaussian_event(c.noise_multiplier), c.steps)
    if c.kind == POISSON_GAUSSIAN:
        return dpsgd_event(c.noise_multiplier, c.sampling_rate, c.steps)
    if c.kind == EXPONENTIAL:
        return exponential_event(c.pure_epsilon, c.steps)
    raise PrivacyError(
        "kind", f"unknown component kind {c.kind!r}; known: {GAUSSIAN}, {POISSON_GAUSSIAN}, {EXPONENTIAL}"
    )


def composed_event(main: dpa.DpEvent, components: tuple[PrivacyComponent, ...] = ()) -> dpa.DpEvent:
    """The main mechanism's event composed with the components'."""
    return dpa.ComposedDpEvent([main, *map(component_event, components)]) if components else main


def accountant_for(event: dpa.DpEvent) -> str:
    """ "pld" when the PLD accountant can compose the event (the tighter figure), else "rdp"."""
    return "pld" if pld_privacy_accountant.PLDAccountant().supports(event) else "rdp"


def event_epsilon(event: dpa.DpEvent, delta: float, accountant: str) -> float:
    """Epsilon at `delta` from the named accountant ("pld" or "rdp")."""
    if accountant == "pld":
        return event_pld_epsilon(event, delta)
    if accountant == "rdp":
        return event_rdp_epsilon(event, delta)
    raise PrivacyError("accountant", f"unknown accountant {accountant!r}; known: pld, rdp")


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
    fixed: tuple[PrivacyComponent, ...] = (),
) -> float:
    """The smallest DP-SGD noise multiplier (to within `tolerance`) whose PLD epsilon, composed with the `fixed`
    components (already calibrated releases of the same run), is at most `target_epsilon`."""
    _check_mechanism(1.0, sampling_rate, steps)
    return calibrate_event(
        lambda s: composed_event(dpsgd_event(s, sampling_rate, steps), fixed),
        target_epsilon,
        delta,
        discretization,
        tolerance,
    )


@functools.lru_cache(maxsize=256)
def calibrate_gaussian(target_epsilon: float, delta: float) -> float:
    """The noise multiplier of one Gaussian mechanism (sensitivity 1) at `target_epsilon`, `delta`."""
    return calibrate_event(gaussian_event, target_epsilon, delta)


def share_noise_multiplier(share: float, target_epsilon: float, delta: float) -> float:
    """The noise multiplier of a side release (a class prior, say) given `share` of the target epsilon: that of one
    Gaussian mechanism at (share * target_epsilon, delta). A public rule, so the main mechanism is then calibrated
    against the composition; in Gaussian-DP terms the side release takes about share^2 of the budget, so the main
    mechanism's noise grows by only about 1 / sqrt(1 - share^2)."""
    if not 0 < share < 1:
        raise PrivacyError("share", "must be in (0, 1)")
    return calibrate_gaussian(share * target_epsilon, delta)


def calibrate_event(
    make_event: Callable[[float], dpa.DpEvent],
    target_epsilon: float,
    delta: float,
    discretization: float = DEFAULT_DISCRETIZATION,
    tolerance: float = 1e-3,
) -> float:
    """The smallest noise multiplier s (to within `tolerance`) for which make_event(s) has epsilon at most
    `target_epsilon` at `delta`, by the accountant it will be reported with (accountant_for: PLD, or RDP for a
    composition PLD cannot hold)."""
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
    if accountant_for(make_event(upper)) == "rdp":
        return float(upper)

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
