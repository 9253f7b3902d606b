"""The Flower arms as a real deployment on 127.0.0.1: one SuperLink, one SuperNode per silo, TLS throughout.

    run_flower("fedavg" | "fedprox" | "secaggplus", silo_files, test_file, spec, local, rounds, seed, workdir)

What runs (flwr 1.42, every process from benchmarks/.venv-flower, each in a session of its own):
- a throwaway CA and a certificate for 127.0.0.1 / localhost (libsgde.security.tls), in the run's folder;
- `flower-superlink` with that certificate: one HTTPS port serves the Fleet, Control and Runtime APIs; it starts
  Flower's SuperExec, which starts the ServerApp (xsilo_app.server_app) when the run is submitted;
- a byte-counting TCP relay (proxy.py, a thread in this process) in front of that port, for the SuperNodes only;
- K `flower-supernode`s, each told the relay's address, the CA to verify the SuperLink with, and its silo file
  (node config `silo-id`, `silo-file`); each starts a ClientApp process (xsilo_app.client_app) per message it
  receives, which talks to the SuperNode's local runtime API, served over TLS with the same certificate;
- `flwr run <app> --stream`, which builds the FAB (the app plus model.py and aggregate.py, copied unmodified),
  submits it over the Control API with this run's settings (--run-config) and streams the ServerApp's log until the
  run ends.
Runtime dependency installation is off (FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION, and no SuperNode allows it),
as are Flower's telemetry and update check; FLWR_HOME is the run's folder, so nothing is written to ~/.flwr.

Cost: the ServerApp stamps each round's start and end with time.time(); seconds per round is their difference, and
bytes per round are what the relay carried between them (TLS records of every SuperNode, heartbeats and polls
included: what the deployment costs). Registration happens before round 1 and is left out; each SuperNode fetches
the FAB (the app's code, some kB) when its first message arrives, so round 1 carries it. Before submitting the run
the relay also counts the idle SuperNodes for a few seconds (`idle_bytes_per_second`, their 3-second polls), and
afterwards the SuperLink's own count of the run's Fleet message bytes is read back (`superlink_record`, protobuf
sizes without HTTP and TLS: the payload beside the relay's wire figure).
On any exit (success, error, KeyboardInterrupt) every process of the deployment tree is stopped: SIGTERM, then
SIGKILL after a grace period; the pids (with their start times, against pid reuse) are returned so a test can check.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks.cross_silo.flower import env
from benchmarks.cross_silo.flower.proxy import ByteCountingProxy
from benchmarks.cross_silo.flower.secagg import SecAggSettings, default_settings
from benchmarks.cross_silo.model import LocalTraining, ModelSpec

HERE = Path(__file__).resolve().parent
APP_SOURCE = HERE / "app"
SHARED_MODULES = (HERE.parent / "model.py", HERE.parent / "aggregate.py")  # jax / optax / numpy only
STRATEGIES = ("fedavg", "fedprox", "secaggplus")
GRACE_S = 10.0


# --------------------------------------------------------------------------------------------------- files


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, SuperLink certificate, SuperLink key) for 127.0.0.1 / localhost, new for every run."""
    from libsgde.security.tls import issue_certificate, make_ca

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_cert, ca_key = make_ca("cross-silo benchmark throwaway CA", days=2)
    cert, key = issue_certificate(
        ca_cert, ca_key, "superlink", ["localhost"], ["127.0.0.1"], server=True, client=False, days=2
    )
    paths = folder / "ca.crt", folder / "superlink.crt", folder / "superlink.key"
    for path, data in zip(paths, (ca_cert, cert, key)):
        path.write_bytes(data)
    paths[2].chmod(0o600)
    return paths


def stage_app(dest: Path) -> Path:
    """The app folder with model.py and aggregate.py copied into its package: what the FAB is built from."""
    shutil.copytree(APP_SOURCE, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for module in SHARED_MODULES:
        shutil.copy2(module, dest / "xsilo_app" / module.name)
    return dest


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string of ASCII text is a TOML basic string


def write_toml(path: Path, table: dict) -> Path:
    """Flat key = value TOML (the run-config override file)."""
    path.write_text("".join(f"{key} = {_toml_value(v)}\n" for key, v in table.items()))
    return path


def write_flower_config(flwr_home: Path, superlink_port: int, ca_cert: Path) -> None:
    """FLWR_HOME/config.toml naming the SuperLink `flwr run` submits to, and the CA it verifies it with."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
        f'address = "127.0.0.1:{superlink_port}"\nroot-certificates = {json.dumps(str(ca_cert))}\n'
    )


# --------------------------------------------------------------------------------------------------- processes


def command(program: Path, *parts: dict | str) -> list[str]:
    """argv of a program: each dict adds its --flag value pairs, each str a switch."""
    argv = [str(program)]
    for part in parts:
        argv += [x for flag, value in part.items() for x in (flag, str(value))] if isinstance(part, dict) else [part]
    return argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process; None if it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def descendants(roots: list[int]) -> dict[int, int]:
    """pid -> start time of the roots and every live process below them (Linux /proc)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := proc_stat(int(entry))):
            children.setdefault(stat[0], []).append(int(entry))
            starts[int(entry)] = stat[1]
    found: dict[int, int] = {}
    todo = [p for p in roots if p in starts]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found[pid] = starts[pid]
            todo.extend(children.get(pid, []))
    return found


def alive(pid: int, start: int) -> bool:
    """The process with this pid and start time still runs (a zombie or a reused pid does not count)."""
    stat = proc_stat(pid)
    return stat is not None and stat[1] == start


def _signal_alive(tree: dict[int, int], sig: signal.Signals) -> None:
    """Send `sig` to every process of `tree` (pid -> start time) that is still the process we started."""
    for pid, start in tree.items():
        if alive(pid, start):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


class Processes:
    """The deployment's processes: started in sessions of their own, logged to files, all stopped on exit."""

    def __init__(self, environ: dict[str, str], logs: Path) -> None:
        self.environ, self.logs = environ, logs
        self.started: dict[str, subprocess.Popen] = {}
        self.seen: dict[int, int] = {}  # every pid of the tree ever observed -> its start time

    def start(self, name: str, cmd: list[str], cwd: Path) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=cwd, env=self.environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started[name] = proc
        self.observe()
        return proc

    def observe(self) -> None:
        self.seen.update(descendants([p.pid for p in self.started.values()]))

    def check_alive(self, names: list[str]) -> None:
        for name in names:
            if (code := self.started[name].poll()) is not None:
                raise RuntimeError(f"{name} exited with code {code}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 40) -> str:
        try:
            return "\n".join((self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM to every process of the tree (children first seen while their parents still live), SIGKILL to
        what is left after GRACE_S; direct children are reaped."""
        self.observe()
        tree = dict(self.seen)
        _signal_alive(tree, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and any(alive(p, s) for p, s in tree.items()):
            for proc in self.started.values():
                proc.poll()  # reap, so a finished child stops counting as alive
            time.sleep(0.1)
        _signal_alive(tree, signal.SIGKILL)
        for proc in self.started.values():
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                pass


def _wait_for_port(port: int, procs: Processes, name: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        procs.check_alive([name])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{name} did not open port {port} within {timeout_s:.0f} s:\n{procs.tail(name)}")


def _wait_for_registration(procs: Processes, nodes: list[str], timeout_s: float = 180.0) -> None:
    """Until every SuperNode has registered with the SuperLink (its log names its node ID)."""
    deadline = time.monotonic() + timeout_s
    waiting = list(nodes)
    while waiting:
        procs.check_alive(["superlink", *waiting])
        waiting = [n for n in waiting if "SuperNode ID:" not in procs.tail(n, lines=400)]
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(f"{waiting[0]} did not register within {timeout_s:.0f} s:\n{procs.tail(waiting[0])}")
        time.sleep(0.3)


def flower_run_record(procs: Processes, cwd: Path) -> dict | None:
    """The SuperLink's own record of the run (`flwr ls --run-id N`): its status and the Fleet API bytes it counted
    (protobuf message sizes, the whole run: a payload figure to set beside the relay's wire figure). None if the
    CLI does not answer."""
    match = re.search(r"Successfully started run (\d+)", procs.tail("flwr-run", lines=10_000))
    if not match:
        return None
    argv = [str(env.venv_bin() / "flwr"), "ls", "bench", "--run-id", match.group(1), "--format", "json"]
    try:
        done = subprocess.run(argv, cwd=cwd, env=procs.environ, capture_output=True, text=True, timeout=60)
        run = json.loads(done.stdout)["runs"][0]
    except (subprocess.TimeoutExpired, ValueError, KeyError, IndexError):
        return None
    traffic = run.get("network-traffic", {})
    return {
        "run_id": run.get("run-id"),
        "status": run.get("status"),
        "fleet_bytes_inbound": traffic.get("inbound-bytes"),
        "fleet_bytes_outbound": traffic.get("outbound-bytes"),
    }


def flower_environ(flwr_home: Path, cache_dir: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    environ.update(
        PATH=f"{env.venv_bin()}{os.pathsep}{environ.get('PATH', '')}",  # SuperExec finds flwr-serverapp & co here
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        JAX_PLATFORMS="cpu",
        PYTHONUNBUFFERED="1",
    )
    # ClientApp processes are short-lived; a shared persistent XLA cache spares each one compiling model.train anew
    environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_dir))
    environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    return environ


# --------------------------------------------------------------------------------------------------- the run


def run_flower(
    strategy: str,
    silo_files: list[Path],
    test_file: Path,
    spec: ModelSpec,
    local: LocalTraining,
    rounds: int,
    seed: int,
    workdir: Path,
    log: Callable[[str], object] = print,
    *,
    prox_mu: float = 0.01,
    secagg: SecAggSettings | None = None,
    idle_window_s: float = 6.0,
    timeout_s: float = 3600.0,
) -> dict:
    """Train `rounds` rounds of `strategy` over one SuperNode per silo file; return the accuracy, the final model
    and the cost per round (module docstring). secagg: SecAgg+'s settings (default: secagg.default_settings).
    idle_window_s: how long to count the idle SuperNodes' traffic (polls every 3 s, heartbeats) before the run is
    submitted, reported as idle bytes per second, the part of a round's bytes that is not the protocol's; 0 skips."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {STRATEGIES}")
    if local.prox_mu:
        raise ValueError("local.prox_mu must be 0: FedProx's mu is the fedprox strategy's prox_mu")
    if rounds < 1 or len(silo_files) < 2:
        raise ValueError("need at least 1 round and 2 silos")
    python = env.ensure_flower_env(log)
    workdir = Path(workdir).resolve()  # the processes run in other folders: every path they get is absolute
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{strategy}-", dir=workdir))
    results_dir = run_dir / "results"
    results_dir.mkdir()
    sizes = []
    for f in silo_files:
        with np.load(f) as silo:
            sizes.append(len(silo["y"]))
    if strategy == "secaggplus" and secagg is None:
        secagg = default_settings(len(silo_files), max(sizes))
    ca, cert, key = make_tls(run_dir / "tls")
    app_dir = stage_app(run_dir / "app")
    flwr_home = run_dir / "flwr-home"
    superlink_port = free_port()
    write_flower_config(flwr_home, superlink_port, ca)
    run_config = {
        "strategy": strategy,
        "num-rounds": rounds,
        "num-clients": len(silo_files),
        "seed": seed,
        "spec": json.dumps(asdict(spec)),
        "local": json.dumps(asdict(local)),
        "prox-mu": float(prox_mu) if strategy == "fedprox" else 0.0,
        "test-file": str(Path(test_file).resolve()),
        "results-dir": str(results_dir),
    }
    if secagg is not None:
        run_config.update(
            {
                "secagg-num-shares": secagg.num_shares,
                "secagg-reconstruction-threshold": secagg.reconstruction_threshold,
                "secagg-clipping-range": float(secagg.clipping_range),
                "secagg-quantization-range": secagg.quantization_range,
                "secagg-modulus-range": secagg.modulus_range,
                "secagg-max-weight": float(secagg.max_weight),
            }
        )
    overrides = write_toml(run_dir / "run-config.toml", run_config)
    bin_dir = env.venv_bin()
    procs = Processes(flower_environ(flwr_home, workdir / "jax-cache"), run_dir / "logs")
    log(f"flower {strategy}: {len(silo_files)} SuperNodes, {rounds} rounds, TLS, in {run_dir}")
    started = time.monotonic()
    try:
        superlink = command(
            bin_dir / "flower-superlink",
            {"--ssl-ca-certfile": ca, "--ssl-certfile": cert, "--ssl-keyfile": key},
            {"--host": "127.0.0.1", "--port": superlink_port},
            "--disable-runtime-dependency-installation",
        )
        procs.start("superlink", superlink, run_dir)
        _wait_for_port(superlink_port, procs, "superlink")
        with ByteCountingProxy(("127.0.0.1", superlink_port)) as proxy:
            nodes = []
            for i, silo in enumerate(silo_files):
                name = f"supernode-{i}"
                node_config = f"silo-id={i} silo-file={json.dumps(str(Path(silo).resolve()))}"
                supernode = command(
                    bin_dir / "flower-supernode",
                    {"--root-certificates": ca, "--superlink": f"127.0.0.1:{proxy.port}"},
                    {"--node-config": node_config, "--host": "127.0.0.1", "--port": free_port()},
                    # its local runtime API, which its ClientApp processes call, over TLS too
                    {"--ssl-certfile": cert, "--ssl-keyfile": key, "--ssl-ca-certfile": ca},
                )
                procs.start(name, supernode, run_dir)
                nodes.append(name)
            _wait_for_registration(procs, nodes)
            idle = (0, 0)
            if idle_window_s > 0:
                t0 = time.time()
                time.sleep(idle_window_s)
                idle = proxy.bytes_between(t0, time.time())
            runner = procs.start(
                "flwr-run",
                [str(bin_dir / "flwr"), "run", str(app_dir), "bench", "--run-config", str(overrides), "--stream"],
                run_dir,
            )
            while runner.poll() is None:
                procs.check_alive(["superlink", *nodes])
                procs.observe()
                if (results_dir / "error.txt").exists() or time.monotonic() - started > timeout_s:
                    break
                time.sleep(0.5)
            if (error := results_dir / "error.txt").exists():
                raise RuntimeError(f"the ServerApp failed:\n{error.read_text()[-3000:]}")
            if not (results_dir / "results.json").exists():
                why = "timed out" if runner.poll() is None else f"flwr run exited with {runner.returncode}"
                raise RuntimeError(
                    f"the run {why} without results; logs in {procs.logs}:\n{procs.tail('flwr-run')}\n"
                    f"--- superlink ---\n{procs.tail('superlink')}"
                )
            served = json.loads((results_dir / "results.json").read_text())
            counted = flower_run_record(procs, run_dir)
            per_round = [proxy.bytes_between(t0, t1) for t0, t1 in zip(served["round_start"], served["round_end"])]
            total_up, total_down = proxy.totals()
            fleet_tls, connections = proxy.all_tls(), proxy.connections
    finally:
        procs.stop()
    version = subprocess.run(
        [str(python), "-c", "import flwr; print(flwr.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    out = {
        "strategy": strategy,
        "rounds": rounds,
        "accuracy_per_round": served["accuracy_per_round"],
        "final_accuracy": served["accuracy_per_round"][-1],
        "initial_accuracy": served["accuracy_initial"],
        "final_params_file": str(results_dir / "final_params.npz"),
        "seconds_per_round": [t1 - t0 for t0, t1 in zip(served["round_start"], served["round_end"])],
        "bytes_up_per_round": [up for up, _ in per_round],
        "bytes_down_per_round": [down for _, down in per_round],
        "idle_bytes_per_second": [b / idle_window_s for b in idle] if idle_window_s > 0 else None,
        "model_bytes": 4 * spec.size(),  # one float32 copy of the model: the payload each way per client and round
        "superlink_record": counted,
        "bytes_up_total": total_up,
        "bytes_down_total": total_down,
        "clients": len(silo_files),
        "clients_per_round": served["clients_per_round"],
        "examples_per_client": sizes,
        "max_abs_weight": served["max_abs_weight"],
        "flwr_version": version,
        "fleet_connections": connections,
        "fleet_tls": fleet_tls,  # every SuperNode connection opened with a TLS handshake (seen by the relay)
        "wall_seconds": time.monotonic() - started,
        "run_dir": str(run_dir),
        "processes": {str(pid): start for pid, start in procs.seen.items()},
    }
    if strategy == "fedprox":
        out["prox_mu"] = float(prox_mu)
    if secagg is not None:
        out["secagg"] = secagg.to_dict()
    log(
        f"flower {strategy}: accuracy {out['final_accuracy']:.4f}, "
        f"{np.median(out['seconds_per_round']):.2f} s/round, "
        f"{np.median(out['bytes_up_per_round']) / 1e6:.2f} MB up / {np.median(out['bytes_down_per_round']) / 1e6:.2f}"
        " MB down per round"
    )
    return out
