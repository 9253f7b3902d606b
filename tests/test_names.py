"""The name rules: one place, full matches only (a trailing newline passed every `^...$` rule of the first release)."""

from __future__ import annotations

import re

import pytest

from libsgde.domain import names

VALID = {
    "USERNAME_RE": "alice",
    "MODEL_ID_RE": "digits-vae",
    "MODEL_NAME_RE": "models/alice/digits-vae",
    "VERSION_NAME_RE": "models/alice/digits-vae/versions/1",
    "MODEL_OR_VERSION_RE": "models/alice/digits-vae",
    "USER_NAME_RE": "users/alice",
    "SHA256_RE": "0" * 64,
    "EMAIL_RE": "alice@example.org",
    "TAG_RE": "tabular",
    "FEDERATION_ID_RE": "hospitals",
    "FEDERATION_NAME_RE": "federations/hospitals",
    "METRIC_KEY_RE": "tstr.logreg",
    "JOB_NAME_RE": "jobs/0123456789abcdef",
    "DATASET_NAME_RE": "datasets/0123456789abcdef",
    "FILENAME_RE": "patients.csv",
    "REQUEST_ID_RE": "retry-1",
}


def test_every_name_rule_is_listed_here():
    rules = {k for k, v in vars(names).items() if isinstance(v, re.Pattern)}
    assert rules == set(VALID)


@pytest.mark.parametrize("rule", sorted(VALID))
@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\x00"])
def test_a_valid_name_with_anything_after_it_is_refused(rule, suffix):
    pattern: re.Pattern = getattr(names, rule)
    assert pattern.fullmatch(VALID[rule]) and pattern.match(VALID[rule])
    assert not pattern.match(VALID[rule] + suffix) and not pattern.fullmatch(VALID[rule] + suffix)
    assert not pattern.match(suffix + VALID[rule])
