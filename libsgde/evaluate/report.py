"""The evaluation report folder: report.json (everything measured), report.md (for a person) and PNG plots
(marginals and the correlation difference for tables; per-class mean images and nearest real neighbours for images;
the audit's DCR histograms and ROC curve). Figures are drawn on matplotlib's Agg canvas without pyplot (no global
backend, no display)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from libsgde.evaluate import Evaluation, json_safe
from libsgde.evaluate.fidelity import ImageFidelity, TabularFidelity
from libsgde.io.encoding import EncodedData

__all__ = ["figure", "markdown", "write_report"]

MAX_MARGINAL_PLOTS = 12
MAX_BARS = 20
MAX_LABELLED_FEATURES = 40


def figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas, without pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _show(ax, image: np.ndarray) -> None:
    """A model-space image ([H, W, C] in [0, 1]): grey for one channel, RGB(A) otherwise."""
    image = np.clip(image, 0.0, 1.0)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    _bare(ax)


def plot_marginals(path: Path, ev: Evaluation, holdout: EncodedData, synthetic: EncodedData) -> None:
    """Held-out real vs synthetic, per column (the first few): histograms on the public range, category bars."""
    f = ev.fidelity
    assert isinstance(f, TabularFidelity)  # drawn for tabular data only
    blocks = list(ev.space.blocks)[:MAX_MARGINAL_PLOTS]
    distances = {c.column: c for c in f.columns}
    n = len(blocks)
    cols = min(4, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    fig = figure(3.2 * cols, 2.4 * rows + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax, block in zip(axes, blocks):
        d = distances[block.name]
        if block.kind == "numeric":
            real, syn = holdout.x[:, block.start], synthetic.x[:, block.start]
            # Bins over the part of the range either sample occupies, so that the shapes are visible.
            top = min(1.0, 1.1 * max(np.quantile(real, 0.995), np.quantile(syn, 0.995), 0.01))
            bins = np.linspace(0.0, top, 31)
            ax.hist(real, bins=bins, density=True, alpha=0.55, color="tab:blue", label="real")
            ax.hist(syn, bins=bins, density=True, alpha=0.55, color="tab:orange", label="synthetic")
            ax.set_title(f"{block.name[:28]}\nW1 {d.distance:.3f} (of the public range)", fontsize=8)
            ax.set_yticks([])
        else:
            width = min(block.width, MAX_BARS)
            cut = slice(block.start, block.start + block.width)
            real = np.bincount(holdout.x[:, cut].argmax(axis=1), minlength=block.width)[:width] / len(holdout)
            syn = np.bincount(synthetic.x[:, cut].argmax(axis=1), minlength=block.width)[:width] / len(synthetic)
            at = np.arange(width)
            ax.bar(at - 0.2, real, 0.4, color="tab:blue", label="real")
            ax.bar(at + 0.2, syn, 0.4, color="tab:orange", label="synthetic")
            names = ev.categories.get(block.name) or [str(j) for j in range(block.width)]
            ax.set_xticks(at, [n[:10] for n in names[:width]], rotation=45 if width > 4 else 0)
            ax.set_title(f"{block.name[:28]}\nTV {d.distance:.3f}", fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes[n:]:
        ax.set_visible(False)
    if n:
        axes[0].legend(fontsize=7)
    fig.suptitle(
        "marginals: held-out real vs synthetic (model space: the schema's public range is [0, 1])", fontsize=10
    )
    fig.savefig(path)


def plot_correlation_difference(path: Path, ev: Evaluation) -> None:
    f = ev.fidelity
    assert isinstance(f, TabularFidelity)  # drawn for tabular data only
    assert f.real_correlation is not None and f.synthetic_correlation is not None  # drawn when there are two
    k = len(f.feature_names)
    size = min(4 + 0.18 * k, 14)
    fig = figure(size + 1.5, size)
    ax = fig.subplots()
    shown = ax.imshow(
        f.real_correlation - f.synthetic_correlation, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest"
    )
    if k <= MAX_LABELLED_FEATURES:
        ax.set_xticks(range(k), [n[:24] for n in f.feature_names], rotation=90, fontsize=6)
        ax.set_yticks(range(k), [n[:24] for n in f.feature_names], fontsize=6)
    fig.colorbar(shown, ax=ax, shrink=0.8)
    ax.set_title(
        f"correlation, real minus synthetic (mean |diff| {f.correlation_mean_abs_diff:.3f}, "
        f"max {f.correlation_max_abs_diff:.3f})",
        fontsize=9,
    )
    fig.savefig(path)


def plot_mean_images(path: Path, ev: Evaluation) -> None:
    f = ev.fidelity
    assert isinstance(f, ImageFidelity)  # drawn for image data only
    k = max(len(f.classes), 1)
    fig = figure(max(1.1 * k + 1.0, 4), 3.2)
    axes = fig.subplots(2, k, squeeze=False)
    for j, c in enumerate(f.classes):
        _show(axes[0, j], f.real_means[j])
        _show(axes[1, j], f.synthetic_means[j])
        axes[0, j].set_title(f"{ev.class_name(c)[:10]}\nRMS {f.mean_image_rms[j]:.3f}", fontsize=7)
    axes[0, 0].set_ylabel("real", fontsize=8)
    axes[1, 0].set_ylabel("synthetic", fontsize=8)
    fig.suptitle("per-class mean images: held-out real (top) vs synthetic", fontsize=9)
    fig.savefig(path)


def plot_nearest_neighbours(
    path: Path, ev: Evaluation, synthetic: EncodedData, reference: EncodedData, per_row: int = 10
) -> None:
    f = ev.fidelity
    assert isinstance(f, ImageFidelity)  # drawn for image data only
    m = len(f.neighbour_synthetic)
    blocks = max(1, math.ceil(m / per_row))
    fig = figure(1.0 * per_row + 0.5, 2.3 * blocks + 0.6)
    axes = fig.subplots(2 * blocks, per_row, squeeze=False)
    for ax in axes.ravel():
        _bare(ax)
    for i, (s, r, d) in enumerate(zip(f.neighbour_synthetic, f.neighbour_real, f.neighbour_rms)):
        top, col = 2 * (i // per_row), i % per_row
        _show(axes[top, col], synthetic.x[s])
        _show(axes[top + 1, col], reference.x[r])
        axes[top + 1, col].set_title(f"RMS {d:.3f}", fontsize=6)
    fig.suptitle(
        "synthetic images (upper rows) and their nearest real image (lower rows, "
        f"{'training' if ev.sizes['train'] else 'held-out'} set): a copy would show RMS near 0",
        fontsize=9,
    )
    fig.savefig(path)


def plot_dcr(path: Path, ev: Evaluation) -> None:
    a = ev.audit
    assert a is not None  # drawn only when the audit ran
    fig = figure(6.5, 3.6)
    ax = fig.subplots()
    top = max(float(np.quantile(np.r_[a.dcr_train, a.dcr_holdout], 0.99)), 1e-9)
    bins = np.linspace(0, top, 41)
    ax.hist(a.dcr_train, bins=bins, alpha=0.55, color="tab:red", label=f"to training (median {a.dcr_train_median:.3g})")
    ax.hist(
        a.dcr_holdout, bins=bins, alpha=0.55, color="tab:blue", label=f"to held-out (median {a.dcr_holdout_median:.3g})"
    )
    ax.set_xlabel("distance from a synthetic sample to its closest record (model space)", fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title(f"DCR: {a.dcr_share_closer_to_train:.1%} closer to training than held-out (0.5 expected)", fontsize=9)
    fig.savefig(path)


def plot_roc(path: Path, ev: Evaluation) -> None:
    a = ev.audit
    assert a is not None  # drawn only when the audit ran
    fig = figure(8, 3.8)
    linear, logged = fig.subplots(1, 2)
    for ax in (linear, logged):
        ax.plot(a.roc_fpr, a.roc_tpr, color="tab:red", label=f"distance (AUC {a.mia_auc:.3f})")
        ax.plot(
            a.calibrated_roc_fpr,
            a.calibrated_roc_tpr,
            color="tab:purple",
            label=f"calibrated (AUC {a.mia_calibrated_auc:.3f})",
        )
        ax.plot([1e-4, 1], [1e-4, 1], color="grey", linestyle="--", label="chance")
        ax.set_xlabel("false positive rate", fontsize=8)
        ax.set_ylabel("true positive rate", fontsize=8)
    low = 1 / max(a.non_members, 1)
    logged.set_xscale("log")
    logged.set_yscale("log")
    logged.set_xlim(low, 1)
    logged.set_ylim(low, 1)
    linear.legend(fontsize=8)
    fig.suptitle(
        f"membership inference from the distance to the closest synthetic record: TPR at FPR 1% "
        f"{a.mia_tpr_at_fpr_1pct:.3f} (calibrated {a.mia_calibrated_tpr_at_fpr_1pct:.3f})",
        fontsize=9,
    )
    fig.savefig(path)


def _number(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def markdown(ev: Evaluation, files: list[str], title: str = "Evaluation") -> str:
    """The report a person reads."""
    s = ev.sizes
    lines = [
        f"# {title}",
        "",
        f"{s['synthetic']} synthetic samples against {s['holdout']} held-out real records"
        + (f" and {s['train']} training records." if s["train"] else " (no training records: no TRTR, no audit)."),
        "",
    ]
    if ev.utility is not None:
        lines += [
            "## Utility: train on synthetic, test on real (TSTR) vs train on real (TRTR)",
            "",
            "| classifier | TSTR | TRTR | seconds |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r.classifier} | {_number(r.tstr_accuracy)} | {_number(r.trtr_accuracy)} | {r.seconds} |"
            for r in ev.utility
        ]
        names = ev.class_names[: len(ev.utility[0].tstr_per_class)] if ev.utility else []
        if names:
            lines += [
                "",
                "Accuracy per class (the real test rows of each class):",
                "",
                "| classifier | " + " | ".join(n[:16] for n in names) + " |",
                "|---|" + "---|" * len(names),
            ]
            for r in ev.utility:
                lines.append(f"| {r.classifier} TSTR | " + " | ".join(_number(v, 2) for v in r.tstr_per_class) + " |")
                if r.trtr_per_class is not None:
                    lines.append(
                        f"| {r.classifier} TRTR | " + " | ".join(_number(v, 2) for v in r.trtr_per_class) + " |"
                    )
        lines.append("")
    f = ev.fidelity
    lines += ["## Fidelity (against the held-out real records)", ""]
    if isinstance(f, TabularFidelity):
        lines += [
            f"Mean per-column distance {_number(f.marginal_mean)} (max {_number(f.marginal_max)}): "
            "Wasserstein-1 on the public range scaled to [0, 1] for numeric columns, total variation for "
            "categorical ones and the label. Correlations (model-space features): mean |real - synthetic| "
            f"{_number(f.correlation_mean_abs_diff)}, max {_number(f.correlation_max_abs_diff)}.",
            "",
            "| column | kind | distance |",
            "|---|---|---|",
        ]
        lines += [f"| {c.column} | {c.kind} | {_number(c.distance)} |" for c in f.columns]
    else:
        lines += [
            f"Per-class mean images, RMS difference per pixel (pixels in [0, 1]): mean "
            f"{_number(f.mean_image_rms_mean)}; nearest real neighbours of {len(f.neighbour_rms)} synthetic "
            f"images: median RMS {_number(float(np.median(f.neighbour_rms)) if f.neighbour_rms else None)}."
        ]
    lines.append("")
    a = ev.audit
    if a is not None:
        verdict = "**FLAGGED: evidence of memorisation**" if a.flagged else "not flagged"
        lines += ["## Privacy audit", "", f"Verdict: {verdict}."]
        lines += [f"- {reason}" for reason in a.reasons]
        lines += [
            "",
            f"Rule: {a.rule}. Not flagged is no proof of privacy: the accountant's epsilon is the "
            "guarantee; this audit looks for its failure.",
            "",
            f"{a.members} training records (members) and {a.non_members} held-out records (non-members).",
            "",
            "| measure | value |",
            "|---|---|",
            f"| distance attack: AUC (95% lower bound) | {_number(a.mia_auc)} ({_number(a.mia_auc_lower)}) |",
            f"| TPR at FPR 1% / 0.1% | {_number(a.mia_tpr_at_fpr_1pct)} / {_number(a.mia_tpr_at_fpr_01pct)} |",
            f"| calibrated attack: AUC (95% lower bound), TPR at FPR 1% | {_number(a.mia_calibrated_auc)} "
            f"({_number(a.mia_calibrated_auc_lower)}), {_number(a.mia_calibrated_tpr_at_fpr_1pct)} |",
            f"| DCR median, to training / held-out | {_number(a.dcr_train_median, 4)} / "
            f"{_number(a.dcr_holdout_median, 4)} |",
            f"| DCR 5th percentile, to training / held-out | {_number(a.dcr_train_p5, 4)} / "
            f"{_number(a.dcr_holdout_p5, 4)} |",
            f"| share closer to training (binomial p) | {_number(a.dcr_share_closer_to_train)} ({a.dcr_p_value:.2g}) |",
            f"| exact copies of training / held-out records | {a.exact_copies_train:.2%} / "
            f"{a.exact_copies_holdout:.2%} |",
            "",
        ]
    lines += [f"![{name}]({name})" for name in files if name.endswith(".png")]
    lines.append("")
    return "\n".join(lines)


def write_report(
    ev: Evaluation,
    folder: Path,
    holdout: EncodedData,
    synthetic: EncodedData,
    train: EncodedData | None = None,
    *,
    title: str = "Evaluation",
    context: dict | None = None,
) -> list[str]:
    """Writes report.json, report.md and the plots into `folder` (made if missing); returns the file names.
    `context` (e.g. the model's name and version) is stored in report.json beside the results."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plots: list[tuple[str, Callable[[Path], None]]] = []
    if isinstance(ev.fidelity, TabularFidelity):
        plots.append(("marginals.png", lambda p: plot_marginals(p, ev, holdout, synthetic)))
        if ev.fidelity.real_correlation is not None:
            plots.append(("correlation_difference.png", lambda p: plot_correlation_difference(p, ev)))
    else:
        plots.append(("mean_images.png", lambda p: plot_mean_images(p, ev)))
        if ev.fidelity.neighbour_synthetic:
            reference = train if train is not None else holdout
            plots.append(("nearest_neighbours.png", lambda p: plot_nearest_neighbours(p, ev, synthetic, reference)))
    if ev.audit is not None:
        plots += [("dcr.png", lambda p: plot_dcr(p, ev)), ("roc.png", lambda p: plot_roc(p, ev))]
    files = []
    for name, draw in plots:
        draw(folder / name)
        files.append(name)
    files = ["report.json", "report.md", *files]
    document = json_safe({"context": context or {}, **ev.to_dict(), "files": files})
    (folder / "report.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    (folder / "report.md").write_text(markdown(ev, files, title))
    return files
