"""The trainer's data loading without a server: its limits follow the trainer's upload limit, a CSV is encoded in
chunks with its model space bounded, and a load stops when asked."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from libsgde.io import datasets
from libsgde.io.datasets import LoadCancelled, load_dataset
from libsgde.io.encoding import DataError
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from services.trainer.jobs import JobStore
from services.trainer.sources import DataMismatch, Sources
from tests.support.services import tabular_schema
from tests.test_datasets import idx_bytes


def sources(tmp_path, max_bytes: int) -> Sources:
    (tmp_path / "root").mkdir(exist_ok=True)
    return Sources(
        JobStore(f"sqlite:///{tmp_path / 'jobs.db'}"), tmp_path / "state", tmp_path / "root", max_bytes=max_bytes
    )


def test_a_gzip_bomb_is_bounded_by_the_trainers_upload_limit(tmp_path):
    """On the first release a 149 KB gzip idx took 770 MiB inside CreateJob: the loader allowed 2 GiB whatever the
    trainer's limit."""
    silo = sources(tmp_path, max_bytes=1 << 20)
    bomb = tmp_path / "root" / "bomb-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(idx_bytes(np.zeros((20_000, 28, 28), np.uint8)), compresslevel=1))
    schema = pb.DataSchema(image=pb.ImageSchema(height=28, width=28, channels=1, pixel_max=255))
    with pytest.raises(DataMismatch, match="over the limit of 1,048,576"):
        silo.load(bomb.name, "alice", schema)


def test_csv_model_space_is_bounded_before_it_is_allocated(tmp_path):
    wide = pb.DataSchema(
        tabular=pb.TabularSchema(
            columns=[pb.Column(name="code", type=pb.COLUMN_TYPE_CATEGORICAL, categories=[str(i) for i in range(1000)])]
        )
    )
    path = tmp_path / "codes.csv"
    path.write_text("code\n" + "\n".join(str(i % 1000) for i in range(3000)) + "\n")
    assert path.stat().st_size < 20_000  # 20 KB of CSV, 12 MB of model space
    with pytest.raises(DataError, match="model space"):
        load_dataset(path, wide, max_encoded_bytes=1 << 20)
    assert load_dataset(path, wide).x.shape == (3000, 1000)


def test_chunked_csv_encoding_equals_one_pass_and_stops_when_asked(tmp_path, monkeypatch):
    path = tmp_path / "people.csv"
    path.write_text("age,label\n" + "\n".join(f"{20 + i % 70},{'no' if i % 3 else 'yes'}" for i in range(50)) + "\n")
    whole = load_dataset(path, tabular_schema())
    monkeypatch.setattr(datasets, "CSV_CHUNK_ROWS", 7)
    chunked = load_dataset(path, tabular_schema())
    assert np.array_equal(whole.x, chunked.x) and np.array_equal(whole.labels, chunked.labels)
    calls = []
    with pytest.raises(LoadCancelled):
        load_dataset(path, tabular_schema(), should_stop=lambda: calls.append(1) or len(calls) > 2)


def test_duplicate_header_names_are_found_in_one_pass(tmp_path):
    """200,000 duplicate column names took 32 s of CPU on the first release (a quadratic check)."""
    path = tmp_path / "dupes.csv"
    path.write_text(",".join(["a", "b"] * 100_000) + "\n" + ",".join(["1"] * 200_000) + "\n")
    with pytest.raises(DataError, match=r"names columns \['a', 'b'\] more than once"):
        load_dataset(path, tabular_schema())
