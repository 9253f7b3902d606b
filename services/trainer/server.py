"""Runs the trainer: `sgde serve trainer` or `python -m services.trainer`.

Configuration comes from environment variables (so Kubernetes manifests need no files):
  SGDE_TRAINER_LISTEN           address to bind (default 127.0.0.1:50052)
  SGDE_TRAINER_STATE_DIR        jobs database, uploaded datasets, artifacts, checkpoints (default $SGDE_HOME/trainer)
  SGDE_TRAINER_DATA_ROOT        folder whose files jobs may name as their dataset (default: none, uploads only)
  SGDE_TRAINER_DATA_USERS       comma-separated users allowed to train on the data root and the S3 store
                                (default: every user the registry knows)
  SGDE_TRAINER_S3_URL           the silo's S3 store for "s3://bucket/key" datasets: s3://[BUCKET]?endpoint=HOST:PORT
                                &secure=false&region=...&prefix=... (credentials: SGDE_S3_ACCESS_KEY / _SECRET_KEY)
  SGDE_TRAINER_MAX_JOBS         trainings run at once (default 1; the others wait QUEUED)
  SGDE_TRAINER_MAX_DATASET_BYTES  largest dataset accepted (default 1 GiB); a load's model space is bounded at 4x
  SGDE_TRAINER_MAX_JOBS_PER_USER  queued + running jobs one user may have (default 16)
  SGDE_TRAINER_MAX_USER_DATASET_BYTES  bytes of uploaded datasets one user may keep (default 4 GiB)
  SGDE_TRAINER_CHECKPOINT_SECONDS  how often a running job saves a checkpoint (default: the library's, 30 s)
  SGDE_TRAINER_AUTH_CACHE_SECONDS  how long a token checked with the registry stays trusted (default 30)
  SGDE_TRAINER_METRICS_PORT     Prometheus port (0 disables)
  SGDE_TRAINER_HEALTH_PORT      plaintext port serving only grpc.health.v1, for Kubernetes probes (0, the default: none)
  SGDE_TRAINER_HEALTH_CHECK_SECONDS  how often the jobs database and the registry are checked (default 5)
  SGDE_TRAINER_WORKERS, _MAX_STREAMS, _MAX_STREAMS_PER_CALLER, _STREAM_IDLE_SECONDS, _MAX_RPC_SECONDS[_BY_METHOD]
      what calls may hold (workers, streams, idle and call time): libsgde/server/limits.py, the README's table
  SGDE_REGISTRY_ADDRESS         the registry that checks tokens and receives published models (default 127.0.0.1:50051)
  SGDE_PKI_DIR                  CA and certificates (default $SGDE_HOME/pki); the trainer presents `trainer.crt`
                                both as a server and to the registry
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from libsgde import config
from libsgde.security import tls
from libsgde.server import serving
from libsgde.server.gate import RegistryGate
from libsgde.server.launch import Service
from libsgde.server.limits import ServerLimits
from libsgde.wire.proto.sgde.v1 import trainer_pb2, trainer_pb2_grpc
from services.trainer.jobs import JobStore
from services.trainer.servicer import TrainerServicer, TrainerSettings
from services.trainer.sources import Sources
from services.trainer.worker import Worker

log = logging.getLogger("sgde.trainer")
SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


@dataclass
class TrainerConfig:
    listen: str
    state_dir: Path
    registry: str
    pki: tls.PkiPaths
    data_root: Path | None = None
    data_users: frozenset[str] | None = None
    s3_url: str | None = None
    max_jobs: int = 1
    max_dataset_bytes: int = 1 << 30
    checkpoint_seconds: float | None = None
    auth_cache_seconds: float = 30.0
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"  # where the metrics port binds: loopback unless told
    health_port: int = 0
    health_check_seconds: float = 5.0
    limits: ServerLimits = field(default_factory=ServerLimits)
    settings: TrainerSettings = field(default_factory=TrainerSettings)

    @classmethod
    def from_env(cls) -> TrainerConfig:
        env = os.environ.get
        users = env("SGDE_TRAINER_DATA_USERS")
        return cls(
            listen=config.listen_address("trainer"),
            state_dir=Path(env("SGDE_TRAINER_STATE_DIR") or config.sgde_home() / "trainer"),
            registry=config.service_address("registry"),
            pki=tls.PkiPaths(config.pki_dir()),
            data_root=Path(env("SGDE_TRAINER_DATA_ROOT")) if env("SGDE_TRAINER_DATA_ROOT") else None,
            data_users=frozenset(u.strip() for u in users.split(",") if u.strip()) if users else None,
            s3_url=env("SGDE_TRAINER_S3_URL") or None,
            max_jobs=int(env("SGDE_TRAINER_MAX_JOBS") or 1),
            max_dataset_bytes=int(env("SGDE_TRAINER_MAX_DATASET_BYTES") or 1 << 30),
            checkpoint_seconds=float(env("SGDE_TRAINER_CHECKPOINT_SECONDS"))
            if env("SGDE_TRAINER_CHECKPOINT_SECONDS")
            else None,
            auth_cache_seconds=float(env("SGDE_TRAINER_AUTH_CACHE_SECONDS") or 30),
            metrics_port=config.metrics_port("trainer"),
            metrics_host=config.metrics_host("trainer"),
            health_port=config.health_port("trainer"),
            health_check_seconds=config.health_check_seconds("trainer"),
            settings=TrainerSettings(
                max_jobs_per_user=int(env("SGDE_TRAINER_MAX_JOBS_PER_USER") or 16),
                max_user_dataset_bytes=int(env("SGDE_TRAINER_MAX_USER_DATASET_BYTES") or 4 << 30),
            ),
            limits=ServerLimits.from_env("trainer"),
        )


class TrainerHandle(serving.ServerHandle):
    """Stopping the trainer first pauses its jobs (they checkpoint and resume at the next start) and ends the
    watches, so that the server's grace period is not spent waiting on endless streams."""

    worker: Worker | None = None

    def stop(self, grace: float = 10.0) -> None:
        self.stopping.set()  # the health watcher may not say SERVING again while the jobs pause
        self.set_serving(False)
        if self.worker is not None:
            self.worker.shutdown(timeout=grace)
        super().stop(grace)


def _tidy(state_dir: Path, store: JobStore) -> None:
    """Removes what a crash left half-done: partial uploads, temporary S3 copies, datasets never recorded."""
    shutil.rmtree(state_dir / "tmp", ignore_errors=True)
    (state_dir / "tmp").mkdir(mode=0o700)
    datasets = state_dir / "datasets"
    known = {Path(p).parts[1] for p in store.dataset_paths()}
    for entry in datasets.iterdir():
        if entry.name not in known:
            shutil.rmtree(entry, ignore_errors=True)


def _dependencies(store: JobStore, gate: RegistryGate) -> None:
    """Raises while the jobs database or the registry (which checks every token) is unreachable."""
    store.ping()
    gate.check()


def _warm_up() -> None:
    """Imports the training stack (JAX: seconds) in the background, so that the first CreateJob does not wait."""
    try:
        import libsgde.io.datasets
        import libsgde.io.training  # noqa: F401
    except Exception:  # the first job reports any real problem
        log.exception("could not import the training library")


def start(cfg: TrainerConfig) -> TrainerHandle:
    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (cfg.state_dir / "datasets").mkdir(exist_ok=True, mode=0o700)
    store = JobStore(f"sqlite:///{cfg.state_dir / 'trainer.db'}")
    _tidy(cfg.state_dir, store)
    sources = Sources(store, cfg.state_dir, cfg.data_root, cfg.s3_url, cfg.data_users, cfg.max_dataset_bytes)
    # The trainer's own certificate, presented to the registry; renewed on disk, it is used from the next check on.
    credentials, renewed = tls.renewable_channel_credentials(cfg.pki, "trainer")
    gate = RegistryGate(cfg.registry, credentials, cfg.auth_cache_seconds, renewed=renewed)
    worker = Worker(store, sources, cfg.state_dir, cfg.max_jobs, checkpoint_every_s=cfg.checkpoint_seconds)
    settings = replace(cfg.settings, max_dataset_bytes=cfg.max_dataset_bytes)
    servicer = TrainerServicer(store, worker, sources, gate, cfg.state_dir, settings)

    def add(server) -> list[str]:
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    handle = serving.start_server(
        service="trainer",
        address=cfg.listen,
        credentials=tls.server_credentials(cfg.pki, "trainer"),
        add_servicers=add,
        metrics_port=cfg.metrics_port,
        metrics_host=cfg.metrics_host,
        health_port=cfg.health_port,
        health_check=lambda: _dependencies(store, gate),
        health_every=cfg.health_check_seconds,
        limits=cfg.limits,
        handle_type=TrainerHandle,
    )
    handle.worker = worker
    threading.Thread(target=_warm_up, daemon=True, name="trainer-warm-up").start()
    worker.start()
    handle.on_stop.append(gate.close)
    log.info(
        "trainer ready",
        extra={
            "state_dir": str(cfg.state_dir),
            "registry": cfg.registry,
            "data_root": str(cfg.data_root) if cfg.data_root else None,
            "max_jobs": cfg.max_jobs,
        },
    )
    return handle


def main() -> None:
    serving.serve_until_signalled(start, TrainerConfig.from_env)


if __name__ == "__main__":
    main()


SERVICE = Service("trainer", TrainerConfig, start, main)  # the entry point `sgde.services:trainer` (pyproject.toml)
