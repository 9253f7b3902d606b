"""`sgde disguise apply` and `sgde disguise pipeline` on a tiny translator trained here (4x4 images, 4 classes, hidden
0 and 1 disguised as public 2 and 3): row order, label mapping, schema refusal, atomic output, and the pipeline's
accuracy with a classifier trained on the disguised images only (an sgde-classifier/1 file made by from_sklearn)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression

from libsgde.cli import main
from libsgde.domain.specs import TrainSpec
from libsgde.io.classifier import from_sklearn, write_classifier
from libsgde.io.disguise import load_translator
from libsgde.io.encoding import ImageEncoder
from libsgde.io.schema import schema_to_dict
from libsgde.io.training import train
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

HIDDEN, PUBLIC = [0, 1], [2, 3]
SECRET = b"a test secret of 32 bytes or more; never a fixed one in production"


def schema() -> pb.DataSchema:
    return pb.DataSchema(
        image=pb.ImageSchema(height=4, width=4, channels=1, pixel_max=255, class_names=["zero", "one", "two", "three"])
    )


def images_of(labels: np.ndarray, seed: int) -> np.ndarray:
    """Class c lights quadrant c of a dim, noisy 4x4 image: easy to learn, different in every row."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, size=(len(labels), 4, 4)).astype(np.uint8)
    for i, c in enumerate(labels):
        r, col = divmod(int(c), 2)
        x[i, 2 * r : 2 * r + 2, 2 * col : 2 * col + 2] += 190
    return x


def labelled(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.random.default_rng(seed).integers(0, 4, size=n).astype(np.int32)
    return images_of(labels, seed + 1), labels


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with the translator (translator.safetensors) and the schema (schema.json)."""
    folder = tmp_path_factory.mktemp("disguise")
    x, y = labelled(400, seed=0)
    data = ImageEncoder(schema().image).encode(x, y)
    config = {"hidden_classes": HIDDEN, "public_classes": PUBLIC, "hidden": [16], "latent_dim": 2}
    spec = TrainSpec("translator", 50.0, config=config, epochs=40, batch_size=40, learning_rate=1e-2, seed=3)
    train(data, schema(), spec, folder / "translator.safetensors", secret=SECRET)
    (folder / "schema.json").write_text(json.dumps(schema_to_dict(schema())))
    return folder


def run(*args: str):
    return CliRunner().invoke(main, ["disguise", *map(str, args)], catch_exceptions=False)


def apply(work: Path, data: Path, dest: Path, schema_file: Path | None = None):
    return run(
        "apply", "--translator", work / "translator.safetensors", "--data", data,
        "--schema", schema_file or work / "schema.json", "--out", dest,
    )  # fmt: skip


def test_apply_keeps_row_order_and_maps_labels(work, tmp_path):
    x, y = labelled(40, seed=10)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    result = apply(work, tmp_path / "data.npz", tmp_path / "out.npz")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "out.npz") as f:
        assert sorted(f.files) == ["images", "labels"]
        images, labels = f["images"], f["labels"]
    np.testing.assert_array_equal(labels, np.asarray([0, 1, 2, 3])[[2, 3, 2, 3]][y])  # hidden -> public, others kept
    assert labels.dtype == np.int32 and images.shape == (40, 4, 4, 1) and images.dtype == np.uint8
    translated = load_translator(work / "translator.safetensors").translate(x)
    np.testing.assert_array_equal(images, translated.images)  # row i is the translation of input row i
    counts = np.bincount(labels, minlength=4)
    assert f"labels: two {counts[2]}, three {counts[3]}" in result.output

    order = np.random.default_rng(0).permutation(40)  # the same rows shuffled come back shuffled the same way
    np.savez(tmp_path / "shuffled.npz", x=x[order], y=y[order])
    assert apply(work, tmp_path / "shuffled.npz", tmp_path / "shuffled-out.npz").exit_code == 0
    with np.load(tmp_path / "shuffled-out.npz") as f:
        np.testing.assert_array_equal(f["images"], images[order])
        np.testing.assert_array_equal(f["labels"], labels[order])


def test_the_translator_draws_hidden_classes_as_their_public_ones(work, tmp_path):
    x, y = labelled(200, seed=20)
    np.savez(tmp_path / "data.npz", images=x)  # no labels: the translator's own are written
    assert apply(work, tmp_path / "data.npz", tmp_path / "out.npz").exit_code == 0
    with np.load(tmp_path / "out.npz") as f:
        labels = f["labels"]
    mapped = np.asarray([2, 3, 2, 3])[y]
    assert np.mean(labels == mapped) >= 0.9
    assert not np.isin(labels, HIDDEN).any()


def test_apply_refuses_data_of_another_schema_and_writes_nothing(work, tmp_path):
    x, y = labelled(10, seed=30)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    other = schema_to_dict(schema())
    other["image"]["class_names"][3] = "drei"
    (tmp_path / "other.json").write_text(json.dumps(other))
    result = apply(work, tmp_path / "data.npz", tmp_path / "out.npz", tmp_path / "other.json")
    assert result.exit_code == 1
    assert "differs from the translator's at image.class_names[3]" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "other.json"]


def test_apply_fails_whole_leaving_the_old_output_and_no_temporary(work, tmp_path):
    x, y = labelled(10, seed=40)
    y[7] = 9  # not a class of the schema
    np.savez(tmp_path / "data.npz", x=x, y=y)
    (tmp_path / "out.npz").write_bytes(b"the old output")
    result = apply(work, tmp_path / "data.npz", tmp_path / "out.npz")
    assert result.exit_code == 1 and "label 9 is not a class index" in result.output
    assert (tmp_path / "out.npz").read_bytes() == b"the old output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "out.npz"]
    np.savez(tmp_path / "wrong-shape.npz", x=np.zeros((3, 5, 5), np.uint8), y=np.zeros(3, np.int32))
    result = apply(work, tmp_path / "wrong-shape.npz", tmp_path / "new.npz")
    assert result.exit_code == 1 and not (tmp_path / "new.npz").exists()


def cloud_classifier(work: Path, tmp_path: Path) -> Path:
    """What the cloud trains: a logistic regression on disguised images and their public labels only."""
    x, y = labelled(300, seed=50)
    np.savez(tmp_path / "owner.npz", x=x, y=y)
    assert apply(work, tmp_path / "owner.npz", tmp_path / "disguised.npz").exit_code == 0
    with np.load(tmp_path / "disguised.npz") as f:
        images, labels = f["images"], f["labels"]
    assert set(labels.tolist()) == {2, 3}  # the cloud never sees a hidden label
    model = LogisticRegression(max_iter=500).fit(images.reshape(len(images), -1) / 255, labels)
    write_classifier(tmp_path / "cloud.safetensors", from_sklearn(model, schema()), schema())
    return tmp_path / "cloud.safetensors"


def test_pipeline_solves_the_hidden_task_with_the_cloud_classifier(work, tmp_path):
    classifier = cloud_classifier(work, tmp_path)
    labels = np.random.default_rng(60).integers(0, 2, size=100).astype(np.int32)  # real hidden-class images
    np.savez(tmp_path / "hidden.npz", x=images_of(labels, 61), y=labels)
    result = run(
        "pipeline", "--translator", work / "translator.safetensors", "--classifier", classifier,
        "--data", tmp_path / "hidden.npz", "--schema", work / "schema.json", "--out", tmp_path / "predictions.csv",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "predictions.csv").read_text().splitlines()
    assert lines[0] == "row,predicted_hidden" and len(lines) == 101
    rows = [line.split(",") for line in lines[1:]]
    assert [int(r) for r, _ in rows] == list(range(100))
    predicted = np.asarray([int(c) for _, c in rows])
    accuracy = float(np.mean(predicted == labels))
    assert accuracy >= 0.9, result.output
    assert f"accuracy on 100 images of hidden classes: {accuracy:.4f}" in result.output

    np.savez(tmp_path / "unlabelled.npz", x=images_of(labels, 61))  # no labels: predictions, no accuracy
    result = run(
        "pipeline", "--translator", work / "translator.safetensors", "--classifier", classifier,
        "--data", tmp_path / "unlabelled.npz", "--schema", work / "schema.json",
    )  # fmt: skip
    assert result.exit_code == 0 and "100 images" in result.output and "accuracy" not in result.output


def test_pipeline_refuses_unsafe_and_mismatched_classifiers(work, tmp_path):
    x, y = labelled(20, seed=70)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    model = LogisticRegression().fit(x.reshape(20, -1) / 255, y)
    (tmp_path / "cloud.pkl").write_bytes(pickle.dumps(model))
    args = ["--translator", work / "translator.safetensors", "--data", tmp_path / "data.npz"]
    result = run("pipeline", *args, "--schema", work / "schema.json", "--classifier", tmp_path / "cloud.pkl")
    assert result.exit_code == 1
    assert "pickle" in result.output and "sgde-classifier/1" in result.output and "from_sklearn" in result.output

    brighter = schema()
    brighter.image.pixel_max = 65535
    write_classifier(tmp_path / "other.safetensors", from_sklearn(model, brighter), brighter)
    result = run("pipeline", *args, "--schema", work / "schema.json", "--classifier", tmp_path / "other.safetensors")
    assert result.exit_code == 1 and "classifier's schema differs from the translator's at image.pixel_max" in (
        result.output
    )


@pytest.mark.integration
def test_apply_pulls_a_translator_from_the_registry_verified(work, new_user, registry, pki, tmp_path, monkeypatch):
    alice = new_user()
    alice.push(work / "translator.safetensors", "disguiser")
    for name, value in {
        "SGDE_HOME": str(alice.home),
        "SGDE_PKI_DIR": str(pki.root),
        "SGDE_REGISTRY_ADDRESS": registry.address,
    }.items():
        monkeypatch.setenv(name, value)
    files = tmp_path / "files"  # the user's $SGDE_HOME is in tmp_path too
    files.mkdir()
    x, y = labelled(30, seed=80)
    np.savez(files / "data.npz", x=x, y=y)
    assert apply(work, files / "data.npz", files / "local.npz").exit_code == 0
    result = run(
        "apply", "--translator", f"{alice.username}/disguiser@1", "--data", files / "data.npz",
        "--schema", work / "schema.json", "--out", files / "pulled.npz",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"pulled models/{alice.username}/disguiser/versions/1 (sha256 and signature verified)" in result.output
    with np.load(files / "local.npz") as local, np.load(files / "pulled.npz") as pulled:
        np.testing.assert_array_equal(local["images"], pulled["images"])
        np.testing.assert_array_equal(local["labels"], pulled["labels"])
    assert sorted(p.name for p in files.iterdir()) == ["data.npz", "local.npz", "pulled.npz"]  # no pulled file left
    missing = run(
        "apply", "--translator", f"{alice.username}/nothing-here", "--data", files / "data.npz",
        "--schema", work / "schema.json", "--out", files / "none.npz",
    )  # fmt: skip
    assert missing.exit_code == 1 and "nothing-here" in missing.output, missing.output
    assert not (files / "none.npz").exists()
