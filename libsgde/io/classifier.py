"""The one classifier file `sgde disguise pipeline` accepts: a small ReLU network in a safetensors file, read strictly.

A classifier trained elsewhere comes from someone else, so it is data, never code: no pickle, joblib or ONNX (a
pickle runs code when loaded; ONNX needs a runtime with a large attack surface). Format ``sgde-classifier/1``:

- safetensors; ``__metadata__`` holds exactly ``format`` ("sgde-classifier/1"), ``data_schema`` (the image schema's
  JSON) and ``activation`` ("relu");
- tensors ``dense{i}/kernel`` float32 [d_in, d_out] and ``dense{i}/bias`` float32 [d_out], i = 0..L-1, nothing else;
- input: the flattened model-space image, pixels / pixel_max in [0, 1], [n, H*W*C]; hidden layers
  h = relu(h @ kernel + bias); output: logits over the schema's K classes (predicted class = argmax).

`from_sklearn` turns a fitted scikit-learn LogisticRegression or MLPClassifier(activation="relu"), trained on that
same input, into the layers; `write_classifier` writes them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save as _st_save

from libsgde.errors import FieldError
from libsgde.io.artifact import ArtifactError, header_length, parse_tensors, strict_json
from libsgde.io.atomic import write_atomic
from libsgde.io.schema import SchemaError, schema_from_dict, schema_to_dict
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

FORMAT = "sgde-classifier/1"
ACTIVATIONS = ("relu",)
METADATA_KEYS = ("format", "data_schema", "activation")
MAX_CLASSIFIER_BYTES = 512 << 20
MAX_HEADER_BYTES = 1 << 20
MAX_LAYERS = 16
NEVER = np.float32(-1e30)  # the bias of a class the estimator never saw: its logit never wins
HOW_TO_MAKE = (
    f"the pipeline accepts only {FORMAT} safetensors files: make one from a fitted scikit-learn model with "
    "libsgde.io.classifier.write_classifier(path, from_sklearn(model, schema), schema)"
)
_UNSAFE_SUFFIXES = {".pkl": "pickle", ".pickle": "pickle", ".joblib": "joblib", ".sav": "pickle", ".onnx": "ONNX"}


class ClassifierError(FieldError):
    """A classifier file that is malformed, unsafe or of another format; the message says what to do."""

    def __init__(self, message: str, field: str = ""):
        super().__init__(field, message, message=message)


@dataclass(frozen=True)
class Classifier:
    """A loaded classifier: `schema` (the image schema it classifies) and its dense layers [(kernel, bias), ...]."""

    schema: pb.DataSchema
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits [n, K] of model-space images x [n, H, W, C] (or flattened [n, H*W*C]) in [0, 1]."""
        h = np.asarray(x, np.float32).reshape(len(x), -1)
        for i, (kernel, bias) in enumerate(self.layers):
            h = h @ kernel + bias
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0)
        return h

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class indices int32 [n] of raw-pixel images [n, H, W, C] (or [n, H, W] for grey), as the schema declares."""
        return np.argmax(self.logits(scale_pixels(images, self.schema)), axis=1).astype(np.int32)


def scale_pixels(images: np.ndarray, schema: pb.DataSchema) -> np.ndarray:
    """Raw pixels [n, H, W(, C)] to model space [n, H, W, C]: pixel / pixel_max, clipped into [0, 1]."""
    im = schema.image
    images = np.asarray(images)
    shape = (im.height, im.width, im.channels)
    if images.ndim == 3 and im.channels == 1:
        images = images[..., np.newaxis]
    if images.ndim != 4 or images.shape[1:] != shape or images.dtype.kind not in "uif":
        raise ClassifierError(f"expected images of shape (N, {', '.join(map(str, shape))}), got {images.shape}")
    return np.clip(images.astype(np.float32) / np.float32(im.pixel_max), 0.0, 1.0)


def _refuse_unsafe(path: Path, head: bytes) -> None:
    kind = _UNSAFE_SUFFIXES.get(path.suffix.lower())
    if kind is None and head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        kind = "pickle"  # a pickle's PROTO opcode, whatever the file is called
    if kind is not None:
        risk = "loading one runs code" if kind != "ONNX" else "it needs an ONNX runtime to execute"
        raise ClassifierError(f"{path.name} is a {kind} file, refused ({risk}); {HOW_TO_MAKE}")


def load_classifier(path: str | Path, max_bytes: int = MAX_CLASSIFIER_BYTES) -> Classifier:
    """Strictly read a ``sgde-classifier/1`` file (module docstring); raises ClassifierError saying what is wrong."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        _refuse_unsafe(path, head)
        if size > max_bytes:
            raise ClassifierError(f"{path.name} is {size:,} bytes, over the limit of {max_bytes:,}")
        data = head + f.read(size - len(head) + 1)
    if len(data) != size:
        raise ClassifierError(f"{path.name} changed size while it was read; try again")
    try:
        return parse_classifier(data)
    except ClassifierError as e:
        raise ClassifierError(f"{path.name}: {e}", e.field) from None


def parse_classifier(data: bytes) -> Classifier:
    """A Classifier from the bytes of a ``sgde-classifier/1`` file; raises ClassifierError."""
    try:
        n = header_length(data)
        if n > MAX_HEADER_BYTES or 8 + n > len(data):
            raise ClassifierError(f"not a {FORMAT} file: its header length {n} is too large for it; {HOW_TO_MAKE}")
        header = strict_json(data[8 : 8 + n], "safetensors header")
        if not isinstance(header, dict):
            raise ClassifierError(f"not a {FORMAT} file (its header is not a JSON object); {HOW_TO_MAKE}")
        meta = header.pop("__metadata__", None)
        if len(header) > 2 * MAX_LAYERS:
            raise ClassifierError(f"{len(header)} tensors: at most {MAX_LAYERS} layers of kernel and bias")
        infos = parse_tensors(header, len(data) - 8 - n)
    except ArtifactError as e:
        raise ClassifierError(f"not a valid {FORMAT} file: {e}") from None
    schema = _metadata(meta)
    layers = _layers(infos, data[8 + n :], schema)
    return Classifier(schema, layers)


def _metadata(meta: Any) -> pb.DataSchema:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        what = "has no format tag" if got is None else f"has format {str(got)[:40]!r}"
        raise ClassifierError(f"this safetensors file {what}, not {FORMAT!r}; {HOW_TO_MAKE}", "format")
    if set(meta) != set(METADATA_KEYS) or not all(isinstance(v, str) for v in meta.values()):
        raise ClassifierError(f"metadata must hold exactly the strings {list(METADATA_KEYS)} (got {sorted(meta)})")
    if meta["activation"] not in ACTIVATIONS:
        raise ClassifierError(f"activation {meta['activation'][:40]!r} is not one of {ACTIVATIONS}", "activation")
    try:
        schema = schema_from_dict(strict_json(meta["data_schema"], "data_schema"))
    except (ArtifactError, SchemaError) as e:
        raise ClassifierError(f"data_schema: {e}", "data_schema") from None
    if schema.WhichOneof("kind") != "image" or len(schema.image.class_names) < 2:
        raise ClassifierError("data_schema must be an image schema with at least 2 classes", "data_schema")
    return schema


def _layers(infos: dict, buffer: bytes, schema: pb.DataSchema) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    count = (len(infos) + 1) // 2
    expected = {f"dense{i}/{part}" for i in range(count) for part in ("kernel", "bias")}
    if not 1 <= count or set(infos) != expected:
        raise ClassifierError(
            f"tensors must be exactly dense0/kernel, dense0/bias, ..., dense{{L-1}}/bias; missing "
            f"{sorted(expected - set(infos))[:4]}, unexpected {sorted(set(infos) - expected)[:4]}"
        )
    im = schema.image
    width = im.height * im.width * im.channels
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    for i in range(count):
        kernel, bias = infos[f"dense{i}/kernel"], infos[f"dense{i}/bias"]
        for t in (kernel, bias):
            if t.dtype != "F32":
                raise ClassifierError(f"tensor {t.name} is {t.dtype}; every tensor must be float32 (F32)")
        last = i == count - 1
        want_in = width if i == 0 else layers[-1][0].shape[1]
        if len(kernel.shape) != 2 or kernel.shape[0] != want_in or (last and kernel.shape[1] != len(im.class_names)):
            out = len(im.class_names) if last else "d_out"
            raise ClassifierError(f"tensor {kernel.name} has shape {list(kernel.shape)}; expected [{want_in}, {out}]")
        if kernel.shape[1] < 1 or bias.shape != (kernel.shape[1],):
            raise ClassifierError(f"tensor {bias.name} has shape {list(bias.shape)}; expected [{kernel.shape[1]}]")
        w, b = (
            np.frombuffer(buffer, "<f4", count=math.prod(t.shape), offset=t.begin).reshape(t.shape).astype(np.float32)
            for t in (kernel, bias)
        )
        for t, a in ((kernel, w), (bias, b)):
            if not np.isfinite(a).all():
                raise ClassifierError(f"tensor {t.name} holds NaN or infinite values")
        layers.append((w, b))
    return tuple(layers)


def classifier_bytes(layers: Sequence[tuple[np.ndarray, np.ndarray]], schema: pb.DataSchema) -> bytes:
    """The bytes of a ``sgde-classifier/1`` file, checked as the reader checks them."""
    tensors = {}
    for i, (kernel, bias) in enumerate(layers):
        tensors[f"dense{i}/kernel"] = np.ascontiguousarray(kernel, np.float32)
        tensors[f"dense{i}/bias"] = np.ascontiguousarray(bias, np.float32)
    meta = {"format": FORMAT, "data_schema": json.dumps(schema_to_dict(schema)), "activation": "relu"}
    data = _st_save(tensors, metadata=meta)
    parse_classifier(data)  # never write what the reader would refuse
    return data


def write_classifier(path: str | Path, layers: Sequence[tuple[np.ndarray, np.ndarray]], schema: pb.DataSchema) -> None:
    """Write dense ReLU layers [(kernel [d_in, d_out], bias [d_out]), ...] as a classifier file, atomically."""
    write_atomic(Path(path), classifier_bytes(layers, schema), mode=0o644)


def _class_columns(classes: Sequence, schema: pb.DataSchema) -> list[int]:
    """The schema's class index of each of an estimator's classes_ (class indices, or the schema's class names)."""
    names = list(schema.image.class_names)
    columns = []
    for c in classes:
        if isinstance(c, str | np.str_) and str(c) in names:
            columns.append(names.index(str(c)))
        elif isinstance(c, int | np.integer) and 0 <= int(c) < len(names):
            columns.append(int(c))
        else:
            raise ClassifierError(
                f"the estimator's class {c!r} is neither a class index in [0, {len(names)}) nor a class name of the "
                f"schema {names[:10]}; train it on the schema's class indices"
            )
    return columns


def _spread(kernel: np.ndarray, bias: np.ndarray, columns: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """A last layer over the estimator's classes spread over the schema's K; classes it never saw never win."""
    wide, wide_bias = np.zeros((kernel.shape[0], k), np.float32), np.full(k, NEVER, np.float32)
    wide[:, columns], wide_bias[columns] = kernel, bias
    return wide, wide_bias


def from_sklearn(estimator: Any, schema: pb.DataSchema) -> list[tuple[np.ndarray, np.ndarray]]:
    """The layers of a fitted LogisticRegression (binary or multiclass) or MLPClassifier(activation="relu"), trained
    on flattened model-space images (pixels / pixel_max, [n, H*W*C]) with class indices (or the schema's class names)
    as labels. Its predictions are argmax of the layers' logits: the estimator's own predict, up to float32 rounding.
    """
    kind = type(estimator).__name__
    if not hasattr(estimator, "classes_"):
        raise ClassifierError(f"the {kind} is not fitted; call fit first")
    columns, k = _class_columns(list(estimator.classes_), schema), len(schema.image.class_names)
    if kind == "LogisticRegression":
        pairs = [(np.asarray(estimator.coef_, np.float64).T, np.asarray(estimator.intercept_, np.float64))]
    elif kind == "MLPClassifier":
        if estimator.activation != "relu":
            raise ClassifierError(f"the MLPClassifier uses activation {estimator.activation!r}; only relu is read")
        if getattr(estimator, "out_activation_", "softmax") not in ("softmax", "logistic") or (
            estimator.out_activation_ == "logistic" and len(columns) != 2
        ):
            raise ClassifierError("only single-label MLPClassifiers (softmax or binary logistic output) are read")
        pairs = [
            (np.asarray(w, np.float64), np.asarray(b, np.float64))
            for w, b in zip(estimator.coefs_, estimator.intercepts_, strict=True)
        ]
    else:
        raise ClassifierError(f"{kind} is not supported; use LogisticRegression or MLPClassifier(activation='relu')")
    kernel, bias = pairs[-1]
    if kernel.shape[1] == 1:  # binary: one logit d for classes_[1]; classes_[0] gets 0, so argmax is d > 0
        kernel = np.concatenate([np.zeros_like(kernel), kernel], axis=1)
        bias = np.concatenate([np.zeros(1), bias])
    layers = [(w.astype(np.float32), b.astype(np.float32)) for w, b in pairs[:-1]]
    layers.append(_spread(kernel.astype(np.float32), bias.astype(np.float32), columns, k))
    im = schema.image
    if layers[0][0].shape[0] != im.height * im.width * im.channels:
        raise ClassifierError(
            f"the {kind} takes {layers[0][0].shape[0]} features; the schema's images have "
            f"{im.height * im.width * im.channels} values (train it on flattened images, pixels / pixel_max)"
        )
    return layers
