"""What one training run carries (data in model space, the filled-in spec, the keys, progress and checkpoint
callbacks) and the jitted steps the mechanisms' loops run. Pure: no files; `libsgde.io.training` does the I/O.

Randomness. The parameters' initialisation follows `spec.seed` (public, recorded in the manifest). The mechanism's
randomness (Poisson batches, DP noise, the VAE's sampling noise) comes from a SECRET key: a public seed would let
anyone regenerate the noise and subtract it, voiding the guarantee.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from libsgde.domain.privacy import PrivacyReport
from libsgde.domain.resources import Progress
from libsgde.domain.specs import TrainSpec
from libsgde.ml.privacy import dpsgd, ghost, merf
from libsgde.ml.pytree import Params, apply_array
from libsgde.ml.space import ModelSpace

if TYPE_CHECKING:
    import flax.linen as nn

    from libsgde.ml.architectures.base import Architecture

PROGRESS_EVERY_S = 1.0
EPSILON_EVERY_S = 5.0  # the PLD accountant is not free; the running epsilon is refreshed this often
CHECKPOINT_EVERY_S = 30.0


class TrainingCancelled(Exception):
    """should_stop() asked to stop; a checkpoint was saved first, so the job can resume."""


@dataclass
class Checkpoint:
    """A saved state of a run: its step, its secret, the state's leaves in tree order, and mechanism extras (such
    as DP-MERF's released embedding, which must never be released twice)."""

    step: int
    secret: bytes
    leaves: list[np.ndarray]
    extra: dict[str, np.ndarray]

    def restore(self, template: Any) -> Any:
        """The saved state in the structure of `template` (a freshly initialised state of the same run)."""
        leaves, tree = jax.tree.flatten(template)
        if len(leaves) != len(self.leaves) or any(np.shape(a) != np.shape(b) for a, b in zip(leaves, self.leaves)):
            raise ValueError("the checkpoint does not match this model; delete it to start over")
        return jax.tree.unflatten(
            tree, [jnp.asarray(v, dtype=np.asarray(t).dtype) for v, t in zip(self.leaves, leaves)]
        )


@dataclass
class TrainOutcome:
    """What a mechanism's loop returns: the trained parameters, the class prior [max(K, 1)], the privacy report,
    what the manifest records of the training, and the config if training filled in part of it."""

    params: Params
    class_prior: np.ndarray
    privacy: PrivacyReport
    training: dict[str, Any]
    # The config the manifest records when training completes it (a marginal model's chosen cliques); None: the
    # spec's own.
    config: dict[str, Any] | None = None


SaveCheckpoint = Callable[[int, bytes, Any, dict[str, np.ndarray]], None]  # (step, secret, state, extra)
State = tuple[Params, optax.OptState]  # what a jitted step carries: (parameters, optimizer state)


class Run:
    """One training run: inputs, callbacks, the resumed checkpoint (if any) and the keys derived from the secret."""

    def __init__(
        self,
        x: np.ndarray,
        labels: np.ndarray | None,
        space: ModelSpace,
        spec: TrainSpec,
        arch: Architecture,
        secret: bytes,
        *,
        on_progress: Callable[[Progress], None],
        should_stop: Callable[[], bool],
        save_checkpoint: SaveCheckpoint | None = None,
        resumed: Checkpoint | None = None,
        checkpoint_every_s: float = CHECKPOINT_EVERY_S,
    ):
        self.x, self.space, self.spec, self.arch = x, space, spec, arch
        self.labels = labels if labels is not None else np.zeros(len(x), np.int32)
        self.on_progress, self.should_stop, self.save_checkpoint = on_progress, should_stop, save_checkpoint
        self.checkpoint_every_s = checkpoint_every_s
        self.resumed = resumed
        self.secret = resumed.secret if resumed else secret
        digest = hashlib.sha256(self.secret + spec.seed.to_bytes(8, "little")).digest()
        self.mechanism_key = jax.random.key(int.from_bytes(digest[:8], "little") >> 1)
        self.batch_seed = int.from_bytes(digest[8:16], "little")
        self.init_key = jax.random.key(spec.seed)
        self.started, self.last_report, self.last_checkpoint = time.monotonic(), 0.0, time.monotonic()
        self.start_step = resumed.step if resumed else 0

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def restore(self, state: Any) -> Any:
        return self.resumed.restore(state) if self.resumed else state

    def report(
        self,
        step: int,
        total: int,
        epoch: int,
        loss: float,
        epsilon: float,
        examples: float,
        message: str = "",
        force: bool = False,
    ) -> None:
        now = time.monotonic()
        first_step = step == self.start_step + 1  # always shown: the first loss, and a first rate
        if not (force or first_step) and now - self.last_report < PROGRESS_EVERY_S:
            return
        self.last_report = now
        done = max(step - self.start_step, 0)
        elapsed = max(now - self.started, 1e-9)
        eta = (total - step) * elapsed / done if done else 0.0
        self.on_progress(Progress(step, total, epoch, float(loss), epsilon, examples * done / elapsed, eta, message))

    def maybe_checkpoint(self, step: int, state: Any, extra: dict[str, np.ndarray] | None = None) -> None:
        """Checkpoint every checkpoint_every_s; on a stop request, checkpoint and raise TrainingCancelled."""
        stop = self.should_stop()
        if self.save_checkpoint and (stop or time.monotonic() - self.last_checkpoint >= self.checkpoint_every_s):
            self.save_checkpoint(step, self.secret, state, extra or {})
            self.last_checkpoint = time.monotonic()
        if stop:
            raise TrainingCancelled(f"stopped at step {step}")


def dpsgd_step(
    module: nn.Module,
    optimizer: optax.GradientTransformation,
    x_all: jax.Array,
    y_all: jax.Array,
    padded: int,
    clip_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    use_ghost: bool,
    mechanism_key: jax.Array,
) -> Callable[[State, np.ndarray, np.ndarray, int], tuple[State, jax.Array]]:
    """The jitted DP-SGD step: (state, indices, mask, step) -> (state, mean loss of the real examples).

    Gathers the padded Poisson batch from the data on the device, clips per example (ghost clipping or vmap),
    adds N(0, (sigma C)^2) noise, divides by the expected batch size and applies the optimizer. All its randomness
    derives from `mechanism_key` and the step number."""

    def example_loss(p: Params, example: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        x, y, key = example
        return apply_array(module, p, x[None], y[None], key[None])[0]

    @jax.jit
    def step_fn(state: State, indices: jax.Array, mask: jax.Array, step: jax.Array) -> tuple[State, jax.Array]:
        params, opt_state = state
        loss_key, noise_key = jax.random.split(jax.random.fold_in(mechanism_key, step))
        args = (x_all[indices], y_all[indices], jax.random.split(loss_key, padded))
        if use_ghost:
            summed, _, losses = ghost.clipped_sum(module, params, args, mask, clip_norm)
        else:
            summed, _, losses = dpsgd.clipped_sum(example_loss, params, args, mask, clip_norm)
        grads = dpsgd.add_noise(noise_key, summed, clip_norm, noise_multiplier, expected_batch_size)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        mean_loss = jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        return (optax.apply_updates(params, updates), opt_state), mean_loss

    return step_fn


def generator_step(
    optimizer: optax.GradientTransformation,
    prior: jax.Array,
    batch: int,
    train_key: jax.Array,
    loss_fn: Callable[[Params, jax.Array, jax.Array], jax.Array],
) -> Callable[[State, int], tuple[State, jax.Array]]:
    """The jitted step of a generator fitted to a private release: (state, step) -> (state, loss). Each step draws
    `batch` labels from the released class prior and applies Adam to loss_fn(params, labels, key), which compares
    the generator's samples with the release alone: post-processing, it never touches the private data."""
    classes = prior.shape[0]

    @jax.jit
    def step_fn(state: State, step: jax.Array) -> tuple[State, jax.Array]:
        params, opt_state = state
        label_key, gen_key = jax.random.split(jax.random.fold_in(train_key, step))
        labels = jax.random.choice(label_key, classes, (batch,), p=prior)
        loss, grads = jax.value_and_grad(loss_fn)(params, labels, gen_key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return step_fn


def dpmerf_step(
    module: nn.Module,
    optimizer: optax.GradientTransformation,
    target: jax.Array,
    prior: jax.Array,
    freqs: jax.Array,
    batch: int,
    train_key: jax.Array,
) -> Callable[[State, int], tuple[State, jax.Array]]:
    """The jitted DP-MERF generator step (generator_step): the MMD between the released embedding `target` [F, K]
    and the samples' random features."""
    classes = target.shape[1]

    def loss_fn(p: Params, labels: jax.Array, key: jax.Array) -> jax.Array:
        x = apply_array(module, p, labels, key, method="relaxed").reshape(labels.shape[0], -1)
        return merf.mmd_loss(target, merf.feature_map(x, freqs), jax.nn.one_hot(labels, classes))

    return generator_step(optimizer, prior, batch, train_key, loss_fn)


def fit_generator(
    run: Run,
    step_fn: Callable[[State, int], tuple[State, jax.Array]],
    state: State,
    total: int,
    batch: int,
    epsilon: float,
    message: str,
    extra: dict[str, np.ndarray],
) -> tuple[State, dict[str, Any]]:
    """The loop after a release: `total` generator steps from the run's start step, with progress (the epsilon is
    the release's, spent once) and checkpoints holding `extra` (the release, never made twice). Returns the state
    and what the manifest records of the training."""
    prefix = f"resumed from step {run.start_step}; " if run.resumed else ""
    run.report(run.start_step, total, 0, 0.0, epsilon, 0, prefix + message, force=True)
    for step in range(run.start_step, total):
        state, loss = step_fn(state, step)
        done = step + 1
        run.report(done, total, 0, float(loss), epsilon, batch, force=done == total)
        if done < total:
            run.maybe_checkpoint(done, state, extra)
    spec = run.spec
    return state, {
        "generator_steps": total,
        "learning_rate": spec.learning_rate,
        "seed": spec.seed,
        "optimizer": "adam",
    }
