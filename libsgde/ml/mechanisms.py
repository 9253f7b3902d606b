"""DP mechanisms as objects: each says how to calibrate its noise to a target epsilon, which privacy event it is
(for the accountant), how to report it, and runs the training loop that spends it. An architecture names its
mechanism; nothing else chooses a loop by a string.

- `DPSGD`: Poisson-sampled batches, per-example clipping, Gaussian noise at every step (libsgde.ml.privacy.dpsgd,
  ghost clipping where the layers allow it); accounted as a self-composed Poisson-sampled Gaussian, composed with
  the DP class prior's release (libsgde.ml.privacy.prior) when the config's `class_prior_share` is above 0.
- `MeanEmbeddingRelease` (dp-merf): one Gaussian release of a sum of norm-1 vectors (libsgde.ml.privacy.merf); the
  generator then trains on the release alone, at no further cost.
"""

from __future__ import annotations

import abc
import math
import time
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from libsgde.domain.privacy import GAUSSIAN, PrivacyComponent, PrivacyReport
from libsgde.domain.specs import TrainSpec, dpsgd_steps
from libsgde.errors import FieldError
from libsgde.ml.privacy import accounting, dpsgd, ghost, merf, prior
from libsgde.ml.train import EPSILON_EVERY_S, Run, TrainOutcome, dpmerf_step, dpsgd_step, fit_generator

if TYPE_CHECKING:
    from dp_accounting import DpEvent


class Mechanism(abc.ABC):
    """A privacy mechanism: its name (the manifest's `privacy.mechanism`), calibration, event, report and loop."""

    name: ClassVar[str]
    # Whether the training loss it reports is a function of the private data beyond the release (DP-SGD's batch
    # loss is); the trainer withholds such a loss from users who may train on data but not read it.
    loss_reveals_data: ClassVar[bool] = True

    def check(self, spec: TrainSpec, dataset_size: int) -> None:
        """Refuses (FieldError) a filled-in spec this mechanism cannot run on `dataset_size` examples; by default
        every spec that check_spec accepted runs."""
        return None

    def required_components(self, config: dict[str, Any]) -> frozenset[str]:
        """The purposes of the components a run with this (filled-in) config reports: the registry refuses a
        report that names other ones, so that no release of a run can be left out of its epsilon."""
        return frozenset()

    @abc.abstractmethod
    def event(self, noise_multiplier: float, sampling_rate: float, steps: int) -> DpEvent:
        """The dp-accounting event of a run with these parameters."""

    def report(
        self,
        noise_multiplier: float,
        sampling_rate: float,
        steps: int,
        clip_norm: float,
        dataset_size: int,
        delta: float,
        components: tuple[PrivacyComponent, ...] = (),
    ) -> PrivacyReport:
        """The privacy report of a run with these parameters, composed with its further releases: PLD epsilon
        (RDP where PLD cannot compose them), and RDP as a cross-check."""
        event = accounting.composed_event(self.event(noise_multiplier, sampling_rate, steps), components)
        accountant = accounting.accountant_for(event)
        return PrivacyReport(
            mechanism=self.name,
            epsilon=accounting.event_epsilon(event, delta, accountant),
            delta=delta,
            accountant=accountant,
            noise_multiplier=noise_multiplier,
            sampling_rate=sampling_rate,
            steps=steps,
            clip_norm=clip_norm,
            dataset_size=dataset_size,
            rdp_epsilon=accounting.event_rdp_epsilon(event, delta),
            components=components,
        )

    @abc.abstractmethod
    def train(self, run: Run) -> TrainOutcome:
        """Calibrate the noise to `run.spec.target_epsilon`, train, and report what was spent."""


CLASS_PRIOR_SHARE = "class_prior_share"  # the config option of DP-SGD architectures (0: uniform prior, no release)
# The DP-SGD loop folds its step numbers (0 .. T-1) into the mechanism key; the prior's noise takes another stream.
_PRIOR_STREAM = 2**32 - 1


def release_class_prior(
    run: Run, share: float
) -> tuple[np.ndarray, tuple[PrivacyComponent, ...], dict[str, np.ndarray]]:
    """(class prior [max(K, 1)], its component, checkpoint extras). With share 0 the prior is uniform and nothing is
    released; else the label counts are released once with the noise of a Gaussian mechanism at `share` of the
    target epsilon (accounting.share_noise_multiplier), and a resumed run reuses the counts it saved."""
    classes = max(run.space.num_classes, 1)
    if share <= 0:
        return np.full(classes, 1.0 / classes), (), {}
    sigma = accounting.share_noise_multiplier(share, run.spec.target_epsilon, run.spec.delta)
    if run.resumed and "noisy_counts" in run.resumed.extra:
        counts = jnp.asarray(run.resumed.extra["noisy_counts"])
    else:
        key = jax.random.fold_in(run.mechanism_key, _PRIOR_STREAM)
        counts = prior.noisy_class_counts(key, jnp.asarray(run.labels), classes, sigma)
    component = PrivacyComponent(prior.CLASS_PRIOR_PURPOSE, GAUSSIAN, noise_multiplier=sigma)
    return np.asarray(prior.class_prior(counts)), (component,), {"noisy_counts": np.asarray(counts)}


class DPSGD(Mechanism):
    name = "dp-sgd"

    def check(self, spec: TrainSpec, dataset_size: int) -> None:
        if not 1 <= spec.batch_size <= dataset_size:
            raise FieldError("spec.batch_size", "must be between 1 and the number of training examples")

    def event(self, noise_multiplier: float, sampling_rate: float, steps: int) -> DpEvent:
        return accounting.dpsgd_event(noise_multiplier, sampling_rate, steps)

    def required_components(self, config: dict[str, Any]) -> frozenset[str]:
        return frozenset({prior.CLASS_PRIOR_PURPOSE}) if config.get(CLASS_PRIOR_SHARE, 0.0) > 0 else frozenset()

    def train(self, run: Run) -> TrainOutcome:
        """The DP class prior (if the config asks for it), then Poisson batches padded to a fixed shape,
        per-example clipping (ghost clipping when every layer allows it, else vmap), Gaussian noise calibrated so
        that the whole run (prior included) meets the target epsilon, Adam on the privatised gradient."""
        spec, space, n, config = run.spec, run.space, len(run), run.spec.config
        assert config is not None  # filled in by check_spec
        class_prior, components, extra = release_class_prior(run, config.get(CLASS_PRIOR_SHARE, 0.0))
        q = spec.batch_size / n
        total = dpsgd_steps(spec.epochs, n, spec.batch_size)
        sigma = accounting.calibrate_noise_multiplier(spec.target_epsilon, spec.delta, q, total, fixed=components)

        def spent(steps: int) -> float:  # the running epsilon: the steps so far, composed with the prior
            if not components:
                return accounting.pld_epsilon(sigma, q, steps, spec.delta)
            return self.report(sigma, q, steps, spec.clip_norm, n, spec.delta, components).epsilon

        module = run.arch.module(space, config)
        optimizer = optax.adam(spec.learning_rate)
        params = run.arch.init(run.init_key, space, config)
        state = run.restore((params, optimizer.init(params)))
        padded = dpsgd.padded_batch_size(n, q)
        use_ghost = ghost.is_ghostable(params)
        step_fn = dpsgd_step(
            module,
            optimizer,
            jnp.asarray(run.x),
            jnp.asarray(run.labels),
            padded,
            spec.clip_norm,
            sigma,
            q * n,
            use_ghost,
            run.mechanism_key,
        )

        steps_per_epoch = n / spec.batch_size
        epsilon, epsilon_at = 0.0, -math.inf
        run.report(
            run.start_step,
            total,
            int(run.start_step / steps_per_epoch),
            0.0,
            spent(run.start_step) if run.start_step else 0.0,
            0,
            (f"resumed from step {run.start_step}; " if run.resumed else "")
            + f"noise multiplier {sigma:.4g} for epsilon {spec.target_epsilon:g} at delta {spec.delta:.3g} "
            f"({total} steps, sampling rate {q:.4g}, {'ghost' if use_ghost else 'vmap'} clipping)",
            force=True,
        )
        for step in range(run.start_step, total):
            rng = np.random.default_rng([run.batch_seed, step])
            indices, mask = dpsgd.poisson_batch(rng, n, q, padded)
            state, loss = step_fn(state, indices, mask, step)
            done = step + 1
            if time.monotonic() - epsilon_at >= EPSILON_EVERY_S or done == total:
                epsilon, epsilon_at = spent(done), time.monotonic()
            run.report(
                done, total, int(done / steps_per_epoch), float(loss), epsilon, spec.batch_size, force=done == total
            )
            if done < total:
                run.maybe_checkpoint(done, state, extra)
        training = {
            "steps": total,
            "epochs": spec.epochs,
            "batch_size": spec.batch_size,
            "learning_rate": spec.learning_rate,
            "seed": spec.seed,
            "clipping": "ghost" if use_ghost else "vmap",
            "optimizer": "adam",
        }
        return TrainOutcome(
            state[0], class_prior, self.report(sigma, q, total, spec.clip_norm, n, spec.delta, components), training
        )


class MeanEmbeddingRelease(Mechanism):
    name = "dp-merf"
    loss_reveals_data = False  # the generator's loss compares it with the released (noised) embedding only

    def event(self, noise_multiplier: float, sampling_rate: float = 1.0, steps: int = 1) -> DpEvent:
        if sampling_rate != 1.0 or steps != 1:
            raise FieldError(
                "privacy", "a mean-embedding release is one release of the whole data (sampling rate 1, 1 step)"
            )
        return accounting.gaussian_event(noise_multiplier)

    def train(self, run: Run) -> TrainOutcome:
        """One noisy release of the random-feature mean embedding (sigma calibrated to the target epsilon), then
        the generator trains against it with Adam, at no further privacy cost."""
        spec, space, n, config = run.spec, run.space, len(run), run.spec.config
        assert config is not None  # filled in by check_spec
        sigma = accounting.calibrate_gaussian(spec.target_epsilon, spec.delta)
        dim = math.prod(space.shape)
        classes = max(space.num_classes, 1)
        freq_key, gen_key = jax.random.split(run.init_key)
        freqs = merf.frequencies(freq_key, dim, config["features"], config["lengthscale"])
        if run.resumed:  # never release the embedding twice: a resumed run reuses the one it saved
            emb, counts = jnp.asarray(run.resumed.extra["embedding"]), jnp.asarray(run.resumed.extra["counts"])
        else:
            onehot = jax.nn.one_hot(jnp.asarray(run.labels), classes)
            emb, counts = merf.noisy_release(
                run.mechanism_key, jnp.asarray(run.x).reshape(n, dim), onehot, freqs, sigma
            )
        class_prior = prior.class_prior(counts)
        target = emb / jnp.maximum(jnp.sum(jnp.maximum(counts, 0.0)), 1.0)
        module = run.arch.module(space, config)
        optimizer = optax.adam(spec.learning_rate)
        params = run.arch.init(gen_key, space, config)
        state = run.restore((params, optimizer.init(params)))
        batch, total = config["generator_batch"], config["generator_steps"]
        step_fn = dpmerf_step(module, optimizer, target, class_prior, freqs, batch, jax.random.fold_in(run.init_key, 1))

        privacy = self.report(sigma, 1.0, 1, 1.0, n, spec.delta)
        state, training = fit_generator(
            run,
            step_fn,
            state,
            total,
            batch,
            privacy.epsilon,
            f"released the mean embedding once with noise multiplier {sigma:.4g} (epsilon {privacy.epsilon:.4g} at "
            f"delta {spec.delta:.3g}); the generator now trains at no further privacy cost",
            {"embedding": np.asarray(emb), "counts": np.asarray(counts)},
        )
        return TrainOutcome(state[0], np.asarray(class_prior), privacy, training)


DP_SGD = DPSGD()
DP_MERF = MeanEmbeddingRelease()
