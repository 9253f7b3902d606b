"""The registry's recomputation of an artifact's privacy claim (libsgde.io.privacy): honest reports pass, any other
is refused naming the field. On the first release any self-declared report was published and shown."""

from __future__ import annotations

import math

import pytest

from libsgde.domain.privacy import GAUSSIAN, PrivacyComponent
from libsgde.io.artifact import ArtifactError, build_manifest
from libsgde.io.privacy import check_privacy_claim
from libsgde.ml.mechanisms import DPSGD, MeanEmbeddingRelease
from libsgde.wire.convert import privacy_to_proto
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from tests.support.services import tabular_schema

PRIOR = PrivacyComponent("class_prior", GAUSSIAN, noise_multiplier=20.0)
SGD = privacy_to_proto(DPSGD().report(1.1, 0.01, 300, 1.0, 10_000, 1e-5, (PRIOR,)))
SGD_NO_PRIOR = privacy_to_proto(DPSGD().report(1.1, 0.01, 300, 1.0, 10_000, 1e-5))
MERF = privacy_to_proto(MeanEmbeddingRelease().report(4.0, 1.0, 1, 0.0, 500, 1e-4))


def manifest(architecture: str, privacy: pb.PrivacyReport, config: dict | None = None, **changes):
    report = pb.PrivacyReport()
    report.CopyFrom(privacy)
    for key, value in changes.items():
        if key.startswith("component_"):  # a change to the first component
            setattr(report.components[0], key.removeprefix("component_"), value)
        else:
            setattr(report, key, value)
    return build_manifest(architecture, config or {}, tabular_schema(), report, {})


def test_honest_reports_pass():
    check_privacy_claim(manifest("cvae", SGD))  # the default config releases a DP class prior
    check_privacy_claim(manifest("cvae", SGD_NO_PRIOR, {"class_prior_share": 0}))
    check_privacy_claim(manifest("dp-merf", MERF))
    check_privacy_claim(manifest("dp-merf", pb.PrivacyReport(mechanism="none", epsilon=math.inf)))


@pytest.mark.parametrize(
    ("architecture", "base", "changes", "field"),
    [
        ("cvae", SGD, {"epsilon": SGD.epsilon / 10}, "privacy.epsilon"),  # the lie that matters: a smaller epsilon
        ("cvae", SGD, {"epsilon": SGD.epsilon * 2}, "privacy.epsilon"),
        ("cvae", SGD, {"rdp_epsilon": 0.01}, "privacy.rdp_epsilon"),
        ("cvae", SGD, {"noise_multiplier": 5.0}, "privacy.epsilon"),  # parameters that give another epsilon
        ("cvae", SGD, {"noise_multiplier": 0.0}, "privacy.noise_multiplier"),
        ("cvae", SGD, {"sampling_rate": 1.5}, "privacy.sampling_rate"),
        ("cvae", SGD, {"delta": 0.5}, "privacy.delta"),  # not below 1/N
        ("cvae", SGD, {"accountant": "made-up"}, "privacy.accountant"),
        ("dp-merf", SGD, {}, "privacy.mechanism"),  # dp-merf does not run DP-SGD
        # the class prior's release left out of the claim, or a smaller cost stated for it
        ("cvae", SGD_NO_PRIOR, {}, "privacy.components"),
        (
            "cvae",
            SGD_NO_PRIOR,
            {"epsilon": SGD_NO_PRIOR.epsilon, "rdp_epsilon": SGD_NO_PRIOR.rdp_epsilon},
            "privacy.components",
        ),
        ("cvae", SGD, {"component_noise_multiplier": 200.0}, "privacy.epsilon"),
        ("cvae", SGD, {"component_purpose": "teacher"}, "privacy.components"),
        ("cvae", SGD, {"component_noise_multiplier": 0.0}, "privacy.noise_multiplier"),
        ("dp-merf", MERF, {"steps": 2}, "privacy"),  # one release, not two
        ("dp-merf", pb.PrivacyReport(mechanism="none"), {"epsilon": 1.0}, "privacy.epsilon"),  # no DP, finite epsilon
    ],
)
def test_any_other_claim_is_refused_naming_the_field(architecture, base, changes, field):
    with pytest.raises(ArtifactError) as info:
        check_privacy_claim(manifest(architecture, base, **changes))
    assert info.value.field == field, str(info.value)


def test_a_release_the_config_does_not_make_is_refused():
    with pytest.raises(ArtifactError) as info:
        check_privacy_claim(manifest("cvae", SGD, {"class_prior_share": 0}))
    assert info.value.field == "privacy.components"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kind": "laplace"}, "privacy.components[0].kind"),
        ({"purpose": "Class Prior"}, "privacy.components[0].purpose"),
        ({"steps": -1}, "privacy.components[0].steps"),
        ({"sampling_rate": 2.0}, "privacy.components[0].sampling_rate"),
    ],
)
def test_malformed_components_are_refused_by_the_reader(changes, field):
    report = pb.PrivacyReport()
    report.CopyFrom(SGD)
    for key, value in changes.items():
        setattr(report.components[0], key, value)
    with pytest.raises(ArtifactError) as info:
        build_manifest("cvae", {}, tabular_schema(), report, {})
    assert info.value.field == field, str(info.value)
