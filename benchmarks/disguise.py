"""Class disguise (issue 17): does a locally trained translator hide which classes a remote classifier learns?

    python benchmarks/disguise.py [--quick] [--dataset digits fashion-mnist] [--translator-minutes 4]
        [--translator-epsilon 10] [--sgde-arch dp-merf] [--sgde-epsilon 1 10] [--sgde-minutes 3]
        [--cloud logreg|mlp] [--seed 0] [--out DIR]

The owner holds labelled images of two HIDDEN classes and of two PUBLIC ones. It trains the `translator`
architecture (libsgde.io.training.train, DP-SGD at the stated epsilon, on all four classes) and sends the cloud its
hidden-class training images disguised (translated, labels mapped to the public classes); the cloud trains a
classifier on them alone. Beside it, SGDE's own answer: a DP generator trained on the hidden-class images, whose
synthetic images, relabelled to the public names, are what the cloud receives instead. Per data set and arm:

1. pipeline accuracy on held-out REAL hidden-class images (translator + cloud classifier; for SGDE, the cloud
   classifier on the real images), beside the same classifier trained on the real hidden images directly;
2. leakage, from the cloud's side: (a) probe AUC, received vs genuine public-class images; (b) k-means on the
   received images vs the true hidden classes (ARI, best-matching accuracy); (c) 10 genuine labelled hidden images
   per class -> a classifier on PCA features of the received images (accuracy; and naming of the received labels);
   the arm "no disguise" (the raw hidden images, relabelled) is the reference the disguise is measured against;
3. translator training time (wall and CPU seconds of the process).

Protocol: the splits are fixed by the seed (digits: stratified 75/25; Fashion-MNIST: its own train/test files), the
classes are fixed below before any result was seen, every classifier's settings are fixed in
benchmarks/_disguise_metrics.py, and a time budget becomes a fixed number of steps before training (utility.plan),
so nothing is chosen on a test set. Writes DIR/results.json and DIR/report.md (default bench-out/disguise).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import _disguise_metrics as m
from benchmarks.utility import (
    DIGITS_CLASSES,
    FASHION_CLASSES,
    FASHION_DIR,
    ensure_fashion_mnist,
    image_schema,
    machine,
    machine_line,
    plan,
)
from libsgde.io.encoding import encoder_for
from libsgde.io.generator import load_generator
from libsgde.io.training import TrainSpec, train

# (hidden, public) classes of each data set, as indices of its published class list, fixed before any run.
# digits: the reference system's own example (hidden 0 and 1 shown as 2 and 3).
# Fashion-MNIST: the same rule as digits, the first two classes hidden and the next two public: T-shirt/top ->
# Pullover and Trouser -> Dress. Both tasks are easy two-way tasks (as 0 vs 1 and 2 vs 3 are), so the pipeline
# measures the disguise rather than a hard task, and each hidden class goes to the public class of the most similar
# silhouette (tops to tops, long garments to long garments), the pairing most favourable to the disguise.
TASKS = {
    "digits": {"classes": DIGITS_CLASSES, "hidden": [0, 1], "public": [2, 3]},
    "fashion-mnist": {"classes": FASHION_CLASSES, "hidden": [0, 1], "public": [2, 3]},
}
DATASETS = tuple(TASKS)


class Task:
    """One data set restricted to its hidden and public classes, relabelled 0..3 in the order hidden + public, with
    raw pixels (what the owner holds) and its schema of those four classes."""

    def __init__(self, name: str, x_train, y_train, x_test, y_test, pixel_max: int):
        spec = TASKS[name]
        order = spec["hidden"] + spec["public"]
        self.name, self.pixel_max = name, pixel_max
        self.class_names = [spec["classes"][c] for c in order]
        k = len(spec["hidden"])
        self.hidden, self.public = list(range(k)), list(range(k, 2 * k))
        self.to_hidden = {p: h for h, p in zip(self.hidden, self.public, strict=True)}  # public -> hidden
        remap = np.full(max(len(spec["classes"]), 1), -1)
        remap[order] = np.arange(len(order))

        def keep(x, y):
            y = remap[y]
            return x[y >= 0], y[y >= 0].astype(np.int32)

        self.x_train, self.y_train = keep(x_train, y_train)
        self.x_test, self.y_test = keep(x_test, y_test)
        h, w = self.x_train.shape[1:3]
        self.schema = image_schema(h, w, pixel_max, self.class_names)

    def split(self, part: str, classes: list[int]):
        x, y = (self.x_train, self.y_train) if part == "train" else (self.x_test, self.y_test)
        mask = np.isin(y, classes)
        return x[mask], y[mask]

    def model(self, images: np.ndarray) -> np.ndarray:
        """Raw pixels -> flattened model space (pixel / pixel_max), what every classifier here sees."""
        return m.flat(np.asarray(images, np.float32) / np.float32(self.pixel_max))


def _read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_task(name: str, seed: int, fashion_dir: Path) -> Task:
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        xtr, xte, ytr, yte = train_test_split(
            d.images.astype(np.uint8), d.target, test_size=0.25, random_state=seed, stratify=d.target
        )
        return Task(name, xtr, ytr, xte, yte, 16)
    folder = ensure_fashion_mnist(fashion_dir)

    def read(name: str) -> np.ndarray:
        return _read_idx(folder / name)

    return Task(
        name,
        read("train-images-idx3-ubyte.gz"),
        read("train-labels-idx1-ubyte.gz"),
        read("t10k-images-idx3-ubyte.gz"),
        read("t10k-labels-idx1-ubyte.gz"),
        255,
    )


# -- training through libsgde -----------------------------------------------------------------------------------------


def train_model(spec: TrainSpec, schema, images, labels, budget_s: float, path: Path) -> dict:
    """Plan `spec` for `budget_s` (a fixed number of steps), train it by libsgde.io.training.train and time it."""
    data = encoder_for(schema).encode(images, labels)
    spec, planned = plan(spec, schema, len(data), budget_s)
    print(
        f"    {spec.architecture} eps {spec.target_epsilon:g} on {len(data)} images: step "
        f"{planned['step_s'] * 1e3:.1f} ms -> {planned['steps']} steps (budget {budget_s / 60:.1f} min)",
        flush=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    wall, cpu = time.perf_counter(), time.process_time()
    result = train(data, schema, spec, path)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    p = result.privacy
    print(f"    trained in {wall:.1f} s ({cpu:.0f} CPU s), epsilon {p.epsilon:.3g} at delta {p.delta:.2g}", flush=True)
    return {
        "path": str(path),
        "train_s": wall,
        "train_cpu_s": cpu,
        "plan": {k: v for k, v in planned.items() if k != "spec"},
        "privacy": {"epsilon": p.epsilon, "delta": p.delta, "steps": p.steps, "noise_multiplier": p.noise_multiplier},
        "config": result.manifest.config,
    }


# -- the cloud ---------------------------------------------------------------------------------------------------------


class Cloud:
    """The cloud's classifier, fit on what it receives. When libsgde.io.classifier exists, it is exported to the
    safe classifier format and read back, and the pipeline's predictions come from that file (the product path)."""

    def __init__(self, task: Task, kind: str, seed: int, x_model: np.ndarray, labels: np.ndarray, folder: Path):
        self.task = task
        self.estimator = m.classifier(kind, seed).fit(x_model, labels)
        self.file_note = "sklearn in process (libsgde.io.classifier not available)"
        self.loaded = None
        try:
            from libsgde.io import classifier as safe
        except ImportError:
            return
        try:
            path = folder / "cloud-classifier.safetensors"
            folder.mkdir(parents=True, exist_ok=True)
            safe.write_classifier(path, safe.from_sklearn(self.estimator, task.schema), task.schema)
            self.loaded = safe.load_classifier(path)
            self.file_note = f"{path.name} through libsgde.io.classifier"
        except Exception as e:  # noqa: BLE001 (any refusal: measure with the estimator; the report says why)
            self.file_note = f"sklearn in process (export failed: {type(e).__name__}: {e})"

    def predict(self, raw_images: np.ndarray) -> np.ndarray:
        ours = self.estimator.predict(self.task.model(raw_images))
        if self.loaded is None:
            return ours
        theirs = np.asarray(self.loaded.predict(raw_images))
        if not np.array_equal(theirs, ours):
            self.file_note += f" (differs from sklearn on {int(np.sum(theirs != ours))} of {len(ours)} images)"
        return theirs


# -- the arms ----------------------------------------------------------------------------------------------------------


def common(task: Task, seed: int) -> dict:
    """What every arm shares: the real hidden/public splits, the attacker's 10 labelled genuine hidden images per
    class (drawn from the hidden TEST images: the attacker's own, never the owner's training images)."""
    xh_tr, yh_tr = task.split("train", task.hidden)
    xh_te, yh_te = task.split("test", task.hidden)
    xp_tr, _ = task.split("train", task.public)
    xp_te, yp_te = task.split("test", task.public)
    known = m.few_shot_sample(yh_te, m.FEW_SHOT_PER_CLASS, seed)
    names = ("xh_tr", "yh_tr", "xh_te", "yh_te", "xp_tr", "xp_te", "yp_te", "known_x", "known_y")
    return dict(zip(names, (xh_tr, yh_tr, xh_te, yh_te, xp_tr, xp_te, yp_te, xh_te[known], yh_te[known]), strict=True))


def arm_leakage(task: Task, c: dict, received, received_labels, truth, held_out, seed: int) -> dict:
    return m.leakage(
        task.model(received),
        np.asarray(received_labels),
        np.asarray(truth),
        task.model(held_out),
        task.model(c["xp_tr"]),
        task.model(c["xp_te"]),
        task.model(c["known_x"]),
        c["known_y"],
        seed,
    )


def translator_arm(task: Task, c: dict, epsilon: float, args, out: Path) -> dict:
    from libsgde.io.disguise import load_translator

    config = {"hidden_classes": task.hidden, "public_classes": task.public, "network": args.translator_network}
    spec = TrainSpec("translator", epsilon, config=config, seed=args.seed)
    trained = train_model(
        spec, task.schema, task.x_train, task.y_train, 60 * args.translator_minutes,
        out / "artifacts" / f"{task.name}-translator-eps{epsilon:g}.safetensors",
    )  # fmt: skip
    translator = load_translator(Path(trained["path"]))
    sent = translator.translate(c["xh_tr"], seed=args.seed)  # what the cloud receives
    held = translator.translate(c["xh_te"], seed=args.seed + 1)
    cloud = Cloud(
        task, args.cloud, args.seed, task.model(sent.images), sent.labels, out / f"{task.name}-eps{epsilon:g}"
    )
    routed = cloud.predict(held.images)  # the owner's pipeline on real hidden test images
    pipeline = np.array([task.to_hidden.get(int(p), -1) for p in routed])
    return {
        "name": f"translator eps {trained['privacy']['epsilon']:.3g}",
        "receives": "translated hidden images, public labels",
        "pipeline_accuracy": float(np.mean(pipeline == c["yh_te"])),
        "translator_head_accuracy": float(np.mean(held.predicted_hidden == c["yh_te"])),
        "cloud_on_real_public": float(np.mean(cloud.predict(c["xp_te"]) == c["yp_te"])),
        "classifier_file": cloud.file_note,
        "train_s": trained["train_s"],
        "train_cpu_s": trained["train_cpu_s"],
        "trained": trained,
        "leakage": arm_leakage(task, c, sent.images, sent.labels, c["yh_tr"], held.images, args.seed),
    }


def sgde_arm(task: Task, c: dict, epsilon: float, args, out: Path) -> dict:
    """SGDE's answer: a DP generator of the hidden classes alone (a schema of those classes), its samples relabelled
    to the public names; the owner runs the cloud's classifier on its real images directly."""
    arch, config = (
        ("cvae", {"network": args.sgde_arch.split("-")[1]}) if "cvae" in args.sgde_arch else (args.sgde_arch, None)
    )
    schema = image_schema(*task.x_train.shape[1:3], task.pixel_max, task.class_names[: len(task.hidden)])
    trained = train_model(
        TrainSpec(arch, epsilon, config=config, seed=args.seed), schema, c["xh_tr"], c["yh_tr"],
        60 * args.sgde_minutes, out / "artifacts" / f"{task.name}-{args.sgde_arch}-eps{epsilon:g}.safetensors",
    )  # fmt: skip
    generator = load_generator(Path(trained["path"]))
    sent, truth = generator.sample(len(c["xh_tr"]), args.seed, labels=c["yh_tr"])
    held, _ = generator.sample(len(c["xh_te"]), args.seed + 1, labels=c["yh_te"])
    public = np.asarray([task.public[int(h)] for h in truth], np.int32)
    cloud = Cloud(
        task, args.cloud, args.seed, task.model(sent), public, out / f"{task.name}-{args.sgde_arch}-eps{epsilon:g}"
    )
    pipeline = np.array([task.to_hidden.get(int(p), -1) for p in cloud.predict(c["xh_te"])])
    return {
        "name": f"SGDE {args.sgde_arch} eps {trained['privacy']['epsilon']:.3g}",
        "receives": "DP synthetic hidden images, public labels",
        "pipeline_accuracy": float(np.mean(pipeline == c["yh_te"])),
        "classifier_file": cloud.file_note,
        "train_s": trained["train_s"],
        "train_cpu_s": trained["train_cpu_s"],
        "trained": trained,
        "leakage": arm_leakage(task, c, sent, public, truth, held, args.seed),
    }


def run_dataset(task: Task, args, out: Path) -> dict:
    c = common(task, args.seed)
    print(
        f"== {task.name}: hidden {task.class_names[:2]} -> public {task.class_names[2:]}; train "
        f"{len(task.y_train)} images ({len(c['yh_tr'])} hidden), test {len(c['yh_te'])} hidden",
        flush=True,
    )
    direct = m.classifier(args.cloud, args.seed).fit(task.model(c["xh_tr"]), c["yh_tr"])
    direct_acc = float(np.mean(direct.predict(task.model(c["xh_te"])) == c["yh_te"]))
    raw_public = np.asarray([task.public[int(h)] for h in c["yh_tr"]], np.int32)
    arms = [
        {
            "name": "no disguise",
            "receives": "the real hidden images, public labels",
            "pipeline_accuracy": direct_acc,
            "leakage": arm_leakage(task, c, c["xh_tr"], raw_public, c["yh_tr"], c["xh_te"], args.seed),
        }
    ]
    for eps in args.translator_epsilon:
        try:
            arms.append(translator_arm(task, c, eps, args, out))
        except ImportError as e:
            print(f"    translator arm skipped: {e}", flush=True)
            arms.append({"name": f"translator eps {eps:g}", "receives": f"not run: {e}"})
    for eps in args.sgde_epsilon:
        arms.append(sgde_arm(task, c, eps, args, out))
    return {
        "dataset": task.name,
        "classes": {"hidden": task.class_names[:2], "public": task.class_names[2:]},
        "sizes": {"train": len(task.y_train), "hidden_train": len(c["yh_tr"]), "hidden_test": len(c["yh_te"])},
        "direct_accuracy": direct_acc,
        "arms": arms,
    }


# -- report ------------------------------------------------------------------------------------------------------------

AIM_ACCURACY, AIM_CPU_S = 0.94, 600.0


def verdicts(result: dict) -> list[str]:
    """Plain sentences on what each disguise hides, from the numbers (thresholds fixed here)."""
    lines = []
    for arm in result["arms"]:
        leak = arm.get("leakage")
        if not leak:
            continue
        auc, ari = leak["probe_auc"]["max"], leak["clustering"]["ari"]
        naming = leak["few_shot"]["label_naming_accuracy"]
        told = (
            "tells them apart almost always"
            if auc >= 0.9
            else "tells them apart often"
            if auc >= 0.7
            else "barely tells them apart"
        )
        split = "recovers" if ari >= 0.5 else "partly recovers" if ari >= 0.2 else "does not recover"
        lines.append(
            f"- {arm['name']}: a probe {told} from genuine {'/'.join(result['classes']['public'])} images "
            f"(AUC {auc:.3f}); unlabelled clustering {split} the hidden split (ARI {ari:.2f}); with 10 labelled "
            f"genuine images per hidden class the cloud names its received labels correctly for {100 * naming:.0f} % "
            "of the images."
        )
    lines.append(
        "- Whatever the images look like, the public labels the cloud receives ARE the hidden labels renamed "
        "(class_map is one-to-one): the disguise can hide at most which hidden class each public name stands for."
    )
    return lines


def report(results: dict) -> str:
    parts = [
        "# Class disguise benchmark (issue 17)",
        "",
        f"{results['date']}; {machine_line(results['machine'])}; cloud classifier `{results['args']['cloud']}`; "
        f"seed {results['args']['seed']}{' (--quick)' if results['args']['quick'] else ''}.",
    ]
    for r in results["datasets"]:
        parts += [
            "",
            f"## {r['dataset']}: hidden {r['classes']['hidden']} disguised as {r['classes']['public']}",
            "",
            f"{r['sizes']['train']} training images of the four classes ({r['sizes']['hidden_train']} hidden), "
            f"{r['sizes']['hidden_test']} held-out real hidden-class images. Direct = the same classifier trained on "
            "the real hidden images. Leakage: (a) probe AUC received vs genuine public images (0.5 hides), (b) "
            "k-means on the received images vs the hidden classes (ARI 0 hides), (c) 10 genuine labelled hidden "
            "images per class -> classifier on PCA features of the received images (50 % hides).",
            "",
            m.markdown_table(m.ARM_HEADER, m.arm_rows(r["arms"], r["direct_accuracy"])),
            "",
            "Leakage left, as a share of the undisguised images' leakage above chance (1: hides nothing more than "
            "sending the real images; 0: nothing above chance; above 1: leaks more):",
            "",
            m.markdown_table(("arm", *m.CHANCE), m.leakage_left_rows(r["arms"])),
            "",
        ]
        for arm in r["arms"]:
            if "translator_head_accuracy" in arm:
                cpu = arm["train_cpu_s"]
                parts.append(
                    f"- {arm['name']}: translator's own classifier head {100 * arm['translator_head_accuracy']:.1f} %"
                    f" on the hidden test images (it solves the hidden task itself); cloud classifier on real public "
                    f"images {100 * arm['cloud_on_real_public']:.1f} % (the reference reported 94.4 %); training "
                    f"{arm['train_s']:.0f} s wall, {cpu / 60:.1f} CPU-minutes; classifier: {arm['classifier_file']}."
                )
                if r["dataset"] == "digits":
                    ok = arm["pipeline_accuracy"] >= AIM_ACCURACY and cpu <= AIM_CPU_S
                    parts.append(
                        f"- aim (pipeline >= 94 % on digits in <= 10 CPU-minutes): {'MET' if ok else 'NOT MET'} "
                        f"({100 * arm['pipeline_accuracy']:.1f} %, {cpu / 60:.1f} CPU-minutes)."
                    )
        parts += ["", "What the cloud learns:", "", *verdicts(r)]
    return "\n".join(parts) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="digits only, small budgets: a few minutes")
    ap.add_argument("--dataset", nargs="+", choices=DATASETS, default=None)
    ap.add_argument("--translator-minutes", type=float, default=None, help="wall budget (default 4; quick 1)")
    ap.add_argument("--translator-epsilon", type=float, nargs="+", default=[10.0])
    ap.add_argument("--translator-network", choices=("mlp", "conv"), default="mlp")
    ap.add_argument("--sgde-arch", choices=("dp-merf", "cvae-mlp", "cvae-conv"), default="dp-merf")
    ap.add_argument("--sgde-epsilon", type=float, nargs="+", default=[1.0, 10.0])
    ap.add_argument("--sgde-minutes", type=float, default=None, help="wall budget per generator (default 3; quick 0.5)")
    ap.add_argument("--cloud", choices=("logreg", "mlp"), default="logreg")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fashion-dir", type=Path, default=FASHION_DIR)
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "disguise")
    args = ap.parse_args(argv)
    args.dataset = args.dataset or (["digits"] if args.quick else list(DATASETS))
    args.translator_minutes = args.translator_minutes or (1.0 if args.quick else 4.0)
    args.sgde_minutes = args.sgde_minutes or (0.5 if args.quick else 3.0)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "datasets": [],
    }
    for name in args.dataset:
        results["datasets"].append(run_dataset(load_task(name, args.seed, args.fashion_dir), args, args.out))
        (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    text = report(results)
    (args.out / "report.md").write_text(text)
    print("\n" + text, flush=True)
    print(f"wrote {args.out / 'report.md'} and {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
