"""The services' SQL stores: a damaged SQLite file is refused at start, with what to do."""

from __future__ import annotations

import os

import pytest

from libsgde.errors import FailedPrecondition
from services.trainer.jobs import JobStore


def test_a_damaged_database_is_refused_at_start(tmp_path):
    """On the first release a service started on a damaged SQLite file and its health said SERVING (`SELECT 1`
    reads no table) while every real query failed."""
    path = tmp_path / "trainer.db"
    store = JobStore(f"sqlite:///{path}")
    for i in range(200):
        store.add_dataset(f"{i:016x}", "alice", "x.csv", 1, "0" * 64, "datasets/x")
    store.close()  # the last connection checkpoints the WAL into the file
    with path.open("r+b") as f:  # every page but the first (the header and the schema) overwritten
        f.seek(4096)
        f.write(os.urandom(path.stat().st_size - 4096))
    with pytest.raises(FailedPrecondition, match="is damaged.*restore it from a backup"):
        JobStore(f"sqlite:///{path}").ping()
