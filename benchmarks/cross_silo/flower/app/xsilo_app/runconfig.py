"""How both sides read the run's settings (numpy only at import, so the tests import it without Flower): the model
and the local training from the run config's JSON, and the seed of each local training."""

from __future__ import annotations

import json

import numpy as np


def round_seed(seed: int, silo: int, server_round: int) -> int:
    """The seed model.train gets for one silo in one round: distinct per (seed, silo, round), reproducible."""
    return int(np.random.SeedSequence([seed, silo, server_round]).generate_state(1)[0])


def model_spec(model, run_config) -> object:
    """model.ModelSpec from the run config's `spec` (JSON lists back to tuples)."""
    raw = json.loads(str(run_config["spec"]))
    return model.ModelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def local_training(model, run_config, prox_mu: float) -> object:
    """model.LocalTraining from the run config's `local`, with FedProx's mu as the server sent it (0: none)."""
    return model.LocalTraining(**{**json.loads(str(run_config["local"])), "prox_mu": float(prox_mu)})
