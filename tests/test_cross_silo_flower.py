"""The cross-silo benchmark's Flower arms (benchmarks/cross_silo/flower): our FedAvg against Flower's own, SecAgg+'s
aggregate against the plain one, what SecAgg+'s masks are made of, the byte-counting relay, and one real deployment
(SuperLink + SuperNodes over TLS).

Flower runs in its own venv (benchmarks/.venv-flower, made on first use and then reused); its side of each check
runs there as a subprocess (flower_side.py) on arrays passed through npz files.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from benchmarks.cross_silo import aggregate, model
from benchmarks.cross_silo.flower import deploy, secagg
from benchmarks.cross_silo.flower.app.xsilo_app.runconfig import round_seed
from benchmarks.cross_silo.flower.env import ensure_flower_env
from benchmarks.cross_silo.flower.proxy import ByteCountingProxy

FLOWER_SIDE = Path(deploy.__file__).with_name("flower_side.py")


@pytest.fixture(scope="session")
def flower_python() -> Path:
    return ensure_flower_env(log=lambda _msg: None)


def flower_side(python: Path, *args: str) -> None:
    done = subprocess.run([str(python), str(FLOWER_SIDE), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def random_updates(rng: np.random.Generator, clients: int) -> tuple[list[list[np.ndarray]], list[int]]:
    shapes = [(5, 4), (4,), (4, 3), (3,)]
    updates = [[rng.normal(0, 0.5, s).astype(np.float32) for s in shapes] for _ in range(clients)]
    return updates, [int(v) for v in rng.integers(20, 400, clients)]


def write_updates(path: Path, updates: list[list[np.ndarray]], n: list[int]) -> Path:
    np.savez(path, n=np.array(n), **{f"c{k}_{i}": a for k, u in enumerate(updates) for i, a in enumerate(u)})
    return path


def test_our_fedavg_equals_flowers_fedavg_aggregation(flower_python, tmp_path):
    updates, n = random_updates(np.random.default_rng(0), 5)
    flower_side(flower_python, "aggregate", str(write_updates(tmp_path / "in.npz", updates, n)), str(tmp_path / "o"))
    ours = aggregate.fedavg(list(zip(updates, n)))
    with np.load(tmp_path / "o.npz") as theirs:
        for way in ("aggregate", "strategy", "message_api"):
            for i, layer in enumerate(ours):
                np.testing.assert_allclose(layer, theirs[f"{way}_{i}"], rtol=1e-6, atol=1e-6, err_msg=way)
    unweighted = [np.mean([u[i] for u in updates], axis=0) for i in range(len(ours))]
    assert max(np.abs(a - b).max() for a, b in zip(ours, unweighted)) > 1e-3  # the weights n_k do matter here


@pytest.mark.parametrize("clients", [2, 5])
def test_secaggplus_aggregate_equals_the_plain_one_up_to_the_quantisation_bound(flower_python, tmp_path, clients):
    """Flower's whole SecAgg+ protocol (secaggplus_mod on every client, SecAggPlusWorkflow on the server; masks,
    Shamir shares, quantisation) against our FedAvg, with the settings the benchmark uses."""
    updates, n = random_updates(np.random.default_rng(clients), clients)
    settings = secagg.default_settings(clients, max(n))
    flower_side(
        flower_python,
        "secagg",
        str(write_updates(tmp_path / "in.npz", updates, n)),
        str(tmp_path / "o.npz"),
        f"--num-shares={settings.num_shares}",
        f"--threshold={settings.reconstruction_threshold}",
        f"--clipping-range={settings.clipping_range}",
        f"--quantization-range={settings.quantization_range}",
        f"--modulus-range={settings.modulus_range}",
        f"--max-weight={settings.max_weight}",
    )
    plain = aggregate.fedavg(list(zip(updates, n)))
    bound = secagg.aggregate_bound(n, max(float(np.abs(a).max()) for u in updates for a in u), settings)
    assert bound < 1e-4  # the bound is tight enough to mean something
    with np.load(tmp_path / "o.npz") as out:
        errors = [np.abs(out[f"agg_{i}"] - layer).max() for i, layer in enumerate(plain)]
    float32_slack = 1e-6  # our FedAvg's result is float32
    assert max(errors) <= bound + float32_slack, (errors, bound)


def test_secaggplus_masks_are_what_the_note_says(flower_python, tmp_path):
    """SECAGG_NOTE's facts, checked on the installed flwr: pseudo_rand_gen is RandomState(seed XOR-folded to 32
    bits).randint(0, M - 1), and a pairwise seed is 44 ASCII bytes, so its folded value has the top bit of every
    byte clear (at most 2^28 masks)."""
    flower_side(flower_python, "mask-facts", str(tmp_path / "facts.json"))
    facts = json.loads((tmp_path / "facts.json").read_text())
    assert facts["matches_randomstate"] is True
    assert facts["pairwise_seed_lengths"] == [44]
    assert facts["folded_or"] & 0x80808080 == 0
    assert "RandomState(seed32)" in secagg.SECAGG_NOTE and "2^28" in secagg.SECAGG_NOTE


@pytest.mark.integration
def test_the_relay_counts_every_byte_each_way_and_by_time():
    answer = 12345
    with socket.create_server(("127.0.0.1", 0)) as server:

        def upstream():  # reads until the client is done, then answers `answer` bytes
            conn, _ = server.accept()
            with conn:
                while conn.recv(65536):
                    pass
                conn.sendall(b"y" * answer)

        threading.Thread(target=upstream, daemon=True).start()
        with ByteCountingProxy(server.getsockname()) as proxy:
            t0 = time.time()
            with socket.create_connection(("127.0.0.1", proxy.port)) as client:
                sent = 0
                for size in (1000, 70000, 8):
                    client.sendall(b"\x16\x03" + b"x" * (size - 2))  # starts like a TLS record
                    sent += size
                client.shutdown(socket.SHUT_WR)
                received = 0
                while chunk := client.recv(65536):
                    received += len(chunk)
            assert received == answer
            deadline = time.time() + 5
            while proxy.totals() != (sent, answer) and time.time() < deadline:
                time.sleep(0.01)
            assert proxy.totals() == (sent, answer)
            assert proxy.bytes_between(t0, time.time() + 1) == (sent, answer)
            assert proxy.bytes_between(t0 - 10, t0) == (0, 0)
            assert proxy.all_tls() and proxy.connections == 1


def live_processes_with_env(entry: str) -> list[int]:
    """Live (not zombie) processes whose environment holds `entry`: every process of a deployment inherits its
    FLWR_HOME, however it was started."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.encode() in environ and deploy.proc_stat(int(pid)) is not None:
            found.append(int(pid))
    return found


def _tiny_silos(folder: Path, clients: int) -> tuple[list[Path], Path, model.ModelSpec]:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 3))
    files = []
    for k in range(clients + 1):
        x = rng.normal(size=(40 + 10 * k, 6)).astype(np.float32)
        files.append(folder / f"part{k}.npz")
        np.savez(files[-1], x=x, y=np.argmax(x @ w, axis=1).astype(np.int32))
    return files[:-1], files[-1], model.ModelSpec("mlp", (6,), 3, (8,))


@pytest.mark.integration
def test_a_real_deployment_runs_fedavg_over_tls_and_leaves_no_process_behind(flower_python, tmp_path):
    silo_files, test_file, spec = _tiny_silos(tmp_path, clients=2)
    local = model.LocalTraining(epochs=1, batch_size=16)
    out = deploy.run_flower("fedavg", silo_files, test_file, spec, local, 1, 3, tmp_path / "work", idle_window_s=0)

    assert out["strategy"] == "fedavg" and out["rounds"] == 1 and out["clients"] == 2
    assert out["clients_per_round"] == [2] and out["flwr_version"] == "1.42.0"
    assert len(out["accuracy_per_round"]) == 1 and 0.0 <= out["final_accuracy"] <= 1.0
    assert out["fleet_tls"] and out["fleet_connections"] >= 2
    assert len(out["seconds_per_round"]) == 1 and out["seconds_per_round"][0] > 0
    # each round carries at least the model down to and up from every client
    assert out["bytes_up_per_round"][0] > 2 * out["model_bytes"]
    assert out["bytes_down_per_round"][0] > 2 * out["model_bytes"]
    assert out["processes"] and not [p for p, start in out["processes"].items() if deploy.alive(int(p), start)]
    assert not live_processes_with_env(f"FLWR_HOME={out['run_dir']}/flwr-home")  # nothing escaped the tree either

    # The deployment computed FedAvg of model.py's training: redo the round here and compare.
    global_params = model.init(spec, jax.random.PRNGKey(3))
    results = []
    for k, path in enumerate(silo_files):
        with np.load(path) as silo:
            trained = model.train(spec, global_params, silo["x"], silo["y"], local, round_seed(3, k, 1))
            results.append((model.to_arrays(spec, trained), len(silo["y"])))
    expected = aggregate.fedavg(results)
    with np.load(out["final_params_file"]) as f:
        assert len(f.files) == len(spec.names())
        got = [f[k] for k in f.files]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with np.load(test_file) as test:
        assert out["final_accuracy"] == model.accuracy(spec, model.from_arrays(spec, got), test["x"], test["y"])
