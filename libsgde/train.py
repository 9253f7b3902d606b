"""Training as a library function: encoded data + schema + spec in, a signed-ready artifact and progress events out.

Randomness. The parameters' initialisation follows `spec.seed` (public, recorded in the manifest). The mechanism's
randomness (Poisson batches, DP noise, the VAE's sampling noise) comes from a SECRET key: a public seed would let
anyone regenerate the noise and subtract it, voiding the guarantee. `secret` defaults to 32 fresh random bytes;
passing the same secret and seed reproduces an artifact byte for byte. The secret is kept in the checkpoint (mode
0600) so that a resumed job continues the same noise stream.

Resuming never spends privacy twice: only the final parameters are released, and the steps before the checkpoint
are not run again.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from google.protobuf import json_format

from libsgde import checkpoint as ckpt
from libsgde.artifact import Manifest, build_manifest, write_artifact
from libsgde.encoding import EncodedData, model_space
from libsgde.models import CLASS_PRIOR, ConfigError, get_architecture
from libsgde.models.base import Architecture, flatten
from libsgde.privacy import accounting, dpsgd, ghost, merf
from libsgde.proto.sgde.v1 import common_pb2 as pb
from libsgde.proto.sgde.v1 import trainer_pb2 as tpb
from libsgde.schema import SchemaError, validate_schema

DEFAULTS = {"epochs": 10, "batch_size": 256, "clip_norm": 1.0, "learning_rate": 1e-3, "delta": 1e-5}
PROGRESS_EVERY_S = 1.0
EPSILON_EVERY_S = 5.0  # the PLD accountant is not free; the running epsilon is refreshed this often
CHECKPOINT_EVERY_S = 30.0


class SpecError(ValueError):
    """A training spec that cannot run; `field` is a dotted path such as "spec.target_epsilon"."""

    def __init__(self, field: str, description: str):
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class TrainingCancelled(Exception):
    """should_stop() asked to stop; a checkpoint was saved first, so the job can resume."""


@dataclass(frozen=True)
class TrainSpec:
    architecture: str
    target_epsilon: float
    config: dict | None = None
    delta: float = 0.0  # 0: the default (1e-5, or 1/(10 N) when that is smaller)
    epochs: int = 0
    batch_size: int = 0
    clip_norm: float = 0.0
    learning_rate: float = 0.0
    seed: int = 0

    @classmethod
    def from_proto(cls, spec: tpb.TrainingSpec) -> TrainSpec:
        return cls(architecture=spec.architecture, target_epsilon=spec.target_epsilon,
                   config=json_format.MessageToDict(spec.config) if spec.HasField("config") else None,
                   delta=spec.delta, epochs=spec.epochs, batch_size=spec.batch_size, clip_norm=spec.clip_norm,
                   learning_rate=spec.learning_rate, seed=spec.seed)

    def to_proto(self) -> tpb.TrainingSpec:
        out = tpb.TrainingSpec(architecture=self.architecture, target_epsilon=self.target_epsilon, delta=self.delta,
                               epochs=self.epochs, batch_size=self.batch_size, clip_norm=self.clip_norm,
                               learning_rate=self.learning_rate, seed=self.seed)
        if self.config is not None:
            out.config.update(self.config)
        return out


@dataclass
class Progress:
    step: int
    total_steps: int
    epoch: int
    loss: float
    epsilon_spent: float
    examples_per_second: float
    eta_seconds: float
    message: str = ""


@dataclass
class TrainResult:
    path: Path
    sha256: str
    privacy: pb.PrivacyReport
    manifest: Manifest


def check_spec(spec: TrainSpec, schema: pb.DataSchema, dataset_size: int | None = None) -> TrainSpec:
    """The spec with every default filled in and every setting checked; raises SpecError."""
    try:
        validate_schema(schema)
    except SchemaError as e:
        raise SpecError(f"data_schema.{e.field}" if e.field else "data_schema", e.description) from None
    space = model_space(schema)
    try:
        arch = get_architecture(spec.architecture)
        config = arch.configure(_plain(spec.config), space)
    except ConfigError as e:
        raise SpecError("spec.architecture" if e.key == "architecture" else f"spec.config.{e.key}",
                        e.description) from None
    if not (math.isfinite(spec.target_epsilon) and 0 < spec.target_epsilon <= 1000):
        raise SpecError("spec.target_epsilon", f"must be in (0, 1000] (got {spec.target_epsilon}); 1 to 10 are "
                                               "common choices")
    filled = {k: getattr(spec, k) or v for k, v in DEFAULTS.items()}
    if not spec.delta and dataset_size:
        filled["delta"] = min(DEFAULTS["delta"], 0.1 / dataset_size)
    if dataset_size is not None:
        try:
            accounting.check_delta(filled["delta"], dataset_size)
        except accounting.PrivacyError as e:
            raise SpecError(f"spec.{e.field}", e.description) from None
        if arch.mechanism == "dp-sgd" and not 1 <= filled["batch_size"] <= dataset_size:
            raise SpecError("spec.batch_size", f"must be between 1 and the number of examples ({dataset_size})")
    elif not 0 < filled["delta"] < 1:
        raise SpecError("spec.delta", f"must be in (0, 1) (got {filled['delta']})")
    for name, low, high in (("epochs", 1, 100_000), ("batch_size", 1, 1 << 20)):
        if not low <= filled[name] <= high:
            raise SpecError(f"spec.{name}", f"must be between {low} and {high} (got {filled[name]})")
    for name in ("clip_norm", "learning_rate"):
        if not (math.isfinite(filled[name]) and filled[name] > 0):
            raise SpecError(f"spec.{name}", f"must be a finite number > 0 (got {filled[name]})")
    if not 0 <= spec.seed < 2**63:
        raise SpecError("spec.seed", "must be in [0, 2^63)")
    return replace(spec, config=config, **filled)


def _plain(config) -> dict | None:
    """Struct numbers arrive as floats; give integral ones back as ints so that integer settings accept them."""
    if config is None:
        return None
    fix = lambda v: int(v) if isinstance(v, float) and v.is_integer() else [fix(x) for x in v] if isinstance(v, list) else v  # noqa: E731
    return {k: fix(v) for k, v in config.items()}


def train(data: EncodedData, schema: pb.DataSchema, spec: TrainSpec, out_path: Path, *,
          on_progress: Callable[[Progress], None] | None = None, checkpoint_dir: Path | None = None,
          should_stop: Callable[[], bool] | None = None, secret: bytes | None = None,
          checkpoint_every_s: float = CHECKPOINT_EVERY_S) -> TrainResult:
    """Train a DP generator and write its artifact to `out_path` (see the module docstring for randomness).

    Deterministic for (secret, spec.seed). With `checkpoint_dir`, resumes from a checkpoint of the same spec and
    data, saves one every `checkpoint_every_s` seconds and before raising TrainingCancelled, and removes it at the
    end. Blocking: run it in a worker thread to serve other calls meanwhile."""
    spec = check_spec(spec, schema, len(data))
    arch = get_architecture(spec.architecture)
    run = _Run(data, schema, spec, arch, on_progress or (lambda p: None), should_stop or (lambda: False),
               Path(checkpoint_dir) if checkpoint_dir else None, secret, checkpoint_every_s)
    params, prior, privacy, training = (_train_dpsgd if arch.mechanism == "dp-sgd" else _train_dpmerf)(run)
    tensors = {k: np.asarray(v, np.float32) for k, v in flatten(arch.sampling_params(params)).items()}
    tensors[CLASS_PRIOR] = np.asarray(prior, np.float32)
    manifest = build_manifest(arch.name, spec.config, schema, privacy, training)
    sha = write_artifact(Path(out_path), tensors, manifest)
    run.finish()
    return TrainResult(Path(out_path), sha, privacy, manifest)


class _Run:
    """What one training run carries around: inputs, callbacks, checkpoint place and the secret key."""

    def __init__(self, data, schema, spec, arch: Architecture, on_progress, should_stop, checkpoint_dir, secret,
                 checkpoint_every_s):
        self.data, self.schema, self.spec, self.arch = data, schema, spec, arch
        self.space = data.space
        self.on_progress, self.should_stop, self.checkpoint_dir = on_progress, should_stop, checkpoint_dir
        self.checkpoint_every_s = checkpoint_every_s
        self.fingerprint = _fingerprint(data, schema, spec)
        self.resumed = ckpt.load_checkpoint(checkpoint_dir, self.fingerprint) if checkpoint_dir else None
        secret = self.resumed.secret if self.resumed else (secret if secret is not None else os.urandom(32))
        self.secret = secret
        digest = hashlib.sha256(secret + spec.seed.to_bytes(8, "little")).digest()
        self.mechanism_key = jax.random.key(int.from_bytes(digest[:8], "little") >> 1)
        self.batch_seed = int.from_bytes(digest[8:16], "little")
        self.init_key = jax.random.key(spec.seed)
        self.started, self.last_report, self.last_checkpoint = time.monotonic(), 0.0, time.monotonic()
        self.start_step = self.resumed.step if self.resumed else 0

    def report(self, step: int, total: int, epoch: int, loss: float, epsilon: float, examples: float,
               message: str = "", force: bool = False) -> None:
        now = time.monotonic()
        first_step = step == self.start_step + 1  # always shown: the first loss, and a first rate
        if not (force or first_step) and now - self.last_report < PROGRESS_EVERY_S:
            return
        self.last_report = now
        done = max(step - self.start_step, 0)
        elapsed = max(now - self.started, 1e-9)
        eta = (total - step) * elapsed / done if done else 0.0
        self.on_progress(Progress(step, total, epoch, float(loss), epsilon, examples * done / elapsed, eta, message))

    def maybe_checkpoint(self, step: int, state, extra: dict | None = None) -> None:
        """Checkpoint every checkpoint_every_s; on a stop request, checkpoint and raise TrainingCancelled."""
        stop = self.should_stop()
        if self.checkpoint_dir and (stop or time.monotonic() - self.last_checkpoint >= self.checkpoint_every_s):
            ckpt.save_checkpoint(self.checkpoint_dir, self.fingerprint, step, self.secret, state, extra or {})
            self.last_checkpoint = time.monotonic()
        if stop:
            raise TrainingCancelled(f"stopped at step {step}")

    def finish(self) -> None:
        if self.checkpoint_dir:
            ckpt.remove_checkpoint(self.checkpoint_dir)


def _fingerprint(data: EncodedData, schema: pb.DataSchema, spec: TrainSpec) -> str:
    """Identifies a run: a checkpoint is only resumed by the same spec on the same data."""
    h = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode())
    h.update(schema.SerializeToString(deterministic=True))
    h.update(np.ascontiguousarray(data.x).tobytes())
    if data.labels is not None:
        h.update(np.ascontiguousarray(data.labels).tobytes())
    return h.hexdigest()


def _labels(data: EncodedData) -> np.ndarray:
    return data.labels if data.labels is not None else np.zeros(len(data), np.int32)


def _privacy(mechanism, event, spec, sigma, q, steps, clip, n) -> pb.PrivacyReport:
    return pb.PrivacyReport(
        mechanism=mechanism, epsilon=accounting.event_pld_epsilon(event, spec.delta), delta=spec.delta,
        accountant="pld", noise_multiplier=sigma, sampling_rate=q, steps=steps, clip_norm=clip, dataset_size=n,
        rdp_epsilon=accounting.event_rdp_epsilon(event, spec.delta))


def _uniform_prior(space) -> np.ndarray:
    k = max(space.num_classes, 1)
    return np.full(k, 1.0 / k)


def _train_dpsgd(run: _Run):
    """DP-SGD: Poisson batches padded to a fixed shape, per-example clipping (ghost clipping when every layer
    allows it, else vmap), Gaussian noise calibrated to the target epsilon, Adam on the privatised gradient."""
    spec, space, n = run.spec, run.space, len(run.data)
    q = spec.batch_size / n
    total = max(1, round(spec.epochs * n / spec.batch_size))
    sigma = accounting.calibrate_noise_multiplier(spec.target_epsilon, spec.delta, q, total)
    module = run.arch.module(space, spec.config)
    optimizer = optax.adam(spec.learning_rate)
    params = run.arch.init(run.init_key, space, spec.config)
    state = (params, optimizer.init(params))
    if run.resumed:
        state = ckpt.restore(run.resumed, state)
    padded = dpsgd.padded_batch_size(n, q)
    x_all, y_all = jnp.asarray(run.data.x), jnp.asarray(_labels(run.data))
    use_ghost = ghost.is_ghostable(params)

    step_fn = dpsgd_step(module, optimizer, x_all, y_all, padded, spec.clip_norm, sigma, q * n, use_ghost,
                         run.mechanism_key)

    steps_per_epoch = n / spec.batch_size
    epsilon, epsilon_at = 0.0, -math.inf
    run.report(run.start_step, total, int(run.start_step / steps_per_epoch), 0.0,
               accounting.pld_epsilon(sigma, q, run.start_step, spec.delta) if run.start_step else 0.0, 0,
               (f"resumed from step {run.start_step}; " if run.resumed else "")
               + f"noise multiplier {sigma:.4g} for epsilon {spec.target_epsilon:g} at delta {spec.delta:.3g} "
               f"({total} steps, sampling rate {q:.4g}, {'ghost' if use_ghost else 'vmap'} clipping)", force=True)
    for step in range(run.start_step, total):
        rng = np.random.default_rng([run.batch_seed, step])
        indices, mask = dpsgd.poisson_batch(rng, n, q, padded)
        state, loss = step_fn(state, indices, mask, step)
        done = step + 1
        if time.monotonic() - epsilon_at >= EPSILON_EVERY_S or done == total:
            epsilon, epsilon_at = accounting.pld_epsilon(sigma, q, done, spec.delta), time.monotonic()
        run.report(done, total, int(done / steps_per_epoch), float(loss), epsilon, spec.batch_size,
                   force=done == total)
        if done < total:
            run.maybe_checkpoint(done, state)
    event = accounting.dpsgd_event(sigma, q, total)
    privacy = _privacy("dp-sgd", event, spec, sigma, q, total, spec.clip_norm, n)
    training = {"steps": total, "epochs": spec.epochs, "batch_size": spec.batch_size,
                "learning_rate": spec.learning_rate, "seed": spec.seed,
                "clipping": "ghost" if use_ghost else "vmap", "optimizer": "adam"}
    return state[0], _uniform_prior(space), privacy, training


def _train_dpmerf(run: _Run):
    """DP-MERF: one noisy release of the random-feature mean embedding (sigma calibrated to the target epsilon),
    then the generator trains against it with Adam, at no further privacy cost."""
    spec, space, n, config = run.spec, run.space, len(run.data), run.spec.config
    sigma = accounting.calibrate_gaussian(spec.target_epsilon, spec.delta)
    dim = math.prod(space.shape)
    classes = max(space.num_classes, 1)
    freq_key, gen_key = jax.random.split(run.init_key)
    freqs = merf.frequencies(freq_key, dim, config["features"], config["lengthscale"])
    if run.resumed:  # never release the embedding twice: a resumed run reuses the one it saved
        emb, counts = jnp.asarray(run.resumed.extra["embedding"]), jnp.asarray(run.resumed.extra["counts"])
    else:
        onehot = jax.nn.one_hot(jnp.asarray(_labels(run.data)), classes)
        emb, counts = merf.noisy_release(run.mechanism_key, jnp.asarray(run.data.x).reshape(n, dim), onehot,
                                         freqs, sigma)
    prior = merf.class_prior(counts)
    target = emb / jnp.maximum(jnp.sum(jnp.maximum(counts, 0.0)), 1.0)
    module = run.arch.module(space, config)
    optimizer = optax.adam(spec.learning_rate)
    params = run.arch.init(gen_key, space, config)
    state = (params, optimizer.init(params))
    if run.resumed:
        state = ckpt.restore(run.resumed, state)
    batch, total = config["generator_batch"], config["generator_steps"]
    train_key = jax.random.fold_in(run.init_key, 1)

    step_fn = dpmerf_step(module, optimizer, target, prior, freqs, batch, train_key)

    event = accounting.gaussian_event(sigma)
    epsilon = accounting.event_pld_epsilon(event, spec.delta)
    run.report(run.start_step, total, 0, 0.0, epsilon, 0,
               (f"resumed from step {run.start_step}; " if run.resumed else "")
               + f"released the mean embedding once with noise multiplier {sigma:.4g} (epsilon {epsilon:.4g} at "
               f"delta {spec.delta:.3g}); the generator now trains at no further privacy cost", force=True)
    extra = {"embedding": np.asarray(emb), "counts": np.asarray(counts)}
    for step in range(run.start_step, total):
        state, loss = step_fn(state, step)
        done = step + 1
        run.report(done, total, 0, float(loss), epsilon, batch, force=done == total)
        if done < total:
            run.maybe_checkpoint(done, state, extra)
    privacy = _privacy("dp-merf", event, spec, sigma, 1.0, 1, 1.0, n)
    training = {"generator_steps": total, "learning_rate": spec.learning_rate, "seed": spec.seed,
                "optimizer": "adam"}
    return state[0], np.asarray(prior), privacy, training


def dpsgd_step(module, optimizer, x_all, y_all, padded: int, clip_norm: float, noise_multiplier: float,
               expected_batch_size: float, use_ghost: bool, mechanism_key: jax.Array):
    """The jitted DP-SGD step: (state, indices, mask, step) -> (state, mean loss of the real examples).

    Gathers the padded Poisson batch from the data on the device, clips per example (ghost clipping or vmap),
    adds N(0, (sigma C)^2) noise, divides by the expected batch size and applies the optimizer. All its randomness
    derives from `mechanism_key` and the step number."""

    def example_loss(p, example):
        x, y, key = example
        return module.apply({"params": p}, x[None], y[None], key[None])[0]

    @jax.jit
    def step_fn(state, indices, mask, step):
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


def dpmerf_step(module, optimizer, target, prior, freqs, batch: int, train_key: jax.Array):
    """The jitted DP-MERF generator step: (state, step) -> (state, loss). Post-processing of the released
    embedding `target` [F, K]: it never touches the private data."""
    classes = target.shape[1]

    @jax.jit
    def step_fn(state, step):
        params, opt_state = state
        label_key, gen_key = jax.random.split(jax.random.fold_in(train_key, step))
        labels = jax.random.choice(label_key, classes, (batch,), p=prior)

        def loss_fn(p):
            x = module.apply({"params": p}, labels, gen_key, method="relaxed").reshape(batch, -1)
            return merf.mmd_loss(target, merf.feature_map(x, freqs), jax.nn.one_hot(labels, classes))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return step_fn
