"""A model's privacy report: the (epsilon, delta) guarantee an accountant computed from the mechanisms actually run,
with their parameters (so that anyone can recompute it).

The top-level parameters are the architecture's main mechanism (DP-SGD's steps, or one Gaussian release); further
private releases of the same run (a DP class prior, a DP-SGD teacher, exponential-mechanism selections) are
`components`, composed with it: `epsilon` is the accountant's figure for the whole composition."""

from __future__ import annotations

from dataclasses import dataclass

# A component's kinds, and what the accountant makes of each (libsgde.ml.privacy.accounting.component_event).
GAUSSIAN = "gaussian"  # a sensitivity-1 Gaussian release, self-composed `steps` times
POISSON_GAUSSIAN = "poisson-gaussian"  # DP-SGD: Poisson sampling at `sampling_rate`, `steps` steps
EXPONENTIAL = "exponential"  # an exponential-mechanism selection, `pure_epsilon` each, `steps` times
COMPONENT_KINDS = (GAUSSIAN, POISSON_GAUSSIAN, EXPONENTIAL)


@dataclass(frozen=True)
class PrivacyComponent:
    """One further private release, composed with the main mechanism's."""

    purpose: str  # what it released: "class_prior", "teacher", "selection", ...
    kind: str  # one of COMPONENT_KINDS
    noise_multiplier: float = 0.0  # the Gaussian kinds: noise std / sensitivity
    sampling_rate: float = 1.0
    steps: int = 1
    clip_norm: float = 0.0  # DP-SGD's clip (informational: the noise multiplier is relative to it)
    pure_epsilon: float = 0.0  # the exponential kind: each selection's epsilon

    def describe(self) -> str:
        """One line for people, e.g. "class_prior (gaussian, noise multiplier 15.2)"."""
        if self.kind == EXPONENTIAL:
            what = f"epsilon {self.pure_epsilon:.4g} each"
        else:
            what = f"noise multiplier {self.noise_multiplier:.4g}"
            if self.kind == POISSON_GAUSSIAN:
                what += f", sampling rate {self.sampling_rate:.4g}"
        return f"{self.purpose} ({self.kind}, {what}" + (f", {self.steps} steps)" if self.steps != 1 else ")")


@dataclass(frozen=True)
class PrivacyReport:
    mechanism: str  # "dp-sgd", "dp-merf", ..., or "none" (no DP: epsilon is +inf)
    epsilon: float
    delta: float
    accountant: str  # "pld" (dp-accounting's privacy loss distributions), or "rdp" where PLD cannot compose it
    noise_multiplier: float
    sampling_rate: float
    steps: int
    clip_norm: float
    dataset_size: int
    rdp_epsilon: float  # the same composition accounted with RDP, a cross-check (an upper bound)
    components: tuple[PrivacyComponent, ...] = ()
