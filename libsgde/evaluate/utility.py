"""Utility: train on synthetic, test on real (TSTR), beside train on real, test on real (TRTR).

The same classifier, with the same seed and options, is fitted once on the synthetic data and once on the real
training data; both are scored on the same real test set, overall and per class (recall of each class). TSTR close to
TRTR means a model trained on the generator's samples is as useful as one trained on the data it stands for.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from libsgde.evaluate.classifiers import CLASSIFIERS, make_classifier

__all__ = ["UtilityResult", "accuracy_per_class", "fit_predict", "utility"]


@dataclass
class UtilityResult:
    classifier: str
    tstr_accuracy: float
    trtr_accuracy: float | None  # None without real training data
    tstr_per_class: list[float]  # accuracy on the test rows of each class; nan where the test set has none
    trtr_per_class: list[float] | None
    seconds: float  # fitting and scoring both


def accuracy_per_class(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> list[float]:
    """Share of the test rows of class c predicted as c, for c in [0, num_classes); nan for a class with no rows."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return [
        float(np.mean(y_pred[y_true == c] == c)) if np.any(y_true == c) else float("nan") for c in range(num_classes)
    ]


def fit_predict(
    name: str,
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_test: np.ndarray,
    num_classes: int,
    *,
    image_shape: tuple[int, int, int] | None = None,
    seed: int = 0,
    **options,
) -> np.ndarray:
    """Predictions on x_test of classifier `name` fitted on (x_fit, y_fit)."""
    model = make_classifier(name, image_shape=image_shape, seed=seed, **options)
    return model.fit(x_fit, y_fit, num_classes).predict(x_test)


def utility(
    x_syn: np.ndarray,
    y_syn: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    *,
    x_real: np.ndarray | None = None,
    y_real: np.ndarray | None = None,
    classifiers: Sequence[str] | Mapping[str, dict] | None = None,
    image_shape: tuple[int, int, int] | None = None,
    seed: int = 0,
) -> list[UtilityResult]:
    """TSTR (and TRTR when x_real, y_real are given) for each classifier.

    x_*: float32 [N, D] (tabular, model space) or [N, H, W, C] in [0, 1] with `image_shape` (H, W, C); y_*: int [N].
    `classifiers`: names (default: every one for the data's kind, CLASSIFIERS) or a mapping name -> options for
    make_classifier."""
    if (x_real is None) != (y_real is None):
        raise ValueError("give both x_real and y_real, or neither")
    if num_classes < 1:
        raise ValueError("utility needs labelled data (num_classes >= 1)")
    if len(x_test) == 0:
        raise ValueError("an empty test set")
    kind = "image" if image_shape is not None else "tabular"
    if classifiers is None:
        classifiers = CLASSIFIERS[kind]
    chosen = dict(classifiers) if isinstance(classifiers, Mapping) else {name: {} for name in classifiers}
    y_test = np.asarray(y_test)
    results = []
    for name, options in chosen.items():
        started = time.perf_counter()

        def score(x_fit, y_fit, name=name, options=options):  # bound now, though called in this iteration only
            predicted = fit_predict(
                name,
                x_fit,
                y_fit,
                x_test,
                num_classes,
                image_shape=image_shape,
                seed=seed,
                **options,
            )
            return float(np.mean(predicted == y_test)), accuracy_per_class(y_test, predicted, num_classes)

        tstr, tstr_per_class = score(x_syn, y_syn)
        trtr, trtr_per_class = score(x_real, y_real) if x_real is not None else (None, None)
        results.append(
            UtilityResult(name, tstr, trtr, tstr_per_class, trtr_per_class, round(time.perf_counter() - started, 3))
        )
    return results
