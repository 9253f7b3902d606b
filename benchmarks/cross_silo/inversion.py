"""Gradient inversion: what a server (or anyone who reads a client's update) rebuilds of the client's images from
one FedAvg or DP-FedAvg update of the benchmark's classifier (model.py), in JAX.

The update. A client with images x (n, *input_shape) and labels y starts from the global parameters theta_0 and
takes `local_steps` plain SGD steps theta_{t+1} = theta_t - lr grad L_t(theta_t), L_t the mean cross-entropy
(model.example_losses) of minibatch t (the whole batch, or consecutive slices of `batch_size` taken in turn); it
sends, in effect, u = theta_0 - theta_T (for one step u = lr grad L(theta_0)). A DP-FedAvg client clips each
example's gradient to norm C and adds N(0, (sigma C)^2) to their sum at every step (libsgde's DP-SGD pieces).

The attack: Inverting Gradients (Geiping, Bauermeister, Droege, Moeller, NeurIPS 2020). Starting from random
dummy images x', minimise

    R(x') = 1 - <u(x'), u> / (||u(x')|| ||u||) + tv_weight TV(x'),     TV(x') = mean |dx| + mean |dy|

where u(x') is the update the same local training makes from x' (all layers concatenated into one vector), by
Adam on sign(grad R) with step 0.1 divided by 10 at 3/8, 5/8 and 7/8 of the iterations, clipping x' to the data's
box [0, 1] after every step. With several restarts the one of smallest final cosine loss is kept (the paper's
"loss" scoring). Labels: for one image, the label is the class whose last-layer bias update is negative (iDLG,
Zhao et al. 2020: that entry of the cross-entropy gradient is p_y - 1 < 0, every other p_k > 0, and SGD steps add
up with the same signs); for a batch the attacker is assumed to know the labels, as in Geiping et al.'s batch
experiments.

Settings. The authors' code (github.com/JonasGeiping/invertinggradients, reconstruct_image.py and options.py)
runs signed Adam at lr 0.1 with the 3/8-5/8-7/8 decay, the box, the cosine over all layers, 1 restart, an N(0, 1)
start, 4,000 iterations for one image (24,000 in later configurations), TV weight 1e-4 on CIFAR-10 (TV 0 and
local lr 1e-4 in their multi-step "fedavg" runs). AttackConfig's defaults keep all of that but the TV weight,
1e-2 here: on Fashion-MNIST with this CNN, 1e-2 beat 1e-4, 1e-3, 3e-2 and 1e-1 (mean PSNR over test images 0-3),
and 12,000 or 24,000 iterations gained nothing over 4,000. The data are not normalised, so the box is [0, 1] and
the N(0, 1) start is drawn in pixel units.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.cross_silo import image_metrics, model
from benchmarks.cross_silo.model import ModelSpec, Params
from libsgde.ml.privacy.dpsgd import add_noise, clipped_sum

Update = Params  # theta_0 - theta_T, a dict name -> array shaped like the parameters


@dataclass(frozen=True)
class AttackConfig:
    iterations: int = 4000
    step_size: float = 0.1  # Adam's, on the sign of the gradient
    tv_weight: float = 1e-2
    restarts: int = 1
    init: str = "randn"  # N(0, 1), clipped into the box by the first step; or "uniform" in [0, 1]


# ---------------------------------------------------------------------------------------------------- the update


def _local_sgd(
    spec: ModelSpec,
    params: Params,
    x: jax.Array,
    y: jax.Array,
    local_steps: int,
    learning_rate: jax.Array,
    batch_size: int,
    step_gradient: Callable | None = None,
) -> Update:
    """theta_0 - theta_T after `local_steps` SGD steps on consecutive minibatches of `batch_size` (cycling over x).
    `step_gradient(params, xb, yb, step)` replaces the mean-loss gradient (the DP client's noisy one)."""

    def mean_loss_grad(p: Params, xb: jax.Array, yb: jax.Array, step: jax.Array) -> Params:
        return jax.grad(lambda q: jnp.mean(model.example_losses(spec, q, xb, yb)))(p)

    gradient = step_gradient or mean_loss_grad
    n = x.shape[0]

    def step(p: Params, t: jax.Array) -> tuple[Params, None]:
        start = (t * batch_size) % n
        xb = jax.lax.dynamic_slice_in_dim(x, start, batch_size)
        yb = jax.lax.dynamic_slice_in_dim(y, start, batch_size)
        g = gradient(p, xb, yb, t)
        return jax.tree.map(lambda a, b: a - learning_rate * b, p, g), None

    final, _ = jax.lax.scan(step, params, jnp.arange(local_steps))
    return jax.tree.map(lambda a, b: a - b, params, final)


def _check_batch(n: int, batch_size: int | None) -> int:
    b = batch_size or n
    if n % b:
        raise ValueError(f"batch_size {b} must divide the client's {n} examples")
    return b


_CLIENT: dict = {}


def client_update(
    spec: ModelSpec,
    params: Params,
    x: np.ndarray,
    y: np.ndarray,
    local_steps: int,
    learning_rate: float,
    batch_size: int | None = None,
) -> Update:
    """What a FedAvg client sends, as theta_0 - theta_T: `local_steps` plain SGD steps (full batch unless
    `batch_size`), x (n, *input_shape) in [0, 1], y (n,) int."""
    b = _check_batch(len(x), batch_size)
    key = (spec, local_steps, b)
    if key not in _CLIENT:
        _CLIENT[key] = jax.jit(lambda p, xs, ys, lr: _local_sgd(spec, p, xs, ys, local_steps, lr, b))
    return _CLIENT[key](params, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), learning_rate)


_DP_CLIENT: dict = {}


def dp_client_update(
    spec: ModelSpec,
    params: Params,
    x: np.ndarray,
    y: np.ndarray,
    local_steps: int,
    learning_rate: float,
    *,
    clip_norm: float,
    noise_multiplier: float,
    seed: int,
    batch_size: int | None = None,
) -> Update:
    """What a DP-FedAvg client sends: the same local steps, each on (sum_i clip_C(grad l_i) + N(0, (sigma C)^2 I)) / b
    for its minibatch of b examples (libsgde's clipped_sum and add_noise, independent noise every step)."""
    b = _check_batch(len(x), batch_size)

    def per_example_loss(p: Params, example: tuple[jax.Array, jax.Array]) -> jax.Array:
        xi, yi = example
        return model.example_losses(spec, p, xi[None], yi[None])[0]

    def update(p: Params, xs: jax.Array, ys: jax.Array, lr: jax.Array, key: jax.Array) -> Update:
        def noisy_gradient(q: Params, xb: jax.Array, yb: jax.Array, step: jax.Array) -> Params:
            summed, _, _ = clipped_sum(per_example_loss, q, (xb, yb), jnp.ones(b), clip_norm)
            return add_noise(jax.random.fold_in(key, step), summed, clip_norm, noise_multiplier, b)

        return _local_sgd(spec, p, xs, ys, local_steps, lr, b, noisy_gradient)

    cache_key = (spec, local_steps, b, clip_norm, noise_multiplier)
    if cache_key not in _DP_CLIENT:
        _DP_CLIENT[cache_key] = jax.jit(update)
    return _DP_CLIENT[cache_key](
        params, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), learning_rate, jax.random.key(seed)
    )


# ---------------------------------------------------------------------------------------------------- the attack


def recover_labels(spec: ModelSpec, observed_update: Update, n: int = 1) -> np.ndarray:
    """iDLG: the label of a single image is the index of the most negative entry of the last layer's bias update.
    For n > 1 the bias update only tells which classes are present, not how often: the caller must know them."""
    if n != 1:
        raise ValueError("labels are recovered from the update for a single image only; pass the known labels")
    last_bias = spec.names()[-1]
    return np.array([int(jnp.argmin(observed_update[last_bias]))], np.int32)


def _total_variation(x: jax.Array) -> jax.Array:
    """Mean absolute difference of neighbouring pixels, down plus across, for images (n, h, w, c); 0 for tables."""
    if x.ndim != 4:
        return jnp.zeros(())
    return jnp.mean(jnp.abs(x[:, 1:] - x[:, :-1])) + jnp.mean(jnp.abs(x[:, :, 1:] - x[:, :, :-1]))


def _flat(tree: Params) -> jax.Array:
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(tree)])


def _attack_fn(spec: ModelSpec, n: int, local_steps: int, batch_size: int, config: AttackConfig) -> Callable:
    """Jitted (x0 (restarts, n, *shape), params, observed, labels, lr) -> (images, final cosine losses), every
    restart in parallel (vmap) and the whole optimisation one fori_loop."""
    decay_at = {round(config.iterations * k / 8): 0.1 for k in (3, 5, 7)}
    optimiser = optax.adam(optax.piecewise_constant_schedule(config.step_size, decay_at))

    def cosine_loss(x: jax.Array, params: Params, target: jax.Array, labels: jax.Array, lr: jax.Array) -> jax.Array:
        u = _flat(_local_sgd(spec, params, x, labels, local_steps, lr, batch_size))
        return 1.0 - jnp.dot(u, target) / (jnp.linalg.norm(u) * jnp.linalg.norm(target) + 1e-30)

    def objective(x, params, target, labels, lr):
        return cosine_loss(x, params, target, labels, lr) + config.tv_weight * _total_variation(x)

    def one_restart(x0, params, target, labels, lr):
        def body(_, carry):
            x, state = carry
            g = jax.grad(objective)(x, params, target, labels, lr)
            step, state = optimiser.update(jnp.sign(g), state)
            return jnp.clip(x + step, 0.0, 1.0), state

        x, _ = jax.lax.fori_loop(0, config.iterations, body, (x0, optimiser.init(x0)))
        return x, cosine_loss(x, params, target, labels, lr)

    return jax.jit(jax.vmap(one_restart, in_axes=(0, None, None, None, None)))


_ATTACKS: dict = {}


def invert(
    spec: ModelSpec,
    params: Params,
    observed_update: Update,
    labels: np.ndarray | None,
    *,
    local_steps: int,
    learning_rate: float,
    batch_size: int | None,
    config: AttackConfig = AttackConfig(),
    seed: int = 0,
) -> np.ndarray:
    """Images (n, *input_shape) whose update matches `observed_update` in direction, from the global `params` the
    client started at. labels: (n,) known labels, or None for a single image (then recovered by iDLG). The
    attacker simulates the client's training exactly (local_steps, learning_rate, batch_size)."""
    if labels is None:
        labels = recover_labels(spec, observed_update)
    labels = np.asarray(labels, np.int32)
    n = len(labels)
    b = _check_batch(n, batch_size)
    key = (spec, n, local_steps, b, config)
    if key not in _ATTACKS:
        _ATTACKS[key] = _attack_fn(spec, n, local_steps, b, config)
    shape = (config.restarts, n, *spec.input_shape)
    rng = jax.random.key(seed)
    if config.init == "uniform":
        x0 = jax.random.uniform(rng, shape)
    elif config.init == "randn":
        x0 = jax.random.normal(rng, shape)
    else:
        raise ValueError(f"unknown init {config.init!r}")
    target = _flat({k: jnp.asarray(observed_update[k], jnp.float32) for k in params})
    images, losses = _ATTACKS[key](x0, params, target, jnp.asarray(labels), jnp.float32(learning_rate))
    return np.asarray(images[int(jnp.argmin(losses))])


# ---------------------------------------------------------------------------------------------------- the benchmark


def _attack_setting(
    spec: ModelSpec,
    params: Params,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    steps: int,
    learning_rate: float,
    config: AttackConfig,
    seed: int,
    dp: tuple[float, float] | None,
) -> tuple[dict, np.ndarray]:
    """Attack every client batch of `batch_size` consecutive images (the last partial one left out): each client
    takes `steps` full-batch local steps, FedAvg's or (dp = (sigma, C)) DP-SGD's; reconstructions come back paired
    with their true images (best-PSNR assignment)."""
    groups = len(images) // batch_size
    recs, labels_right, seconds = [], [], 0.0
    for g in range(groups):
        x, y = images[g * batch_size : (g + 1) * batch_size], labels[g * batch_size : (g + 1) * batch_size]
        if dp is None:
            update = client_update(spec, params, x, y, steps, learning_rate)
        else:
            sigma, clip = dp
            update = dp_client_update(
                spec, params, x, y, steps, learning_rate, clip_norm=clip, noise_multiplier=sigma, seed=seed + g
            )
        known = None
        if batch_size == 1:  # the attacker reads the label off the update
            labels_right.append(bool(recover_labels(spec, update)[0] == y[0]))
        else:
            known = y
        start = time.perf_counter()
        rec = invert(
            spec,
            params,
            update,
            known,
            local_steps=steps,
            learning_rate=learning_rate,
            batch_size=None,
            config=config,
            seed=seed + g,
        )
        seconds += time.perf_counter() - start
        recs.append(image_metrics.match(x, rec))
    recs = np.concatenate(recs)
    true = images[: len(recs)]
    p, s = image_metrics.psnr(true, recs), image_metrics.ssim(true, recs)
    result = {
        "batch_size": batch_size,
        "local_steps": steps,
        "images": len(recs),
        "psnr": float(np.mean(p)),  # means over the images
        "ssim": float(np.mean(s)),
        "psnr_each": [float(v) for v in p],
        "ssim_each": [float(v) for v in s],
        "labels": "recovered (iDLG)" if batch_size == 1 else "known to the attacker",
        "labels_recovered_right": float(np.mean(labels_right)) if labels_right else None,
        "attack_seconds_per_image": seconds / len(recs),
    }
    if dp is not None:
        result["noise_multiplier"], result["clip_norm"] = dp
    return result, recs


def run_attacks(
    spec: ModelSpec,
    params: Params,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_sizes: Sequence[int] = (1, 4, 8),
    local_steps: Sequence[int] = (1, 5),
    learning_rate: float = 0.01,
    dp: tuple[float, float] | None = None,
    dp_settings: Sequence[tuple[int, int]] = ((1, 1),),
    config: AttackConfig = AttackConfig(),
    seed: int = 0,
) -> tuple[dict, dict[str, np.ndarray]]:
    """The attack on FedAvg updates for every (batch size, local steps), and, if dp = (noise_multiplier, clip_norm),
    on DP-FedAvg updates for each (batch size, local steps) of `dp_settings`. images (N, *input_shape) in [0, 1],
    labels (N,); clients hold consecutive batches of the images; params: the global model the clients start from.

    Returns (results, reconstructions). results is JSON-ready: {"config", "learning_rate", "fedavg": {setting: r},
    "dp-fedavg": {setting: r}} with setting "batch{b}-steps{s}" and r holding the mean "psnr" / "ssim", the
    per-image "psnr_each" / "ssim_each", label recovery, attack seconds per image and the row "label" of the
    figure; reconstructions maps each such label ("FedAvg b=1 steps=1", ...) to images aligned with images[:n]."""
    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
    plan = [("fedavg", "FedAvg", b, s, None) for b in batch_sizes for s in local_steps]
    if dp is not None:
        plan += [("dp-fedavg", f"DP-FedAvg (sigma={dp[0]:g}, C={dp[1]:g})", b, s, dp) for b, s in dp_settings]
    results: dict = {"config": asdict(config), "learning_rate": learning_rate, "fedavg": {}}
    reconstructions = {}
    for i, (arm, title, b, s, privacy) in enumerate(plan):
        if len(images) < b:
            raise ValueError(f"batch size {b} needs at least {b} images, got {len(images)}")
        result, recs = _attack_setting(
            spec, params, images, labels, b, s, learning_rate, config, seed + 1000 * i, privacy
        )
        result["label"] = f"{title} b={b} steps={s}"
        results.setdefault(arm, {})[f"batch{b}-steps{s}"] = result
        reconstructions[result["label"]] = recs
    return results, reconstructions


def figure(true: np.ndarray, reconstructions: Mapping[str, np.ndarray], nearest: np.ndarray | None, path: Path) -> None:
    """One row of true images, one per attack setting (reconstructions aligned with `true`, possibly fewer), and
    one of the nearest synthetic samples (or None); the PSNR against the true image under each reconstruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("true images", true), *reconstructions.items()]
    if nearest is not None:
        rows.append(("SGDE nearest sample", nearest))
    cols = len(true)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.3 * cols + 1.6, 1.45 * len(rows)), squeeze=False)
    for r, (name, imgs) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(imgs):
                ax.axis("off")
                continue
            ax.imshow(np.squeeze(imgs[c]), cmap="gray", vmin=0.0, vmax=1.0)
            if r > 0:
                ax.set_xlabel(f"{image_metrics.psnr(true[c], imgs[c]):.1f} dB", fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
