"""`sgde demo`: two data silos' worth of DP generators, trained, published, sampled and judged, on one machine.

On data that ships with scikit-learn (digits: 8x8 images, 10 classes; breast_cancer: 30 measurements and a diagnosis),
in a fresh $SGDE_HOME under the report folder, the demo

1. starts the registry, the trainer and the sampler on free loopback ports (libsgde.server.launch), over mutual TLS
   with a fresh development PKI, in this process; they stop at the end, on an error and on Ctrl-C too;
2. registers and logs in a user and writes each data set to a file (a held-out split kept aside), with a schema whose
   bounds are PUBLIC facts, never read from the data;
3. trains one DP generator per data set in the trainer service (upload, CreateJob, watch, then sign here and publish),
   at the target epsilon, and shows the privacy report the registry holds for each version;
4. samples synthetic data through the sampler service (or, with sample_via='local', by pulling the verified
   artifacts and sampling them here);
5. trains classifiers on the synthetic data and tests them on the held-out real data (TSTR), beside the same
   classifiers trained on the real training split (TRTR);
6. splits digits across three silos (three users), which form a federation, each training and pushing a DP
   generator; the first silo measures what membership buys it (libsgde/cli/demo_federation.py);
7. writes `digits_samples.png`, `breast_cancer_marginals.png`, `federation/`, `summary.md` and `summary.json`.

`run_demo(out, tiny=True)` is the same walk with tiny models and few samples, for the tests.
"""

from __future__ import annotations

import json
import math
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from libsgde.cli.demo_data import (
    BREAST_CANCER_CLASSES,
    DIGITS_CLASSES,
    DIGITS_PIXEL_MAX,
    Split,
    breast_cancer_upper,
    prepare_data,
)
from libsgde.cli.demo_federation import run_federation
from libsgde.cli.demo_report import machine_info, plot_digits, plot_marginals, summary_markdown
from libsgde.client import Client
from libsgde.domain.resources import Job, JobState, ModelVersion
from libsgde.errors import SgdeError
from libsgde.evaluate.utility import utility
from libsgde.security import signing, tls
from libsgde.wire.convert import job_state_text

Log = Callable[[str], None]
MARKER = ".sgde-demo"  # marks a home the demo made, which a later run may replace

# Settings for `tiny`: a job trains in a second or two.
TINY_CONFIG = {
    "dp-merf": {"hidden": [32], "latent_dim": 4, "features": 200, "generator_steps": 60, "generator_batch": 64},
    "cvae": {"hidden": [16], "latent_dim": 2},
}


# -- services -------------------------------------------------------------------------------------------------------


def _fresh_home(home: Path) -> None:
    """An empty $SGDE_HOME: a home left by an earlier demo is replaced; any other non-empty folder is refused."""
    if home.exists() and any(home.iterdir()):
        earlier = (home / MARKER).exists() or ((home / "pki").is_dir() and (home / "registry").is_dir())
        if not earlier:
            raise DemoError(f"{home} exists and was not made by the demo; choose another --out")
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    (home / MARKER).write_text("made by `sgde demo`; the next run replaces this folder\n")


@dataclass
class Addresses:
    registry: str
    trainer: str
    sampler: str


@contextmanager
def services(home: Path, pki: tls.PkiPaths, log: Log) -> Iterator[Addresses]:
    """Registry, trainer and sampler on free loopback ports, in this process, through the same launcher as `sgde up`
    (their config's defaults, not the caller's environment); stopped on the way out (normal end, error or Ctrl-C),
    callers first so that streams end and jobs stop while the registry still answers."""
    from libsgde.server import launch

    # Port 0: each server binds a free port itself (a port picked beforehand could be taken in between, e.g. as the
    # source port of another service's connection); the addresses come from what they bound.
    common = {"listen": "127.0.0.1:0", "pki": pki, "metrics_port": 0, "health_port": 0}
    running = launch.start_embedded(
        {
            "registry": {
                "database_url": f"sqlite:///{home / 'registry' / 'registry.db'}",
                "blob_url": (home / "registry" / "blobs").as_uri(),
                "token_key": home / "registry" / "token-signing.pem",
                **common,
            },
            "trainer": {"state_dir": home / "trainer", **common},
            "sampler": {"state_dir": home / "sampler", **common},
        },
        environment=False,
    )
    listen = {name: f"127.0.0.1:{service.handle.port}" for name, service in running.items()}
    try:
        for name in launch.ORDER:
            log(f"{name} on {listen[name]}")
        log(f"all over mutual TLS (development CA {pki.ca_cert})")
        yield Addresses(listen["registry"], listen["trainer"], listen["sampler"])
    finally:
        launch.stop_all(running, grace=2)


# -- training -------------------------------------------------------------------------------------------------------


class DemoError(SgdeError):
    """The demo cannot go on; the message says why."""


def _spec(arch: str, split: Split, epsilon: float, delta: float, tiny: bool, seed: int):
    from libsgde.io.training import TrainSpec

    config = dict(TINY_CONFIG[arch]) if tiny else None  # None: the architecture's defaults
    extra = {"epochs": 1, "batch_size": 64} if tiny and arch == "cvae" else {}
    return TrainSpec(arch, epsilon, config=config, delta=delta, seed=seed, **extra)


def train_and_publish(client: Client, split: Split, spec, model: str, log: Log) -> tuple[Job, ModelVersion]:
    """Upload, CreateJob, watch (progress printed about every tenth of the run), sign here and publish."""
    dataset = client.upload_dataset(split.path)
    job = client.create_job(spec, split.schema, dataset, model)
    log(
        f"  {split.name}: uploaded {split.path.name} ({dataset.size_bytes:,} bytes) as {dataset.name}; "
        f"{job.name} ({spec.architecture}, target epsilon {spec.target_epsilon:g})"
    )
    next_tenth = 1
    for event in client.watch_job(job.name):
        if event.message:
            log(f"  {split.name}: {event.message}")
        if event.total_steps and event.step and event.step * 10 >= next_tenth * event.total_steps:
            next_tenth = event.step * 10 // event.total_steps + 1
            log(
                f"  {split.name}: step {event.step}/{event.total_steps}  loss {event.loss:.4g}  "
                f"epsilon {event.epsilon_spent:.3g}  ETA {event.eta_seconds:.0f} s"
            )
    job = client.get_job(job.name)
    if job.state != JobState.SUCCEEDED:
        raise DemoError(f"training {split.name} ended {job_state_text(job.state)}: {job.error or 'no error given'}")
    job = client.publish_job(job.name)
    return job, client.get_version(job.published_version)


def _privacy(version: ModelVersion) -> dict:
    p = version.privacy
    return {
        "epsilon": p.epsilon,
        "delta": p.delta,
        "mechanism": p.mechanism,
        "accountant": p.accountant,
        "rdp_epsilon": p.rdp_epsilon,
        "noise_multiplier": p.noise_multiplier,
        "dataset_size": p.dataset_size,
        "components": [c.describe() for c in p.components],
    }


# -- sampling -------------------------------------------------------------------------------------------------------


def _digits_labels(n: int) -> np.ndarray:
    """n labels, class-balanced (the first n % 10 classes get one more)."""
    return np.sort(np.arange(n, dtype=np.int32) % len(DIGITS_CLASSES))


def pull_and_sample(client: Client, version: str, dest: Path, n: int, seed: int, labels: np.ndarray | None = None):
    """Pulls the version (sha256 and the owner's signature verified) and samples it here."""
    from libsgde.io.generator import load_generator

    path, _ = client.pull(version, dest)
    return load_generator(path).sample(n, seed=seed, labels=labels)


def sample_service(
    client: Client, version: str, n: int, seed: int, class_names: list[str], labels: np.ndarray | None = None
):
    """Asks the sampler service (`Client.sample`, NPY, checked against its sha256); returns what
    `Generator.sample` returns: values (images [n, H, W, C], or {column: array}) and int32 labels. With `labels`,
    exactly that many of each class (grouped by class)."""
    counts = None
    if labels is not None:
        counts = {class_names[k]: int(c) for k, c in enumerate(np.bincount(labels, minlength=len(class_names))) if c}
    samples = client.sample(version, 0 if counts else n, seed=seed, class_counts=counts, format="npy")
    return samples.values, np.asarray(samples.labels, np.int32)


# -- evaluation -----------------------------------------------------------------------------------------------------

# The demo's summary names the classifiers in full; libsgde.evaluate calls them logreg and mlp.
CLASSIFIER_NAMES = {"logreg": "logistic_regression", "mlp": "mlp"}


def _as_images(x: np.ndarray) -> np.ndarray:
    """Digits (pixel counts 0..16, [N, 8, 8] or [N, 8, 8, 1]) in model space: [N, 8, 8, 1] in [0, 1]."""
    return np.asarray(x, np.float32).reshape(len(x), 8, 8, 1) / DIGITS_PIXEL_MAX


def evaluate_digits(split: Split, images: np.ndarray, labels: np.ndarray) -> dict:
    """TSTR vs TRTR with logistic regression, per class too (libsgde.evaluate.utility)."""
    [r] = utility(
        _as_images(images),
        labels,
        _as_images(split.x_test),
        split.y_test,
        len(DIGITS_CLASSES),
        x_real=_as_images(split.x_train),
        y_real=split.y_train,
        classifiers=["logreg"],
        image_shape=(8, 8, 1),
    )
    name = CLASSIFIER_NAMES[r.classifier]
    return {
        "classifier": name,
        "test_size": len(split.y_test),
        "tstr": {name: r.tstr_accuracy},
        "trtr": {name: r.trtr_accuracy},
        "per_class": {"classes": DIGITS_CLASSES, "tstr": r.tstr_per_class, "trtr": r.trtr_per_class},
    }


def evaluate_breast_cancer(split: Split, values: dict, labels: np.ndarray, tiny: bool) -> dict:
    """TSTR vs TRTR with logistic regression and an MLP (libsgde.evaluate.utility)."""
    x_syn = np.stack([np.asarray(values[name], np.float64) for name in split.feature_names], axis=1)
    results = utility(
        x_syn,
        labels,
        split.x_test,
        split.y_test,
        len(BREAST_CANCER_CLASSES),
        x_real=split.x_train,
        y_real=split.y_train,
        classifiers={"logreg": {}, "mlp": {"max_iter": 50 if tiny else 500}},
    )
    return {
        "classifiers": sorted(CLASSIFIER_NAMES[r.classifier] for r in results),
        "test_size": len(split.y_test),
        "tstr": {CLASSIFIER_NAMES[r.classifier]: r.tstr_accuracy for r in results},
        "trtr": {CLASSIFIER_NAMES[r.classifier]: r.trtr_accuracy for r in results},
        "synthetic_class_counts": dict(zip(BREAST_CANCER_CLASSES, np.bincount(labels, minlength=2).tolist())),
    }


# -- the walk -------------------------------------------------------------------------------------------------------


class _Timer:
    """Seconds per named phase."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 2)


def run_demo(
    out: Path,
    log: Log = print,
    *,
    epsilon: float = 5.0,
    delta: float = 1e-5,
    arch: str = "dp-merf",
    samples: int = 2000,
    tiny: bool = False,
    seed: int = 0,
    sample_via: str = "service",
) -> dict:
    """The walk described in the module docstring; returns what summary.json holds.

    `samples` synthetic rows / images per data set (100 with `tiny` unless given smaller); `sample_via` "service"
    (the sampler streams them) or "local" (pull the verified artifacts and sample them here)."""
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise DemoError(f"epsilon must be a finite number > 0 (got {epsilon})")
    if samples < 20:
        raise DemoError(f"ask for at least 20 samples (got {samples})")
    if sample_via not in ("service", "local"):
        raise DemoError("sample_via is service or local")
    if tiny:
        samples = min(samples, 100)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    home = out / "home"
    started = time.perf_counter()
    timer = _Timer()
    _fresh_home(home)
    pki = tls.init_pki(home / "pki")
    models: dict[str, dict] = {}
    evaluation: dict[str, dict] = {}
    with services(home, pki, log) as addresses, ExitStack() as stack:
        timer.seconds["start_services"] = round(time.perf_counter() - started, 2)
        use_service = sample_via == "service"
        client = stack.enter_context(
            Client(
                addresses.registry,
                trainer=addresses.trainer,
                sampler=addresses.sampler,
                home=home / "user",
                pki=pki.root,
            )
        )
        user = f"demo-{secrets.token_hex(3)}"
        password = secrets.token_urlsafe(18)
        registered = client.register(user, f"{user}@example.org", password)
        client.login(user, password)
        log(f"registered and logged in {user} (signing key {signing.fingerprint(registered.signing_public_key)})")

        with timer.phase("prepare_data"):
            data = prepare_data(out / "data", seed)
        for split in data.values():
            log(
                f"{split.name}: {len(split.y_train)} training examples in {split.path.relative_to(out)}, "
                f"{len(split.y_test)} held out; schema {split.name}.schema.json (public bounds)"
            )

        versions: dict[str, ModelVersion] = {}
        for name, split in data.items():
            with timer.phase(f"train_{name}"):
                log(f"training {name}: {arch} at epsilon {epsilon:g}, delta {delta:g}, in the trainer")
                spec = _spec(arch, split, epsilon, delta, tiny, seed)
                job, version = train_and_publish(client, split, spec, f"{name.replace('_', '-')}-{arch}", log)
            versions[name] = version
            models[name] = {
                "version": version.name,
                "architecture": version.architecture,
                "job": job.name,
                "sha256": version.sha256,
                "size_bytes": version.size_bytes,
                "privacy": _privacy(version),
            }
            p = version.privacy
            log(
                f"published {version.name} (signed by {user}): epsilon {p.epsilon:.4g} at delta {p.delta:.3g}, "
                f"mechanism {p.mechanism}, accountant {p.accountant} (RDP cross-check {p.rdp_epsilon:.4g}), "
                f"N = {p.dataset_size}" + "".join(f"; with {c.describe()}" for c in p.components)
            )
            if p.epsilon > epsilon + 1e-9:
                raise DemoError(f"{version.name} reports epsilon {p.epsilon} above the target {epsilon}")

        path = (
            "the sampler service (Client.sample)"
            if use_service
            else "Client.pull + load_generator (verified, sampled here)"
        )
        with timer.phase("sample"):
            log(f"sampling {samples} per data set via {path}")
            labels = _digits_labels(samples)
            if use_service:
                images, d_labels = sample_service(
                    client, versions["digits"].name, samples, seed + 1, DIGITS_CLASSES, labels
                )
                c_values, c_labels = sample_service(
                    client, versions["breast_cancer"].name, samples, seed + 2, BREAST_CANCER_CLASSES
                )
            else:
                pulled = out / "pulled"
                pulled.mkdir(exist_ok=True)
                images, d_labels = pull_and_sample(client, versions["digits"].name, pulled, samples, seed + 1, labels)
                c_values, c_labels = pull_and_sample(client, versions["breast_cancer"].name, pulled, samples, seed + 2)
                log(f"pulled both artifacts into {pulled.relative_to(out)}: sha256 and {user}'s signature verified")
        with timer.phase("evaluate"):
            evaluation["digits"] = evaluate_digits(data["digits"], images, d_labels)
            evaluation["breast_cancer"] = evaluate_breast_cancer(data["breast_cancer"], c_values, c_labels, tiny)
        for name, ev in evaluation.items():
            log(
                f"{name}: "
                + ", ".join(f"{clf} TSTR {ev['tstr'][clf]:.3f} vs TRTR {ev['trtr'][clf]:.3f}" for clf in ev["tstr"])
            )
        with timer.phase("figures"):
            eps_d, eps_c = versions["digits"].privacy.epsilon, versions["breast_cancer"].privacy.epsilon
            plot_digits(
                out / "digits_samples.png",
                images,
                d_labels,
                f"synthetic digits, one row per class\n{versions['digits'].name}\n({arch}, epsilon "
                f"{eps_d:.3g}, delta {delta:g})",
            )
            plot_marginals(
                out / "breast_cancer_marginals.png",
                data["breast_cancer"],
                c_values,
                f"breast_cancer: real training split vs synthetic ({arch}, epsilon {eps_c:.3g}, delta {delta:g})",
            )
        with timer.phase("federation"):

            def make_client(silo: str) -> Client:
                other = stack.enter_context(
                    Client(
                        addresses.registry,
                        trainer=addresses.trainer,
                        sampler=addresses.sampler,
                        home=home / silo,
                        pki=pki.root,
                    )
                )
                name, secret = f"demo-{silo}-{secrets.token_hex(3)}", secrets.token_urlsafe(18)
                other.register(name, f"{name}@example.org", secret)
                other.login(name, secret)
                return other

            federation = run_federation(
                client,
                make_client,
                data["digits"],
                out,
                spec=_spec(arch, data["digits"], epsilon, delta, tiny, seed),
                train_and_publish=train_and_publish,
                classifiers=["logreg"] if tiny else ["logreg", "mlp"],
                seed=seed,
                log=log,
            )
        log("stopping the services")
    seconds = round(time.perf_counter() - started, 2)
    summary = {
        "target_epsilon": epsilon,
        "delta": delta,
        "architecture": arch,
        "tiny": tiny,
        "seed": seed,
        "samples_per_dataset": samples,
        "sample_path": "service" if use_service else "local",
        "sample_path_detail": path,
        "services": asdict(addresses),
        "user": user,
        "models": models,
        "evaluation": evaluation,
        "federation": federation,
        "schemas": {
            "digits": {"pixel_max": DIGITS_PIXEL_MAX, "source": "the format's definition: pixels are counts 0..16"},
            "breast_cancer": {
                "lower": 0.0,
                "upper": {n: breast_cancer_upper(n) for n in data["breast_cancer"].feature_names},
                "source": "public domain limits written as constants in libsgde/cli/demo_data.py, "
                "not the data's maxima",
            },
        },
        "timings_seconds": {**timer.seconds, "total": seconds},
        "machine": machine_info(),
        "files": [
            "summary.md",
            "summary.json",
            "digits_samples.png",
            "breast_cancer_marginals.png",
            "data/digits.schema.json",
            "data/breast_cancer.schema.json",
            "federation/report.md",
            "federation/report.json",
            "federation/membership.png",
        ],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))
    log(f"done in {seconds} s; report in {out / 'summary.md'}")
    return summary


if __name__ == "__main__":  # python -m libsgde.cli.walkthrough [OUT]
    run_demo(Path(sys.argv[1] if len(sys.argv) > 1 else "sgde-demo"))
