"""DP-SGD overhead: SGDE's DP-SGD step against a non-private step of the same model and batch, and against Opacus.

    python benchmarks/dp_overhead.py [--repeats 20] [--max-seconds 10] [--no-opacus] [--setup]

For each cvae architecture (tabular MLP, image MLP, image conv; libsgde's default config), batch 256, float32, CPU:
- non-private: jax.grad of the batch's mean loss + Adam, jitted;
- SGDE DP: libsgde.ml.train.dpsgd_step, the step training runs (gather, clipped sum, Gaussian noise, Adam), with
  ghost clipping (libsgde.ml.privacy.ghost: Dense layers, and convolutions and transposed convolutions by ghost
  norms or per-layer per-example kernel gradients, whichever is cheaper);
- SGDE vmap: the same DP step forced onto the vmap(grad) path, to show what ghost clipping buys;
- Opacus: the same architecture in PyTorch (benchmarks/_opacus_side.py) made private by Opacus's PrivacyEngine,
  in its default "hooks" grad-sample mode and, where the installed Opacus has it, in its "ghost" mode.
The conv cvae's aims are printed under the table: its DP step faster than Opacus's ghost mode, and at most 1.5x its
own non-private step. Every figure is the median of up to --repeats timed steps (at least 3) after warm-up (jitted
steps are compiled first), each measurement stopping early once --max-seconds is spent. JAX steps end with
block_until_ready.

Opacus runs in its own environment, benchmarks/.venv-opacus (torch + opacus from PyPI), created on first use (or
with --setup) and run as a subprocess, so the project's venv never gets torch. When it cannot be set up the JAX
columns are printed and the reason why the Opacus ones are missing.

dp-merf is not trained by DP-SGD (its privacy is one noisy release of a mean embedding, then the generator trains
at no privacy cost), so it has no per-step DP overhead; its generator step and its one-off release are timed
after the main table for completeness.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
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

from benchmarks._machine import machine_line
from libsgde.ml.architectures import get_architecture
from libsgde.ml.privacy import ghost, merf, prior
from libsgde.ml.space import Block, ModelSpace
from libsgde.ml.train import dpmerf_step, dpsgd_step

BATCH = 256
DATASET = 4 * BATCH  # rows the batch is gathered from, as train.py gathers from the whole data set
CLIP, SIGMA, LR = 1.0, 1.0, 1e-3  # the Opacus side uses the same clip norm, noise multiplier and learning rate
VENV = REPO / "benchmarks" / ".venv-opacus"
OPACUS_SIDE = REPO / "benchmarks" / "_opacus_side.py"
TORCH_PIN = "torch==2.13.0"  # the CPU wheel on PyPI


def tabular_space() -> ModelSpace:
    return ModelSpace("tabular", (64,), tuple(Block(f"c{i}", "numeric", i, 1) for i in range(64)), 10)


IMAGE_SPACE = ModelSpace("image", (28, 28, 1), num_classes=10)
# (row label, Opacus-side name, model space, raw cvae config)
MODELS = [
    ("cvae tabular (64 numeric, 10 classes)", "tabular", tabular_space(), {}),
    ("cvae image mlp (28x28x1, 10 classes)", "image-mlp", IMAGE_SPACE, {"network": "mlp"}),
    ("cvae image conv (28x28x1, 10 classes)", "image-conv", IMAGE_SPACE, {"network": "conv"}),
]


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def measure(step, repeats: int, max_seconds: float, warmup: int = 3) -> dict:
    """Median ms of `step()` (which must block until its result is ready) over up to `repeats` runs, at least 3,
    after `warmup` unmeasured ones; stops early once `max_seconds` of measuring is spent."""
    for _ in range(warmup):
        step()
    times, started = [], time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - started < max_seconds):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"ms": statistics.median(times), "runs": len(times)}


# --- the JAX side ------------------------------------------------------------------------------------------------


def build_steps(space: ModelSpace, raw_config: dict):
    """(params count, {"nonprivate" | "ghost" | "vmap": a jitted step, state, inputs}) for one cvae config."""
    arch = get_architecture("cvae")
    config = arch.configure(raw_config, space)
    module = arch.module(space, config)
    optimizer = optax.adam(LR)
    params = arch.init(jax.random.key(0), space, config)
    data = np.random.default_rng(0)
    x_all = jnp.asarray(data.random((DATASET, *space.shape), np.float32))
    y_all = jnp.asarray(data.integers(0, space.num_classes, DATASET).astype(np.int32))
    n, padded, q = DATASET, BATCH, BATCH / DATASET  # a full batch of 256: no padding rows, all mask ones

    def make_dp_step(use_ghost: bool):  # exactly the step train.py runs; sigma and clip fixed, not calibrated
        return dpsgd_step(module, optimizer, x_all, y_all, padded, CLIP, SIGMA, q * n, use_ghost, jax.random.key(2))

    @jax.jit
    def nonprivate_step(state, indices, mask, step):  # the same inputs, no clipping and no noise
        params, opt_state = state
        key = jax.random.fold_in(jax.random.key(2), step)
        args = (x_all[indices], y_all[indices], jax.random.split(key, padded))

        def mean_loss(p):
            return jnp.sum(module.apply({"params": p}, *args) * mask) / jnp.maximum(jnp.sum(mask), 1.0)

        loss, grads = jax.value_and_grad(mean_loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    steps = {"nonprivate": nonprivate_step, "vmap": make_dp_step(False)}
    if ghost.is_ghostable(params):
        steps["ghost"] = make_dp_step(True)
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    return count, steps, (params, optimizer.init(params))


def time_jax_step(step_fn, state0, repeats: int, max_seconds: float) -> dict:
    rng = np.random.default_rng(1)
    mask = np.ones(BATCH, np.float32)
    holder = {"state": state0, "i": 0}

    def one():  # like train.py's loop: host indices and mask in, the step number, the state carried on
        indices = rng.choice(DATASET, BATCH, replace=False).astype(np.int32)
        holder["state"], loss = step_fn(holder["state"], indices, mask, holder["i"])
        holder["i"] += 1
        jax.block_until_ready((holder["state"], loss))

    started = time.perf_counter()
    one()  # compile (and a first run)
    compile_s = time.perf_counter() - started
    out = measure(one, repeats, max_seconds, warmup=1)
    out["compile_s"] = compile_s
    return out


def run_jax(repeats: int, max_seconds: float) -> dict:
    results = {}
    for _label, name, space, raw in MODELS:
        count, steps, state = build_steps(space, raw)
        row = {"params": count}
        for kind, fn in steps.items():
            row[kind] = time_jax_step(fn, state, repeats, max_seconds)
            print(
                f"  jax: {name} {kind}: {row[kind]['ms']:.2f} ms ({row[kind]['runs']} runs, compile "
                f"{row[kind]['compile_s']:.1f} s)",
                file=sys.stderr,
            )
        results[name] = row
    return results


def run_merf(repeats: int, max_seconds: float) -> list[tuple[str, float, float, int]]:
    """dp-merf, default config: (model, generator step ms, release ms, rows released). The step is libsgde.io.training's
    dpmerf_step; the release is merf.noisy_release over DATASET * 10 rows."""
    arch = get_architecture("dp-merf")
    rows = []
    for label, space in (
        ("dp-merf tabular (64 numeric, 10 classes)", tabular_space()),
        ("dp-merf image (28x28x1, 10 classes)", IMAGE_SPACE),
    ):
        config = arch.configure({}, space)
        dim, classes = math.prod(space.shape), max(space.num_classes, 1)
        freq_key, gen_key = jax.random.split(jax.random.key(0))
        freqs = merf.frequencies(freq_key, dim, config["features"], config["lengthscale"])
        n = 10 * DATASET
        data = np.random.default_rng(0)
        x = jnp.asarray(data.random((n, dim), np.float32))
        onehot = jax.nn.one_hot(jnp.asarray(data.integers(0, classes, n)), classes)

        def release(key):  # train.py runs it op by op, not jitted
            return merf.noisy_release(key, x, onehot, freqs, SIGMA)

        emb, counts = release(jax.random.key(1))
        class_prior = prior.class_prior(counts)
        target = emb / jnp.maximum(jnp.sum(jnp.maximum(counts, 0.0)), 1.0)
        module = arch.module(space, config)
        optimizer = optax.adam(LR)
        params = arch.init(gen_key, space, config)
        batch = config["generator_batch"]

        step_fn = dpmerf_step(module, optimizer, target, class_prior, freqs, batch, jax.random.key(3))

        holder = {"state": (params, optimizer.init(params)), "i": 0}

        def one():
            holder["state"], loss = step_fn(holder["state"], holder["i"])
            holder["i"] += 1
            jax.block_until_ready((holder["state"], loss))

        step_ms = measure(one, repeats, max_seconds)["ms"]
        release_ms = measure(lambda: jax.block_until_ready(release(jax.random.key(4))), 5, max_seconds, warmup=1)["ms"]
        rows.append((f"{label}, generator batch {batch}, {config['features']} features", step_ms, release_ms, n))
    return rows


# --- the Opacus side ---------------------------------------------------------------------------------------------


def venv_python() -> Path:
    return VENV / "bin" / "python"


def venv_ready() -> bool:
    python = venv_python()
    return (
        python.exists()
        and subprocess.run([str(python), "-c", "import torch, opacus"], capture_output=True).returncode == 0
    )


def setup_venv() -> str | None:
    """Create benchmarks/.venv-opacus with torch (CPU) and opacus; None on success, else why not."""
    print(
        f"setting up {VENV.relative_to(REPO)} ({TORCH_PIN} and opacus from PyPI; a few minutes the first time) ...",
        file=sys.stderr,
    )
    if not venv_python().exists():
        made = subprocess.run([sys.executable, "-m", "venv", str(VENV)], capture_output=True, text=True)
        if made.returncode:
            return f"python -m venv failed: {(made.stderr or made.stdout).strip()[-500:]}"
    pip = subprocess.run(
        [str(venv_python()), "-m", "pip", "install", "-q", TORCH_PIN, "opacus"], capture_output=True, text=True
    )
    if pip.returncode:
        return f"pip install {TORCH_PIN} opacus failed: {(pip.stderr or pip.stdout).strip()[-800:]}"
    if not venv_ready():
        return "torch and opacus installed but `import torch, opacus` fails in benchmarks/.venv-opacus"
    return None


def run_opacus(repeats: int, max_seconds: float) -> tuple[dict | None, str | None]:
    if not venv_ready():
        why = setup_venv()
        if why:
            return None, why
    cmd = [
        str(venv_python()),
        str(OPACUS_SIDE),
        "--models",
        ",".join(m[1] for m in MODELS),
        "--repeats",
        str(repeats),
        "--max-seconds",
        str(max_seconds),
        "--threads",
        str(os.cpu_count()),
    ]
    # libgomp's default active spin-waiting at torch's parallel-region barriers collapses when the machine's cores
    # are shared (we measured a 256-row MLP step at ~750 ms instead of ~25 ms with 2 threads on 2 busy cores);
    # passive waiting is what a shared machine needs. An OMP_WAIT_POLICY set by the caller is kept.
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)  # its progress goes to our stderr
    if done.returncode:
        return None, f"{OPACUS_SIDE.name} exited with {done.returncode}"
    try:
        return json.loads(done.stdout.strip().splitlines()[-1]), None
    except (json.JSONDecodeError, IndexError):
        return None, f"{OPACUS_SIDE.name} printed no JSON result: {done.stdout[-300:]!r}"


def conv_aims(ours: dict, theirs: dict | None) -> None:
    """The conv cvae's DP step against its own non-private step (aim: at most 1.5x) and Opacus's ghost mode (aim:
    SGDE faster), on one line each."""
    row = ours["image-conv"]
    dp = row["ghost"]["ms"] if "ghost" in row else row["vmap"]["ms"]
    base = row["nonprivate"]["ms"]
    verdict = "met" if dp <= 1.5 * base else "missed"
    print(
        f"\nconv cvae: SGDE DP {fmt(dp)} ms vs its non-private {fmt(base)} ms: {ratio(dp, base)} "
        f"(aim <= 1.5x: {verdict})"
    )
    opacus = None if theirs is None else theirs["models"]["image-conv"]["ghost"].get("ms")
    if opacus is None:
        print("conv cvae: Opacus ghost n/a")
    else:
        verdict = "met" if dp < opacus else "missed"
        print(f"conv cvae: Opacus ghost {fmt(opacus)} ms / SGDE DP: {ratio(opacus, dp)} (aim > 1x: {verdict})")


# --- the report --------------------------------------------------------------------------------------------------


def fmt(ms: float | None) -> str:
    return "n/a" if ms is None else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a / b:.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per cell at most (default 20)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=10.0,
        help="stop timing a cell after this many seconds, once it has 3 runs (default 10)",
    )
    parser.add_argument("--no-opacus", action="store_true", help="time the JAX side only")
    parser.add_argument("--no-merf", action="store_true", help="skip the dp-merf lines")
    parser.add_argument("--setup", action="store_true", help="(re)install benchmarks/.venv-opacus and exit")
    args = parser.parse_args()

    if args.setup:
        why = setup_venv()
        print(why or f"ready: {venv_python().relative_to(REPO)}")
        return 1 if why else 0

    started, load_before = time.perf_counter(), load()
    print(f"timing the JAX side ({jax.default_backend()}) ...", file=sys.stderr)
    ours = run_jax(args.repeats, args.max_seconds)
    theirs, why_not = (None, "--no-opacus given") if args.no_opacus else (None, None)
    if not args.no_opacus:
        print("timing the Opacus side ...", file=sys.stderr)
        theirs, why_not = run_opacus(args.repeats, args.max_seconds)
    merf_rows = [] if args.no_merf else run_merf(args.repeats, args.max_seconds)

    print(
        f"\nDP-SGD step, batch {BATCH}, float32, CPU; median ms per step (clip {CLIP}, noise multiplier {SIGMA}, "
        "Adam)\n"
    )
    print(
        "| model | non-private ms | SGDE DP ms | DP/non-private | SGDE vmap ms | Opacus ms | Opacus/SGDE "
        "| Opacus ghost ms | Opacus ghost/SGDE |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    notes = []
    for label, name, _, _ in MODELS:
        row = ours[name]
        base = row["nonprivate"]["ms"]
        dp = row["ghost"]["ms"] if "ghost" in row else row["vmap"]["ms"]
        dp_cell = f"{fmt(dp)} ({'ghost' if 'ghost' in row else 'vmap'})"
        vmap_cell = fmt(row["vmap"]["ms"]) if "ghost" in row else "= SGDE DP (not ghostable)"
        op_cells = ["n/a"] * 4
        if theirs is not None:
            t = theirs["models"][name]
            for i, mode in enumerate(("hooks", "ghost")):
                if "ms" in t[mode]:
                    op_cells[2 * i], op_cells[2 * i + 1] = fmt(t[mode]["ms"]), ratio(t[mode]["ms"], dp)
                else:
                    op_cells[2 * i] = "failed"
                    notes.append(f"Opacus {mode} on {name}: {t[mode]['error']}")
        print(f"| {label} | {fmt(base)} | {dp_cell} | {ratio(dp, base)} | {vmap_cell} | " + " | ".join(op_cells) + " |")

    print(
        "\nSGDE DP = the step libsgde.ml.train jits: ghost clipping where every layer is ghost-aware (Dense, Conv, "
        "ConvTranspose of libsgde.ml.layers), else vmap(grad). SGDE vmap = the same step forced onto vmap(grad). "
        "All three JAX steps of the conv cvae take the transposed convolutions' kernel gradient from libsgde.ml.conv "
        "(one matrix product): XLA's own runs seconds per step on CPU."
    )
    print(
        'Opacus = PrivacyEngine.make_private, grad_sample_mode="hooks" (its default: per-sample gradients '
        'from GradSampleModule hooks); Opacus ghost = grad_sample_mode="ghost" (its ghost clipping). '
        "Opacus/SGDE > 1 means SGDE is faster."
    )
    conv_aims(ours, theirs)
    if theirs is None:
        print(f"\nOpacus columns missing: {why_not}")
    else:
        print(
            "\nFor context, the same models' non-private step in PyTorch (loss.backward + Adam), and parameter "
            "counts (the two sides must agree):\n"
        )
        print("| model | torch non-private ms | SGDE non-private ms | params (JAX) | params (torch) |")
        print("|---|---|---|---|---|")
        for label, name, _, _ in MODELS:
            t = theirs["models"][name]
            print(
                f"| {label} | {fmt(t['nonprivate'].get('ms'))} | {fmt(ours[name]['nonprivate']['ms'])} | "
                f"{ours[name]['params']:,} | {t['params']:,} |"
            )
    for note in notes:
        print(f"\n{note}")
    if merf_rows:
        print("\ndp-merf has no per-step DP cost (one noisy release, then non-private generator steps):\n")
        print("| model | generator step ms | one-off release ms |")
        print("|---|---|---|")
        for label, step_ms, release_ms, n in merf_rows:
            print(f"| {label} | {fmt(step_ms)} | {fmt(release_ms)} ({n:,} rows) |")

    runs = sorted({c["runs"] for row in ours.values() for c in row.values() if isinstance(c, dict)})
    print(f"\nmachine: {machine_line()}")
    import jaxlib

    print(
        f"versions: jax {jax.__version__} (jaxlib {jaxlib.__version__}), optax {optax.__version__}"
        + (
            f"; torch {theirs['torch']} ({theirs['threads']} threads, OMP_WAIT_POLICY={theirs['omp_wait_policy']}), "
            f"opacus {theirs['opacus']}"
            if theirs
            else ""
        )
    )
    print(
        f"runs per JAX cell: {', '.join(map(str, runs))} (--repeats {args.repeats}, --max-seconds "
        f"{args.max_seconds:g}); load average before {load_before}, after {load()}; total "
        f"{time.perf_counter() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
