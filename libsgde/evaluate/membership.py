"""What joining a federation buys a silo: on the silo's own held-out data, the accuracy of one classifier trained on
(a) its local data only, (b) the other members' synthetic data only, and (c) both together, overall and per class.
The same classifier family, options and seed for all three; the held-out data is used for scoring only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from libsgde.evaluate.classifiers import CLASSIFIERS
from libsgde.evaluate.utility import accuracy_per_class, fit_predict
from libsgde.io.encoding import EncodedData

__all__ = ["ARMS", "MembershipResult", "membership_value", "write_membership_report"]

ARMS = ("local", "others", "both")  # (a), (b), (c)


@dataclass
class MembershipResult:
    classifier: str
    accuracy: dict[str, float]  # arm -> accuracy on the held-out data
    per_class: dict[str, list[float]]  # arm -> accuracy on each class's held-out rows (nan: none there)


def membership_value(
    local: EncodedData,
    others: EncodedData,
    holdout: EncodedData,
    *,
    classifiers: Sequence[str] | None = None,
    image_shape: tuple[int, int, int] | None = None,
    seed: int = 0,
) -> list[MembershipResult]:
    """(a) vs (b) vs (c) for each classifier (default: every one for the data's kind)."""
    k = holdout.space.num_classes
    if k < 1 or any(d.labels is None for d in (local, others, holdout)):
        raise ValueError("what membership buys is measured on a labelled task: the schema needs classes")
    if any(d.space != holdout.space for d in (local, others)):
        raise ValueError("local, synthetic and held-out data must share one schema")
    assert local.labels is not None and others.labels is not None and holdout.labels is not None
    fits = {
        "local": (local.x, local.labels),
        "others": (others.x, others.labels),
        "both": (np.concatenate([local.x, others.x]), np.concatenate([local.labels, others.labels])),
    }
    chosen = classifiers or CLASSIFIERS["image" if image_shape else "tabular"]
    results = []
    for name in chosen:
        accuracy, per_class = {}, {}
        for arm, (x, y) in fits.items():
            predicted = fit_predict(name, x, y, holdout.x, k, image_shape=image_shape, seed=seed)
            accuracy[arm] = float(np.mean(predicted == holdout.labels))
            per_class[arm] = accuracy_per_class(holdout.labels, predicted, k)
        results.append(MembershipResult(name, accuracy, per_class))
    return results


def _cell(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.3f}"


def write_membership_report(
    folder: Path, results: list[MembershipResult], class_names: list[str], context: dict
) -> list[str]:
    """report.md, report.json and membership.png in `folder`; returns the file names."""
    from libsgde.evaluate.report import figure

    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# What {context.get('federation', 'the federation')} buys {context.get('member', 'this silo')}",
        "",
        "Accuracy on this silo's own held-out data of a classifier trained on (a) its local data only, (b) the "
        "other members' synthetic data only, (c) both.",
        "",
        "| classifier | (a) local | (b) others' synthetic | (c) both |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r.classifier} | " + " | ".join(_cell(r.accuracy[a]) for a in ARMS) + " |" for r in results]
    for r in results:
        lines += ["", f"Per class ({r.classifier}):", "", "| class | (a) | (b) | (c) |", "|---|---|---|---|"]
        for c, name in enumerate(class_names):
            lines.append(f"| {name} | " + " | ".join(_cell(r.per_class[a][c]) for a in ARMS) + " |")
    lines += ["", "Context: " + json.dumps(context, sort_keys=True)]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    (folder / "report.json").write_text(
        json.dumps({"context": context, "results": [asdict(r) for r in results]}, indent=2, allow_nan=True)
    )
    fig = figure(1.6 + 1.2 * len(results), 3.0)
    ax = fig.subplots()
    width = 0.8 / len(ARMS)
    for i, arm in enumerate(ARMS):
        ax.bar(
            np.arange(len(results)) + i * width, [r.accuracy[arm] for r in results], width, label=f"({'abc'[i]}) {arm}"
        )
    ax.set_xticks(np.arange(len(results)) + width, [r.classifier for r in results])
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy")
    ax.legend(fontsize=7)
    fig.savefig(folder / "membership.png", dpi=120)
    return ["report.md", "report.json", "membership.png"]
