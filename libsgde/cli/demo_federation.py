"""The demo's federation: digits split across three silos (three users of the same services). The first silo
creates a federation on the digits schema with a privacy policy and invites the others; each silo trains a DP
generator on its own third in the trainer, publishes and pushes it; then the first silo measures, on held-out real
digits, what membership buys it: a classifier trained on (a) its third alone, (b) the others' synthetic digits alone,
(c) both."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import numpy as np

from libsgde.cli.demo_data import Split
from libsgde.client import Client
from libsgde.domain.resources import PrivacyPolicy

SILOS = 3


def _silo_splits(digits: Split, folder: Path, seed: int) -> list[Split]:
    """The training split in thirds (each a file, as a silo holds it); every silo keeps the same held-out split."""
    order = np.random.default_rng(seed).permutation(len(digits.y_train))
    splits = []
    for i, part in enumerate(np.array_split(order, SILOS), start=1):
        path = folder / f"silo{i}_digits.npz"
        x, y = digits.x_train[part], digits.y_train[part]
        np.savez_compressed(path, x=x, y=y.astype(np.int64))
        splits.append(Split(f"silo{i} digits", x, y, digits.x_test, digits.y_test, path, digits.schema))
    return splits


def run_federation(
    first: Client,
    make_client: Callable[[str], Client],
    digits: Split,
    folder: Path,
    *,
    spec,
    train_and_publish,
    classifiers: list[str],
    seed: int,
    log: Callable[[str], None],
) -> dict:
    """The walk of the module docstring. `make_client(name)` registers, logs in and returns another silo's client;
    `train_and_publish(client, split, spec, model, log)` is the demo's own. Returns the summary's `federation`."""
    from libsgde.client.evaluation import evaluate_federation

    splits = _silo_splits(digits, folder / "data", seed)
    holdout = folder / "data" / "digits_holdout.npz"
    np.savez_compressed(holdout, x=digits.x_test, y=digits.y_test.astype(np.int64))
    clients = [first] + [make_client(f"silo{i}") for i in range(2, SILOS + 1)]
    name = f"digits-{secrets.token_hex(3)}"
    policy = PrivacyPolicy(max_epsilon=spec.target_epsilon, architectures=[spec.architecture])
    first.create_federation(name, digits.schema, policy, description="the demo's three digit silos")
    log(f"federation {name}: digits schema, epsilon <= {spec.target_epsilon:g}, {spec.architecture} only")
    for other in clients[1:]:
        first.invite(name, other._me())
        other.accept_invitation(name)
    members = []
    for client, split in zip(clients, splits, strict=True):
        _, version = train_and_publish(client, split, spec, f"digits-third-{spec.architecture}", log)
        admitted = client.push_generator(name, version.name)
        assert admitted.privacy is not None  # the registry's recomputation
        members.append(
            {
                "member": client._me(),
                "rows": len(split.y_train),
                "version": admitted.version,
                "epsilon": admitted.privacy.epsilon,
                "delta": admitted.privacy.delta,
            }
        )
        log(f"  {client._me()} pushed {admitted.version} (epsilon {admitted.privacy.epsilon:.3g}, checked)")
    report = folder / "federation"
    result = evaluate_federation(first, name, splits[0].path, holdout, seed=seed, out=report, classifiers=classifiers)
    membership = {r.classifier: r.accuracy for r in result.results}
    for clf, acc in membership.items():
        log(
            f"what {name} buys {first._me()} ({clf}): local {acc['local']:.3f}, others' synthetic "
            f"{acc['others']:.3f}, both {acc['both']:.3f}"
        )
    return {
        "name": f"federations/{name}",
        "members": members,
        "evaluated_by": first._me(),
        "synthetic_rows_by_member": result.sources,
        "membership": membership,
        "report": str(report.relative_to(folder) / "report.md"),
    }
