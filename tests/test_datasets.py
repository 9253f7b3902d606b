"""Loading CSV, npz and idx files against a schema (real data sets included), refusing hostile files, proposing
schemas, and the `sgde schema` commands."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_breast_cancer, load_digits

from libsgde.cli import main
from libsgde.io.datasets import PRIVACY_WARNING, infer_schema, load_dataset
from libsgde.io.encoding import DataError
from libsgde.io.schema import schema_from_dict, schema_to_dict
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

PEOPLE_CSV = "age,city,smoker\n30,Oslo,no\n41,Lima,yes\n\n200,Lima,no\n"


def people_schema() -> pb.DataSchema:
    return schema_from_dict(
        {
            "tabular": {
                "label_column": "smoker",
                "columns": [
                    {"name": "age", "type": "COLUMN_TYPE_INTEGER", "lower": 0, "upper": 120},
                    {"name": "city", "type": "COLUMN_TYPE_CATEGORICAL", "categories": ["Oslo", "Lima"]},
                    {"name": "smoker", "type": "COLUMN_TYPE_CATEGORICAL", "categories": ["no", "yes"]},
                ],
            }
        }
    )


def image_schema(height=4, width=3, classes=2) -> pb.DataSchema:
    return pb.DataSchema(
        image=pb.ImageSchema(
            height=height, width=width, channels=1, pixel_max=255, class_names=[str(i) for i in range(classes)]
        )
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def idx_bytes(array: np.ndarray, dims: tuple[int, ...] | None = None) -> bytes:
    dims = array.shape if dims is None else dims
    return bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, dims: tuple[int, ...] | None = None) -> Path:
    data = idx_bytes(array, dims)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def test_csv_loads_with_clipping_and_labels(tmp_path):
    data = load_dataset(write(tmp_path / "people.csv", PEOPLE_CSV), people_schema())
    assert len(data) == 3 and data.space.shape == (3,) and data.clipped == {"age": 1}
    assert data.labels.tolist() == [0, 1, 0]
    np.testing.assert_allclose(data.x, [[0.25, 1, 0], [41 / 120, 0, 1], [1, 0, 1]], rtol=1e-6)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("age,city\n30,Oslo\n", r"column 'smoker': the schema declares this column but the data lacks it"),
        ("age,city,smoker,ssn\n30,Oslo,no,123\n", r"column 'ssn'.*declare it in the schema.*or remove it"),
        ("", "empty"),
        ("age,city,smoker\n", "no data rows"),
        ("age,city,smoker\n30,Oslo\n", "line 2: has 2 fields but the header has 3"),
        ("age,age,smoker\n30,Oslo,no\n", "more than once"),
        (
            "age,city,smoker\n30,Oslo,no\n\n31,Paris,no\n",
            r"people.csv line 4, column 'city': 'Paris' is not a declared",
        ),
        ("age,city,smoker\n30,Oslo,no\n2.5,Oslo,no\n", r"line 3, column 'age': '2.5' is not an integer"),
    ],
)
def test_bad_csv_files_are_refused_saying_where(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        load_dataset(write(tmp_path / "people.csv", text), people_schema())


def test_breast_cancer_csv_through_infer_and_load(tmp_path):
    frame = load_breast_cancer(as_frame=True).frame
    path = tmp_path / "breast_cancer.csv"
    frame.to_csv(path, index=False)
    schema, warnings = infer_schema(path, label_column="target")
    assert warnings[0] == PRIVACY_WARNING
    columns = {c.name: c for c in schema.tabular.columns}
    assert columns["target"].categories == ["0", "1"] and schema.tabular.label_column == "target"
    assert columns["mean radius"].type == pb.COLUMN_TYPE_CONTINUOUS
    data = load_dataset(path, schema)
    assert len(data) == 569 and data.space.shape == (30,) and data.space.num_classes == 2
    assert data.clipped == {} and np.array_equal(data.labels, frame["target"].to_numpy())
    assert data.x.min() == 0 and data.x.max() == 1  # the inferred bounds are the data's own min and max


def test_digits_npz_loads(tmp_path):
    digits = load_digits()
    path = tmp_path / "digits.npz"
    np.savez(path, images=digits.images, labels=digits.target)
    schema = pb.DataSchema(
        image=pb.ImageSchema(height=8, width=8, channels=1, pixel_max=16, class_names=[str(i) for i in range(10)])
    )
    data = load_dataset(path, schema)
    assert data.x.shape == (1797, 8, 8, 1) and data.clipped == {}
    assert np.allclose(data.x[..., 0] * 16, digits.images) and np.array_equal(data.labels, digits.target)
    inferred, warnings = infer_schema(path)
    assert inferred == schema and any("pixel_max 16 was read from the data" in w for w in warnings)


def test_npz_refusals(tmp_path):
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([{"evil": 1}, None], dtype=object))
    with pytest.raises(DataError, match="pickles"):
        load_dataset(objects, image_schema())
    np.savez(tmp_path / "other.npz", pixels=np.zeros((2, 4, 3)))
    with pytest.raises(DataError, match="no array named x or images"):
        load_dataset(tmp_path / "other.npz", image_schema())
    with pytest.raises(DataError, match="not an npz"):
        load_dataset(write(tmp_path / "fake.npz", "hello"), image_schema())
    np.savez_compressed(tmp_path / "big.npz", x=np.zeros((1000, 4, 3), np.uint8), y=np.zeros(1000, np.uint8))
    with pytest.raises(DataError, match="over the limit"):
        load_dataset(tmp_path / "big.npz", image_schema(), max_bytes=5000)
    np.savez(tmp_path / "wrong.npz", x=np.zeros((2, 3, 4)), y=[0, 1])
    with pytest.raises(DataError, match=r"expected images of shape \(N, 4, 3, 1\)"):
        load_dataset(tmp_path / "wrong.npz", image_schema())


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip_finds_the_labels_file(tmp_path, suffix):
    images = np.random.default_rng(1).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    path = write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.array([0, 1, 1, 0, 1]))
    data = load_dataset(path, image_schema())
    assert data.labels.tolist() == [0, 1, 1, 0, 1] and np.array_equal(data.x[..., 0] * 255, images)
    assert load_dataset(path, image_schema(classes=0)).labels is None
    other = write_idx(tmp_path / f"my-labels{suffix}", np.array([1, 1, 1, 1, 0]))
    assert load_dataset(path, image_schema(), labels_path=other).labels.tolist() == [1, 1, 1, 1, 0]
    short = write_idx(tmp_path / f"short{suffix}", np.array([1, 1]))
    with pytest.raises(DataError, match="2 labels for 5 images"):
        load_dataset(path, image_schema(), labels_path=short)


def test_hostile_idx_files_are_refused(tmp_path):
    images = np.zeros((5, 4, 3), np.uint8)
    cases = {
        "truncated": idx_bytes(images)[:-7],
        "trailing": idx_bytes(images) + b"\0",
        "magic": b"\x00\x00\x08\x01" + idx_bytes(images)[4:],
        "notidx": b"PK\x03\x04hello",
        "header": idx_bytes(images)[:9],
        "dims": idx_bytes(np.zeros(0), dims=(5, 2**31, 3)),
        "huge": idx_bytes(np.zeros(0), dims=(2**32 - 1, 4, 3)),
    }
    messages = {
        "truncated": "truncated or has trailing",
        "trailing": "truncated or has trailing",
        "magic": "magic number is 00000801",
        "notidx": "magic number",
        "header": "truncated inside",
        "dims": r"shape \(2147483648, 3\) but the schema declares \(4, 3\)",
        "huge": "over the limit",
    }
    for name, data in cases.items():
        (tmp_path / f"{name}.idx").write_bytes(data)
        with pytest.raises(DataError, match=messages[name]):
            load_dataset(tmp_path / f"{name}.idx", image_schema(classes=0))
    (tmp_path / "truncated.gz").write_bytes(gzip.compress(cases["truncated"]))
    (tmp_path / "broken.gz").write_bytes(gzip.compress(idx_bytes(images))[:-12])
    (tmp_path / "plain.gz").write_bytes(idx_bytes(images))
    for name in ("truncated", "broken", "plain"):
        with pytest.raises(DataError, match="truncated|cannot read"):
            load_dataset(tmp_path / f"{name}.gz", image_schema(classes=0))


def test_gzip_bomb_is_refused_before_decompressing(tmp_path):
    bomb = tmp_path / "bomb-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(idx_bytes(np.zeros((20_000, 28, 28), np.uint8)), compresslevel=1))
    assert bomb.stat().st_size < 200_000
    schema = pb.DataSchema(image=pb.ImageSchema(height=28, width=28, channels=1, pixel_max=255))
    with pytest.raises(DataError, match="over the limit of 1,000,000"):
        load_dataset(bomb, schema, max_bytes=1_000_000)


def test_file_and_schema_kinds_must_agree(tmp_path):
    with pytest.raises(DataError, match="CSV .* but the schema declares image data"):
        load_dataset(write(tmp_path / "people.csv", PEOPLE_CSV), image_schema())
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 4, 3)))
    with pytest.raises(DataError, match="image file but the schema declares tabular data"):
        load_dataset(tmp_path / "d.npz", people_schema())
    with pytest.raises(DataError, match="unknown file type"):
        load_dataset(write(tmp_path / "people.xlsx", ""), people_schema())


def test_infer_schema_from_csv(tmp_path):
    path = write(tmp_path / "t.csv", "n,x,k,same,y\n1,0.5,a,7,10\n3,2,b,7,9\n,-1,a,7,10\n")
    schema, warnings = infer_schema(path, label_column="y")
    n, x, k, same, y = schema.tabular.columns
    assert (n.type, n.lower, n.upper) == (pb.COLUMN_TYPE_INTEGER, 1, 3)
    assert (x.type, x.lower, x.upper) == (pb.COLUMN_TYPE_CONTINUOUS, -1, 2)
    assert k.categories == ["a", "b"] and y.categories == ["9", "10"]  # numeric labels sort as numbers
    assert (same.lower, same.upper) == (7, 8)
    assert warnings[0].startswith("PRIVACY") and "NOT private" in warnings[0]
    assert n.nullable and any("'n' is missing in 1 of 3 rows (blank: 1)" in w for w in warnings)
    assert any("'same' holds one value" in w for w in warnings)
    many = write(tmp_path / "ids.csv", "id\n" + "\n".join(f"user{i}" for i in range(1001)) + "\n")
    with pytest.raises(DataError, match="column 'id'.*more than 1000 categories"):
        infer_schema(many)
    with pytest.raises(DataError, match="no column 'label'"):
        infer_schema(path, label_column="label")


def test_infer_schema_from_idx(tmp_path):
    path = write_idx(tmp_path / "t-images-idx3-ubyte", np.zeros((3, 4, 3)))
    schema, warnings = infer_schema(path)
    assert schema_to_dict(schema) == {"image": {"height": 4, "width": 3, "channels": 1, "pixel_max": 255}}
    assert warnings[0] == PRIVACY_WARNING and any("no labels found" in w for w in warnings)
    write_idx(tmp_path / "t-labels-idx1-ubyte", np.array([0, 2, 1]))
    assert infer_schema(path)[0].image.class_names == ["0", "1", "2"]


def run_cli(*args: str, code: int = 0):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return " ".join(result.stdout.split()), " ".join(result.stderr.split())


def test_schema_commands(tmp_path):
    data = write(tmp_path / "people.csv", PEOPLE_CSV)
    schema_file = tmp_path / "people.schema.json"
    stdout, stderr = run_cli("schema", "infer", str(data), "--out", str(schema_file), "--label", "smoker")
    assert "WARNING: PRIVACY" in stderr and "NOT private" in stderr and "wrote" in stdout
    inferred = json.loads(schema_file.read_text())
    assert inferred["tabular"]["label_column"] == "smoker" and schema_from_dict(inferred)
    stdout, _ = run_cli("schema", "check", str(data), "--schema", str(schema_file))
    assert "N = 3" in stdout and "(3,)" in stdout and "nothing clipped" in stdout
    schema_file.write_text(json.dumps(schema_to_dict(people_schema())))
    stdout, _ = run_cli("schema", "check", str(data), "--schema", str(schema_file))
    assert "clipped into bounds: age: 1" in stdout
    write(data, "age,city,smoker\n30,Paris,no\n")
    _, stderr = run_cli("schema", "check", str(data), "--schema", str(schema_file), code=1)
    assert "error: people.csv line 2, column 'city': 'Paris' is not a declared category" in stderr
    write(schema_file, "{not json")
    _, stderr = run_cli("schema", "check", str(data), "--schema", str(schema_file), code=1)
    assert "not a JSON file" in stderr
    write(schema_file, json.dumps({"tabular": {"columns": []}}))
    _, stderr = run_cli("schema", "check", str(data), "--schema", str(schema_file), code=1)
    assert "tabular.columns" in stderr
