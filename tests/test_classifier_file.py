"""libsgde.io.classifier: the one classifier file `sgde disguise pipeline` accepts (sgde-classifier/1), its strict
reader, and from_sklearn (LogisticRegression, MLPClassifier) giving the estimator's own predictions."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from safetensors.numpy import save as st_save
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from libsgde.io.classifier import (
    FORMAT,
    ClassifierError,
    classifier_bytes,
    from_sklearn,
    load_classifier,
    parse_classifier,
    write_classifier,
)
from libsgde.io.schema import schema_to_dict
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

H, W, K = 4, 4, 4


def schema() -> pb.DataSchema:
    return pb.DataSchema(
        image=pb.ImageSchema(height=H, width=W, channels=1, pixel_max=255, class_names=["a", "b", "c", "d"])
    )


def layers(seed: int = 0, hidden: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(size=(H * W, hidden)).astype(np.float32), rng.normal(size=hidden).astype(np.float32)),
        (rng.normal(size=(hidden, K)).astype(np.float32), rng.normal(size=K).astype(np.float32)),
    ]


def images(n: int = 50, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, H, W), dtype=np.uint8)


def raw_file(tensors: dict[str, np.ndarray], **meta_overrides: str) -> bytes:
    meta = {"format": FORMAT, "data_schema": json.dumps(schema_to_dict(schema())), "activation": "relu"}
    meta.update(meta_overrides)
    meta = {k: v for k, v in meta.items() if v is not None}
    return st_save(tensors, metadata=meta)


def tensors_of(ls) -> dict[str, np.ndarray]:
    return {f"dense{i}/{p}": a for i, (w, b) in enumerate(ls) for p, a in (("kernel", w), ("bias", b))}


def test_round_trip_predicts_argmax_of_the_relu_network(tmp_path):
    ls = layers()
    path = tmp_path / "clf.safetensors"
    write_classifier(path, ls, schema())
    clf = load_classifier(path)
    assert clf.schema == schema()
    x = images()
    h = x.reshape(len(x), -1).astype(np.float64) / 255
    expected = np.argmax(np.maximum(h @ ls[0][0] + ls[0][1], 0) @ ls[1][0] + ls[1][1], axis=1)
    assert clf.predict(x).dtype == np.int32
    np.testing.assert_array_equal(clf.predict(x), expected)
    np.testing.assert_array_equal(clf.predict(x[..., None]), expected)  # [n, H, W, 1] too
    assert len(set(expected.tolist())) > 1  # the check could fail: the network does not answer one class


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.update({"dense0/kernel": t["dense0/kernel"][:-1]}), "dense0/kernel has shape [15, 5]"),
        (lambda t: t.update({"dense1/kernel": t["dense1/kernel"][:, :3]}), "expected [5, 4]"),
        (lambda t: t.update({"dense0/bias": t["dense0/bias"][:4]}), "dense0/bias has shape [4]"),
        (lambda t: t.update({"dense1/kernel": t["dense1/kernel"][:4]}), "expected [5, 4]"),
        (lambda t: t.update({"extra": np.zeros(2, np.float32)}), "unexpected ['extra']"),
        (lambda t: t.update({"dense2/kernel": np.zeros((4, 4), np.float32)}), "missing ['dense2/bias']"),
        (lambda t: t.pop("dense1/bias"), "missing ['dense1/bias']"),
        (lambda t: t.update({"dense0/bias": t["dense0/bias"].astype(np.float16)}), "must be float32"),
        (lambda t: t["dense1/bias"].__setitem__(2, np.nan), "dense1/bias holds NaN or infinite"),
        (lambda t: t["dense0/kernel"].__setitem__((0, 0), np.inf), "dense0/kernel holds NaN or infinite"),
        (lambda t: t.update({"dense0/bias": t["dense0/bias"].astype(np.float64)}), "dtype 'F64'"),
        (lambda t: t.clear(), "tensors must be exactly"),
    ],
)
def test_hostile_tensors_are_refused(change, message):
    tensors = tensors_of(layers())
    change(tensors)
    with pytest.raises(ClassifierError) as e:
        parse_classifier(raw_file(tensors))
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"format": "sgde-classifier/2"}, "has format 'sgde-classifier/2', not 'sgde-classifier/1'"),
        ({"format": None}, "has no format tag, not 'sgde-classifier/1'; the pipeline accepts only"),
        ({"activation": "tanh"}, "activation 'tanh'"),
        ({"extra": "x"}, "exactly the strings"),
        ({"data_schema": '{"image": {"height": 4}}'}, "data_schema"),
        (
            {
                "data_schema": json.dumps(
                    {
                        "tabular": {
                            "columns": [{"name": "a", "type": "COLUMN_TYPE_CATEGORICAL", "categories": ["x", "y"]}]
                        }
                    }
                )
            },
            "an image schema",
        ),
    ],
)
def test_wrong_metadata_is_refused(meta, message):
    with pytest.raises(ClassifierError) as e:
        parse_classifier(raw_file(tensors_of(layers()), **meta))
    assert message in str(e.value)


def test_a_file_of_another_shape_or_truncated_is_refused():
    data = classifier_bytes(layers(), schema())
    for bad in (data[:-4], data + b"\0" * 4, b"\xff" * 8 + data[8:], data[:5]):
        with pytest.raises(ClassifierError):
            parse_classifier(bad)


def test_pickle_joblib_and_onnx_are_refused_naming_the_format_and_how_to_make_one(tmp_path):
    model = LogisticRegression().fit(images(20).reshape(20, -1) / 255, np.arange(20) % 2)
    cases = {
        "model.pkl": pickle.dumps(model),
        "model.bin": pickle.dumps(model),
        "model.joblib": b"x",
        "model.onnx": b"\x08\x07",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ClassifierError) as e:
            load_classifier(tmp_path / name)
        message = str(e.value)
        assert FORMAT in message and "from_sklearn" in message, message
        assert ("ONNX" if name.endswith("onnx") else "joblib" if name.endswith("joblib") else "pickle") in message


def test_size_cap(tmp_path):
    path = tmp_path / "clf.safetensors"
    write_classifier(path, layers(), schema())
    with pytest.raises(ClassifierError, match="over the limit"):
        load_classifier(path, max_bytes=100)


def test_write_refuses_what_the_reader_would(tmp_path):
    ls = layers()
    ls[1] = (ls[1][0][:, :2], ls[1][1][:2])  # 2 logits for 4 classes
    with pytest.raises(ClassifierError, match="expected"):
        write_classifier(tmp_path / "clf.safetensors", ls, schema())
    assert not list(tmp_path.iterdir())


def _training_set(n: int = 300, classes=(0, 1, 2, 3), seed: int = 2):
    """Images whose class decides the brightness of one quarter of the image: learnable, not trivial."""
    rng = np.random.default_rng(seed)
    y = rng.choice(np.asarray(classes), size=n)
    x = rng.integers(0, 120, size=(n, H, W)).astype(np.uint8)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, 2 * r : 2 * r + 2, 2 * col : 2 * col + 2] += 100
    return x, y


@pytest.mark.parametrize(
    "make",
    [
        lambda: LogisticRegression(max_iter=500),
        lambda: MLPClassifier(hidden_layer_sizes=(8, 6), max_iter=300, random_state=0),
    ],
    ids=["logreg", "mlp"],
)
@pytest.mark.parametrize("classes", [(0, 1, 2, 3), (1, 3)], ids=["multiclass", "binary"])
def test_from_sklearn_predicts_as_sklearn_does(tmp_path, make, classes):
    import warnings

    x, y = _training_set(classes=classes)
    features = x.reshape(len(x), -1) / 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning of the tiny MLP
        model = make().fit(features, y)
    path = tmp_path / "clf.safetensors"
    write_classifier(path, from_sklearn(model, schema()), schema())
    test_x, _ = _training_set(200, classes, seed=3)
    ours = load_classifier(path).predict(test_x)
    theirs = model.predict(test_x.reshape(len(test_x), -1) / 255)
    np.testing.assert_array_equal(ours, theirs)
    assert set(ours.tolist()) == set(classes)  # every class it knows is predicted somewhere, and no other


def test_from_sklearn_takes_class_names_and_refuses_what_it_cannot_read():
    x, y = _training_set()
    names = np.asarray(["a", "b", "c", "d"])[y]
    model = LogisticRegression(max_iter=300).fit(x.reshape(len(x), -1) / 255, names)
    assert parse_classifier(classifier_bytes(from_sklearn(model, schema()), schema())).predict(x[:5]).shape == (5,)
    with pytest.raises(ClassifierError, match="neither a class index"):
        from_sklearn(LogisticRegression().fit(x.reshape(len(x), -1) / 255, y + 10), schema())
    tanh = MLPClassifier(activation="tanh", max_iter=300, random_state=0).fit(x.reshape(len(x), -1) / 255, y)
    with pytest.raises(ClassifierError, match="only relu"):
        from_sklearn(tanh, schema())
    with pytest.raises(ClassifierError, match="not fitted"):
        from_sklearn(LogisticRegression(), schema())
    with pytest.raises(ClassifierError, match="takes 8 features"):
        from_sklearn(LogisticRegression().fit(x.reshape(len(x), -1)[:, :8] / 255, y), schema())
