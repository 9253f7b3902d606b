"""Shared pytest fixtures."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid

import pytest

# One persistent XLA compilation cache for the run (this process and the services it starts): tests build the same
# tiny models again and again, and compiling them is most of their cost on 2 cores.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="sgde-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Tiny models run fast at any optimisation level; XLA's backend optimisations only cost compile time here.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

from libsgde.server.storage import S3BlobStore, open_blob_store
from tests.support.seaweed import SeaweedS3


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory) -> SeaweedS3:
    """One real S3 server (SeaweedFS) for the whole session; give each test its own bucket."""
    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture
def s3_store(seaweed, monkeypatch) -> S3BlobStore:
    """An S3BlobStore on a fresh bucket of the session's SeaweedFS, credentials set in the environment."""
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    return open_blob_store(seaweed.url(f"sgde-test-{uuid.uuid4().hex[:16]}"))


from tests.support.fixtures import (  # noqa: E402,F401  (shared fixtures)
    new_user,
    pki,
    postgres,
    postgres_registry,
    registry,
    seaweed_tls,
    sqlite_registry,
    two_registries,
)

# -- markers ---------------------------------------------------------------------------------------------------------
# An integration test talks to a real server over a socket (gRPC services, SeaweedFS); a deploy test renders and checks
# the Kubernetes manifests. The rest are unit tests: `pytest -m "not integration and not deploy"` runs them alone, and
# there a test that opens an inet socket from Python fails, so a missing marker shows itself.
DEPLOY_MODULES = {"test_k8s", "test_deploy"}
INTEGRATION_FIXTURES = {
    "registry",
    "new_user",
    "seaweed",
    "seaweed_tls",
    "s3_store",
    "fault_server",
    "fault_store",
    "postgres",
    "two_registries",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in DEPLOY_MODULES:
            item.add_marker(pytest.mark.deploy)
        elif INTEGRATION_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _unit_tests_open_no_sockets(request, monkeypatch):
    if request.node.get_closest_marker("integration") or request.node.get_closest_marker("deploy"):
        return

    original = {"connect": socket.socket.connect, "bind": socket.socket.bind}

    def guarded(name):
        def call(sock, address, *args):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                raise RuntimeError(
                    f"{request.node.nodeid} opened a network socket ({name} {address!r}): mark it "
                    "@pytest.mark.integration"
                )
            return original[name](sock, address, *args)

        return call

    monkeypatch.setattr(socket.socket, "connect", guarded("connect"))
    monkeypatch.setattr(socket.socket, "bind", guarded("bind"))
