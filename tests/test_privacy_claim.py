"""The registry's recomputation of an artifact's privacy claim (libsgde.io.privacy): honest reports pass, any other
is refused naming the field. On the first release any self-declared report was published and shown."""

from __future__ import annotations

import math

import pytest

from libsgde.io.artifact import ArtifactError, build_manifest
from libsgde.io.privacy import check_privacy_claim
from libsgde.ml.mechanisms import DPSGD, MeanEmbeddingRelease
from libsgde.wire.convert import privacy_to_proto
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from tests.support.services import tabular_schema

SGD = privacy_to_proto(DPSGD().report(1.1, 0.01, 300, 1.0, 10_000, 1e-5))
MERF = privacy_to_proto(MeanEmbeddingRelease().report(4.0, 1.0, 1, 0.0, 500, 1e-4))


def manifest(architecture: str, privacy: pb.PrivacyReport, **changes):
    report = pb.PrivacyReport()
    report.CopyFrom(privacy)
    for key, value in changes.items():
        setattr(report, key, value)
    return build_manifest(architecture, {}, tabular_schema(), report, {})


def test_honest_reports_pass():
    check_privacy_claim(manifest("cvae", SGD))
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
        ("dp-merf", MERF, {"steps": 2}, "privacy"),  # one release, not two
        ("dp-merf", pb.PrivacyReport(mechanism="none"), {"epsilon": 1.0}, "privacy.epsilon"),  # no DP, finite epsilon
    ],
)
def test_any_other_claim_is_refused_naming_the_field(architecture, base, changes, field):
    with pytest.raises(ArtifactError) as info:
        check_privacy_claim(manifest(architecture, base, **changes))
    assert info.value.field == field, str(info.value)
