"""The in-process arms: local only, centralised (non-private), and FedAvg's loop of rounds over a client step
(`fedavg_rounds`), which DP-FedAvg runs on (its aggregate is aggregate.fedavg, which the tests compare with
Flower's). FedAvg, FedProx and SecAgg+ themselves run on the Flower deployment (flower/).

Every arm trains model.py's classifier with the same budget: `rounds * local.epochs` passes over a silo's data
(local only and centralised train that many epochs in one go).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np

from benchmarks.cross_silo import model
from benchmarks.cross_silo.aggregate import fedavg
from benchmarks.cross_silo.silos import SiloView

ClientStep = Callable[[model.Params, SiloView, int, int], model.Params]  # (global, silo, round, seed) -> local


def _initial(spec: model.ModelSpec, seed: int) -> model.Params:
    return model.init(spec, jax.random.key(seed))


def local_only(
    spec: model.ModelSpec, silos: list[SiloView], local: model.LocalTraining, rounds: int, seed: int
) -> list[model.Params]:
    """Each silo alone: rounds * local.epochs epochs on its own rows, from the same initial model."""
    budget = model.LocalTraining(**{**local.__dict__, "epochs": rounds * local.epochs, "prox_mu": 0.0})
    start = _initial(spec, seed)
    return [model.train(spec, start, s.x, s.y, budget, seed + 1 + s.index) for s in silos]


def centralised(
    spec: model.ModelSpec, silos: list[SiloView], local: model.LocalTraining, rounds: int, seed: int
) -> model.Params:
    """The ceiling: every silo's training rows pooled (no privacy), rounds * local.epochs epochs."""
    budget = model.LocalTraining(**{**local.__dict__, "epochs": rounds * local.epochs, "prox_mu": 0.0})
    x = np.concatenate([s.x for s in silos])
    y = np.concatenate([s.y for s in silos])
    return model.train(spec, _initial(spec, seed), x, y, budget, seed + 1)


def fedavg_rounds(
    spec: model.ModelSpec,
    silos: list[SiloView],
    client_step: ClientStep,
    rounds: int,
    seed: int,
    on_round: Callable[[int, model.Params, float], None] | None = None,
) -> model.Params:
    """FedAvg (McMahan et al. 2017) with every silo taking part in every round: each client starts from the global
    model, runs `client_step`, and the server takes the example-weighted mean (aggregate.fedavg)."""
    params = _initial(spec, seed)
    for r in range(rounds):
        started = time.perf_counter()
        results = [
            (model.to_arrays(spec, client_step(params, s, r, seed + 1000 * (r + 1) + s.index)), len(s)) for s in silos
        ]
        params = model.from_arrays(spec, fedavg(results))
        if on_round:
            on_round(r, params, time.perf_counter() - started)
    return params
