"""An artifact's privacy claim, checked: the (epsilon, delta) its manifest states is recomputed with the accountant
from the mechanism parameters the manifest also states (noise multiplier, sampling rate, steps, delta; one Gaussian
release for dp-merf), for the mechanism its architecture runs, composed with the further releases the report lists
(its components: a DP class prior, a teacher, selections). The components' purposes must be exactly those the
architecture's config implies, so no release of a run can be left out. The registry runs this at every publish, so
an epsilon it shows is one it has computed itself, not one a publisher typed.

What this cannot check is that the parameters are those of the run that made the weights, or that N is the true
number of rows: those rest on the owner's signature and the trainer the silo runs.
"""

from __future__ import annotations

import functools
import math

from libsgde.domain.privacy import PrivacyComponent
from libsgde.errors import FieldError
from libsgde.io.artifact import ArtifactError, Manifest
from libsgde.io.encoding import model_space
from libsgde.ml.architectures import ConfigError, get_architecture
from libsgde.ml.privacy import accounting
from libsgde.wire.convert import privacy_from_proto
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

__all__ = ["RELATIVE_TOLERANCE", "check_privacy_claim"]

# How far a stated epsilon may be from the recomputed one: the accountants are deterministic, so only another
# release of dp-accounting moves the figure, and never by this much.
RELATIVE_TOLERANCE = 1e-3
NO_DP = "none"


def check_privacy_claim(manifest: Manifest) -> pb.PrivacyReport:
    """Raises ArtifactError (field "privacy.*") unless the manifest's privacy report is what the accountant gives
    for its own parameters, or an honest "none" (no differential privacy: epsilon +inf). Returns the report to
    record: the manifest's, with epsilon and rdp_epsilon as the accountant recomputed them (not the claim, which
    may differ from them within RELATIVE_TOLERANCE)."""
    p = manifest.privacy
    if p.mechanism == NO_DP:
        if p.epsilon != math.inf:
            raise ArtifactError(
                f"privacy: mechanism 'none' (no differential privacy) must state epsilon +inf, not {p.epsilon:g}",
                "privacy.epsilon",
            )
        return p
    try:
        arch = get_architecture(manifest.architecture)
        config = arch.configure(manifest.config, model_space(manifest.data_schema))
    except ConfigError as e:
        field = "architecture" if e.key == "architecture" else f"config.{e.key}"
        raise ArtifactError(f"manifest {field}: {e.description}", field) from None
    mechanism = arch.mechanism
    if p.mechanism != mechanism.name:
        raise ArtifactError(
            f"privacy: architecture {manifest.architecture!r} runs {mechanism.name!r}, the report says {p.mechanism!r}",
            "privacy.mechanism",
        )
    components = privacy_from_proto(p).components
    stated, required = sorted(c.purpose for c in components), sorted(mechanism.required_components(config))
    if stated != required:
        raise ArtifactError(
            f"privacy: architecture {manifest.architecture!r} with this config releases "
            f"{', '.join(required) or 'nothing'} beside its main mechanism; the report lists "
            f"{', '.join(stated) or 'nothing'}",
            "privacy.components",
        )
    try:
        accounting.check_delta(p.delta, p.dataset_size)
        if not (math.isfinite(p.clip_norm) and p.clip_norm >= 0):
            raise FieldError("clip_norm", "must be a finite number >= 0")
        accountant, epsilon, rdp = _recompute(
            manifest.architecture, p.noise_multiplier, p.sampling_rate, p.steps, p.delta, components
        )
    except FieldError as e:  # PrivacyError included: parameters no mechanism could have run with
        field = e.field if e.field.startswith("privacy") else f"privacy.{e.field or 'mechanism'}"
        raise ArtifactError(f"{field}: {e.description}", field) from None
    if p.accountant != accountant:
        raise ArtifactError(
            f"privacy: accountant {p.accountant!r}; this registry recomputes this mechanism with {accountant!r}",
            "privacy.accountant",
        )
    for name, stated_value, computed in (("epsilon", p.epsilon, epsilon), ("rdp_epsilon", p.rdp_epsilon, rdp)):
        if not (
            math.isfinite(stated_value) and abs(stated_value - computed) <= RELATIVE_TOLERANCE * max(1.0, computed)
        ):
            raise ArtifactError(
                f"privacy: the report states {name} {stated_value:.6g}, but the accountant gives {computed:.6g} for "
                f"its own parameters ({mechanism.name}: noise multiplier {p.noise_multiplier:g}, sampling rate "
                f"{p.sampling_rate:g}, {p.steps} steps, delta {p.delta:g}"
                + (f", and {len(components)} further release(s)" if components else "")
                + "); publish the artifact the trainer wrote",
                f"privacy.{name}",
            )
    recorded = pb.PrivacyReport()
    recorded.CopyFrom(p)
    recorded.epsilon, recorded.rdp_epsilon = epsilon, rdp
    return recorded


@functools.lru_cache(maxsize=512)  # pure and slow (up to seconds): a model published again costs nothing
def _recompute(
    architecture: str,
    noise_multiplier: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    components: tuple[PrivacyComponent, ...],
) -> tuple[str, float, float]:
    """(accountant, its epsilon, RDP epsilon) of the composition; refuses impossible parameters (PrivacyError)."""
    mechanism = get_architecture(architecture).mechanism
    event = accounting.composed_event(mechanism.event(noise_multiplier, sampling_rate, steps), components)
    accountant = accounting.accountant_for(event)
    return accountant, accounting.event_epsilon(event, delta, accountant), accounting.event_rdp_epsilon(event, delta)
