"""scatter-merf: a mean-embedding generator whose embedding lives in a scattering-network feature space, and a DP
linear teacher on the same features that filters its samples.

Why. Random features of raw pixels (dp-merf) are a poor kernel for images; scattering features (fixed wavelets,
libsgde.ml.scattering) are data-free and known to work well under DP (Tramer and Boneh, ICLR 2021: a DP-SGD linear
model on them beats end-to-end DP CNNs). The generator is taught to match the data's mean embedding in that space.

What is released (the private data is touched by exactly these two mechanisms, composed in one accountant event):
1. ONE Gaussian release of sum_i v_i + N(0, sigma_e^2 I), with per example
       v_i = [w_m s_i (x) y_i, w_r phi(s_i) (x) y_i, w_p psi(x_i) (x) y_i, w_c y_i]
   where s_i are the normalised scattering features (||s_i|| <= 1 for any image: libsgde.ml.scattering), phi random
   Fourier features on s_i (a Gaussian kernel in scattering space, ||phi|| = 1), psi dp-merf's random features of the
   pixels (||psi|| = 1), y_i the one-hot label and the weights w normalised to w_m^2 + w_r^2 + w_p^2 + w_c^2 = 1.
   So ||v_i|| <= 1 and adding or removing an example moves the sum by at most 1: sensitivity 1 by construction.
   The last block is the noisy class counts: the DP class prior rides in the same release (as in dp-merf).
   sigma_e is calibrated to the share (1 - teacher_share) of the target epsilon (public config).
2. With teacher_share > 0, a DP-SGD linear softmax classifier on s_i: Poisson sampling at rate q, per-example
   gradients clipped to C (exactly, in closed form: a linear model's gradient is (p - y) [s, 1]^T, of norm
   ||p - y|| sqrt(||s||^2 + 1)), N(0, sigma_t^2 C^2) noise on the sum, T steps. sigma_t is calibrated so that the
   COMPOSITION of release 1 and the T steps has exactly the target epsilon at delta (one PLD accounting of the
   composed event); the report carries it as the component ("teacher", "poisson-gaussian").

Post-processing (no further privacy cost): the generator (noise and one-hot label -> a small upsampling conv network
-> sigmoid pixels) trained with Adam to match the noisy mean embedding divided by the noisy count, plus, with
`teacher_guidance` > 0, that weight times the released teacher's cross-entropy on the samples' labels; and sampling:
`generate` draws `teacher_candidates` candidates for row i from fold_in(keys[i], a) and keeps the first one the
teacher assigns to labels[i], else the one it gives labels[i] the highest probability. The row's label stays the
requested one (exact class counts), and row i depends on keys[i] and labels[i] alone.

The scales the randomness comes from: frequencies and initialisations from the public seed (`run.init_key`), the
release's and DP-SGD's noise and the Poisson batches from the run's secret.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from libsgde.domain.privacy import POISSON_GAUSSIAN, PrivacyComponent
from libsgde.errors import FieldError
from libsgde.ml import scattering
from libsgde.ml.architectures.base import Architecture, ConfigError, Option, one_hot, row_normals
from libsgde.ml.mechanisms import Mechanism
from libsgde.ml.privacy import accounting, dpsgd, merf, prior
from libsgde.ml.pytree import Params, apply_array
from libsgde.ml.space import ModelSpace
from libsgde.ml.train import Run, State, TrainOutcome, fit_generator
from libsgde.ml.train import generator_step as train_generator_step

if TYPE_CHECKING:
    from dp_accounting import DpEvent

BLOCKS = ("moment", "rff", "pixel", "counts")  # the release's blocks, in this order
TEACHER = "teacher"


# -- the model ----------------------------------------------------------------------------------------------------


def feature_settings(space: ModelSpace, config: dict[str, Any]) -> tuple[int, str, float]:
    """(J, normalisation, tau) of the scattering features: public functions of the shape and the config."""
    j = config["scatter_j"]
    return j, config["normalisation"], scattering.tau_for(space.shape, j, config["tau_fraction"])


class ConvGenerator(nn.Module):
    """Noise and one-hot label -> Dense -> (ceil(H/4), ceil(W/4)) -> twice (nearest 2x upsampling, 3x3 conv) -> crop
    to (H, W) -> 3x3 conv -> raw pixels (logits). Upsampling and a conv, not a transposed conv: XLA's CPU gradient
    of a strided transposed conv is about 10x slower (14.6 s against 1.2 s a step at 28 x 28, batch 256)."""

    shape: tuple[int, int, int]
    channels: tuple[int, ...]

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        height, width, c_out = self.shape
        h0, w0 = -(-height // 4), -(-width // 4)
        widths = [*self.channels[1:3], *[self.channels[-1]] * (3 - len(self.channels))]  # one width per upsampling
        h = nn.relu(nn.Dense(h0 * w0 * self.channels[0], name="dense")(h)).reshape(-1, h0, w0, self.channels[0])
        for i, c in enumerate(widths[:2]):
            h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
            h = nn.relu(nn.Conv(c, (3, 3), padding="SAME", name=f"up{i}")(h))
        return nn.Conv(c_out, (3, 3), padding="SAME", name="out")(h[:, :height, :width])


class ScatterMerfModel(nn.Module):
    space: ModelSpace
    latent_dim: int
    channels: tuple[int, ...]
    teacher: bool
    candidates: int
    features: tuple[int, str, float]  # (J, normalisation, tau)

    def setup(self) -> None:
        self.generator = ConvGenerator(self.space.shape, self.channels)  # type: ignore[arg-type]
        if self.teacher:
            self.linear = nn.Dense(self.space.num_classes, name=TEACHER)

    def relaxed(self, labels: jax.Array, key: jax.Array) -> jax.Array:
        """Differentiable samples [n, H, W, C] in [0, 1] for training."""
        return self._images(labels, jax.random.normal(key, (labels.shape[0], self.latent_dim)))

    def generate(self, labels: jax.Array, keys: jax.Array) -> jax.Array:
        n, a = labels.shape[0], self.candidates if self.teacher else 1
        cand_keys = jax.vmap(lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(jnp.arange(a)))(keys)
        cand_labels = jnp.repeat(labels, a)
        images = self._images(cand_labels, row_normals(cand_keys.reshape(n * a), self.latent_dim))
        if not self.teacher:
            return images
        probs = jax.nn.softmax(self.linear(scattering.features(images, *self.features)))
        agree = (jnp.argmax(probs, 1) == cand_labels).reshape(n, a)
        confidence = jnp.take_along_axis(probs, cand_labels[:, None], 1).reshape(n, a)
        choice = jnp.where(jnp.any(agree, 1), jnp.argmax(agree, 1), jnp.argmax(confidence, 1))
        return images.reshape(n, a, *images.shape[1:])[jnp.arange(n), choice]

    def _images(self, labels: jax.Array, z: jax.Array) -> jax.Array:
        logits = self.generator(jnp.concatenate([z, one_hot(labels, self.space.num_classes)], 1))
        return jax.nn.sigmoid(logits)


# -- the embedding ----------------------------------------------------------------------------------------------------


def block_weights(config: dict[str, Any]) -> dict[str, float]:
    """The blocks' weights w_b, normalised so that sum w_b^2 = 1 (the sensitivity argument)."""
    raw = {b: float(config[f"weight_{b}"]) for b in BLOCKS}
    total = math.sqrt(sum(w * w for w in raw.values()))
    return {b: w / total for b, w in raw.items()}


def embedding_blocks(
    s: jax.Array, x_flat: jax.Array, onehot: jax.Array, freqs: dict[str, jax.Array], weights: dict[str, float]
) -> dict[str, jax.Array]:
    """sum_i of each weighted block of v_i (the module docstring), for features s [n, D], flat pixels x [n, P] and
    one-hot labels [n, K]; zero-weight blocks are left out."""
    out = {}
    if weights["moment"]:
        out["moment"] = weights["moment"] * (s.T @ onehot)
    if weights["rff"]:
        out["rff"] = weights["rff"] * (merf.feature_map(s, freqs["rff"]).T @ onehot)
    if weights["pixel"]:
        out["pixel"] = weights["pixel"] * (merf.feature_map(x_flat, freqs["pixel"]).T @ onehot)
    out["counts"] = weights["counts"] * jnp.sum(onehot, 0)
    return out


def frequencies(key: jax.Array, space: ModelSpace, config: dict[str, Any]) -> dict[str, jax.Array]:
    """The random frequencies of the scattering-space and pixel-space kernels (from the public seed)."""
    j = config["scatter_j"]
    k_rff, k_pixel = jax.random.split(key)
    return {
        "rff": merf.frequencies(
            k_rff, scattering.feature_dim(space.shape, j), config["features"], config["lengthscale"]
        ),
        "pixel": merf.frequencies(
            k_pixel, math.prod(space.shape), config["pixel_features"], config["pixel_lengthscale"]
        ),
    }


def noisy_release(
    key: jax.Array,
    s: jax.Array,
    x_flat: jax.Array,
    onehot: jax.Array,
    freqs: dict[str, jax.Array],
    weights: dict[str, float],
    noise_multiplier: float,
    chunk: int = 4096,
) -> dict[str, jax.Array]:
    """The one Gaussian release: every block's sum plus N(0, sigma^2) noise per coordinate."""
    sums: dict[str, jax.Array] = {}
    for start in range(0, s.shape[0], chunk):  # bounded memory for large N
        part = embedding_blocks(
            s[start : start + chunk], x_flat[start : start + chunk], onehot[start : start + chunk], freqs, weights
        )
        sums = {b: sums[b] + v for b, v in part.items()} if sums else part
    keys = jax.random.split(key, len(BLOCKS))
    return {
        b: v + noise_multiplier * jax.random.normal(keys[BLOCKS.index(b)], v.shape) for b, v in sorted(sums.items())
    }


def release_target(release: dict[str, jax.Array], weights: dict[str, float]) -> tuple[dict[str, jax.Array], jax.Array]:
    """(the blocks divided by the noisy count, the class prior): both post-processing of the release."""
    counts = release["counts"] / weights["counts"]
    total = jnp.maximum(jnp.sum(jnp.maximum(counts, 0.0)), 1.0)
    return {b: v / total for b, v in release.items() if b != "counts"}, prior.class_prior(counts)


def generator_step(
    module: nn.Module,
    optimizer: optax.GradientTransformation,
    target: dict[str, jax.Array],
    prior: jax.Array,
    freqs: dict[str, jax.Array],
    weights: dict[str, float],
    features: tuple[int, str, float],
    batch: int,
    train_key: jax.Array,
    teacher: dict[str, jax.Array] | None = None,
    guidance: float = 0.0,
) -> Callable[[State, int], tuple[State, jax.Array]]:
    """The jitted generator step (libsgde.ml.train.generator_step): || target - mean_j v(g_j) ||^2 over the
    released blocks (the counts block aside: the labels are drawn from the released prior), plus `guidance` times
    the DP teacher's mean cross-entropy on the samples' labels. Post-processing of the two releases."""
    classes = prior.shape[0]

    def loss_fn(p: Params, labels: jax.Array, key: jax.Array) -> jax.Array:
        images = apply_array(module, p, labels, key, method="relaxed")
        s = scattering.features(images, *features)
        synthetic = embedding_blocks(s, images.reshape(batch, -1), jax.nn.one_hot(labels, classes), freqs, weights)
        mmd = sum((jnp.sum((target[b] - synthetic[b] / batch) ** 2) for b in target), jnp.zeros(()))
        if teacher is None or not guidance:
            return mmd
        logits = s @ teacher["kernel"] + teacher["bias"]
        return mmd - guidance * jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    return train_generator_step(optimizer, prior, batch, train_key, loss_fn)


# -- the teacher ------------------------------------------------------------------------------------------------------


def teacher_clipped_sum(
    params: dict[str, jax.Array], s: jax.Array, onehot: jax.Array, mask: jax.Array, clip_norm: float
) -> tuple[dict[str, jax.Array], jax.Array]:
    """Sum over the real examples (mask 1) of the linear softmax classifier's cross-entropy gradients, each clipped
    to norm `clip_norm`, and the per-example norms. Closed form, no per-example gradient materialised: example i's
    gradient is kernel: s_i (p_i - y_i)^T, bias: p_i - y_i, of norm ||p_i - y_i|| sqrt(||s_i||^2 + 1)."""
    residual = jax.nn.softmax(s @ params["kernel"] + params["bias"]) - onehot
    norms = jnp.linalg.norm(residual, axis=1) * jnp.sqrt(jnp.sum(s * s, 1) + 1.0)
    scaled = residual * (mask * jnp.minimum(1.0, clip_norm / jnp.maximum(norms, 1e-12)))[:, None]
    return {"kernel": s.T @ scaled, "bias": jnp.sum(scaled, 0)}, norms


def teacher_component(noise_multiplier: float, sampling_rate: float, steps: int, clip_norm: float) -> PrivacyComponent:
    return PrivacyComponent(
        purpose=TEACHER,
        kind=POISSON_GAUSSIAN,
        noise_multiplier=noise_multiplier,
        sampling_rate=sampling_rate,
        steps=steps,
        clip_norm=clip_norm,
    )


def teacher_schedule(config: dict[str, Any], n: int) -> tuple[float, int]:
    """(Poisson sampling rate, steps) of the teacher's DP-SGD: public functions of the config and N (a batch above N
    samples everyone: rate 1)."""
    q = min(1.0, config["teacher_batch"] / n)
    return q, max(1, round(config["teacher_epochs"] / q))


def calibrate(
    config: dict[str, Any], n: int, epsilon: float, delta: float
) -> tuple[float, tuple[PrivacyComponent, ...]]:
    """(sigma of the release, the teacher's component or none): the release's sigma from its public share of
    epsilon, then the teacher's sigma so that the composed event has exactly `epsilon` at `delta`."""
    share = config["teacher_share"]
    sigma = accounting.calibrate_gaussian(epsilon * (1.0 - share), delta)
    if not share:
        return sigma, ()
    q, steps, clip = *teacher_schedule(config, n), config["teacher_clip"]
    main = accounting.gaussian_event(sigma)
    sigma_t = accounting.calibrate_event(
        lambda s: accounting.composed_event(main, (teacher_component(s, q, steps, clip),)), epsilon, delta
    )
    return sigma, (teacher_component(sigma_t, q, steps, clip),)


def train_teacher(
    s: jax.Array,
    labels: jax.Array,
    classes: int,
    component: PrivacyComponent,
    learning_rate: float,
    batch_seed: int,
    noise_key: jax.Array,
    on_step: Callable[[int], None] = lambda step: None,
) -> dict[str, jax.Array]:
    """DP-SGD on the linear softmax classifier from zero weights: Poisson batches (from the secret's batch seed),
    clipped sums, N(0, (sigma C)^2) noise divided by the expected batch size, Adam."""
    n, dim = s.shape
    q, steps, clip, sigma = component.sampling_rate, component.steps, component.clip_norm, component.noise_multiplier
    padded = dpsgd.padded_batch_size(n, q)
    onehot = jax.nn.one_hot(labels, classes)
    optimizer = optax.adam(learning_rate)
    params = {"kernel": jnp.zeros((dim, classes)), "bias": jnp.zeros((classes,))}

    @jax.jit
    def step_fn(
        state: tuple[dict[str, jax.Array], optax.OptState], indices: jax.Array, mask: jax.Array, step: jax.Array
    ) -> tuple[dict[str, jax.Array], optax.OptState]:
        p, opt_state = state
        summed, _ = teacher_clipped_sum(p, s[indices], onehot[indices], mask, clip)
        grads = dpsgd.add_noise(jax.random.fold_in(noise_key, step), summed, clip, sigma, q * n)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    state = (params, optimizer.init(params))
    for step in range(steps):
        indices, mask = dpsgd.poisson_batch(np.random.default_rng([batch_seed, step]), n, q, padded)
        state = step_fn(state, indices, mask, step)
        on_step(step + 1)
    return state[0]


# -- the mechanism ----------------------------------------------------------------------------------------------------


class ScatterEmbeddingRelease(Mechanism):
    """One Gaussian release of the scattering-space mean embedding, composed with the DP-SGD teacher."""

    name = "scatter-merf"
    loss_reveals_data = False  # the generator's loss compares it with the released embedding only

    def event(self, noise_multiplier: float, sampling_rate: float = 1.0, steps: int = 1) -> DpEvent:
        if sampling_rate != 1.0 or steps != 1:
            raise FieldError(
                "privacy", "a mean-embedding release is one release of the whole data (sampling rate 1, 1 step)"
            )
        return accounting.gaussian_event(noise_multiplier)

    def required_components(self, config: dict[str, Any]) -> frozenset[str]:
        return frozenset({TEACHER}) if config.get("teacher_share") else frozenset()

    def train(self, run: Run) -> TrainOutcome:
        spec, space, n, config = run.spec, run.space, len(run), run.spec.config
        assert config is not None  # filled in by check_spec
        classes = max(space.num_classes, 1)
        sigma, components = calibrate(config, n, spec.target_epsilon, spec.delta)
        features = feature_settings(space, config)
        weights = block_weights(config)
        freq_key, gen_key, train_key = jax.random.split(run.init_key, 3)
        freqs = frequencies(freq_key, space, config)
        release_key, teacher_key = jax.random.split(run.mechanism_key)
        privacy = self.report(sigma, 1.0, 1, 1.0, n, spec.delta, components=components)
        if run.resumed:  # never release twice: a resumed run reuses the release and the teacher it saved
            extra = dict(run.resumed.extra)
        else:
            started = time.monotonic()
            s = scattering.features_in_chunks(run.x, *features)
            onehot = jax.nn.one_hot(jnp.asarray(run.labels), classes)
            release = noisy_release(release_key, s, jnp.asarray(run.x).reshape(n, -1), onehot, freqs, weights, sigma)
            extra = {f"release/{b}": np.asarray(v) for b, v in release.items()}
            run.report(
                0,
                config["generator_steps"],
                0,
                0.0,
                self.report(sigma, 1.0, 1, 1.0, n, spec.delta).epsilon,  # spent so far: the release alone
                0,
                f"released the scattering-space mean embedding once with noise multiplier {sigma:.4g} "
                f"({time.monotonic() - started:.0f} s for the features)",
                force=True,
            )
            if components:
                (teacher,) = components
                teacher_params = train_teacher(
                    s, jnp.asarray(run.labels), classes, teacher, config["teacher_lr"], run.batch_seed, teacher_key
                )
                extra.update({f"teacher/{k}": np.asarray(v) for k, v in teacher_params.items()})
                run.report(
                    0,
                    config["generator_steps"],
                    0,
                    0.0,
                    privacy.epsilon,
                    0,
                    f"trained the DP-SGD teacher: {teacher.steps} steps, sampling rate {teacher.sampling_rate:.4g}, "
                    f"noise multiplier {teacher.noise_multiplier:.4g}, clip {teacher.clip_norm:g}",
                    force=True,
                )
        release = {k.split("/", 1)[1]: jnp.asarray(v) for k, v in extra.items() if k.startswith("release/")}
        target, prior = release_target(release, weights)

        module = run.arch.module(space, config)
        optimizer = optax.adam(spec.learning_rate)
        params = run.arch.init(gen_key, space, config)
        generator_only = {"generator": params["generator"]}
        state = run.restore((generator_only, optimizer.init(generator_only)))
        batch, total = config["generator_batch"], config["generator_steps"]
        teacher_params = {k.split("/", 1)[1]: jnp.asarray(v) for k, v in extra.items() if k.startswith("teacher/")}
        step_fn = generator_step(
            module,
            optimizer,
            target,
            prior,
            freqs,
            weights,
            features,
            batch,
            train_key,
            teacher_params or None,
            config["teacher_guidance"],
        )
        state, training = fit_generator(
            run,
            step_fn,
            state,
            total,
            batch,
            privacy.epsilon,
            f"epsilon {privacy.epsilon:.4g} at delta {spec.delta:.3g} for everything released; the generator now "
            "trains at no further privacy cost",
            extra,
        )
        trained = dict(state[0])
        if components:
            trained[TEACHER] = teacher_params
        return TrainOutcome(trained, np.asarray(prior), privacy, training)


SCATTER_MERF = ScatterEmbeddingRelease()


# -- the architecture ---------------------------------------------------------------------------------------------


class ScatterMerf(Architecture):
    name = "scatter-merf"
    mechanism = SCATTER_MERF
    kinds = ("image",)
    sampling_scopes = ("generator", TEACHER)

    def options(self, space: ModelSpace) -> dict[str, Option]:
        h, w = space.shape[0], space.shape[1]
        return {
            "scatter_j": Option(scattering.default_j(h, w), 1, scattering.max_j(h, w)),
            "normalisation": Option("by-order", choices=scattering.NORMALISATIONS),
            "tau_fraction": Option(1e-3, 1e-9, 1.0),
            "weight_moment": Option(1.0, 0.0, 1e3),
            "weight_rff": Option(1.0, 0.0, 1e3),
            "weight_pixel": Option(1.0, 0.0, 1e3),
            "weight_counts": Option(1.0, 1e-3, 1e3),  # > 0: the class prior must come from the release
            "features": Option(2000, 2, 200_000),
            "lengthscale": Option(0.25, 1e-3, 1e4),  # in scattering space, where every vector has norm <= 1
            "pixel_features": Option(2000, 2, 200_000),
            # dp-merf's best on digits and Fashion-MNIST (benchmarks/RESULTS.md): 0.2 sqrt(d)
            "pixel_lengthscale": Option(round(0.2 * math.sqrt(math.prod(space.shape)), 3), 1e-3, 1e4),
            "latent_dim": Option(32, 1, 1024),
            "channels": Option([64, 32, 16], 1, 1024),
            "generator_steps": Option(2000, 1, 10_000_000),
            "generator_batch": Option(256, 1, 65536),
            "teacher_share": Option(0.5, 0.0, 0.95),
            "teacher_epochs": Option(50, 1, 10_000),
            "teacher_batch": Option(512, 1, 1 << 20),
            "teacher_clip": Option(1.0, 1e-6, 1e3),
            "teacher_lr": Option(0.2, 1e-6, 10.0),
            "teacher_candidates": Option(4, 1, 64),
            # The generator's loss adds this times the teacher's cross-entropy on its samples (0: matching alone).
            "teacher_guidance": Option(0.0, 0.0, 1e3),
        }

    def configure(self, raw: dict[str, Any] | None, space: ModelSpace) -> dict[str, Any]:
        config = super().configure(raw, space)
        if min(space.shape[:2]) < 2:
            raise ConfigError("architecture", f"{self.name} needs images of at least 2 x 2 pixels")
        if config["teacher_share"] and space.num_classes < 2:
            raise ConfigError("teacher_share", "a teacher needs labelled data with at least 2 classes; set it to 0")
        return config

    def module(self, space: ModelSpace, config: dict[str, Any]) -> nn.Module:
        return ScatterMerfModel(
            space,
            config["latent_dim"],
            tuple(config["channels"]),
            bool(config["teacher_share"]),
            config["teacher_candidates"],
            feature_settings(space, config),
        )

    def _init(self, key: jax.Array, module: nn.Module, space: ModelSpace) -> Params:
        return module.init(key, jnp.zeros((1,), jnp.int32), jax.random.split(key, 1), method="generate")["params"]

    def sampling_params(self, params: Params) -> dict[str, Params]:
        return {scope: params[scope] for scope in self.sampling_scopes if scope in params}
