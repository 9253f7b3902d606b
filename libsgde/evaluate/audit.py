"""Privacy audit of a generator from its samples: a membership-inference attack and distances to closest records.

Records are model-space rows (images flattened), with the label's one-hot indicators appended when there are labels,
compared by Euclidean distance. Members are the generator's training records, non-members held-out records from the
same distribution that it never saw; both are cut to the same size n (at random, by `seed`).

- Membership inference (distance to the closest synthetic record): each candidate scores minus its distance to the
  nearest synthetic sample; a generator that memorised its members places samples on or near them. Reported: the
  ROC AUC (0.5: the attacker learns nothing), its one-sided 95% lower bound (Hanley and McNeil's standard error),
  and the TPR at FPR 1% and 0.1% (linear interpolation on the ROC curve; with n non-members, FPR below 1/n cannot be
  resolved).
- The same attack calibrated per record: minus its distance to the closest synthetic record, relative to the distance
  to its closest other candidate (log d_candidates - log d_synthetic): a record in a dense region is near synthetic
  samples whether or not it was trained on, and the calibration discounts that. Members and non-members come from
  one distribution, so the reference carries no membership signal itself.
- DCR: for each synthetic sample, the distance to its closest member and to its closest non-member. With members and
  non-members of the same size and distribution, a generator that does not memorise is as likely to be closer to
  either: the share closer to members is ~0.5 (ties dropped), tested by a one-sided binomial test.
- Exact copies: the share of synthetic samples equal (to COPY_DECIMALS decimals) to any training record, beside the
  same for any held-out record (data sets hold duplicates; only the excess counts).

Verdict (`flagged`), any of:
  either attack's AUC lower bound > 0.5 + AUC_MARGIN;
  the share closer to members > 0.5 + SHARE_MARGIN with binomial p < P_VALUE;
  exact copies of training records exceed those of held-out records by more than COPY_MARGIN of the samples.
Not flagged is no proof of privacy (the accountant's epsilon is the guarantee); flagged is evidence of memorisation.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from libsgde.evaluate.fidelity import nearest_neighbours

__all__ = [
    "AUC_MARGIN",
    "AuditResult",
    "COPY_DECIMALS",
    "COPY_MARGIN",
    "P_VALUE",
    "SHARE_MARGIN",
    "audit",
    "audit_records",
    "auc_lower_bound",
    "copy_share",
    "roc_curve",
    "tpr_at_fpr",
]

AUC_MARGIN = 0.02
SHARE_MARGIN = 0.02
P_VALUE = 1e-3
COPY_MARGIN = 0.01
CALIBRATION_FLOOR = 1e-8  # added to distances before their logarithm (an exact copy is at 0)
COPY_DECIMALS = 6  # records equal after rounding to this many decimals (model space is [0, 1]) are copies
RULE = (
    f"flagged when either membership-inference attack's AUC has a one-sided 95% lower bound > "
    f"{0.5 + AUC_MARGIN}, or the share of synthetic samples closer to a training record than to a held-out one "
    f"is > {0.5 + SHARE_MARGIN} with binomial p < {P_VALUE:g}, or exact copies of training records exceed those "
    f"of held-out records by more than {COPY_MARGIN:.0%} of the samples"
)


@dataclass
class AuditResult:
    members: int  # n: members and non-members each
    non_members: int
    synthetic: int
    mia_auc: float
    mia_auc_lower: float  # one-sided 95% lower confidence bound
    mia_tpr_at_fpr_1pct: float
    mia_tpr_at_fpr_01pct: float
    mia_calibrated_auc: float  # the per-record calibrated attack
    mia_calibrated_auc_lower: float
    mia_calibrated_tpr_at_fpr_1pct: float
    dcr_train_median: float
    dcr_holdout_median: float
    dcr_train_p5: float
    dcr_holdout_p5: float
    dcr_share_closer_to_train: float
    dcr_p_value: float  # one-sided binomial test of the share against 0.5
    exact_copies_train: float  # share of synthetic samples that copy a training record
    exact_copies_holdout: float
    flagged: bool
    reasons: list[str] = field(default_factory=list)
    rule: str = RULE
    # Arrays for the report's plots (not in the JSON summary).
    roc_fpr: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    roc_tpr: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    calibrated_roc_fpr: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    calibrated_roc_tpr: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    dcr_train: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    dcr_holdout: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)


def audit_records(x: np.ndarray, labels: np.ndarray | None = None, num_classes: int = 0) -> np.ndarray:
    """Model-space rows flattened to float64 [N, D], with the label's one-hot indicators appended when labelled."""
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    if labels is None or num_classes < 1:
        return flat
    return np.concatenate([flat, np.eye(num_classes)[np.asarray(labels, np.int64)]], axis=1)


def roc_curve(member_scores: np.ndarray, non_member_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1); a higher score says "member"."""
    scores = np.concatenate([member_scores, non_member_scores])
    is_member = np.concatenate([np.ones(len(member_scores)), np.zeros(len(non_member_scores))])
    order = np.argsort(-scores, kind="stable")
    scores, is_member = scores[order], is_member[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp = np.cumsum(is_member)[last_of_tie]
    fp = np.cumsum(1 - is_member)[last_of_tie]
    return (np.r_[0.0, fp / max(len(non_member_scores), 1)], np.r_[0.0, tp / max(len(member_scores), 1)])


def _auc(member_scores: np.ndarray, non_member_scores: np.ndarray) -> float:
    """P(member score > non-member score) + P(equal) / 2 (Mann-Whitney, ties by average rank)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([member_scores, non_member_scores]))
    n1, n0 = len(member_scores), len(non_member_scores)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def auc_lower_bound(auc: float, n_members: int, n_non_members: int, z: float = 1.645) -> float:
    """AUC - z * SE, with Hanley and McNeil's (1982) standard error (z 1.645: one-sided 95%)."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (n_members - 1) * (q1 - auc**2) + (n_non_members - 1) * (q2 - auc**2)) / (
        n_members * n_non_members
    )
    return float(auc - z * math.sqrt(max(variance, 0.0)))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """TPR on the ROC curve at FPR `target`: the highest point at or below it, interpolated linearly towards the next
    point above it."""
    below = np.flatnonzero(fpr <= target)
    i = below[-1]
    best = float(tpr[below].max())
    if i + 1 >= len(fpr) or fpr[i] == target:
        return best
    j = i + 1
    along = (target - fpr[i]) / (fpr[j] - fpr[i])
    return max(best, float(tpr[i] + along * (tpr[j] - tpr[i])))


def _row_digests(rows: np.ndarray) -> list[bytes]:
    rounded = np.ascontiguousarray(np.round(rows, COPY_DECIMALS) + 0.0)  # + 0.0: -0.0 and 0.0 hash alike
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rounded]


def copy_share(synthetic: np.ndarray, records: np.ndarray) -> float:
    """The share of synthetic rows equal to some row of `records` (both rounded to COPY_DECIMALS); by hashing, so
    that every record counts at O(N) cost."""
    known = set(_row_digests(records))
    return float(np.mean([d in known for d in _row_digests(synthetic)])) if len(synthetic) else 0.0


def audit(train: np.ndarray, holdout: np.ndarray, synthetic: np.ndarray, *, seed: int = 0) -> AuditResult:
    """The audit (module docstring) of `synthetic` against members `train` and non-members `holdout`: float64 rows of
    the same width (see `audit_records`)."""
    from scipy.stats import binomtest

    train, holdout, synthetic = (np.asarray(a, np.float64).reshape(len(a), -1) for a in (train, holdout, synthetic))
    if min(len(train), len(holdout), len(synthetic)) < 2:
        raise ValueError("the audit needs at least 2 training, held-out and synthetic records")
    if not train.shape[1] == holdout.shape[1] == synthetic.shape[1]:
        raise ValueError("training, held-out and synthetic records must have the same width")
    rng = np.random.default_rng(seed)
    n = min(len(train), len(holdout))
    members = train[np.sort(rng.choice(len(train), n, replace=False))]
    non_members = holdout[np.sort(rng.choice(len(holdout), n, replace=False))]

    _, d_members = nearest_neighbours(members, synthetic)
    _, d_non_members = nearest_neighbours(non_members, synthetic)
    fpr, tpr = roc_curve(-d_members, -d_non_members)
    auc = _auc(-d_members, -d_non_members)
    lower = auc_lower_bound(auc, n, n)
    _, d_reference = nearest_neighbours(
        np.concatenate([members, non_members]), np.concatenate([members, non_members]), exclude_self=True
    )
    calibrated = np.log(d_reference + CALIBRATION_FLOOR) - np.log(np.r_[d_members, d_non_members] + CALIBRATION_FLOOR)
    c_fpr, c_tpr = roc_curve(calibrated[:n], calibrated[n:])
    c_auc = _auc(calibrated[:n], calibrated[n:])
    c_lower = auc_lower_bound(c_auc, n, n)

    _, dcr_train = nearest_neighbours(synthetic, members)
    _, dcr_holdout = nearest_neighbours(synthetic, non_members)
    closer, farther = int(np.sum(dcr_train < dcr_holdout)), int(np.sum(dcr_train > dcr_holdout))
    decided = closer + farther
    share = closer / decided if decided else 0.5
    p_value = float(binomtest(closer, decided, 0.5, alternative="greater").pvalue) if decided else 1.0
    # Copies of any training record count, not only of the members drawn above.
    copies_train = copy_share(synthetic, train)
    copies_holdout = copy_share(synthetic, holdout)

    reasons = []
    for what, a, low in (("", auc, lower), (" (calibrated per record)", c_auc, c_lower)):
        if low > 0.5 + AUC_MARGIN:
            reasons.append(
                f"membership inference{what} works: AUC {a:.3f} (95% lower bound {low:.3f} > {0.5 + AUC_MARGIN})"
            )
    if share > 0.5 + SHARE_MARGIN and p_value < P_VALUE:
        reasons.append(
            f"{share:.1%} of synthetic samples lie closer to a training record than to a held-out one "
            f"(binomial p = {p_value:.2g})"
        )
    if copies_train - copies_holdout > COPY_MARGIN:
        reasons.append(
            f"{copies_train:.1%} of synthetic samples copy a training record ({copies_holdout:.1%} a held-out one)"
        )
    return AuditResult(
        members=n,
        non_members=n,
        synthetic=len(synthetic),
        mia_auc=auc,
        mia_auc_lower=lower,
        mia_tpr_at_fpr_1pct=tpr_at_fpr(fpr, tpr, 0.01),
        mia_tpr_at_fpr_01pct=tpr_at_fpr(fpr, tpr, 0.001),
        mia_calibrated_auc=c_auc,
        mia_calibrated_auc_lower=c_lower,
        mia_calibrated_tpr_at_fpr_1pct=tpr_at_fpr(c_fpr, c_tpr, 0.01),
        dcr_train_median=float(np.median(dcr_train)),
        dcr_holdout_median=float(np.median(dcr_holdout)),
        dcr_train_p5=float(np.percentile(dcr_train, 5)),
        dcr_holdout_p5=float(np.percentile(dcr_holdout, 5)),
        dcr_share_closer_to_train=share,
        dcr_p_value=p_value,
        exact_copies_train=copies_train,
        exact_copies_holdout=copies_holdout,
        flagged=bool(reasons),
        reasons=reasons,
        roc_fpr=fpr,
        roc_tpr=tpr,
        calibrated_roc_fpr=c_fpr,
        calibrated_roc_tpr=c_tpr,
        dcr_train=dcr_train,
        dcr_holdout=dcr_holdout,
    )
