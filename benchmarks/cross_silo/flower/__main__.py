"""The Flower arms' cost on their own: a real deployment per strategy on one split, seconds and bytes per round.

    python -m benchmarks.cross_silo.flower [--dataset compas] [--split iid] [--silos 10] [--rounds 2]
        [--strategy fedavg secaggplus] [--out bench-out/flower-cost] [--data-dir bench-out/data]

Writes <out>/flower-cost.json (every run's record, SECAGG_NOTE, the machine) and prints one line per strategy. The
full benchmark (python -m benchmarks.cross_silo) runs the same deployments through its runner.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np

from benchmarks._machine import machine_line
from benchmarks.cross_silo import data, splits
from benchmarks.cross_silo.flower import SECAGG_NOTE, run_flower
from benchmarks.cross_silo.flower.deploy import STRATEGIES
from benchmarks.cross_silo.model import LocalTraining


def write_silos(d: data.Data, split: splits.Split, folder: Path) -> tuple[list[Path], Path]:
    """Each silo's training rows as silo<k>.npz (x float32, y int32) and the global test set as test.npz."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, ix in enumerate(split.train):
        files.append(folder / f"silo{k}.npz")
        np.savez(files[-1], x=d.x[ix], y=d.y[ix].astype(np.int32))
    np.savez(folder / "test.npz", x=d.x_test, y=d.y_test.astype(np.int32))
    return files, folder / "test.npz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="compas", choices=data.DATASETS)
    ap.add_argument("--split", default="iid", choices=splits.KINDS)
    ap.add_argument("--silos", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--strategy", nargs="+", default=["fedavg", "secaggplus"], choices=STRATEGIES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "flower-cost")
    ap.add_argument("--data-dir", type=Path, default=REPO / "bench-out" / "data")
    args = ap.parse_args()
    d = data.load(args.dataset, args.data_dir, args.seed)
    split = splits.make_split(d.y, splits.SplitSpec(args.split, silos=args.silos, seed=args.seed))
    files, test = write_silos(d, split, args.out / "silos" / f"{args.dataset}-{split.spec.name}")
    spec, local = d.model_spec(), LocalTraining()
    runs = []
    for strategy in args.strategy:
        started = time.time()
        rec = run_flower(strategy, files, test, spec, local, args.rounds, args.seed, args.out / "runs")
        rec.pop("processes")
        runs.append({"dataset": args.dataset, "split": split.spec.name, "wall_s": time.time() - started, **rec})
        print(
            f"{strategy:>10}: {args.silos} SuperNodes, accuracy {rec['final_accuracy']:.4f}; per round "
            f"{' '.join(f'{s:.1f}' for s in rec['seconds_per_round'])} s, "
            f"{' '.join(f'{b / 1e3:.0f}' for b in rec['bytes_up_per_round'])} kB up, "
            f"{' '.join(f'{b / 1e3:.0f}' for b in rec['bytes_down_per_round'])} kB down; idle "
            f"{rec['idle_bytes_per_second'][0] / 1e3:.1f} / {rec['idle_bytes_per_second'][1] / 1e3:.1f} kB/s; "
            f"model {rec['model_bytes'] / 1e3:.1f} kB",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m benchmarks.cross_silo.flower", *sys.argv[1:]])
    doc = {"command": command, "machine": machine_line(), "runs": runs, "secagg_note": SECAGG_NOTE}
    (args.out / "flower-cost.json").write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out / 'flower-cost.json'}")


if __name__ == "__main__":
    main()
