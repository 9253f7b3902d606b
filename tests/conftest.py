"""Shared pytest fixtures."""
from __future__ import annotations

import uuid

import pytest

from libsgde.storage import S3BlobStore, open_blob_store
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
