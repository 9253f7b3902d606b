"""The accountant: PLD beside RDP, calibration to a target, delta rules, the RDP accountant's quiet logs."""

import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from libsgde.ml.privacy import PrivacyError, calibrate_noise_multiplier, check_delta, pld_epsilon, rdp_epsilon
from libsgde.ml.privacy.accounting import RDP_CONVERGENCE_FILTER

# MNIST-sized DP-SGD: N = 60,000, expected batch 256, 20 epochs.
Q = 256 / 60_000
STEPS = 20 * 60_000 // 256


@pytest.mark.parametrize("sigma", [0.8, 1.3, 3.0])
def test_pld_is_tighter_than_rdp_within_the_known_gap(sigma):
    pld = pld_epsilon(sigma, Q, STEPS, 1e-5)
    rdp = rdp_epsilon(sigma, Q, STEPS, 1e-5)
    assert pld <= rdp  # RDP's conversion to (epsilon, delta) is loose; PLD is near-exact
    assert rdp < 1.35 * pld  # but not wildly so for these settings


def test_more_noise_fewer_steps_less_epsilon():
    assert pld_epsilon(2.0, Q, STEPS, 1e-5) < pld_epsilon(1.0, Q, STEPS, 1e-5)
    assert pld_epsilon(1.0, Q, STEPS // 4, 1e-5) < pld_epsilon(1.0, Q, STEPS, 1e-5)


def test_finer_discretisation_is_not_more_pessimistic():
    assert pld_epsilon(1.0, Q, STEPS, 1e-5, 1e-4) <= pld_epsilon(1.0, Q, STEPS, 1e-5, 1e-2)


@pytest.mark.parametrize("target", [1.0, 10.0])
def test_calibration_meets_the_target_without_wasting_it(target):
    sigma = calibrate_noise_multiplier(target, 1e-5, Q, STEPS)
    spent = pld_epsilon(sigma, Q, STEPS, 1e-5)
    assert spent <= target
    assert pld_epsilon(sigma * 0.98, Q, STEPS, 1e-5) > spent  # less noise would spend more
    assert spent > 0.9 * target


def test_delta_must_be_below_one_over_n():
    check_delta(1e-5, 60_000)
    for delta in (1 / 60_000, 0.5, 0.0, -1e-5, float("nan")):
        with pytest.raises(PrivacyError) as info:
            check_delta(delta, 60_000)
        assert info.value.field == "delta"


def test_bad_settings_name_their_field():
    with pytest.raises(PrivacyError, match="target_epsilon"):
        calibrate_noise_multiplier(0.0, 1e-5, Q, STEPS)
    with pytest.raises(PrivacyError, match="sampling_rate"):
        pld_epsilon(1.0, 1.5, STEPS, 1e-5)
    with pytest.raises(PrivacyError, match="noise_multiplier"):
        rdp_epsilon(0.0, Q, STEPS, 1e-5)


def test_a_published_setting_reproduces_its_published_epsilon():
    """Opacus's documentation of compute_dp_sgd_privacy: sampling rate 1%, noise multiplier 1.0, 300 steps, RDP
    orders (2, 5, 10, 20, 100) "satisfies differential privacy with epsilon = 2.39, delta = 1e-05" (optimal order
    5). The same event under dp-accounting's RDP accountant restricted to those orders gives the same figure, and
    our reported accountants (RDP over all orders, and PLD) are tighter still."""
    from dp_accounting.rdp import rdp_privacy_accountant

    from libsgde.ml.privacy.accounting import dpsgd_event

    accountant = rdp_privacy_accountant.RdpAccountant(orders=[2, 5, 10, 20, 100])
    accountant.compose(dpsgd_event(1.0, 0.01, 300))
    epsilon, order = accountant.get_epsilon_and_optimal_order(1e-5)
    assert round(epsilon, 2) == 2.39 and order == 5
    assert pld_epsilon(1.0, 0.01, 300, 1e-5) < rdp_epsilon(1.0, 0.01, 300, 1e-5) < epsilon


# q = 0.5, sigma = 0.5: the RDP accountant's series fails to converge for several fractional orders (1.1 ... 1.6).
NOISY_RDP = (0.5, 0.5, 10, 1e-5)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def absl_warnings():
    """What the absl logger passes on at WARNING or above, from any thread."""
    logger, handler = logging.getLogger("absl"), _Records()
    assert logger.isEnabledFor(logging.WARNING)  # else "nothing logged" would prove nothing
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def test_rdp_convergence_warnings_are_dropped_and_other_absl_warnings_pass(monkeypatch):
    from absl import logging as absl_logging

    dropped = []
    keep = RDP_CONVERGENCE_FILTER.filter

    def counting(record):  # the installed filter, counting what it drops: the setting really does warn
        passed = keep(record)
        if not passed:
            dropped.append(record.getMessage())
        return passed

    monkeypatch.setattr(RDP_CONVERGENCE_FILTER, "filter", counting)
    logger = logging.getLogger("absl")
    level = logger.level
    with absl_warnings() as records:
        rdp_epsilon(*NOISY_RDP)
        assert dropped and all("failed to converge" in m for m in dropped)
        assert [r for r in records if r.levelno >= logging.WARNING] == []
        absl_logging.warning("an unrelated absl warning %d", 7)
        assert [r.getMessage() for r in records] == ["an unrelated absl warning 7"]
    assert logger.level == level


def test_accounting_in_two_threads_at_once_never_changes_the_absl_level():
    logger = logging.getLogger("absl")
    level = logger.level
    start, seen = threading.Barrier(3), set()

    def account():
        start.wait()
        for _ in range(3):
            rdp_epsilon(*NOISY_RDP)

    with absl_warnings() as records, ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(account) for _ in range(2)]
        start.wait()
        while not all(job.done() for job in jobs):
            seen.add(logger.level)
        for job in jobs:
            job.result()  # raises what the thread raised
    assert records == []
    assert seen == {level} and logger.level == level


# A run's further releases (libsgde.domain.privacy.PrivacyComponent) compose with its main mechanism. The figures
# below are recomputed here from dp-accounting's own classes, independently of libsgde's event builders.
def _independent_epsilon(events, delta, accountant):
    import dp_accounting as dpa
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    acc = (
        pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
        if accountant == "pld"
        else rdp_privacy_accountant.RdpAccountant()
    )
    acc.compose(dpa.ComposedDpEvent(events))
    return acc.get_epsilon(delta)


def test_a_composed_report_is_dp_accountings_composition_of_its_events():
    import dp_accounting as dpa

    from libsgde.domain.privacy import EXPONENTIAL, GAUSSIAN, POISSON_GAUSSIAN, PrivacyComponent
    from libsgde.ml.mechanisms import DP_MERF, DP_SGD

    sgd = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(1.1)), 300)
    prior = PrivacyComponent("class_prior", GAUSSIAN, noise_multiplier=20.0)
    report = DP_SGD.report(1.1, 0.01, 300, 1.0, 10_000, 1e-5, (prior,))
    assert report.accountant == "pld" and report.components == (prior,)
    assert report.epsilon == pytest.approx(_independent_epsilon([sgd, dpa.GaussianDpEvent(20.0)], 1e-5, "pld"))
    assert report.epsilon > DP_SGD.report(1.1, 0.01, 300, 1.0, 10_000, 1e-5).epsilon  # the prior is not free

    teacher = PrivacyComponent("teacher", POISSON_GAUSSIAN, noise_multiplier=2.0, sampling_rate=0.05, steps=200)
    report = DP_MERF.report(8.0, 1.0, 1, 0.0, 10_000, 1e-5, (teacher,))
    teacher_event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(2.0)), 200)
    assert report.epsilon == pytest.approx(_independent_epsilon([dpa.GaussianDpEvent(8.0), teacher_event], 1e-5, "pld"))

    # An exponential-mechanism selection of epsilon e is (e^2 / 8)-zCDP: PLD cannot hold it, RDP reports the whole.
    selection = PrivacyComponent("selection", EXPONENTIAL, pure_epsilon=0.1, steps=10)
    report = DP_MERF.report(8.0, 1.0, 1, 0.0, 10_000, 1e-5, (selection,))
    zcdp = dpa.SelfComposedDpEvent(dpa.ZCDpEvent(0.1**2 / 8), 10)
    assert report.accountant == "rdp"
    assert report.epsilon == pytest.approx(_independent_epsilon([dpa.GaussianDpEvent(8.0), zcdp], 1e-5, "rdp"))
    assert report.rdp_epsilon == report.epsilon


def test_calibration_against_fixed_components_meets_the_whole_target():
    from libsgde.domain.privacy import GAUSSIAN, PrivacyComponent
    from libsgde.ml.mechanisms import DP_SGD
    from libsgde.ml.privacy.accounting import share_noise_multiplier

    prior = PrivacyComponent("class_prior", GAUSSIAN, noise_multiplier=share_noise_multiplier(0.25, 2.0, 1e-5))
    alone = calibrate_noise_multiplier(2.0, 1e-5, 0.02, 500)
    with_prior = calibrate_noise_multiplier(2.0, 1e-5, 0.02, 500, fixed=(prior,))
    epsilon = DP_SGD.report(with_prior, 0.02, 500, 1.0, 10_000, 1e-5, (prior,)).epsilon
    assert 2.0 * 0.99 <= epsilon <= 2.0
    # In Gaussian-DP terms a quarter of epsilon is about a sixteenth of the budget: DP-SGD's noise barely grows.
    assert alone < with_prior < alone * 1.1
