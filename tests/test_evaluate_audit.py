"""The membership-inference audit flags a generator that memorised its training set and not one that did not."""

from __future__ import annotations

import numpy as np
import pytest

from libsgde.evaluate.audit import audit, audit_records, roc_curve, tpr_at_fpr


def _population(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A mixture of 3 Gaussian blobs in 6 dimensions, clipped to [0, 1] (model space), with the blob as label."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).uniform(0.2, 0.8, (3, 6))
    labels = rng.integers(0, 3, n)
    return np.clip(centres[labels] + rng.normal(0, 0.08, (n, 6)), 0, 1), labels


def test_a_lookup_table_generator_is_flagged_and_independent_samples_are_not():
    train, train_labels = _population(600, seed=1)
    holdout, holdout_labels = _population(600, seed=2)
    members, non_members = audit_records(train, train_labels, 3), audit_records(holdout, holdout_labels, 3)

    # A "generator" that memorised its training set: it replays training rows (a lookup table).
    rows = np.random.default_rng(3).integers(0, len(train), 600)
    memorised = audit(members, non_members, members[rows])
    assert memorised.flagged and len(memorised.reasons) == 4, memorised.reasons  # every rule fires
    assert memorised.mia_auc > 0.75 and memorised.mia_tpr_at_fpr_1pct > 0.5
    assert memorised.mia_calibrated_auc > 0.75 and memorised.mia_calibrated_tpr_at_fpr_1pct > 0.5
    assert memorised.dcr_share_closer_to_train > 0.95 and memorised.exact_copies_train > 0.95
    assert memorised.dcr_train_median == 0.0 < memorised.dcr_holdout_median

    # Independent samples from the true distribution: nothing to find.
    fresh, fresh_labels = _population(600, seed=4)
    independent = audit(members, non_members, audit_records(fresh, fresh_labels, 3))
    assert not independent.flagged, independent.reasons
    assert abs(independent.mia_auc - 0.5) < 0.06 and abs(independent.dcr_share_closer_to_train - 0.5) < 0.07
    assert abs(independent.mia_calibrated_auc - 0.5) < 0.06
    assert independent.exact_copies_train == 0.0
    assert independent.dcr_train_median == pytest.approx(independent.dcr_holdout_median, rel=0.15)

    # Memorised with a little noise (no exact copies): still caught by the attack and the DCR share.
    jittered = members[rows] + np.random.default_rng(5).normal(0, 0.005, members[rows].shape)
    noisy = audit(members, non_members, jittered)
    assert noisy.flagged and noisy.exact_copies_train == 0.0 and noisy.mia_auc_lower > 0.6

    # One sample in ten a copy, the rest fresh: too few for the attacks at this size, caught as copies.
    mixed = np.concatenate([members[rows[:60]], audit_records(*_population(540, seed=6), 3)])
    partial = audit(members, non_members, mixed)
    assert partial.flagged and partial.exact_copies_train == pytest.approx(0.1)
    assert partial.reasons == ["10.0% of synthetic samples copy a training record (0.0% a held-out one)"]


def test_roc_helpers_on_a_known_curve():
    fpr, tpr = roc_curve(np.array([3.0, 2.0, 1.0]), np.array([2.5, 0.0]))
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 0.5, 1.0] and tpr.tolist() == [0.0, 1 / 3, 1 / 3, 2 / 3, 1.0, 1.0]
    assert tpr_at_fpr(fpr, tpr, 0.0) == 1 / 3
    assert tpr_at_fpr(fpr, tpr, 0.25) == pytest.approx(1 / 3)  # flat between (0, 1/3) and (0.5, 1/3)
    assert tpr_at_fpr(fpr, tpr, 0.75) == 1.0
    with pytest.raises(ValueError, match="same width"):
        audit(np.zeros((3, 2)), np.zeros((3, 3)), np.zeros((3, 2)))
