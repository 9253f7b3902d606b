"""Runs the registry: `sgde serve registry` or `python -m services.registry`.

Configuration comes from arguments or environment variables (so Kubernetes manifests need no files):
  SGDE_REGISTRY_LISTEN        address to bind (default 127.0.0.1:50051)
  SGDE_REGISTRY_DATABASE_URL  SQLAlchemy URL (default sqlite under $SGDE_HOME/registry/)
  SGDE_REGISTRY_BLOB_URL      file:///path or s3://bucket?endpoint=host:port (default file under $SGDE_HOME)
  SGDE_REGISTRY_TOKEN_KEY     PEM file of the Ed25519 key that signs login tokens (made if missing)
  SGDE_REGISTRY_MAX_VERSION_BYTES  largest artifact accepted (default 512 MiB)
  SGDE_REGISTRY_MAX_PASSWORD_CHECKS  password checks at once (scrypt, 32 MiB each; default 4); more get UNAVAILABLE
  SGDE_REGISTRY_LOGIN_FAILURES_PER_SOURCE  failed logins from one address before its logins slow down (default 30)
  SGDE_REGISTRY_UPLOAD_LEASE_SECONDS  longest a publish may take, header to commit (default 3600)
  SGDE_REGISTRY_MAX_VERSIONS_PER_MODEL  versions one model may hold (default 1000)
  SGDE_REGISTRY_MAX_USER_BYTES  bytes of artifacts one user's models may store, every version counted (default 20 GiB)
  SGDE_REGISTRY_METRICS_PORT  Prometheus port (0 disables)
  SGDE_REGISTRY_HEALTH_PORT   plaintext port serving only grpc.health.v1, for Kubernetes probes (0, the default: none)
  SGDE_REGISTRY_HEALTH_CHECK_SECONDS  how often the database and the blob store are checked (default 5)
  SGDE_REGISTRY_WORKERS, _MAX_STREAMS, _MAX_STREAMS_PER_CALLER, _STREAM_IDLE_SECONDS, _MAX_RPC_SECONDS[_BY_METHOD]
      what calls may hold (workers, streams, idle and call time): libsgde/server/limits.py, the README's table
  SGDE_PKI_DIR                CA and certificates (default $SGDE_HOME/pki)
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from libsgde import config
from libsgde.security import tls
from libsgde.server import auth, serving
from libsgde.server.launch import Service
from libsgde.server.limits import ServerLimits
from libsgde.server.storage import open_blob_store
from libsgde.wire.proto.sgde.v1 import registry_pb2, registry_pb2_grpc
from services.registry.catalogue import Catalogue, Quota
from services.registry.federation_store import FederationStore
from services.registry.federations import FederationServicer
from services.registry.servicer import RegistryServicer, RegistrySettings

log = logging.getLogger("sgde.registry")
SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
FEDERATION_SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["FederationService"].full_name


@dataclass
class RegistryConfig:
    listen: str
    database_url: str
    blob_url: str
    token_key: Path
    pki: tls.PkiPaths
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"  # where the metrics port binds: loopback unless told
    max_version_bytes: int = 512 << 20
    upload_lease_seconds: float = 3600.0
    health_port: int = 0
    health_check_seconds: float = 5.0
    max_password_checks: int = 4
    login_failures_per_source: int = auth.SOURCE_FREE_FAILURES
    max_versions_per_model: int = 1000
    max_user_bytes: int = 20 << 30
    limits: ServerLimits = field(default_factory=ServerLimits)

    @classmethod
    def from_env(cls) -> RegistryConfig:
        data = config.sgde_home() / "registry"
        env = os.environ.get
        return cls(
            listen=config.listen_address("registry"),
            database_url=env("SGDE_REGISTRY_DATABASE_URL") or f"sqlite:///{data / 'registry.db'}",
            blob_url=env("SGDE_REGISTRY_BLOB_URL") or (data / "blobs").as_uri(),
            token_key=Path(env("SGDE_REGISTRY_TOKEN_KEY") or data / "token-signing.pem"),
            pki=tls.PkiPaths(config.pki_dir()),
            metrics_port=config.metrics_port("registry"),
            metrics_host=config.metrics_host("registry"),
            max_version_bytes=int(env("SGDE_REGISTRY_MAX_VERSION_BYTES") or 512 << 20),
            upload_lease_seconds=float(env("SGDE_REGISTRY_UPLOAD_LEASE_SECONDS") or 3600),
            health_port=config.health_port("registry"),
            health_check_seconds=config.health_check_seconds("registry"),
            max_password_checks=int(env("SGDE_REGISTRY_MAX_PASSWORD_CHECKS") or 4),
            login_failures_per_source=int(env("SGDE_REGISTRY_LOGIN_FAILURES_PER_SOURCE") or auth.SOURCE_FREE_FAILURES),
            max_versions_per_model=int(env("SGDE_REGISTRY_MAX_VERSIONS_PER_MODEL") or 1000),
            max_user_bytes=int(env("SGDE_REGISTRY_MAX_USER_BYTES") or 20 << 30),
            limits=ServerLimits.from_env("registry"),
        )


class RegistryHandle(serving.ServerHandle):
    """The running registry; `password_checks` and `catalogue` let tests and metrics see inside."""

    password_checks: auth.PasswordChecks | None = None
    catalogue: Catalogue | None = None


def _dependencies(catalogue: Catalogue, store) -> None:
    """Raises while the database or the blob store is unreachable, or the database takes no writes (logins could
    not be counted): the registry is NOT_SERVING then."""
    catalogue.ping()
    catalogue.check_writable()
    store.check()


def _private_sqlite_file(path: Path) -> None:
    """The SQLite database (password hashes, private models' metadata) readable by the registry's user only: its
    folder made 0700 if missing, the file made 0600 before SQLite creates it (its -wal and -shm files take its mode),
    and an existing file open to others closed to them."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            file.chmod(mode & 0o700)
            log.warning("closed a database file to other users", extra={"path": str(file), "was": f"{mode:o}"})


def start(cfg: RegistryConfig) -> RegistryHandle:
    sqlite_path = cfg.database_url.removeprefix("sqlite:///") if cfg.database_url.startswith("sqlite:///") else ""
    if sqlite_path and sqlite_path != ":memory:":
        _private_sqlite_file(Path(sqlite_path))
    catalogue = Catalogue(cfg.database_url)
    federations = FederationStore(catalogue)
    store = open_blob_store(cfg.blob_url)
    key = auth.load_or_create_token_key(cfg.token_key)
    servicer = RegistryServicer(
        catalogue,
        store,
        auth.TokenIssuer(key),
        auth.TokenVerifier(key.public_key()),
        RegistrySettings(
            max_version_bytes=cfg.max_version_bytes,
            max_password_checks=cfg.max_password_checks,
            source_lockout=auth.LockoutPolicy(cfg.login_failures_per_source, auth.SOURCE_FORGET_SECONDS),
            upload_lease_seconds=cfg.upload_lease_seconds,
            quota=Quota(cfg.max_versions_per_model, cfg.max_user_bytes),
        ),
        federations,
    )
    swept = servicer.sweep_unreferenced_blobs()  # what a replica killed mid-publish may have left
    if swept:
        log.info("swept unreferenced blobs", extra={"count": swept})

    def add(server) -> list[str]:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
        registry_pb2_grpc.add_FederationServiceServicer_to_server(FederationServicer(servicer, federations), server)
        return [SERVICE_NAME, FEDERATION_SERVICE_NAME]

    # The first status comes from a real check of the database and the store, before any port answers SERVING.
    handle = serving.start_server(
        service="registry",
        address=cfg.listen,
        credentials=tls.server_credentials(cfg.pki, "registry"),
        add_servicers=add,
        metrics_port=cfg.metrics_port,
        metrics_host=cfg.metrics_host,
        health_port=cfg.health_port,
        health_check=lambda: _dependencies(catalogue, store),
        health_every=cfg.health_check_seconds,
        handle_type=RegistryHandle,
        limits=cfg.limits,
    )
    handle.password_checks = servicer.password_checks
    handle.catalogue = catalogue
    return handle


def main() -> None:
    serving.serve_until_signalled(start, RegistryConfig.from_env)


if __name__ == "__main__":
    main()


SERVICE = Service("registry", RegistryConfig, start, main)  # the entry point `sgde.services:registry` (pyproject.toml)
