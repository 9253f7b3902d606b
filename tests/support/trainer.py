"""Real trainers for tests: in-process (fast, shares the test's JAX) or as a subprocess (for SIGKILL / restart)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from libsgde.client import Client
from libsgde.security import tls
from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb
from services.trainer.server import TrainerConfig, TrainerHandle, start
from tests.support.services import ServiceProcess, free_port

# Settings small enough that a job trains in seconds on two cores.
TINY_CVAE = {"hidden": [8], "latent_dim": 2}
TINY_MERF = {"hidden": [8], "latent_dim": 2, "features": 50, "generator_batch": 16}


def write_csv(path: Path, rows: int = 60, seed: int = 0) -> Path:
    """Rows for `services.tabular_schema()`: age (integer 0-120) and label (no / yes)."""
    rng = np.random.default_rng(seed)
    lines = ["age,label"] + [f"{rng.integers(18, 90)},{rng.choice(['no', 'yes'])}" for _ in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_trainer(root: Path, pki: tls.PkiPaths, registry: str, **overrides) -> tuple[TrainerConfig, TrainerHandle]:
    cfg = TrainerConfig(
        listen=f"127.0.0.1:{free_port()}",
        state_dir=root / "state",
        registry=registry,
        pki=pki,
        data_root=root / "data",
        metrics_port=0,
    )
    cfg.data_root.mkdir(parents=True, exist_ok=True)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg, start(cfg)


def trainer_client(user: Client, trainer_address: str) -> Client:
    """The same user (home, token, key) talking to this trainer too."""
    client = Client(user.address, trainer=trainer_address, home=user.home, pki=user.pki.root)
    return client


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, every: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out waiting for {what}")


def wait_state(client: Client, job: str, states: set[int], timeout: float = 60.0) -> tpb.Job:
    return wait_for(
        lambda: (j := client.get_job(job)).state in states and j,
        timeout,
        what=f"{job} in {sorted(tpb.JobState.Name(s) for s in states)}",
    )


@dataclass
class TrainerProcess(ServiceProcess):
    service: ClassVar[str] = "trainer"
    home: Path
    pki: tls.PkiPaths
    registry: str
    state_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None

    def service_env(self) -> dict[str, str]:
        return {"SGDE_TRAINER_STATE_DIR": str(self.state_dir), "SGDE_REGISTRY_ADDRESS": self.registry}
