"""OUT/results.json -> OUT/report.md and plots: accuracy per arm (mean and worst silo) per split and epsilon, the gain
over local only, bytes and seconds per round, reconstruction PSNR / SSIM, and the aims, each with its figure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

ARM_LABELS = {
    "local": "local only",
    "centralised": "centralised (ceiling, non-private)",
    "fedavg": "FedAvg (Flower)",
    "fedprox": "FedProx (Flower)",
    "secaggplus": "FedAvg + SecAgg+ (Flower)",
    "dp-fedavg": "DP-FedAvg",
    "sgde": "SGDE: others' synthetic + own real",
    "sgde-synthetic": "SGDE: others' synthetic alone",
}


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _label(rec: dict) -> str:
    eps = rec.get("epsilon")
    label = ARM_LABELS[rec["arm"]] + (f", ε={eps:g}" if eps is not None else "")
    if rec["arm"] == "secaggplus" and rec.get("flower"):  # a shorter run, for its cost
        label += f", {rec['flower']['rounds']} rounds only (its cost run)"
    return label


def _rows(runs: dict) -> list[dict]:
    """One row per (arm, epsilon) and per SGDE variant, with the scores the tables show."""
    rows = []
    for rec in runs.values():
        if "scores" not in rec:
            continue
        rows.append({**rec, "label": _label(rec)})
        if rec["arm"] == "sgde" and "scores_synthetic_only" in rec:
            rows.append(
                {
                    **rec,
                    "arm": "sgde-synthetic",
                    "label": _label({**rec, "arm": "sgde-synthetic"}),
                    "scores": rec["scores_synthetic_only"],
                }
            )
    return rows


def accuracy_tables(doc: dict) -> list[str]:
    out = []
    rows = _rows(doc.get("runs", {}))
    for key in dict.fromkeys((r["dataset"], r["split"]) for r in rows):
        here = [r for r in rows if (r["dataset"], r["split"]) == key]
        local = next((r for r in here if r["arm"] == "local"), None)
        base = local["scores"]["test"]["mean"] if local else None
        out += [
            f"### {key[0]}, {key[1]}",
            "",
            "| arm | test acc. mean | worst silo | own held-out mean | worst silo | gain over local (points) |",
            "|---|---|---|---|---|---|",
        ]
        for r in here:
            t, h = r["scores"]["test"], r["scores"]["holdout"]
            gain = "–" if base is None else f"{100 * (t['mean'] - base):+.1f}"
            out.append(
                f"| {r['label']} | {_pct(t['mean'])} | {_pct(t['worst'])} | {_pct(h['mean'])} | {_pct(h['worst'])} "
                f"| {gain} |"
            )
        out.append("")
    return out


def cost_table(doc: dict) -> list[str]:
    out = [
        "| arm | data set, split | seconds / round (median) | MB up / round | MB down / round | clients |",
        "|---|---|---|---|---|---|",
    ]
    for rec in doc.get("runs", {}).values():
        fl = rec.get("flower")
        if fl:
            up, down = (np.median(fl[f"bytes_{d}_per_round"]) / 1e6 for d in ("up", "down"))
            out.append(
                f"| {_label(rec)} | {rec['dataset']}, {rec['split']} | {np.median(fl['seconds_per_round']):.2f} "
                f"| {up:.2f} | {down:.2f} | {fl['clients']} |"
            )
        elif rec.get("seconds_per_round"):
            out.append(
                f"| {_label(rec)} (in-process) | {rec['dataset']}, {rec['split']} "
                f"| {np.median(rec['seconds_per_round']):.2f} | – | – | {len(rec.get('clients', []))} |"
            )
    return out


def secure_aggregation_table(doc: dict) -> list[str]:
    """Per client and round: what plain FedAvg, SecAgg+ (both measured on the Flower deployment) and Paillier
    (measured on a small model, extrapolated to the data set's) cost."""
    out = [
        "| data set | aggregation | client upload / round | seconds / round | test accuracy after round r "
        "(FedAvg's at r) | how |",
        "|---|---|---|---|---|---|",
    ]
    runs, extras = doc.get("runs", {}), doc.get("extras", {})
    for dataset in dict.fromkeys(r["dataset"] for r in runs.values()):
        for arm in ("fedavg", "secaggplus"):
            recs = [r for r in runs.values() if r["dataset"] == dataset and r["arm"] == arm and r.get("flower")]
            if recs:
                fl = recs[0]["flower"]
                up = np.median(fl["bytes_up_per_round"]) / fl["clients"]
                plain = runs.get(f"{dataset}/{recs[0]['split']}/fedavg", {}).get("flower", {})
                r = len(fl["accuracy_per_round"])
                at_r = plain.get("accuracy_per_round", [])[r - 1 : r]
                acc = f"r={r}: {_pct(fl['accuracy_per_round'][-1])}" + (f" ({_pct(at_r[0])})" if at_r else "")
                out.append(
                    f"| {dataset} | {ARM_LABELS[arm]} | {up / 1e3:,.0f} kB | {np.median(fl['seconds_per_round']):.1f}"
                    f" | {acc} | measured, {recs[0]['split']}, {fl['clients']} SuperNodes, TLS |"
                )
        pai = extras.get(f"{dataset}/paillier")
        for kind, e in (pai or {}).get("extrapolated", {}).items():
            out.append(
                f"| {dataset} | Paillier 2048-bit, {kind} | {e['ciphertext_bytes_per_client'] / 1e3:,.0f} kB "
                f"({e['expansion']:.1f}x float32) | {e['encrypt_s_per_client']:.1f} encrypt; round "
                f"{e['round_s']:.1f} | exact up to quantisation (tested) "
                f"| extrapolated to {e['num_params']:,} parameters, {e['clients']} clients |"
            )
    return out


def leakage_table(doc: dict) -> list[str]:
    """Reconstruction quality per attack setting beside SGDE's nearest samples and membership-inference AUC."""
    out = []
    for key, ex in doc.get("extras", {}).items():
        if not key.endswith("/inversion"):
            continue
        at = ex.get("attacked", {})
        out += [
            f"### {key.split('/')[0]}: silo {at.get('silo')} of {at.get('split')}, {at.get('images')} training images",
            "",
            "| what the attacker has | PSNR dB (mean) | SSIM (mean) | note |",
            "|---|---|---|---|",
        ]
        for arm in ("fedavg", "dp-fedavg"):
            for r in ex.get(arm, {}).values():
                note = r["labels"]
                if r.get("labels_recovered_right") is not None:
                    note += f", {100 * r['labels_recovered_right']:.0f} % right"
                out.append(f"| {r['label']} | {r['psnr']:.1f} | {r['ssim']:.3f} | {note} |")
        for eps, r in ex.get("sgde_nearest", {}).items():
            out.append(
                f"| SGDE generator ({r['architecture']}, {eps}): nearest of {r['samples_searched']:,} samples "
                f"| {r['psnr']:.1f} | {r['ssim']:.3f} | membership-inference AUC {r['mia_auc']:.3f} "
                f"(calibrated {r['mia_calibrated_auc']:.3f}; {r['audit_members']} members vs as many non-members) |"
            )
        if ex.get("figure"):
            out += ["", f"![reconstructions]({ex['figure']})"]
        out.append("")
    return out or ["Not run (`--extra inversion`, image data sets only).", ""]


def _test_mean(runs: dict, key: str, part: str = "scores") -> float | None:
    rec = runs.get(key)
    return rec[part]["test"]["mean"] if rec and part in rec else None


def aims(doc: dict, dataset: str = "fashion-mnist") -> list[str]:
    """The issue's aims, each with the figure that meets or misses it (missing runs say so)."""
    runs, extra = doc.get("runs", {}), doc.get("extras", {}).get(f"{dataset}/inversion", {})
    rows = []

    def row(aim: str, figure: str, met: bool | str | None) -> None:
        verdict = met if isinstance(met, str) else "not run" if met is None else "met" if met else "**missed**"
        rows.append(f"| {aim} | {figure} | {verdict} |")

    attack = extra.get("fedavg", {}).get("batch1-steps1")
    row(
        "attack: >= 20 dB PSNR on a FedAvg update at batch 1",
        f"{attack['psnr']:.1f} dB" if attack else "–",
        None if attack is None else attack["psnr"] >= 20,
    )
    d = f"{dataset}/dirichlet-0.5"
    local = _test_mean(runs, f"{d}/local")
    for eps in doc.get("protocol", {}).get("epsilons", []):
        e = f"eps={eps:g}"
        sgde, dp, fed = (_test_mean(runs, f"{d}/{a}") for a in (f"sgde/{e}", f"dp-fedavg/{e}", "fedavg"))
        have = sgde is not None and local is not None
        row(
            f"Dirichlet(0.5), ε={eps:g}: SGDE + local >= local only + 4 points",
            f"{_pct(sgde)} vs {_pct(local)} ({100 * (sgde - local):+.1f})" if have else "–",
            None if not have else sgde - local >= 0.04,
        )
        have = sgde is not None and dp is not None
        row(
            f"Dirichlet(0.5), ε={eps:g}: SGDE beats DP-FedAvg",
            f"{_pct(sgde)} vs {_pct(dp)}" if have else "–",
            None if not have else sgde > dp,
        )
        have = sgde is not None and fed is not None
        row(
            f"Dirichlet(0.5), ε={eps:g}: gap to non-private FedAvg (reported)",
            f"{_pct(sgde)} vs {_pct(fed)} ({100 * (sgde - fed):+.1f})" if have else "–",
            None if not have else "reported",
        )
        path = _test_mean(runs, f"{dataset}/pathological-1/sgde/{e}")
        row(
            f"pathological (1 class a silo), ε={eps:g}: SGDE >= 75 %",
            _pct(path),
            None if path is None else path >= 0.75,
        )
    for eps_key, near in extra.get("sgde_nearest", {}).items():
        rec = extra.get("fedavg", {}).get("batch1-steps1")
        row(
            f"SGDE ({eps_key}) nearest-sample PSNR well below FedAvg's reconstruction",
            f"{near['psnr']:.1f} dB vs {rec['psnr']:.1f} dB" if rec else f"{near['psnr']:.1f} dB",
            None if rec is None else near["psnr"] < rec["psnr"] - 3,
        )
        row(f"SGDE ({eps_key}) membership-inference AUC <= 0.55", f"{near['mia_auc']:.3f}", near["mia_auc"] <= 0.55)
    return ["| aim | figure | verdict |", "|---|---|---|", *rows]


def _bar_plot(doc: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(doc.get("runs", {}))
    written = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        here = [r for r in rows if r["dataset"] == dataset]
        split_names = list(dict.fromkeys(r["split"] for r in here))
        labels = list(dict.fromkeys(r["label"] for r in here))
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(split_names) + 4), 4.5))
        width = 0.8 / max(1, len(labels))
        for i, label in enumerate(labels):
            means = [
                next((r["scores"]["test"]["mean"] for r in here if r["split"] == s and r["label"] == label), np.nan)
                for s in split_names
            ]
            ax.bar(np.arange(len(split_names)) + i * width, means, width, label=label)
        ax.set_xticks(np.arange(len(split_names)) + 0.4 - width / 2, split_names)
        ax.set_ylabel("global test accuracy (mean over silos)")
        ax.set_ylim(0, 1)
        ax.set_title(f"{dataset}: arms per split")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
        fig.tight_layout()
        path = out / f"accuracy-{dataset}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(f"![{dataset}]({path.name})")
    return written


def _secagg_note() -> list[str]:
    try:
        from benchmarks.cross_silo.flower import SECAGG_NOTE
    except ImportError:
        return []
    return [SECAGG_NOTE, ""]


def write(out: Path) -> Path:
    doc = json.loads((out / "results.json").read_text())
    lines = [
        "# SGDE against federated learning: the cross-silo benchmark",
        "",
        "Commands: " + "; ".join(f"`{c}`" for c in doc.get("commands", [])) + "  ",
        f"Machine: {doc.get('machine', '')}",
        "",
        "Protocol: `" + json.dumps(doc.get("protocol", {})) + "`",
        "",
        "## Aims",
        "",
        *aims(doc),
        "",
        "## Accuracy",
        "",
        "Test: the global test set (never divided, never used to choose anything); each silo's own model (local only,"
        " SGDE) or the one global model (federated arms). Held-out: each silo's own held-out part.",
        "",
        *accuracy_tables(doc),
        *_bar_plot(doc, out),
        "",
        "## Cost per round",
        "",
        *cost_table(doc),
        "",
        "## Gradient inversion against what SGDE publishes",
        "",
        *leakage_table(doc),
        "## Secure and encrypted aggregation",
        "",
        *secure_aggregation_table(doc),
        "",
        *_secagg_note(),
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
