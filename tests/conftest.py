"""Shared pytest fixtures."""
from __future__ import annotations

import os
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

from tests.support.fixtures import new_user, pki, registry  # noqa: E402,F401  (shared fixtures)
