"""What the demo leaves for a person: the figures (synthetic digits, real vs synthetic marginals) and summary.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

from libsgde.cli.demo_data import (
    DIGITS_CLASSES,
    DIGITS_PIXEL_MAX,
    MARGINAL_COLUMNS,
    Split,
    breast_cancer_upper,
)
from libsgde.evaluate.report import figure

# -- figures --------------------------------------------------------------------------------------------------------


def plot_digits(path: Path, images: np.ndarray, labels: np.ndarray, title: str, per_class: int = 10) -> None:
    """One row per class, up to `per_class` synthetic images each."""
    k = len(DIGITS_CLASSES)
    fig = figure(max(per_class * 0.6 + 0.6, 6.5), k * 0.6 + 1.0)
    axes = fig.subplots(k, per_class, squeeze=False)
    for c in range(k):
        chosen = np.flatnonzero(labels == c)[:per_class]
        for j in range(per_class):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(chosen):
                ax.imshow(
                    images[chosen[j]].reshape(8, 8),
                    cmap="gray_r",
                    vmin=0,
                    vmax=DIGITS_PIXEL_MAX,
                    interpolation="nearest",
                )
            if j == 0:
                ax.set_ylabel(DIGITS_CLASSES[c], rotation=0, labelpad=10, va="center")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)


def plot_marginals(path: Path, split: Split, values: dict, title: str) -> None:
    """Real (training split) against synthetic histograms of a few columns, within the schema's public range."""
    fig = figure(12, 7)
    axes = fig.subplots(2, 3).ravel()
    columns = [c for c in MARGINAL_COLUMNS if c in split.feature_names][:6]
    for ax, name in zip(axes, columns):
        real = split.x_train[:, split.feature_names.index(name)]
        synthetic = np.asarray(values[name], np.float64)
        high = breast_cancer_upper(name)
        # Bins over the part of the public range either sample occupies, so that the shapes are visible.
        top = min(high, 1.1 * max(np.quantile(real, 0.995), np.quantile(synthetic, 0.995), high / 100))
        bins = np.linspace(0.0, top, 41)
        ax.hist(real, bins=bins, density=True, alpha=0.55, label=f"real (n={len(real)})", color="tab:blue")
        ax.hist(
            synthetic, bins=bins, density=True, alpha=0.55, label=f"synthetic (n={len(synthetic)})", color="tab:orange"
        )
        ax.set_title(f"{name}  (public range 0 to {high:g})", fontsize=9)
        ax.set_yticks([])
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path)


def machine_info() -> dict:
    info: dict[str, object] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        import jax

        info["jax"] = jax.__version__
        info["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception as e:  # noqa: BLE001 - an informational field
        info["jax"] = f"unavailable: {e}"
    return info


def _federation_lines(f: dict) -> list[str]:
    lines = [
        "## A federation of three digit silos",
        "",
        f"`{f['name']}`: the digits training split in thirds, one per silo (user); each trained a DP generator on "
        "its third and pushed it, admitted after the registry recomputed its epsilon.",
        "",
        "| member | rows | generator | epsilon | delta |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {m['member']} | {m['rows']} | `{m['version']}` | {m['epsilon']:.3g} | {m['delta']:.1e} |"
        for m in f["members"]
    ]
    lines += [
        "",
        f"What membership buys {f['evaluated_by']}, on the held-out real digits: a classifier trained on (a) its "
        "third alone, (b) the two others' synthetic digits alone, (c) both. Report: "
        f"[{f['report']}]({f['report']}).",
        "",
        "| classifier | (a) local | (b) others' synthetic | (c) both |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {clf} | {a['local']:.3f} | {a['others']:.3f} | {a['both']:.3f} |" for clf, a in f["membership"].items()
    ]
    return [*lines, ""]


def summary_markdown(s: dict) -> str:
    lines = [
        "# SGDE demo",
        "",
        f"Two DP generators ({s['architecture']}), trained in the trainer service at a target epsilon of "
        f"{s['target_epsilon']:g} (delta {s['delta']:g}), signed by {s['user']}, published to the registry, "
        f"then sampled ({s['samples_per_dataset']} per data set) via {s['sample_path_detail']}."
        + (" **Tiny settings**: a smoke test, not a measure of quality." if s["tiny"] else ""),
        "",
        "## Privacy (as the registry's versions report it)",
        "",
        "| data set | version | mechanism | epsilon | delta | accountant | RDP epsilon | N |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in s["models"].items():
        p = m["privacy"]
        lines.append(
            f"| {name} | `{m['version']}` | {p['mechanism']} | {p['epsilon']:.4g} | {p['delta']:.3g} | "
            f"{p['accountant']} | {p['rdp_epsilon']:.4g} | {p['dataset_size']} |"
        )
    lines += [
        "",
        "## Utility: train on synthetic, test on real (TSTR) vs train on real (TRTR)",
        "",
        "Held-out real test splits (25%, never seen by the generators).",
        "",
        "| data set | classifier | TSTR | TRTR |",
        "|---|---|---|---|",
    ]
    for name, ev in s["evaluation"].items():
        for clf in ev["tstr"]:
            lines.append(f"| {name} | {clf.replace('_', ' ')} | {ev['tstr'][clf]:.3f} | {ev['trtr'][clf]:.3f} |")
    pc = s["evaluation"]["digits"]["per_class"]
    lines += [
        "",
        "Digits, accuracy per class (logistic regression):",
        "",
        "| class | " + " | ".join(pc["classes"]) + " |",
        "|---|" + "---|" * len(pc["classes"]),
        "| TSTR | " + " | ".join(f"{v:.2f}" for v in pc["tstr"]) + " |",
        "| TRTR | " + " | ".join(f"{v:.2f}" for v in pc["trtr"]) + " |",
        "",
        "![synthetic digits](digits_samples.png)",
        "",
        "![breast_cancer marginals](breast_cancer_marginals.png)",
        "",
        *_federation_lines(s["federation"]),
        "## Schemas: public bounds, not read from the data",
        "",
        f"- digits: 8x8 grey images, pixel_max {s['schemas']['digits']['pixel_max']}: "
        f"{s['schemas']['digits']['source']}.",
        "- breast_cancer: every column >= 0; upper bounds are round domain limits written as constants in "
        "`libsgde/demo.py` (`BREAST_CANCER_LIMITS`), NOT the data's maxima: "
        + ", ".join(f"{k} {v:g}" for k, v in s["schemas"]["breast_cancer"]["upper"].items())
        + ".",
        "",
        "## Timings",
        "",
        "| phase | seconds |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in s["timings_seconds"].items()]
    m = s["machine"]
    lines += [
        "",
        f"Machine: {m['platform']}, Python {m['python']}, {m['cpus']} CPUs, JAX {m.get('jax')} "
        f"({', '.join(m.get('jax_devices', []))}).",
        "",
    ]
    return "\n".join(lines)
