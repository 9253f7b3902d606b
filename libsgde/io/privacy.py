"""An artifact's privacy claim, checked: the (epsilon, delta) its manifest states is recomputed with the accountant
from the mechanism parameters the manifest also states (noise multiplier, sampling rate, steps, delta; one Gaussian
release for dp-merf), for the mechanism its architecture runs. The registry runs this at every publish, so an
epsilon it shows is one it has computed itself, not one a publisher typed.

What this cannot check is that the parameters are those of the run that made the weights, or that N is the true
number of rows: those rest on the owner's signature and the trainer the silo runs.
"""

from __future__ import annotations

import functools
import math

from libsgde.errors import FieldError
from libsgde.io.artifact import ArtifactError, Manifest
from libsgde.ml.architectures import ConfigError, get_architecture
from libsgde.ml.privacy import accounting

__all__ = ["RELATIVE_TOLERANCE", "check_privacy_claim"]

# How far a stated epsilon may be from the recomputed one: the accountants are deterministic, so only another
# release of dp-accounting moves the figure, and never by this much.
RELATIVE_TOLERANCE = 1e-3
NO_DP = "none"


def check_privacy_claim(manifest: Manifest) -> None:
    """Raises ArtifactError (field "privacy.*") unless the manifest's privacy report is what the accountant gives
    for its own parameters, or an honest "none" (no differential privacy: epsilon +inf)."""
    p = manifest.privacy
    if p.mechanism == NO_DP:
        if p.epsilon != math.inf:
            raise ArtifactError(
                f"privacy: mechanism 'none' (no differential privacy) must state epsilon +inf, not {p.epsilon:g}",
                "privacy.epsilon",
            )
        return
    try:
        mechanism = get_architecture(manifest.architecture).mechanism
    except ConfigError as e:
        raise ArtifactError(f"manifest architecture: {e.description}", "architecture") from None
    if p.mechanism != mechanism.name:
        raise ArtifactError(
            f"privacy: architecture {manifest.architecture!r} runs {mechanism.name!r}, the report says {p.mechanism!r}",
            "privacy.mechanism",
        )
    if p.accountant != "pld":
        raise ArtifactError(
            f"privacy: accountant {p.accountant!r}; this registry recomputes 'pld'", "privacy.accountant"
        )
    try:
        accounting.check_delta(p.delta, p.dataset_size)
        if not (math.isfinite(p.clip_norm) and p.clip_norm >= 0):
            raise FieldError("clip_norm", "must be a finite number >= 0")
        epsilon, rdp = _recompute(manifest.architecture, p.noise_multiplier, p.sampling_rate, p.steps, p.delta)
    except FieldError as e:  # PrivacyError included: parameters no mechanism could have run with
        field = e.field if e.field.startswith("privacy") else f"privacy.{e.field or 'mechanism'}"
        raise ArtifactError(f"{field}: {e.description}", field) from None
    for name, stated, computed in (("epsilon", p.epsilon, epsilon), ("rdp_epsilon", p.rdp_epsilon, rdp)):
        if not (math.isfinite(stated) and abs(stated - computed) <= RELATIVE_TOLERANCE * max(1.0, computed)):
            raise ArtifactError(
                f"privacy: the report states {name} {stated:.6g}, but the accountant gives {computed:.6g} for its "
                f"own parameters ({mechanism.name}: noise multiplier {p.noise_multiplier:g}, sampling rate "
                f"{p.sampling_rate:g}, {p.steps} steps, delta {p.delta:g}); publish the artifact the trainer wrote",
                f"privacy.{name}",
            )


@functools.lru_cache(maxsize=512)  # pure and slow (up to seconds): a model published again costs nothing
def _recompute(
    architecture: str, noise_multiplier: float, sampling_rate: float, steps: int, delta: float
) -> tuple[float, float]:
    mechanism = get_architecture(architecture).mechanism
    event = mechanism.event(noise_multiplier, sampling_rate, steps)  # refuses impossible parameters (PrivacyError)
    return accounting.event_pld_epsilon(event, delta), accounting.event_rdp_epsilon(event, delta)
