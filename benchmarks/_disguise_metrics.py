"""What benchmarks/disguise.py measures, as plain functions of arrays (no training of generators, no JAX), so that a
unit test can check each on tiny data.

Every image argument is in model space, flattened or not ([n, ...] floats in [0, 1]); every classifier's settings
are fixed here, in advance, and never chosen on a test set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FEW_SHOT_PER_CLASS = 10  # the "10 labelled genuine hidden-class images per class"
FEW_SHOT_COMPONENTS = 20  # PCA features the few-shot attacker fits on the disguised images it holds


def flat(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, np.float32).reshape(len(images), -1)


def classifier(kind: str, seed: int):
    """The cloud's classifier (and the direct one beside it): the same fixed settings for every arm."""
    if kind == "logreg":
        return LogisticRegression(max_iter=2000, C=1.0)
    if kind == "mlp":
        return MLPClassifier(hidden_layer_sizes=(128,), activation="relu", max_iter=300, random_state=seed)
    raise ValueError(f"unknown classifier {kind!r}: logreg or mlp")


def best_match_accuracy(truth: np.ndarray, clusters: np.ndarray) -> float:
    """Accuracy of `clusters` read as labels under the one-to-one renaming that agrees best with `truth`
    (Hungarian matching on the contingency table): what an attacker who recovered the partition gets once it
    names the parts correctly."""
    truth, clusters = np.asarray(truth), np.asarray(clusters)
    t_ids, t = np.unique(truth, return_inverse=True)
    c_ids, c = np.unique(clusters, return_inverse=True)
    table = np.zeros((len(c_ids), len(t_ids)), np.int64)
    np.add.at(table, (c, t), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(truth))


def probe_auc(
    suspect_fit: np.ndarray, genuine_fit: np.ndarray, suspect_test: np.ndarray, genuine_test: np.ndarray, seed: int
) -> dict:
    """Leakage (a): can the cloud tell the images it received from genuine images of the public classes? Two probes
    (standardised logistic regression, an MLP) fit on one set of both and score held-out ones; ROC AUC of each and
    the larger (0.5: indistinguishable; 1: always told apart)."""
    x_fit = np.concatenate([flat(suspect_fit), flat(genuine_fit)])
    y_fit = np.r_[np.ones(len(suspect_fit)), np.zeros(len(genuine_fit))]
    x_test = np.concatenate([flat(suspect_test), flat(genuine_test)])
    y_test = np.r_[np.ones(len(suspect_test)), np.zeros(len(genuine_test))]
    probes = {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1)),
        "mlp": MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=seed),
    }
    out = {}
    for name, probe in probes.items():
        probe.fit(x_fit, y_fit)
        out[name] = float(roc_auc_score(y_test, probe.predict_proba(x_test)[:, 1]))
    out["max"] = max(out.values())
    return out


def cluster_leakage(images: np.ndarray, hidden: np.ndarray, seed: int) -> dict:
    """Leakage (b): k-means (k = the number of hidden classes) on the images the cloud holds, with no labels at all;
    agreement of the clusters with the true hidden classes: adjusted Rand index (0: chance, 1: the same partition)
    and best-matching accuracy."""
    k = len(np.unique(hidden))
    clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(flat(images))
    return {"ari": float(adjusted_rand_score(hidden, clusters)), "accuracy": best_match_accuracy(hidden, clusters)}


def few_shot_sample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of `per_class` examples of each class, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def few_shot_leakage(
    cloud_images: np.ndarray,
    cloud_labels: np.ndarray,
    hidden: np.ndarray,
    known_images: np.ndarray,
    known_hidden: np.ndarray,
    seed: int,
) -> dict:
    """Leakage (c): the cloud also holds a few labelled GENUINE hidden-class images (`known_*`). It fits PCA features
    on the images it received, a logistic regression on the known images' features, and names every received image
    (`accuracy`, against the true hidden classes); and, since the received labels already split the images, it
    names each received label by the majority of its images' predictions (`label_naming_accuracy`: the share of
    images whose received label it then maps to the right hidden class)."""
    x = flat(cloud_images)
    components = min(FEW_SHOT_COMPONENTS, x.shape[0] - 1, x.shape[1])
    pca = PCA(n_components=components, random_state=seed).fit(x)
    model = LogisticRegression(max_iter=2000).fit(pca.transform(flat(known_images)), known_hidden)
    predicted = model.predict(pca.transform(x))
    naming = {}
    for label in np.unique(cloud_labels):
        votes = predicted[cloud_labels == label]
        values, counts = np.unique(votes, return_counts=True)
        naming[label] = values[np.argmax(counts)]
    named = np.array([naming[label] for label in cloud_labels])
    return {
        "accuracy": float(np.mean(predicted == hidden)),
        "label_naming_accuracy": float(np.mean(named == hidden)),
    }


def leakage(
    cloud_images: np.ndarray,
    cloud_labels: np.ndarray,
    hidden: np.ndarray,
    held_out_images: np.ndarray,
    public_fit: np.ndarray,
    public_test: np.ndarray,
    known_images: np.ndarray,
    known_hidden: np.ndarray,
    seed: int,
) -> dict:
    """The three leakage figures for one arm. `cloud_images` (with their public `cloud_labels`) are what the cloud
    receives, `hidden` their true hidden classes; `held_out_images` are more images of the same kind the probe is
    scored on, beside genuine public-class images it never fit (`public_test`)."""
    return {
        "probe_auc": probe_auc(cloud_images, public_fit, held_out_images, public_test, seed),
        "clustering": cluster_leakage(cloud_images, hidden, seed),
        "few_shot": few_shot_leakage(cloud_images, cloud_labels, hidden, known_images, known_hidden, seed),
    }


# -- tables ------------------------------------------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _num(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


ARM_HEADER = (
    "arm",
    "what the cloud receives",
    "pipeline acc % (real hidden test)",
    "direct acc %",
    "pipeline/direct",
    "probe AUC (a)",
    "cluster ARI (b)",
    "cluster acc % (b)",
    "few-shot acc % (c)",
    "label naming % (c)",
    "train s",
)


def arm_rows(arms: Sequence[dict], direct_accuracy: float) -> list[list[str]]:
    """One row per arm of a data set: its pipeline accuracy beside the direct classifier's, and its leakage."""
    rows = []
    for arm in arms:
        leak = arm.get("leakage") or {}
        pipeline = arm.get("pipeline_accuracy")
        rows.append(
            [
                arm["name"],
                arm["receives"],
                _pct(pipeline),
                _pct(direct_accuracy),
                _num(ratio(pipeline, direct_accuracy), 3),
                _num(leak.get("probe_auc", {}).get("max")),
                _num(leak.get("clustering", {}).get("ari")),
                _pct(leak.get("clustering", {}).get("accuracy")),
                _pct(leak.get("few_shot", {}).get("accuracy")),
                _pct(leak.get("few_shot", {}).get("label_naming_accuracy")),
                _num(arm.get("train_s"), 1),
            ]
        )
    return rows


# Each leakage figure's value when nothing leaks (chance), so that an arm's leakage can be read as the share of the
# undisguised images' leakage above chance that it leaves: 1 = hides nothing more than sending the real images,
# 0 = nothing left above chance.
CHANCE = {
    "probe AUC": (("probe_auc", "max"), 0.5),
    "cluster ARI": (("clustering", "ari"), 0.0),
    "few-shot acc": (("few_shot", "accuracy"), 0.5),
    "label naming": (("few_shot", "label_naming_accuracy"), 0.5),
}


def leakage_left(leak: dict, reference: dict) -> dict[str, float | None]:
    """(figure - chance) / (reference's figure - chance) for each leakage figure, None where the reference itself
    is at chance (nothing to compare with)."""
    out: dict[str, float | None] = {}
    for name, ((group, key), chance) in CHANCE.items():
        out[name] = ratio(leak[group][key] - chance, reference[group][key] - chance)
    return out


def leakage_left_rows(arms: Sequence[dict]) -> list[list[str]]:
    """One row per arm after the reference (the first arm, "no disguise")."""
    reference = arms[0]["leakage"]
    rows = []
    for arm in arms[1:]:
        if arm.get("leakage"):
            left = leakage_left(arm["leakage"], reference)
            rows.append([arm["name"], *(_num(left[name], 2) for name in CHANCE)])
    return rows
