"""Shared pytest fixtures: a development PKI, an in-process registry on loopback (on SQLite, or on PostgreSQL), fresh
users, S3 over TLS, and registry replicas."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from libsgde.client import Client
from libsgde.io.artifact import read_header, sha256_file
from libsgde.security import signing, tls
from libsgde.server import auth
from libsgde.server.storage import open_blob_store
from services.registry.catalogue import Catalogue
from services.registry.server import RegistryConfig, start
from tests.support.postgres import PostgresServer
from tests.support.seaweed import SeaweedS3
from tests.support.services import RegistryProcess, free_port, user_client


@dataclass
class RunningRegistry:
    address: str
    config: RegistryConfig
    blob_root: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> tls.PkiPaths:
    return tls.init_pki(tmp_path_factory.mktemp("pki"))


def start_registry(root: Path, pki: tls.PkiPaths, **overrides) -> tuple[RunningRegistry, object]:
    cfg = RegistryConfig(
        listen=f"127.0.0.1:{free_port()}",
        database_url=f"sqlite:///{root / 'registry.db'}",
        blob_url=(root / "blobs").as_uri(),
        token_key=root / "token.pem",
        pki=pki,
        metrics_port=0,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    handle = start(cfg)
    return RunningRegistry(cfg.listen, cfg, root / "blobs"), handle


def store_unchecked(registry: RunningRegistry, owner: Client, model_id: str, path: Path) -> str:
    """Puts the artifact at `path` into a new model of `owner` straight into the registry's catalogue and blob store,
    signed by the owner, as a registry from before the publish-time tensor check may hold it (PublishVersion would
    refuse it). Returns the version's name. For testing the readers' own check."""
    owner.create_model(model_id)
    sha, size, manifest = sha256_file(path), path.stat().st_size, read_header(path).manifest
    catalogue = Catalogue(registry.config.database_url)
    try:
        upload = catalogue.begin_upload(sha, lease_seconds=60)
        open_blob_store(registry.config.blob_url).put(sha, [path.read_bytes()], size)
        number = catalogue.add_version(
            catalogue.get_model(owner.username, model_id),
            sha256=sha,
            size_bytes=size,
            signature=signing.sign_artifact(signing.load_signing_key(owner.signing_key_path(owner.username)), sha),
            architecture=manifest.architecture,
            data_kind=manifest.data_kind,
            privacy=manifest.privacy,
            manifest_json=manifest.to_json(),
            schema=manifest.data_schema,
            upload=upload,
        )
    finally:
        catalogue.engine.dispose()
    return f"models/{owner.username}/{model_id}/versions/{number}"


@pytest.fixture(scope="session")
def seaweed_tls(tmp_path_factory, pki) -> SeaweedS3:
    """A real S3 server over HTTPS, as MinIO serves in the cluster: its certificate (127.0.0.1, localhost) is signed
    by the test PKI's CA, as MinIO's is by the SGDE CA."""
    root = tmp_path_factory.mktemp("seaweed-tls")
    cert, key = tls.issue_certificate(
        pki.ca_cert.read_bytes(), pki.ca_key.read_bytes(), "minio", ["localhost"], ["127.0.0.1"], client=False
    )
    tls.write_public(root / "s3.crt", cert)
    tls.write_private(root / "s3.key", key)
    with SeaweedS3(root / "server", tls=(root / "s3.crt", root / "s3.key")) as server:
        yield server


@pytest.fixture(scope="session")
def sqlite_registry(tmp_path_factory, pki) -> RunningRegistry:
    running, handle = start_registry(tmp_path_factory.mktemp("registry"), pki)
    yield running
    handle.stop(grace=1)


@pytest.fixture(scope="session")
def registry(sqlite_registry) -> RunningRegistry:
    """The session's registry (on SQLite). A module may redefine it to run its tests on each database: see
    tests/test_registry.py."""
    return sqlite_registry


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    """One real PostgreSQL server for the session; give each registry its own database (new_database)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_registry(tmp_path_factory, pki, postgres) -> RunningRegistry:
    """A registry like `registry`, its metadata in PostgreSQL (as the production overlay runs it)."""
    running, handle = start_registry(
        tmp_path_factory.mktemp("registry-postgres"), pki, database_url=postgres.new_database("registry")
    )
    yield running
    handle.stop(grace=1)


@pytest.fixture
def new_user(registry, pki, tmp_path) -> Callable[..., Client]:
    """Call it to get a logged-in client of a fresh user (own $SGDE_HOME: token and signing key)."""
    made: list[Client] = []

    def make(name: str | None = None) -> Client:
        client = user_client(registry.address, pki, tmp_path, name)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@dataclass
class Replicas:
    """Registry processes sharing one PostgreSQL database, one S3 bucket and one token signing key, as the production
    overlay's replicas share theirs (the key is a Kubernetes secret there)."""

    root: Path
    pki: tls.PkiPaths
    database_url: str
    bucket: str
    seaweed: SeaweedS3
    token_key: Path
    processes: list[RegistryProcess] = field(default_factory=list)  # the two that `addresses` name, then others

    @property
    def addresses(self) -> list[str]:
        return [p.address for p in self.processes[:2]]

    def replica(self, **env: str) -> RegistryProcess:
        """One more replica, not started, with these extra SGDE_* settings; stopped with the others."""
        home = self.root / f"replica-{len(self.processes)}"
        home.mkdir()
        proc = RegistryProcess(
            home,
            self.pki,
            self.seaweed.url(self.bucket),
            {
                **self.seaweed.env(),
                "SGDE_REGISTRY_DATABASE_URL": self.database_url,
                "SGDE_REGISTRY_TOKEN_KEY": str(self.token_key),
                **env,
            },
        )
        self.processes.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.processes:
            if proc.proc and proc.proc.poll() is None:
                proc.stop()


@pytest.fixture(scope="module")
def two_registries(tmp_path_factory, pki, postgres, seaweed) -> Replicas:
    """Two registry processes on one fresh PostgreSQL database and one fresh bucket, started together (as a
    Deployment's pods start), for a test module; `.addresses` are theirs, `.replica()` makes another."""
    root = tmp_path_factory.mktemp("replicas")
    key = root / "token-signing.pem"
    auth.load_or_create_token_key(key)
    replicas = Replicas(root, pki, postgres.new_database("replicas"), f"replicas-{uuid.uuid4().hex[:12]}", seaweed, key)
    first, second = replicas.replica(), replicas.replica()
    try:
        with ThreadPoolExecutor(2) as pool:
            for started in [pool.submit(first.start), pool.submit(second.start)]:
                started.result()
        yield replicas
    finally:
        replicas.stop()
