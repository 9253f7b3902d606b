"""The cross-silo benchmark's in-process arms (benchmarks/cross_silo): FedAvg's round loop, DP-FedAvg's client
(its clipping and its accounting), and the runner writing results and a report from a small data set."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from benchmarks import utility
from benchmarks.cross_silo import arms, data, dp_fedavg, model, report, runner, splits
from benchmarks.cross_silo.silos import SiloView, silo_views

SPEC = model.ModelSpec("mlp", (3,), 2, hidden=(4,))


def _silo(index: int, n: int, seed: int) -> SiloView:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x[:, 0] + 0.1 * rng.normal(size=n) > 0).astype(np.int32)
    return SiloView(index, x, y, x[:5], y[:5])


def test_fedavg_rounds_with_one_silo_is_local_training_round_after_round():
    silo = _silo(0, 50, 0)
    local = model.LocalTraining(epochs=1, batch_size=16, learning_rate=0.1)
    seeds = []

    def client(params, s, r, seed):
        seeds.append(seed)
        return model.train(SPEC, params, s.x, s.y, local, seed)

    merged = arms.fedavg_rounds(SPEC, [silo], client, rounds=3, seed=7)
    expected = model.init(SPEC, jax.random.key(7))
    for seed in seeds:
        expected = model.train(SPEC, expected, silo.x, silo.y, local, seed)
    for name in SPEC.names():
        np.testing.assert_allclose(merged[name], expected[name], rtol=1e-6, atol=1e-7)
    assert len(set(seeds)) == 3  # a fresh shuffle every round


def test_dp_client_takes_clipped_mean_steps_and_its_noise_meets_the_target_epsilon():
    silo = _silo(0, 400, 1)
    cfg = dp_fedavg.DpTraining(epsilon=2.0, expected_batch=40, clip_norm=0.05, learning_rate=1.0, momentum=0.0)
    privacy = dp_fedavg.client_privacy(len(silo), cfg, rounds=5)
    assert privacy.steps_per_round == 10 and privacy.total_steps == 50
    assert privacy.delta == 1e-5 and privacy.sampling_rate == pytest.approx(0.1)
    assert 1.9 < privacy.epsilon <= 2.0  # calibrated to the target, not past it
    # With no noise, one DP step moves every parameter by -lr * (sum of per-example gradients clipped to C) / (q N).
    quiet = dp_fedavg.ClientPrivacy(len(silo), privacy.sampling_rate, 1, 5, 1e-5, 1e-9, float("inf"))
    start = model.init(SPEC, jax.random.key(3))
    seed = 11
    moved = dp_fedavg.dp_client(SPEC, cfg, [quiet])(start, silo, 0, seed)
    from libsgde.ml.privacy import dpsgd

    indices, mask = dpsgd.poisson_batch(
        np.random.default_rng(seed), len(silo), quiet.sampling_rate, dpsgd.padded_batch_size(len(silo), 0.1)
    )
    total = {n: np.zeros_like(start[n]) for n in SPEC.names()}
    for i in indices[mask > 0]:
        xi, yi = silo.x[i : i + 1], silo.y[i : i + 1]
        g = jax.grad(lambda p, xi=xi, yi=yi: model.example_losses(SPEC, p, xi, yi)[0])(start)
        norm = np.sqrt(sum(float(np.sum(np.square(g[n]))) for n in SPEC.names()))
        assert norm > cfg.clip_norm  # the clip binds, so the test sees it
        for n in SPEC.names():
            total[n] += np.asarray(g[n]) * min(1.0, cfg.clip_norm / norm)
    for n in SPEC.names():
        np.testing.assert_allclose(moved[n], start[n] - total[n] / 40.0, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="calibrated for"):
        dp_fedavg.dp_client(SPEC, cfg, [quiet])(start, _silo(0, 10, 2), 0, seed)


def _wine(name: str, data_dir: Path, seed: int) -> data.Data:
    return data.from_source(name, utility.load("wine", data_dir, utility.FASHION_DIR, seed))


def test_the_runner_records_every_arm_resumes_and_reports(tmp_path):
    protocol = runner.Protocol(
        datasets=("wine",), splits=("iid", "pathological-1"), arms=("local", "centralised", "dp-fedavg"),
        extras=(), epsilons=(5.0,), silos=3, rounds=2,
    )  # fmt: skip
    results = runner.run(protocol, tmp_path, command="test", load=_wine, log=lambda _: None)
    keys = set(results.doc["runs"])
    assert keys == {
        f"wine/{s}/{a}" for s in ("iid", "pathological-1") for a in ("local", "centralised", "dp-fedavg/eps=5")
    }
    for rec in results.doc["runs"].values():
        for part in ("test", "holdout"):
            s = rec["scores"][part]
            assert len(s["per_silo"]) == 3 and 0 <= s["worst"] <= s["mean"] <= 1
    dp = results.doc["runs"]["wine/iid/dp-fedavg/eps=5"]
    assert all(c["epsilon"] <= 5.0 for c in dp["clients"]) and len(dp["seconds_per_round"]) == 2
    # The split is recorded and the silos hold disjoint rows of the training part.
    record = splits.split_from_json(json.loads((tmp_path / "splits" / "wine-iid.json").read_text()))
    assert len(np.unique(np.concatenate(record.train + record.holdout))) == sum(map(len, record.train + record.holdout))
    # A second run skips what is recorded.
    seen: list[str] = []
    runner.run(protocol, tmp_path, load=_wine, log=seen.append)
    assert all(line.endswith("recorded, skipped") for line in seen) and len(seen) == 6
    text = report.write(tmp_path).read_text()
    assert "### wine, pathological-1" in text and "DP-FedAvg, ε=5" in text
    assert (tmp_path / "accuracy-wine.png").stat().st_size > 0


def test_silo_views_cut_the_training_part_by_the_split():
    labels = np.repeat(np.arange(3), 20)
    x = np.arange(60, dtype=np.float32)[:, None]
    source = type("S", (), {"num_classes": 3, "image_shape": ()})()
    dataset = data.Data("toy", source, x, labels.astype(np.int32), x[:3], labels[:3].astype(np.int32))
    split = splits.make_split(labels, splits.SplitSpec("pathological", silos=3, classes_per_silo=1, holdout=0.25))
    views = silo_views(dataset, split)
    for v, tr, ho in zip(views, split.train, split.holdout):
        np.testing.assert_array_equal(v.x[:, 0], tr)
        np.testing.assert_array_equal(v.x_holdout[:, 0], ho)
        assert len(np.unique(v.y)) == 1


def test_runs_made_in_separate_folders_merge_and_another_protocol_is_refused(tmp_path):
    base = runner.Protocol(datasets=("wine",), splits=("iid",), arms=("local",), extras=(), silos=3, rounds=1)
    runner.run(base, tmp_path / "a", load=_wine, log=lambda _: None)
    other = runner.Protocol(**{**base.__dict__, "arms": ("dp-fedavg",), "epsilons": (2.0,)})
    runner.run(other, tmp_path / "b", command="b", load=_wine, log=lambda _: None)
    merged = runner.merge(tmp_path / "a", [tmp_path / "b"])
    assert set(merged.doc["runs"]) == {"wine/iid/local", "wine/iid/dp-fedavg/eps=2"}
    assert merged.doc["protocol"]["arms"] == ["dp-fedavg", "local"] and "b" in merged.doc["commands"]
    longer = runner.Protocol(**{**base.__dict__, "rounds": 2})
    runner.run(longer, tmp_path / "c", load=_wine, log=lambda _: None)
    with pytest.raises(SystemExit, match="another protocol"):
        runner.merge(tmp_path / "a", [tmp_path / "c"])
