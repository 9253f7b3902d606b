"""What an attacker gets of one silo's training images: from its FedAvg and DP-FedAvg updates (Inverting Gradients,
inversion.py) and from its published SGDE generator (the nearest of a million samples to each image, and the
project's membership-inference audit).

The attacked client is silo 0 of a split; its first 8 training images are the targets (batch 1 attacks each one,
batch 4 the first two groups of four, batch 8 all eight). The FedAvg update is the first round's: the clients
start from the initial global model (model.init with the protocol's seed) and take 1 or 5 local SGD steps at the
non-private arms' learning rate. The DP-FedAvg update is silo 0's at the least noise the benchmark ran (its largest
epsilon's noise multiplier, clip 1), so the attack is as strong as the benchmark lets it be.

The generator is trained as silo 0's SGDE generator was (its rows, the same architecture, settings, epsilon and
seed), in-process through the product's training path (libsgde.io.training.train, the function the trainer
service runs); its samples stream in chunks and only the nearest to each target is kept.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import numpy as np

from benchmarks.cross_silo import image_metrics, inversion, model
from benchmarks.cross_silo.data import Data
from benchmarks.cross_silo.sgde_arm import DELTA, GENERATORS, write_silo_file
from benchmarks.cross_silo.silos import SiloView, silo_views
from benchmarks.cross_silo.splits import Split

TARGETS = 8
CHUNK = 20_000


def _generator(data: Data, silo: SiloView, architecture: str, epsilon: float, seed: int, workdir: Path) -> Path:
    from libsgde.domain.specs import TrainSpec
    from libsgde.io.datasets import load_dataset
    from libsgde.io.training import train

    path = write_silo_file(silo, data.source.schema, workdir / "leakage-data")
    settings = GENERATORS.get((data.name, architecture), {"config": {}})
    spec = TrainSpec(architecture, epsilon, delta=DELTA, seed=seed + silo.index, **settings)
    artifact = workdir / f"leakage-silo0-{architecture}-e{epsilon:g}.safetensors"
    train(load_dataset(path, data.source.schema), data.source.schema, spec, artifact)
    return artifact


def _samples(artifact: Path, total: int, pixel_max: float) -> Iterator[np.ndarray]:
    """`total` samples of the artifact (labels from its DP class prior) in chunks, as images in [0, 1]."""
    from libsgde.client import sample_local

    for i, start in enumerate(range(0, total, CHUNK)):
        chunk = sample_local(artifact, num_samples=min(CHUNK, total - start), seed=i)
        yield np.asarray(chunk.values, np.float32) / pixel_max


def sgde_exposure(
    data: Data, silo: SiloView, architecture: str, epsilon: float, seed: int, workdir: Path, samples: int
) -> tuple[dict, np.ndarray]:
    """The nearest of `samples` generated images to each target (PSNR / SSIM) and the membership-inference audit
    of silo 0's generator (its training rows against its held-out rows, 10,000 samples)."""
    from libsgde.evaluate.audit import audit

    targets = silo.x[:TARGETS]
    started = time.perf_counter()
    artifact = _generator(data, silo, architecture, epsilon, seed, workdir)
    trained_s = time.perf_counter() - started
    pixel_max = float(data.source.schema.image.pixel_max)
    chunks = _samples(artifact, samples, pixel_max)
    first = next(chunks)  # the audit's samples: the search's first chunk, not generated again
    nearest, psnr, ssim = image_metrics.nearest_samples(targets, itertools.chain([first], chunks))
    synthetic = first[:10_000].reshape(-1, silo.x[0].size)
    verdict = audit(
        silo.x.reshape(len(silo), -1), silo.x_holdout.reshape(len(silo.x_holdout), -1), synthetic, seed=seed
    )
    return {
        "architecture": architecture,
        "epsilon": epsilon,
        "samples_searched": samples,
        "psnr": float(np.mean(psnr)),
        "ssim": float(np.mean(ssim)),
        "psnr_each": [float(v) for v in psnr],
        "mia_auc": verdict.mia_auc,
        "mia_auc_lower": verdict.mia_auc_lower,
        "mia_calibrated_auc": verdict.mia_calibrated_auc,
        "audit_members": verdict.members,
        "audit_flagged": verdict.flagged,
        "generator_seconds": trained_s,
        "seconds": time.perf_counter() - started,
    }, nearest


def run_leakage(
    data: Data,
    split: Split,
    *,
    architecture: str,
    epsilons: tuple[float, ...],
    dp_noise_multiplier: float | None,
    learning_rate: float,
    seed: int,
    workdir: Path,
    out: Path,
    samples: int = 1_000_000,
    attack: inversion.AttackConfig | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """The attacks on silo 0's updates, its generator's exposure at each epsilon, and the figure (out)."""
    spec = data.model_spec()
    silo = silo_views(data, split)[0]
    targets, labels = silo.x[:TARGETS], silo.y[:TARGETS]
    params = model.init(spec, jax.random.key(seed))
    log(f"leakage: Inverting Gradients on silo 0's updates ({TARGETS} images, batch 1/4/8, 1 and 5 local steps)")
    dp = None if dp_noise_multiplier is None else (dp_noise_multiplier, 1.0)
    results, reconstructions = inversion.run_attacks(
        spec, params, targets, labels, learning_rate=learning_rate, dp=dp, config=attack or inversion.AttackConfig(),
        seed=seed,
    )  # fmt: skip
    results["sgde_nearest"] = {}
    nearest = None
    for eps in epsilons:
        log(f"leakage: silo 0's {architecture} generator at epsilon {eps:g}, nearest of {samples:,} samples")
        results["sgde_nearest"][f"eps={eps:g}"], nearest = sgde_exposure(
            data, silo, architecture, eps, seed, workdir, samples
        )
    shown = {k: v for k, v in reconstructions.items() if "b=1 " in k or "b=8 " in k}
    inversion.figure(targets, shown, nearest, out)
    results["figure"] = out.name
    results["attacked"] = {"split": split.spec.name, "silo": 0, "images": TARGETS}
    return results
