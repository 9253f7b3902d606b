"""DP-FedAvg at record level: every client runs DP-SGD on its own rows, so each silo's records are protected at
(epsilon, delta) against everyone who sees its updates (the server, the other silos, an eavesdropper), whatever
the server does. The server's average is post-processing.

Client k with n_k rows samples each step's batch by Poisson sampling at q_k = B / n_k (B the expected batch),
takes round(epochs * n_k / B) steps a round, so T_k = rounds * that over the run; its noise multiplier is
calibrated BEFORE training by the project's accountant (libsgde.ml.privacy.accounting, PLD) so that T_k steps
of the subsampled Gaussian mechanism give at most epsilon at delta_k = min(1e-5, 0.1 / n_k), the product's own
default (the SGDE arm's trainer picks the same). The clipped sum and the noise are libsgde's DP-SGD pieces.

Settings are fixed in advance (never chosen by a test score), TensorFlow Privacy's MNIST tutorial's: plain SGD
(no momentum) at lr 0.25 on the noisy mean gradient, clip 1, and the non-private arms' batch of 64 in expectation.
A first setting (expected batch 256, lr 0.05, momentum 0.9) left the model at chance on the silos' own held-out rows
even at epsilon 10: a silo of a few hundred rows took one to seven steps a round, and the momentum restarts every
round. The tutorial's setting replaced it as it is, not tuned.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.cross_silo import model
from benchmarks.cross_silo.arms import ClientStep
from benchmarks.cross_silo.silos import SiloView
from libsgde.ml.privacy import accounting, dpsgd


@dataclass(frozen=True)
class DpTraining:
    epsilon: float
    epochs: int = 1  # a round's local passes, in expectation
    expected_batch: int = 64
    clip_norm: float = 1.0
    learning_rate: float = 0.25
    momentum: float = 0.0


@dataclass(frozen=True)
class ClientPrivacy:
    rows: int
    sampling_rate: float
    steps_per_round: int
    total_steps: int
    delta: float
    noise_multiplier: float
    epsilon: float  # the accountant's figure for the whole run at the calibrated noise

    def to_json(self) -> dict:
        return dict(self.__dict__)


def default_delta(rows: int) -> float:
    return min(1e-5, 0.1 / rows)


def client_privacy(rows: int, cfg: DpTraining, rounds: int) -> ClientPrivacy:
    """Calibrate one client's noise to cfg.epsilon over the whole run (rounds * its steps a round)."""
    q = min(1.0, cfg.expected_batch / rows)
    steps = max(1, round(cfg.epochs * rows / cfg.expected_batch))
    delta = default_delta(rows)
    sigma = accounting.calibrate_noise_multiplier(cfg.epsilon, delta, q, rounds * steps)
    spent = accounting.pld_epsilon(sigma, q, rounds * steps, delta)
    return ClientPrivacy(rows, q, steps, rounds * steps, delta, sigma, spent)


_STEPS: dict = {}


def _local_steps(spec: model.ModelSpec, cfg: DpTraining):
    """The jitted scan over one round's DP-SGD steps of a client."""
    optimizer = optax.sgd(cfg.learning_rate, momentum=cfg.momentum or None)

    def loss(params, example):
        x, y = example
        return model.example_losses(spec, params, x[None], y[None])[0]

    @jax.jit
    def run(params, xs, ys, masks, keys, noise_multiplier, expected_batch):
        def step(carry, batch):
            params, opt_state = carry
            xb, yb, mb, key = batch
            summed, _, _ = dpsgd.clipped_sum(loss, params, (xb, yb), mb, cfg.clip_norm)
            grad = dpsgd.add_noise(key, summed, cfg.clip_norm, noise_multiplier, expected_batch)
            updates, opt_state = optimizer.update(grad, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), (xs, ys, masks, keys))
        return params

    return run


def dp_client(spec: model.ModelSpec, cfg: DpTraining, privacy: list[ClientPrivacy]) -> ClientStep:
    """DP-FedAvg's client: privacy[k].steps_per_round DP-SGD steps on silo k's rows from the global model."""
    if (spec, cfg) not in _STEPS:
        _STEPS[(spec, cfg)] = _local_steps(spec, cfg)
    run = _STEPS[(spec, cfg)]

    def step(params: model.Params, silo: SiloView, _round: int, seed: int) -> model.Params:
        p = privacy[silo.index]
        if p.rows != len(silo):
            raise ValueError(f"silo {silo.index} has {len(silo)} rows, its privacy was calibrated for {p.rows}")
        rng = np.random.default_rng(seed)
        padded = dpsgd.padded_batch_size(p.rows, p.sampling_rate)
        batches = [dpsgd.poisson_batch(rng, p.rows, p.sampling_rate, padded) for _ in range(p.steps_per_round)]
        indices = np.stack([b[0] for b in batches])
        masks = np.stack([b[1] for b in batches])
        keys = jax.random.split(jax.random.key(seed), p.steps_per_round)
        return run(
            params,
            jnp.asarray(silo.x[indices]),
            jnp.asarray(silo.y[indices]),
            jnp.asarray(masks),
            keys,
            p.noise_multiplier,
            p.sampling_rate * p.rows,
        )

    return step
