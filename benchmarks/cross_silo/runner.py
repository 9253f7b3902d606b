"""The cross-silo benchmark's runs: every arm on every (data set, split), recorded in one results file.

Results go to OUT/results.json as they finish, keyed by run ("fashion-mnist/dirichlet-0.5/dp-fedavg/eps=1"), so an
interrupted run resumes where it stopped (`--fresh` starts over). Each split's indices go to OUT/splits/ so any
figure can be reproduced. Nothing here is chosen by a score on the global test set: settings are the protocol's,
fixed before the run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmarks._machine import machine_line
from benchmarks.cross_silo import arms, data, dp_fedavg, model, splits
from benchmarks.cross_silo.silos import SiloView, score, silo_views

ARMS = ("local", "centralised", "fedavg", "fedprox", "dp-fedavg", "secaggplus", "sgde")
PER_EPSILON = ("dp-fedavg", "sgde")
SPLITS = ("iid", "dirichlet-0.5", "dirichlet-0.1", "pathological-1")
EXTRAS = ("paillier", "inversion")  # measured once per data set (inversion: images only), not per split


@dataclass(frozen=True)
class Protocol:
    datasets: tuple[str, ...] = data.DATASETS
    splits: tuple[str, ...] = SPLITS
    arms: tuple[str, ...] = ARMS
    extras: tuple[str, ...] = EXTRAS
    epsilons: tuple[float, ...] = (1.0, 10.0)
    silos: int = 10
    rounds: int = 10
    local_epochs: int = 1
    train_size: int = 0  # 0: the whole training part; else a seeded subsample (the test set stays whole)
    secagg_rounds: int = 3  # SecAgg+ is a cost figure (its accuracy equals FedAvg's up to quantisation)
    prox_mu: float = 0.01
    sgde_architecture: dict[str, str] = field(default_factory=lambda: {"fashion-mnist": "dp-merf", "compas": "mst"})
    synthetic_per_member: int = 1000
    seed: int = 0


def split_spec(name: str, silos: int, seed: int) -> splits.SplitSpec:
    """'iid', 'dirichlet-<alpha>' or 'pathological-<classes per silo>' as a SplitSpec."""
    kind, _, arg = name.partition("-")
    if kind == "iid" and not arg:
        return splits.SplitSpec("iid", silos=silos, seed=seed)
    if kind == "dirichlet" and arg:
        return splits.SplitSpec("dirichlet", silos=silos, alpha=float(arg), seed=seed)
    if kind == "pathological" and arg.isdigit():
        return splits.SplitSpec("pathological", silos=silos, classes_per_silo=int(arg), seed=seed)
    raise ValueError(f"unknown split {name!r}: iid, dirichlet-<alpha> or pathological-<classes per silo>")


# What a recorded run depends on besides its key: a resumed run must share these with the recorded ones.
SHARED = ("silos", "rounds", "local_epochs", "train_size", "secagg_rounds", "prox_mu", "sgde_architecture",
          "synthetic_per_member", "seed")  # fmt: skip


def _refuse_another_protocol(recorded: dict, given: dict, path: Path) -> None:
    differ = [k for k in SHARED if k in recorded and recorded[k] != given[k]]
    if differ:
        raise SystemExit(
            f"{path} holds runs of another protocol ({', '.join(f'{k} {recorded[k]}' for k in differ)}): "
            "give the same settings, another --out, or --fresh"
        )


class Results:
    """OUT/results.json: {"runs": {key: record}, ...}, rewritten atomically after every run. Resuming with another
    protocol (rounds, silos, ...) is refused: one report, one protocol."""

    def __init__(self, path: Path, fresh: bool, protocol: Protocol) -> None:
        self.path = path
        self.doc: dict = {"runs": {}} if fresh or not path.exists() else json.loads(path.read_text())
        recorded = self.doc.get("protocol", {})
        if self.doc["runs"]:
            _refuse_another_protocol(recorded, asdict(protocol), path)
        merged = {
            k: sorted({*recorded.get(k, ()), *getattr(protocol, k)})
            for k in ("datasets", "splits", "arms", "extras", "epsilons")
        }
        self.doc["protocol"] = asdict(protocol) | merged

    def __contains__(self, key: str) -> bool:
        return key in self.doc["runs"]

    def put(self, key: str, record: dict) -> None:
        self.doc["runs"][key] = record
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=float))
        tmp.replace(self.path)


def merge(out: Path, others: list[Path]) -> Results:
    """The runs, extras and split summaries of other result folders of the same protocol (runs made at once in
    separate folders) into OUT's, theirs winning on a shared key; their figures are copied beside."""
    import shutil

    path = out / "results.json"
    results = Results(path, False, Protocol(**json.loads(path.read_text())["protocol"]))
    for other in others:
        doc = json.loads((other / "results.json").read_text())
        _refuse_another_protocol(doc["protocol"], results.doc["protocol"], other / "results.json")
        for k in ("datasets", "splits", "arms", "extras", "epsilons"):
            results.doc["protocol"][k] = sorted({*results.doc["protocol"][k], *doc["protocol"][k]})
        for k in ("runs", "extras", "splits"):
            results.doc.setdefault(k, {}).update(doc.get(k, {}))
        commands = results.doc.setdefault("commands", [])
        commands += [c for c in doc.get("commands", []) if c not in commands]
        for png in other.glob("*.png"):
            if not png.name.startswith("accuracy-"):
                shutil.copy(png, out / png.name)
    results.save()
    return results


@dataclass
class Context:
    protocol: Protocol
    data: data.Data
    split: splits.Split
    silos: list[SiloView]
    spec: model.ModelSpec
    local: model.LocalTraining
    workdir: Path
    log: Callable[[str], None]
    services: object = None  # the SGDE arm's running services, started on first use

    def scores(self, params: list[model.Params]) -> dict:
        return score(self.spec, params, self.data, self.silos)


def _silo_files(ctx: Context) -> tuple[list[Path], Path]:
    """Each silo's own rows as an npz (what a Flower SuperNode reads), and the global test set."""
    folder = ctx.workdir / "silo-files" / ctx.split.spec.name
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for s in ctx.silos:
        path = folder / f"silo{s.index}.npz"
        if not path.exists():
            np.savez(path, x=s.x, y=s.y)
        files.append(path)
    test = folder.parent / "test.npz"
    if not test.exists():
        np.savez(test, x=ctx.data.x_test, y=ctx.data.y_test)
    return files, test


def run_local(ctx: Context, _eps: float | None) -> dict:
    p = ctx.protocol
    return {"scores": ctx.scores(arms.local_only(ctx.spec, ctx.silos, ctx.local, p.rounds, p.seed))}


def run_centralised(ctx: Context, _eps: float | None) -> dict:
    p = ctx.protocol
    central = arms.centralised(ctx.spec, ctx.silos, ctx.local, p.rounds, p.seed)
    return {"scores": ctx.scores([central] * len(ctx.silos))}


def _run_flower(ctx: Context, strategy: str, rounds: int, **kw) -> dict:
    from benchmarks.cross_silo.flower import run_flower

    files, test = _silo_files(ctx)
    out = run_flower(
        strategy, files, test, ctx.spec, ctx.local, rounds, ctx.protocol.seed, ctx.workdir / "flower", log=ctx.log, **kw
    )
    with np.load(out["final_params_file"]) as f:
        params = model.from_arrays(ctx.spec, [f[k] for k in f.files])
    return {"scores": ctx.scores([params] * len(ctx.silos)), "flower": out}


def run_fedavg(ctx: Context, _eps: float | None) -> dict:
    return _run_flower(ctx, "fedavg", ctx.protocol.rounds)


def run_fedprox(ctx: Context, _eps: float | None) -> dict:
    return _run_flower(ctx, "fedprox", ctx.protocol.rounds, prox_mu=ctx.protocol.prox_mu)


def run_secaggplus(ctx: Context, _eps: float | None) -> dict:
    return _run_flower(ctx, "secaggplus", ctx.protocol.secagg_rounds)


def run_dp_fedavg(ctx: Context, eps: float | None) -> dict:
    assert eps is not None
    cfg = dp_fedavg.DpTraining(epsilon=eps, epochs=ctx.protocol.local_epochs)
    privacy = [dp_fedavg.client_privacy(len(s), cfg, ctx.protocol.rounds) for s in ctx.silos]
    step = dp_fedavg.dp_client(ctx.spec, cfg, privacy)
    seconds: list[float] = []
    params = arms.fedavg_rounds(
        ctx.spec, ctx.silos, step, ctx.protocol.rounds, ctx.protocol.seed, lambda r, p, s: seconds.append(s)
    )
    return {
        "scores": ctx.scores([params] * len(ctx.silos)),
        "settings": asdict(cfg),
        "clients": [p.to_json() for p in privacy],
        "seconds_per_round": seconds,
    }


def run_sgde(ctx: Context, eps: float | None) -> dict:
    from benchmarks.cross_silo.sgde_arm import run_sgde as sgde

    assert eps is not None and ctx.services is not None
    p = ctx.protocol
    # The same budget as local only: rounds * local epochs passes over the classifier's training set (which holds
    # the others' synthetic rows too, so that is more SGD steps than local only takes).
    budget = model.LocalTraining(**{**ctx.local.__dict__, "epochs": p.rounds * ctx.local.epochs})
    out = sgde(
        ctx.services,
        ctx.data,
        ctx.split,
        epsilon=eps,
        architecture=p.sgde_architecture.get(ctx.data.name, "dp-merf"),
        local=budget,
        synthetic_per_member=p.synthetic_per_member,
        seed=p.seed,
        workdir=ctx.workdir / "sgde",
        log=ctx.log,
    )
    return out | {"scores": out["accuracy"]["both"], "scores_synthetic_only": out["accuracy"]["synthetic"]}


def run_paillier(spec: model.ModelSpec, clients: int, measured: dict) -> dict:
    """Paillier-encrypted FedAvg's cost per client and round for this data set's model, extrapolated from one
    measured round of a small model with 2048-bit keys (`measured`, shared by every data set)."""
    from benchmarks.cross_silo import paillier

    return {
        "measured": measured,
        "model_params": spec.size(),
        "extrapolated": {kind: paillier.extrapolate(measured[kind], spec.size(), clients) for kind in measured},
    }


def run_inversion(protocol: Protocol, dataset: data.Data, out: Path, log: Callable[[str], None]) -> dict:
    """The leakage extra (leakage.py) on silo 0 of the Dirichlet(0.5) split (else the protocol's first)."""
    from benchmarks.cross_silo import leakage

    name = "dirichlet-0.5" if "dirichlet-0.5" in protocol.splits else protocol.splits[0]
    split = splits.make_split(dataset.y, split_spec(name, protocol.silos, protocol.seed))
    rows = len(split.train[0])
    dp = dp_fedavg.DpTraining(epsilon=max(protocol.epsilons), epochs=protocol.local_epochs)
    return leakage.run_leakage(
        dataset,
        split,
        architecture=protocol.sgde_architecture.get(dataset.name, "dp-merf"),
        epsilons=protocol.epsilons,
        dp_noise_multiplier=dp_fedavg.client_privacy(rows, dp, protocol.rounds).noise_multiplier,
        learning_rate=model.LocalTraining().learning_rate,
        seed=protocol.seed,
        workdir=out / "work" / dataset.name,
        out=out / f"inversion-{dataset.name}.png",
        log=log,
    )


def measure_paillier(log: Callable[[str], None]) -> dict:
    from benchmarks.cross_silo import paillier

    log("paillier: one measured round, 2,000 parameters, 3 clients, 2048-bit keys, unpacked and packed ...")
    return {
        kind: paillier.measure(2000, 3, key_bits=2048, packed=kind == "packed", seed=0)
        for kind in ("unpacked", "packed")
    }


RUNNERS: dict[str, Callable[[Context, float | None], dict]] = {
    "local": run_local,
    "centralised": run_centralised,
    "fedavg": run_fedavg,
    "fedprox": run_fedprox,
    "secaggplus": run_secaggplus,
    "dp-fedavg": run_dp_fedavg,
    "sgde": run_sgde,
}


@contextmanager
def _sgde_services(protocol: Protocol, workdir: Path) -> Iterator[object]:
    if "sgde" not in protocol.arms:
        yield None
        return
    from benchmarks.cross_silo.sgde_arm import services

    with services(workdir / "services") as handle:
        yield handle


def run(
    protocol: Protocol,
    out: Path,
    *,
    fresh: bool = False,
    command: str = "",
    log: Callable[[str], None] = print,
    load: Callable[[str, Path, int], data.Data] = data.load,
) -> Results:
    """Every arm of the protocol on every (data set, split); returns the results (also in OUT/results.json).
    `load(name, data_dir, seed)` gives a data set (tests pass a small one)."""
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out / "results.json", fresh, protocol)
    commands = results.doc.setdefault("commands", [])
    if command and command not in commands:
        commands.append(command)
    results.doc["machine"] = machine_line()
    local = model.LocalTraining(epochs=protocol.local_epochs)
    with _sgde_services(protocol, out / "work") as services:
        for name in protocol.datasets:
            full = load(name, out / "work" / "data", protocol.seed)
            dataset = data.subsample(full, protocol.train_size, protocol.seed)
            for split_name in protocol.splits:
                split = splits.make_split(dataset.y, split_spec(split_name, protocol.silos, protocol.seed))
                record = out / "splits" / f"{name}-{split_name}.json"
                record.parent.mkdir(exist_ok=True)
                record.write_text(json.dumps(split.to_json()))
                counts = split.label_counts(dataset.y, dataset.num_classes)
                results.doc.setdefault("splits", {})[f"{name}/{split_name}"] = {
                    "rows": [int(len(ix)) for ix in split.train],
                    "holdout_rows": [int(len(ix)) for ix in split.holdout],
                    "label_counts": counts.tolist(),
                }
                ctx = Context(
                    protocol, dataset, split, silo_views(dataset, split), dataset.model_spec(), local,
                    out / "work" / name, log, services,
                )  # fmt: skip
                for arm in protocol.arms:
                    for eps in protocol.epsilons if arm in PER_EPSILON else (None,):
                        key = f"{name}/{split_name}/{arm}" + (f"/eps={eps:g}" if eps is not None else "")
                        if key in results:
                            log(f"{key}: recorded, skipped")
                            continue
                        log(f"{key} ...")
                        started = time.perf_counter()
                        record_ = RUNNERS[arm](ctx, eps)
                        record_ |= {"arm": arm, "dataset": name, "split": split_name, "epsilon": eps}
                        record_["seconds"] = time.perf_counter() - started
                        results.put(key, record_)
                        s = record_["scores"]
                        log(
                            f"{key}: test mean {s['test']['mean']:.3f} worst {s['test']['worst']:.3f}; "
                            f"holdout mean {s['holdout']['mean']:.3f} ({record_['seconds']:.0f} s)"
                        )
            extras = results.doc.setdefault("extras", {})
            if "paillier" in protocol.extras and f"{name}/paillier" not in extras:
                if "paillier-measured" not in extras:
                    extras["paillier-measured"] = measure_paillier(log)
                extras[f"{name}/paillier"] = run_paillier(
                    dataset.model_spec(), protocol.silos, extras["paillier-measured"]
                )
                results.save()
            if "inversion" in protocol.extras and dataset.source.image_shape and f"{name}/inversion" not in extras:
                extras[f"{name}/inversion"] = run_inversion(protocol, dataset, out, log)
                results.save()
    return results
