"""Evaluation of a generator from its samples: utility (train on synthetic, test on real), fidelity, and a privacy
audit; `evaluate` runs all three on model-space data (libsgde.io.encoding) and `report.write_report` writes the folder.

Roles of the real data: `holdout` (records the generator never saw) is the test set of TSTR and TRTR, the reference
of fidelity and the non-members of the audit; `train` (the generator's training records, optional) is TRTR's
training set, the members of the audit, and what the nearest-neighbour view of images searches.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from libsgde.evaluate import audit as _audit
from libsgde.evaluate import utility as _utility
from libsgde.evaluate.audit import AuditResult, audit_records
from libsgde.evaluate.classifiers import CLASSIFIERS, Classifier, make_classifier
from libsgde.evaluate.fidelity import ImageFidelity, TabularFidelity, image_fidelity, tabular_fidelity
from libsgde.evaluate.utility import UtilityResult
from libsgde.io.encoding import EncodedData, block_choices
from libsgde.io.sampling import class_names
from libsgde.ml.space import ModelSpace
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

# The functions audit.audit and utility.utility are not re-exported here: the names are their modules'.
__all__ = [
    "CLASSIFIERS",
    "AuditResult",
    "Classifier",
    "Evaluation",
    "ImageFidelity",
    "TabularFidelity",
    "UtilityResult",
    "evaluate",
    "image_fidelity",
    "json_safe",
    "make_classifier",
    "tabular_fidelity",
]


@dataclass
class Evaluation:
    kind: str  # "tabular" or "image"
    space: ModelSpace
    class_names: list[str]
    sizes: dict[str, int]  # synthetic, holdout, train
    utility: list[UtilityResult] | None  # None for an unconditional model (no labels to predict)
    fidelity: TabularFidelity | ImageFidelity
    audit: AuditResult | None  # None without training records
    seed: int
    seconds: dict[str, float] = field(default_factory=dict)
    categories: dict[str, list[str]] = field(default_factory=dict)  # tabular: column -> category names

    def metrics(self) -> dict[str, float]:
        """A flat name -> number summary, as stored on the model in the registry (finite values only)."""
        m: dict[str, float] = {"evaluate.samples": self.sizes["synthetic"], "evaluate.holdout": self.sizes["holdout"]}
        if self.sizes.get("train"):
            m["evaluate.train"] = self.sizes["train"]
        for r in self.utility or ():
            m[f"tstr.{r.classifier}"] = r.tstr_accuracy
            if r.trtr_accuracy is not None:
                m[f"trtr.{r.classifier}"] = r.trtr_accuracy
        f = self.fidelity
        if isinstance(f, TabularFidelity):
            m["fidelity.marginal_mean"], m["fidelity.marginal_max"] = f.marginal_mean, f.marginal_max
            if f.correlation_mean_abs_diff is not None and f.correlation_max_abs_diff is not None:
                m["fidelity.correlation_mean_abs_diff"] = f.correlation_mean_abs_diff
                m["fidelity.correlation_max_abs_diff"] = f.correlation_max_abs_diff
        else:
            m["fidelity.mean_image_rms"] = f.mean_image_rms_mean
            if f.neighbour_rms:
                m["fidelity.nearest_neighbour_rms_median"] = float(np.median(f.neighbour_rms))
        if self.audit is not None:
            a = self.audit
            m.update(
                {
                    "audit.mia_auc": a.mia_auc,
                    "audit.mia_auc_lower": a.mia_auc_lower,
                    "audit.mia_tpr_at_fpr_1pct": a.mia_tpr_at_fpr_1pct,
                    "audit.mia_tpr_at_fpr_0.1pct": a.mia_tpr_at_fpr_01pct,
                    "audit.mia_calibrated_auc": a.mia_calibrated_auc,
                    "audit.mia_calibrated_tpr_at_fpr_1pct": a.mia_calibrated_tpr_at_fpr_1pct,
                    "audit.dcr_share_closer_to_train": a.dcr_share_closer_to_train,
                    "audit.dcr_p_value": a.dcr_p_value,
                    "audit.dcr_train_median": a.dcr_train_median,
                    "audit.dcr_holdout_median": a.dcr_holdout_median,
                    "audit.exact_copies_train": a.exact_copies_train,
                    "audit.exact_copies_holdout": a.exact_copies_holdout,
                    "audit.flagged": float(a.flagged),
                }
            )
        return {k: float(v) for k, v in m.items() if math.isfinite(float(v))}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (NaN as null; the plots' arrays left out)."""
        f = self.fidelity
        if isinstance(f, TabularFidelity):
            fidelity = {
                "columns": [asdict(c) for c in f.columns],
                "marginal_mean": f.marginal_mean,
                "marginal_max": f.marginal_max,
                "feature_names": f.feature_names,
                "correlation_mean_abs_diff": f.correlation_mean_abs_diff,
                "correlation_max_abs_diff": f.correlation_max_abs_diff,
            }
        else:
            fidelity = {
                "classes": [self.class_name(c) for c in f.classes],
                "mean_image_rms": f.mean_image_rms,
                "mean_image_rms_mean": f.mean_image_rms_mean,
                "nearest_neighbours": [
                    {"synthetic": s, "real": r, "rms": d}
                    for s, r, d in zip(f.neighbour_synthetic, f.neighbour_real, f.neighbour_rms)
                ],
            }
        audited = None
        if self.audit is not None:
            audited = {k: v for k, v in asdict(self.audit).items() if not isinstance(v, np.ndarray)}
        return json_safe(
            {
                "kind": self.kind,
                "class_names": self.class_names,
                "sizes": self.sizes,
                "seed": self.seed,
                "utility": None if self.utility is None else [asdict(r) for r in self.utility],
                "fidelity": fidelity,
                "audit": audited,
                "metrics": self.metrics(),
                "seconds": self.seconds,
            }
        )

    def class_name(self, c: int) -> str:
        """Class index -> name; -1 (all images as one class) -> \"all\"."""
        return self.class_names[c] if 0 <= c < len(self.class_names) else "all"


def json_safe(value):
    """`value` with NaN and infinities as None and numpy scalars as Python numbers, for strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def category_names(schema: pb.DataSchema) -> dict[str, list[str]]:
    """Categorical block name -> its choices (a column's categories, a nullable one's "(missing)", a numeric
    column's mode block's "continuous", point masses and "(missing)"), and "label" -> class names."""
    if schema.WhichOneof("kind") != "tabular":
        return {}
    names = block_choices(schema)
    names["label"] = class_names(schema)
    return names


def image_shape(space: ModelSpace) -> tuple[int, int, int]:
    """(height, width, channels) of an image model space."""
    height, width, channels = space.shape
    return height, width, channels


def evaluate(
    schema: pb.DataSchema,
    synthetic: EncodedData,
    holdout: EncodedData,
    train: EncodedData | None = None,
    *,
    classifiers: list[str] | dict[str, dict] | None = None,
    seed: int = 0,
) -> Evaluation:
    """Utility, fidelity and (with `train`) the privacy audit of `synthetic` against real data (see the module
    docstring for the roles). All three are model-space data of the schema's space (load files with
    libsgde.io.datasets.load_dataset; decode samples with the schema's encoder)."""
    space = holdout.space
    for name, data in (("synthetic", synthetic), ("train", train)):
        if data is not None and data.space != space:
            raise ValueError(f"the {name} data is not in the holdout's model space: evaluate data of one schema")
    kind, k = space.kind, space.num_classes
    names = class_names(schema)
    labelled = k > 0 and all(d is None or d.labels is not None for d in (synthetic, holdout, train))
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    results = None
    if labelled:
        assert synthetic.labels is not None and holdout.labels is not None  # what `labelled` says
        results = _utility.utility(
            synthetic.x,
            synthetic.labels,
            holdout.x,
            holdout.labels,
            k,
            x_real=None if train is None else train.x,
            y_real=None if train is None else train.labels,
            classifiers=classifiers,
            image_shape=image_shape(space) if kind == "image" else None,
            seed=seed,
        )
    seconds["utility"] = round(time.perf_counter() - started, 2)

    started = time.perf_counter()
    syn_labels, hold_labels = (synthetic.labels, holdout.labels) if labelled else (None, None)
    fidelity: TabularFidelity | ImageFidelity
    if kind == "image":
        fidelity = image_fidelity(
            holdout.x,
            hold_labels,
            synthetic.x,
            syn_labels,
            neighbours_real=None if train is None else train.x,
            seed=seed,
        )
    else:
        fidelity = tabular_fidelity(holdout.x, hold_labels, synthetic.x, syn_labels, space, category_names(schema))
    seconds["fidelity"] = round(time.perf_counter() - started, 2)

    started = time.perf_counter()
    audited = None
    if train is not None:
        kk = k if labelled else 0
        audited = _audit.audit(
            audit_records(train.x, train.labels if labelled else None, kk),
            audit_records(holdout.x, hold_labels, kk),
            audit_records(synthetic.x, syn_labels, kk),
            seed=seed,
        )
    seconds["audit"] = round(time.perf_counter() - started, 2)
    sizes = {"synthetic": len(synthetic), "holdout": len(holdout), "train": 0 if train is None else len(train)}
    return Evaluation(kind, space, names, sizes, results, fidelity, audited, seed, seconds, category_names(schema))
