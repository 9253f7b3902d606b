"""How one data set is divided across K silos: IID, Dirichlet(alpha) label skew, pathological (c classes a silo).

Pure functions of a label vector and a seed. Each silo keeps a local held-out part of its share (for its own
evaluation); the global test set is the data set's own test split and is never divided. A split is recorded as
index lists (`Split.to_json`), so a run can be reproduced and audited.

- IID: a random permutation cut into K near-equal parts.
- Dirichlet(alpha): for each class, proportions p ~ Dir(alpha * 1_K) and that class's examples are dealt out in
  those proportions (the NIID-Bench recipe, Li et al. 2022); redrawn until every silo holds at least
  `min_size` examples, as NIID-Bench does.
- Pathological: the classes are dealt round-robin so that each silo holds `classes_per_silo` of them and every
  class is held by some silo; a class held by several silos is divided evenly between them (NIID-Bench's "#C=k").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("iid", "dirichlet", "pathological")


@dataclass(frozen=True)
class SplitSpec:
    kind: str
    silos: int = 10
    alpha: float = 0.5  # dirichlet only
    classes_per_silo: int = 1  # pathological only
    holdout: float = 0.2  # each silo's local held-out share
    seed: int = 0
    min_size: int = 10  # dirichlet: redraw until every silo has at least this many examples

    @property
    def name(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet-{self.alpha:g}"
        if self.kind == "pathological":
            return f"pathological-{self.classes_per_silo}"
        return self.kind


@dataclass(frozen=True)
class Split:
    spec: SplitSpec
    train: tuple[np.ndarray, ...]  # per silo: indices into the data set's training part
    holdout: tuple[np.ndarray, ...]  # per silo: its local held-out indices

    def to_json(self) -> dict:
        return {
            "spec": self.spec.__dict__,
            "train": [ix.tolist() for ix in self.train],
            "holdout": [ix.tolist() for ix in self.holdout],
        }

    def label_counts(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """(silos, classes) counts of the silos' training parts."""
        return np.stack([np.bincount(labels[ix], minlength=num_classes) for ix in self.train])


def _iid(n: int, silos: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(n), silos)


def _dirichlet(labels: np.ndarray, spec: SplitSpec, rng: np.random.Generator) -> list[np.ndarray]:
    classes = np.unique(labels)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(spec.silos)]
        for c in classes:
            members = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(spec.silos, spec.alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for silo, chunk in enumerate(np.split(members, cuts)):
                parts[silo].extend(chunk.tolist())
        if min(len(p) for p in parts) >= spec.min_size:
            return [rng.permutation(np.asarray(p, np.int64)) for p in parts]
    raise ValueError(f"no Dirichlet({spec.alpha}) split gives every silo {spec.min_size} examples in 1000 draws")


def _pathological(labels: np.ndarray, spec: SplitSpec, rng: np.random.Generator) -> list[np.ndarray]:
    classes = rng.permutation(np.unique(labels))
    if spec.silos * spec.classes_per_silo < len(classes):
        raise ValueError(
            f"{spec.silos} silos with {spec.classes_per_silo} classes each cannot hold all {len(classes)} classes"
        )
    held = [
        [classes[(s * spec.classes_per_silo + j) % len(classes)] for j in range(spec.classes_per_silo)]
        for s in range(spec.silos)
    ]
    holders = {c: [s for s in range(spec.silos) if c in held[s]] for c in classes}
    parts: list[list[int]] = [[] for _ in range(spec.silos)]
    for c, silos in holders.items():
        for silo, chunk in zip(silos, np.array_split(rng.permutation(np.flatnonzero(labels == c)), len(silos))):
            parts[silo].extend(chunk.tolist())
    return [rng.permutation(np.asarray(p, np.int64)) for p in parts]


def make_split(labels: np.ndarray, spec: SplitSpec) -> Split:
    """Divide the examples with these labels across spec.silos silos; every example lands in exactly one silo's
    training or held-out part. Deterministic in spec.seed."""
    labels = np.asarray(labels)
    if spec.kind not in KINDS:
        raise ValueError(f"unknown split kind {spec.kind!r}; one of {KINDS}")
    if not 0 <= spec.holdout < 1:
        raise ValueError("holdout must be in [0, 1)")
    rng = np.random.default_rng(spec.seed)
    if spec.kind == "iid":
        parts = _iid(len(labels), spec.silos, rng)
    elif spec.kind == "dirichlet":
        parts = _dirichlet(labels, spec, rng)
    else:
        parts = _pathological(labels, spec, rng)
    train, holdout = [], []
    for part in parts:
        cut = int(round(len(part) * (1 - spec.holdout)))
        train.append(np.sort(part[:cut]))
        holdout.append(np.sort(part[cut:]))
    return Split(spec, tuple(train), tuple(holdout))


def split_from_json(record: dict) -> Split:
    return Split(
        SplitSpec(**record["spec"]),
        tuple(np.asarray(ix, np.int64) for ix in record["train"]),
        tuple(np.asarray(ix, np.int64) for ix in record["holdout"]),
    )
