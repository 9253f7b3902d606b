"""The cross-silo benchmark's SGDE arm end to end through the running services (registry, trainer, sampler over
mutual TLS), on a tiny set: breast_cancer's 426 training rows (a public schema, continuous columns, no duplicate
rows) in 3 IID silos, dp-merf with a tiny network, epsilon 1. The by-construction check: no row a silo's classifier
trains on is a real row of another silo, and the function that trains it cannot be handed the data set."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

from benchmarks import utility
from benchmarks.cross_silo import model, sgde_arm
from benchmarks.cross_silo.data import Data, inputs
from benchmarks.cross_silo.splits import SplitSpec, make_split

pytestmark = pytest.mark.integration  # real servers on loopback sockets

EPSILON = 1.0
PER_MEMBER = 60
TINY_MERF = {"config": {"hidden": [16], "latent_dim": 4, "features": 100, "generator_steps": 40, "generator_batch": 64}}


def breast_cancer(folder) -> Data:
    source = utility.load("breast_cancer", folder, utility.FASHION_DIR, 0)
    x, x_test = inputs(source, source.train.x), inputs(source, source.x_test)
    return Data(
        "breast_cancer", source, x, source.train.labels.astype(np.int32), x_test, source.y_test.astype(np.int32)
    )


def test_the_sgde_arm_walks_through_the_services_and_no_silo_trains_on_another_silos_rows(tmp_path):
    data = breast_cancer(tmp_path / "data")
    assert len(np.unique(data.x, axis=0)) == len(data.x)  # no duplicate rows: a row identity means a leak
    split = make_split(data.y, SplitSpec("iid", silos=3, seed=0))
    seen: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}

    with sgde_arm.services(tmp_path / "work", log=lambda _: None) as handle:
        result = sgde_arm.run_sgde(
            handle,
            data,
            split,
            epsilon=EPSILON,
            architecture="dp-merf",
            local=model.LocalTraining(epochs=2, batch_size=32),
            synthetic_per_member=PER_MEMBER,
            seed=0,
            workdir=tmp_path / "work",
            log=lambda _: None,
            generator=TINY_MERF,
            observe=lambda k, variant, x, y: seen.__setitem__((k, variant), (x, y)),
        )

    assert result["silos"] == 3 and len(result["per_silo"]) == 3
    assert set(result["accuracy"]) == {"both", "synthetic"}
    for variant in result["accuracy"].values():
        for part in ("test", "holdout"):
            assert set(variant[part]) == {"mean", "worst", "per_silo"}
            assert 0 <= variant[part]["worst"] <= variant[part]["mean"] <= 1
    assert set(result["seconds"]) == {"generators", "sampling", "classifiers", "total"}
    versions = set()
    for k, silo in enumerate(result["per_silo"]):
        assert silo["rows"] == len(split.train[k]) and silo["holdout_rows"] == len(split.holdout[k])
        assert 0 < silo["epsilon"] <= EPSILON + 1e-9  # the registry's recomputation, within the policy
        assert silo["delta"] == sgde_arm.DELTA and silo["dataset_size"] == silo["rows"]
        assert silo["synthetic_rows"] == 2 * PER_MEMBER  # from each of the other two members
        for variant in ("both", "synthetic"):
            assert set(silo["accuracy"][variant]) == {"test", "holdout"}
            assert all(math.isfinite(a) for a in silo["accuracy"][variant].values())
        versions.add(silo["version"])
    assert len(versions) == 3 and result["max_epsilon_admitted"] <= EPSILON + 1e-9

    # By construction: silo k's training sets are its own rows and the others' synthetic rows, nothing else.
    for k in range(3):
        own = {row.tobytes() for row in data.x[split.train[k]]}
        others = np.setdiff1d(np.arange(len(data.x)), np.concatenate([split.train[k], split.holdout[k]]))
        foreign = {row.tobytes() for row in data.x[others]}
        x_both, y_both = seen[(k, "both")]
        x_syn, _ = seen[(k, "synthetic")]
        rows_both = [row.tobytes() for row in x_both]
        assert not foreign & set(rows_both)  # no other silo's real row
        assert not foreign & {row.tobytes() for row in x_syn}
        assert sum(r in own for r in rows_both) == len(split.train[k])  # its own rows, each once
        assert len(x_both) == len(split.train[k]) + 2 * PER_MEMBER and len(y_both) == len(x_both)
        assert not own & {row.tobytes() for row in x_syn}  # the synthetic-only set holds none of its own rows

    # The function that trains a silo's classifier takes its view and the synthetic rows, never the data set.
    annotations = [p.annotation for p in inspect.signature(sgde_arm.train_silo).parameters.values()]
    assert not {"Data", "Split"} & {str(a) for a in annotations}
    assert annotations[:2] == ["SiloView", "Synthetic"]
    with pytest.raises(TypeError):
        sgde_arm.train_silo(data, None, data.model_spec(), model.LocalTraining(), 0)
