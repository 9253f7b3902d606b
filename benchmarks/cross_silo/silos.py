"""One silo's view of a split data set, and the scores every arm reports.

A silo holds only its own rows: `silo_views` cuts the training part of the data set by the split's indices, so an
arm that is handed a `SiloView` cannot reach another silo's real data. Every arm is scored the same way: the model
(or each silo's own model) on the global test set and on each silo's local held-out part; mean and worst silo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.cross_silo import model
from benchmarks.cross_silo.data import Data
from benchmarks.cross_silo.splits import Split


@dataclass(frozen=True)
class SiloView:
    index: int
    x: np.ndarray  # its training rows, classifier inputs
    y: np.ndarray
    x_holdout: np.ndarray  # its local held-out rows
    y_holdout: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def silo_views(data: Data, split: Split) -> list[SiloView]:
    return [
        SiloView(k, data.x[tr], data.y[tr], data.x[ho], data.y[ho])
        for k, (tr, ho) in enumerate(zip(split.train, split.holdout, strict=True))
    ]


def _summary(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "worst": float(np.min(values)), "per_silo": [float(v) for v in values]}


def score(spec: model.ModelSpec, params: list[model.Params], data: Data, silos: list[SiloView]) -> dict:
    """Accuracy of silo k's model params[k] (the same global model for every silo in federated arms) on the global
    test set and on silo k's held-out rows: {"test": {mean, worst, per_silo}, "holdout": {...}}."""
    if len(params) != len(silos):
        raise ValueError(f"{len(params)} models for {len(silos)} silos")
    cache: dict[int, float] = {}  # a shared global model is scored on the test set once
    test = [cache.setdefault(id(p), model.accuracy(spec, p, data.x_test, data.y_test)) for p in params]
    holdout = [
        model.accuracy(spec, p, s.x_holdout, s.y_holdout) if len(s.y_holdout) else float("nan")
        for p, s in zip(params, silos)
    ]
    return {"test": _summary(test), "holdout": _summary(holdout)}
