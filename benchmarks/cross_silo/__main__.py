"""SGDE against federated learning on the same silos:

    python -m benchmarks.cross_silo [--quick] [--dataset fashion-mnist compas] [--split dirichlet-0.5 ...]
        [--arm local fedavg ...] [--epsilon 1 10] [--rounds 20] [--train-size N] [--out DIR] [--fresh]
        [--report-only] [--merge DIR ...]

writes DIR (default bench-out/cross_silo) with results.json, report.md and plots. `--quick` is the reduced
protocol a 2-core machine finishes in about three hours (12,000 training images, 10 rounds, the two splits the aims
name); the default is the whole training set, every split, 20 rounds of 1 local epoch (NIID-Bench runs 50 rounds of
10 local epochs: 25 times the compute, for a machine with a GPU). A run resumes from DIR/results.json; `--merge`
adds the runs of other folders made at once with the same protocol.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from dataclasses import replace
from pathlib import Path

from benchmarks.cross_silo import report, runner

REPO = Path(__file__).resolve().parents[2]
QUICK = {"train_size": 12000, "rounds": 10, "splits": ("dirichlet-0.5", "pathological-1"), "synthetic_per_member": 300}


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    # SIGTERM (and SIGINT, which a shell's background job ignores) unwinds like Ctrl-C, so the Flower deployment
    # and the services stop with the run instead of outliving it.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the reduced protocol (see above)")
    ap.add_argument("--dataset", nargs="+", choices=runner.data.DATASETS)
    ap.add_argument("--split", nargs="+", help=f"of {', '.join(runner.SPLITS)} (any alpha / classes per silo)")
    ap.add_argument("--arm", nargs="+", choices=runner.ARMS)
    ap.add_argument("--extra", nargs="*", choices=runner.EXTRAS, help="the per-data-set measurements (default all)")
    ap.add_argument("--epsilon", nargs="+", type=float)
    ap.add_argument("--silos", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--train-size", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "cross_silo")
    ap.add_argument("--fresh", action="store_true", help="forget recorded runs in OUT/results.json")
    ap.add_argument("--report-only", action="store_true", help="write the report from OUT/results.json and stop")
    ap.add_argument(
        "--merge", nargs="+", type=Path, metavar="DIR", help="add the runs of other result folders (same protocol)"
    )
    args = ap.parse_args(argv)

    protocol = runner.Protocol(**QUICK) if args.quick else runner.Protocol()
    overrides = {
        "datasets": args.dataset and tuple(args.dataset),
        "splits": args.split and tuple(args.split),
        "arms": args.arm and tuple(args.arm),
        "extras": args.extra if args.extra is None else tuple(args.extra),
        "epsilons": args.epsilon and tuple(args.epsilon),
        "silos": args.silos,
        "rounds": args.rounds,
        "train_size": args.train_size,
        "seed": args.seed,
    }
    protocol = replace(protocol, **{k: v for k, v in overrides.items() if v is not None})
    for name in protocol.splits:
        runner.split_spec(name, protocol.silos, protocol.seed)  # refuse a bad name before hours of work
    command = "python -m benchmarks.cross_silo " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.merge:
        runner.merge(args.out, args.merge)
    elif not args.report_only:
        runner.run(protocol, args.out, fresh=args.fresh, command=command)
    path = report.write(args.out)
    print(f"report: {path}")


if __name__ == "__main__":
    main()
