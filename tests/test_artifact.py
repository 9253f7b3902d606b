"""libsgde.io.artifact (the strict artifact loader) and libsgde.io.schema (schema validation)."""

from __future__ import annotations

import copy
import json
import math
import struct
import tempfile
import tracemalloc
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libsgde.io import artifact as art
from libsgde.io.artifact import ArtifactError
from libsgde.io.schema import SchemaError, data_kind, schema_from_dict, schema_to_dict, schemas_equal, validate_schema
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

# ---------------------------------------------------------------------------------------------------------- helpers


def tabular_schema() -> pb.DataSchema:
    return pb.DataSchema(
        tabular=pb.TabularSchema(
            columns=[
                pb.Column(name="age", type=pb.COLUMN_TYPE_INTEGER, lower=0, upper=120),
                pb.Column(name="income", type=pb.COLUMN_TYPE_CONTINUOUS, lower=-1e6, upper=1e7),
                pb.Column(name="outcome", type=pb.COLUMN_TYPE_CATEGORICAL, categories=["no", "yes"]),
            ],
            label_column="outcome",
        )
    )


def image_schema() -> pb.DataSchema:
    return pb.DataSchema(
        image=pb.ImageSchema(height=28, width=28, channels=1, pixel_max=255, class_names=[str(i) for i in range(10)])
    )


def dp_privacy() -> pb.PrivacyReport:
    return pb.PrivacyReport(
        mechanism="dp-sgd",
        epsilon=3.0,
        delta=1e-5,
        accountant="pld",
        noise_multiplier=1.1,
        sampling_rate=0.01,
        steps=1000,
        clip_norm=1.0,
        dataset_size=60000,
        rdp_epsilon=3.4,
    )


def make_manifest(**overrides) -> art.Manifest:
    kw = {
        "architecture": "tabular-vae",
        "config": {"latent_dim": 8, "hidden": [64, 64], "beta": 0.5},
        "data_schema": tabular_schema(),
        "privacy": dp_privacy(),
        "training": {"epochs": 3, "seed": 0},
    }
    kw.update(overrides)
    return art.build_manifest(**kw)


def make_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "encoder/dense_0/kernel": rng.standard_normal((5, 4)).astype(np.float32),
        "encoder/dense_0/bias": np.zeros(4, np.float32),
        "decoder.scale": rng.standard_normal(3).astype(np.float16),
        "decoder.bf": np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16),
        "meta:counts": np.array([1, 2, 3], np.int64),
        "meta:ids": np.array([[7, -8]], np.int32),
        "meta:bytes": np.array([0, 255], np.uint8),
        "empty": np.zeros((0, 3), np.float32),
        "scalar": np.array(2.5, np.float32),
    }


def raw_file(header, buffer: bytes = b"", length: int | None = None) -> bytes:
    """Bytes of a safetensors file with `header` (a dict, or raw JSON text/bytes) and `buffer`."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    return struct.pack("<Q", len(header) if length is None else length) + header + buffer


def good_header(manifest_json: str | None = None) -> tuple[dict, bytes]:
    """A valid header dict with two F32 tensors and its 24-byte buffer."""
    return (
        {
            "__metadata__": {art.MANIFEST_KEY: manifest_json or make_manifest().to_json()},
            "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]},
        },
        bytes(24),
    )


def parse_all_ways(data: bytes, tmp: Path):
    """Parse `data` with parse_header, HeaderSniffer and load_artifact; all must agree."""
    p = tmp / "a.safetensors"
    p.write_bytes(data)
    header, arrays = art.load_artifact(p)
    assert art.read_header(p) == header
    assert art.parse_header(data, len(data)) == header
    sniffer = art.HeaderSniffer(len(data))
    assert sniffer.feed(data) == header
    return header, arrays


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory) -> bytes:
    p = tmp_path_factory.mktemp("valid") / "m.safetensors"
    art.write_artifact(p, make_tensors(), make_manifest())
    return p.read_bytes()


# ------------------------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize(
    "manifest",
    [
        make_manifest(),
        make_manifest(
            architecture="image-vae",
            data_schema=image_schema(),
            config={},
            training={},
            privacy=pb.PrivacyReport(mechanism="none", epsilon=math.inf),
        ),
    ],
    ids=["tabular-dp", "image-nodp"],
)
def test_round_trip(tmp_path, manifest):
    tensors = make_tensors()
    path = tmp_path / "model.safetensors"
    digest = art.write_artifact(path, tensors, manifest)
    assert digest == art.sha256_file(path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp files left behind
    header, arrays = parse_all_ways(path.read_bytes(), tmp_path)
    assert header.manifest == manifest
    assert header.manifest.to_json() == manifest.to_json()
    assert header.total_size == path.stat().st_size
    assert header.data_offset == 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert set(arrays) == set(tensors) == set(header.tensors)
    for name, a in tensors.items():
        assert arrays[name].dtype == a.dtype and arrays[name].shape == a.shape, name
        np.testing.assert_array_equal(arrays[name], a)
        assert header.tensors[name].shape == a.shape
    assert header.manifest.data_kind == data_kind(manifest.data_schema)


def test_manifest_json_is_canonical():
    m = make_manifest()
    text = m.to_json()
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert json.loads(text)["privacy"]["mechanism"] == "dp-sgd"
    nodp = make_manifest(privacy=pb.PrivacyReport(mechanism="none", epsilon=math.inf))
    assert json.loads(nodp.to_json())["privacy"]["epsilon"] == "Infinity"
    assert m.data_kind == pb.DATA_KIND_TABULAR


def test_write_refuses_float64_and_other_dtypes(tmp_path):
    with pytest.raises(ArtifactError, match="float32"):
        art.write_artifact(tmp_path / "x", {"w": np.zeros(3)}, make_manifest())
    with pytest.raises(ArtifactError, match="dtype"):
        art.write_artifact(tmp_path / "x", {"w": np.zeros(3, bool)}, make_manifest())
    with pytest.raises(ArtifactError, match="name"):
        art.write_artifact(tmp_path / "x", {"bad name": np.zeros(3, np.float32)}, make_manifest())
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic_over_an_existing_file(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"old")
    art.write_artifact(path, {"w": np.ones(2, np.float32)}, make_manifest())
    assert art.load_artifact(path)[1]["w"].tolist() == [1.0, 1.0]


def test_build_manifest_refuses_non_json_config():
    with pytest.raises(ArtifactError):
        make_manifest(config={"x": float("nan")})
    with pytest.raises(ArtifactError):
        make_manifest(training={"x": object()})
    with pytest.raises(ArtifactError, match="architecture"):
        make_manifest(architecture="Bad Name")
    with pytest.raises(ArtifactError, match="data_schema"):
        make_manifest(data_schema=pb.DataSchema())


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_sniffer_chunk_sizes_agree(valid_bytes, chunk):
    expected = art.parse_header(valid_bytes, len(valid_bytes))
    sniffer = art.HeaderSniffer(len(valid_bytes))
    results = [sniffer.feed(valid_bytes[i : i + chunk]) for i in range(0, len(valid_bytes), chunk)]
    found = [r for r in results if r is not None]
    assert found == [expected] and sniffer.done and sniffer.header == expected
    assert len(sniffer._buf) == 0  # nothing kept once done


def test_sniffer_not_done_before_header_complete(valid_bytes):
    sniffer = art.HeaderSniffer(len(valid_bytes))
    assert sniffer.feed(valid_bytes[:20]) is None and not sniffer.done


# -------------------------------------------------------------------------------------------------- hostile inputs


def _with_header(mutate):
    header, buf = good_header()
    mutate(header)
    return raw_file(header, buf)


def _with_manifest(mutate):
    m = json.loads(make_manifest().to_json())
    mutate(m)
    header, buf = good_header(json.dumps(m))
    return raw_file(header, buf)


def _set(d, path, value):
    *keys, last = path.split("/")
    for k in keys:
        d = d[int(k)] if isinstance(d, list) else d[k]
    d[last] = value


def _tensor(dtype="F32", shape=(2, 2), offsets=(0, 16)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


HOSTILE = {
    "empty file": b"",
    "shorter than 8 bytes": b"\x05\x00\x00",
    "header length over cap": struct.pack("<Q", art.MAX_HEADER_BYTES + 1) + b"{}",
    "header length 2**64-1": b"\xff" * 8 + b"{}",
    "header length > file size": raw_file("{}", length=100),
    "truncated buffer": raw_file(*good_header())[:-1],
    "extra trailing bytes": raw_file(*good_header()) + b"\x00",
    "not JSON": raw_file("not json at all"),
    "not UTF-8": raw_file(b'{"\xff\xfe": 1}'),
    "JSON array": raw_file("[1, 2, 3]"),
    "JSON string": raw_file('"hello"'),
    "NaN constant": raw_file('{"__metadata__": {}, "x": NaN}'),
    "deeply nested": raw_file("[" * 100_000 + "]" * 100_000),
    "huge integer": raw_file('{"x": ' + "9" * 5000 + "}"),
    "duplicate keys": raw_file('{"__metadata__": {"a": "b"}, "__metadata__": {"a": "b"}}'),
    "empty header object": raw_file("{}"),
    "missing metadata": _with_header(lambda h: h.pop("__metadata__")),
    "metadata not object": _with_header(lambda h: _set(h, "__metadata__", [])),
    "metadata value not str": _with_header(lambda h: _set(h, "__metadata__/x", 1)),
    "missing manifest": _with_header(lambda h: _set(h, "__metadata__", {"format": "pt"})),
    "manifest not JSON": _with_header(lambda h: _set(h, f"__metadata__/{art.MANIFEST_KEY}", "{nope")),
    "manifest JSON array": _with_header(lambda h: _set(h, f"__metadata__/{art.MANIFEST_KEY}", "[]")),
    "manifest duplicate key": _with_header(
        lambda h: _set(h, f"__metadata__/{art.MANIFEST_KEY}", make_manifest().to_json()[:-1] + ',"training":{}}')
    ),
    "manifest Infinity constant": _with_header(
        lambda h: _set(h, f"__metadata__/{art.MANIFEST_KEY}", make_manifest().to_json()[:-1] + ',"x":Infinity}')
    ),
    "wrong format": _with_manifest(lambda m: _set(m, "format", "onnx")),
    "wrong version": _with_manifest(lambda m: _set(m, "format_version", 2)),
    "version as bool": _with_manifest(lambda m: _set(m, "format_version", True)),
    "version as float": _with_manifest(lambda m: _set(m, "format_version", 1.0)),
    "unknown top-level key": _with_manifest(lambda m: _set(m, "code", "import os")),
    "missing key": _with_manifest(lambda m: m.pop("training")),
    "bad architecture name": _with_manifest(lambda m: _set(m, "architecture", "../../etc")),
    "architecture uppercase": _with_manifest(lambda m: _set(m, "architecture", "VAE")),
    "architecture trailing newline": _with_manifest(lambda m: _set(m, "architecture", "vae\n")),
    "architecture not str": _with_manifest(lambda m: _set(m, "architecture", 3)),
    "config not object": _with_manifest(lambda m: _set(m, "config", [])),
    "training not object": _with_manifest(lambda m: _set(m, "training", "x")),
    "invalid data schema": _with_manifest(lambda m: _set(m, "data_schema/tabular/columns", [])),
    "data schema unknown field": _with_manifest(lambda m: _set(m, "data_schema/oops", 1)),
    "data schema not object": _with_manifest(lambda m: _set(m, "data_schema", [1])),
    "data schema wrong type": _with_manifest(lambda m: _set(m, "data_schema/tabular/columns", "abc")),
    "privacy unknown field": _with_manifest(lambda m: _set(m, "privacy/exploit", 1)),
    "privacy wrong type": _with_manifest(lambda m: _set(m, "privacy/epsilon", [1])),
    "privacy epsilon 0": _with_manifest(lambda m: _set(m, "privacy/epsilon", 0)),
    "privacy epsilon negative": _with_manifest(lambda m: _set(m, "privacy/epsilon", -1)),
    "privacy epsilon NaN": _with_manifest(lambda m: _set(m, "privacy/epsilon", "NaN")),
    "privacy epsilon inf with DP": _with_manifest(lambda m: _set(m, "privacy/epsilon", "Infinity")),
    "privacy delta 1": _with_manifest(lambda m: _set(m, "privacy/delta", 1)),
    "privacy delta negative": _with_manifest(lambda m: _set(m, "privacy/delta", -0.1)),
    "privacy no accountant": _with_manifest(lambda m: m["privacy"].pop("accountant")),
    "privacy no mechanism": _with_manifest(lambda m: m["privacy"].pop("mechanism")),
    "privacy bad mechanism": _with_manifest(lambda m: _set(m, "privacy/mechanism", "DP SGD")),
    "privacy none finite epsilon": _with_manifest(lambda m: _set(m, "privacy/mechanism", "none")),
    "privacy sampling rate > 1": _with_manifest(lambda m: _set(m, "privacy/sampling_rate", 2)),
    "privacy negative steps": _with_manifest(lambda m: _set(m, "privacy/steps", -1)),
    "bad dtype": _with_header(lambda h: _set(h, "w/dtype", "F64")),
    "dtype not str": _with_header(lambda h: _set(h, "w/dtype", ["F32"])),
    "negative shape": _with_header(lambda h: _set(h, "w/shape", [-2, -2])),
    "shape float": _with_header(lambda h: _set(h, "w/shape", [2.0, 2])),
    "shape bool": _with_header(lambda h: _set(h, "b/shape", [True, 2])),
    "shape not list": _with_header(lambda h: _set(h, "w/shape", 4)),
    "rank over 8": _with_header(lambda h: h.update(w=_tensor(shape=[1] * 8 + [4]))),
    "extra tensor key": _with_header(lambda h: _set(h, "w/pickle", "x")),
    "missing tensor key": _with_header(lambda h: h["w"].pop("shape")),
    "tensor not object": _with_header(lambda h: _set(h, "w", [1])),
    "bad tensor name": _with_header(lambda h: h.update({"bad name": h.pop("w")})),
    "tensor name too long": _with_header(lambda h: h.update({"x" * 257: h.pop("w")})),
    "offsets overlap": _with_header(lambda h: h.update(b=_tensor(shape=[2], offsets=[8, 16]))),
    "offsets leave gap": _with_header(lambda h: h.update(w=_tensor(shape=[3], offsets=[0, 12]))),
    "offsets do not match shape": _with_header(lambda h: h.update(w=_tensor(shape=[2, 3], offsets=[0, 16]))),
    "offsets reversed": _with_header(lambda h: h.update(w=_tensor(shape=[0], offsets=[16, 0]))),
    "offsets negative": _with_header(lambda h: h.update(w=_tensor(shape=[4], offsets=[-16, 0]))),
    "offsets not a pair": _with_header(lambda h: h.update(w={"dtype": "F32", "shape": [4], "data_offsets": [0]})),
    "offsets past buffer": _with_header(lambda h: h.update(b=_tensor(shape=[4], offsets=[16, 32]))),
    "huge shape product": _with_header(lambda h: h.update(w=_tensor(shape=[2**62] * 8, offsets=[0, 16]))),
    "shape product too big to print": _with_header(lambda h: h.update(w=_tensor(shape=[10**4000] * 8))),
    "huge dtype value": _with_header(lambda h: _set(h, "w/dtype", "F" * 100_000)),
    "float out of range": raw_file(*good_header(make_manifest(config={"x": 1.5}).to_json().replace("1.5", "1e999"))),
    "config nested too deep": _with_manifest(lambda m: _set(m, "config/x", json.loads("[" * 40 + "]" * 40))),
    "too many tensors": raw_file(
        {
            "__metadata__": {art.MANIFEST_KEY: make_manifest().to_json()},
            **{f"t{i}": _tensor(shape=[0], offsets=[0, 0]) for i in range(art.MAX_TENSORS + 1)},
        }
    ),
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_inputs_raise_artifact_error(tmp_path, data):
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(data)
    with pytest.raises(ArtifactError):
        art.load_artifact(path)
    with pytest.raises(ArtifactError):
        art.read_header(path)
    with pytest.raises(ArtifactError):
        art.parse_header(data, len(data))
    with pytest.raises(ArtifactError):
        sniffer = art.HeaderSniffer(len(data))
        for i in range(0, len(data), 4096):
            sniffer.feed(data[i : i + 4096])
        # a stream that ends before the header is complete is refused by whoever ends the stream
        if not sniffer.done:
            raise ArtifactError("stream ended early")


def test_good_header_helper_is_valid(tmp_path):
    header, arrays = parse_all_ways(raw_file(*good_header()), tmp_path)
    assert arrays["w"].shape == (2, 2) and arrays["b"].shape == (2,)


def test_huge_declared_header_is_refused_without_allocating(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactError, match="limit"):
            art.load_artifact(path)
        with pytest.raises(ArtifactError, match="limit"):
            art.HeaderSniffer(1 << 41).feed(struct.pack("<Q", 1 << 40))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_sniffer_refuses_header_longer_than_upload():
    with pytest.raises(ArtifactError, match="larger than the upload"):
        art.HeaderSniffer(100).feed(struct.pack("<Q", 1000))


def test_oversized_file_is_refused(tmp_path, valid_bytes):
    path = tmp_path / "big.safetensors"
    path.write_bytes(valid_bytes)
    with pytest.raises(ArtifactError, match="over the limit"):
        art.load_artifact(path, max_bytes=len(valid_bytes) - 1)
    art.load_artifact(path, max_bytes=len(valid_bytes))


def test_artifact_error_names_the_schema_field():
    data = _with_manifest(lambda m: _set(m, "data_schema/tabular/columns/0/upper", -5))
    with pytest.raises(ArtifactError) as e:
        art.parse_header(data, len(data))
    assert e.value.field == "data_schema.tabular.columns[0].upper"


def test_check_tensors_hook_is_called(valid_bytes):
    seen = []

    def check(manifest, tensors):
        seen.append((manifest.architecture, sorted(tensors)))
        raise ArtifactError("tensor set does not match the architecture")

    with pytest.raises(ArtifactError, match="architecture"):
        art.parse_header(valid_bytes, len(valid_bytes), check_tensors=check)
    assert seen == [("tabular-vae", sorted(make_tensors()))]


def test_header_sniffer_passes_the_check_tensors_hook(valid_bytes):
    seen = []
    sniffer = art.HeaderSniffer(len(valid_bytes), check_tensors=lambda m, t: seen.append(sorted(t)))
    for i in range(0, len(valid_bytes), 100):  # the header completes in one of these chunks
        sniffer.feed(valid_bytes[i : i + 100])
    assert sniffer.done and seen == [sorted(make_tensors())]

    def refuse(manifest, tensors):
        raise ArtifactError("tensor set does not match the architecture")

    with pytest.raises(ArtifactError, match="architecture"):
        art.HeaderSniffer(len(valid_bytes), check_tensors=refuse).feed(valid_bytes)


# ------------------------------------------------------------------------------------------------------ fuzzing


def _check_fuzzed(data: bytes):
    with tempfile.TemporaryDirectory() as d:
        try:
            header, arrays = parse_all_ways(data, Path(d))
        except ArtifactError:
            return
    for name, t in header.tensors.items():
        assert arrays[name].shape == t.shape
        assert arrays[name].nbytes == t.end - t.begin


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_byte_mutations_and_truncations(valid_bytes, data):
    buf = bytearray(valid_bytes)
    header_end = 8 + struct.unpack("<Q", valid_bytes[:8])[0]
    for _ in range(data.draw(st.integers(0, 4), label="mutations")):
        # mostly inside the header, where the parser's decisions are made
        pos = data.draw(st.one_of(st.integers(0, header_end - 1), st.integers(0, len(buf) - 1)), label="pos")
        buf[pos] = data.draw(st.integers(0, 255), label="byte")
    if data.draw(st.booleans(), label="truncate"):
        buf = buf[: data.draw(st.integers(0, len(buf)), label="length")]
    _check_fuzzed(bytes(buf))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_json_value_replacement(data):
    """Replace one value anywhere in the header (or inside the manifest) with random JSON."""
    header, buf = good_header()
    manifest = json.loads(header["__metadata__"][art.MANIFEST_KEY])
    target = data.draw(st.sampled_from(["header", "manifest"]))
    root = header if target == "header" else manifest
    node = root
    while isinstance(node, dict | list) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        if not isinstance(node[key], dict | list) or data.draw(st.booleans()):
            node[key] = data.draw(_JSON)
            break
        node = node[key]
    if target == "manifest":
        header["__metadata__"][art.MANIFEST_KEY] = json.dumps(manifest)
    _check_fuzzed(raw_file(header, buf))


# ------------------------------------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("schema", [tabular_schema(), image_schema()], ids=["tabular", "image"])
def test_schema_dict_round_trip(schema):
    validate_schema(schema)
    d = schema_to_dict(schema)
    again = schema_from_dict(copy.deepcopy(d))
    assert schemas_equal(schema, again) and again == schema
    assert not schemas_equal(tabular_schema(), image_schema())


def test_data_kind():
    assert data_kind(tabular_schema()) == pb.DATA_KIND_TABULAR
    assert data_kind(image_schema()) == pb.DATA_KIND_IMAGE
    assert data_kind(pb.DataSchema()) == pb.DATA_KIND_UNSPECIFIED


def test_schema_optional_parts():
    t = tabular_schema()
    t.tabular.label_column = ""
    validate_schema(t)
    im = image_schema()
    del im.image.class_names[:]  # unconditional
    im.image.channels = 4
    validate_schema(im)


def _tab(mutate):
    s = tabular_schema()
    mutate(s.tabular)
    return s


def _img(mutate):
    s = image_schema()
    mutate(s.image)
    return s


def _add_columns(t, n):
    t.columns.extend(pb.Column(name=f"c{i}", type=pb.COLUMN_TYPE_CONTINUOUS, lower=0, upper=1) for i in range(n))


def _cat(**kw):
    return pb.Column(name="c", type=pb.COLUMN_TYPE_CATEGORICAL, **kw)


BAD_SCHEMAS = {
    "kind unset": (pb.DataSchema(), "kind"),
    "no columns": (_tab(lambda t: t.ClearField("columns")), "tabular.columns"),
    "too many columns": (_tab(lambda t: _add_columns(t, 4094)), "tabular.columns"),
    "empty name": (_tab(lambda t: setattr(t.columns[1], "name", "")), "tabular.columns[1].name"),
    "name too long": (_tab(lambda t: setattr(t.columns[1], "name", "x" * 129)), "tabular.columns[1].name"),
    "duplicate name": (_tab(lambda t: setattr(t.columns[1], "name", "age")), "tabular.columns[1].name"),
    "type unset": (
        _tab(lambda t: setattr(t.columns[0], "type", pb.COLUMN_TYPE_UNSPECIFIED)),
        "tabular.columns[0].type",
    ),
    "lower == upper": (_tab(lambda t: setattr(t.columns[1], "upper", -1e6)), "tabular.columns[1].upper"),
    "lower > upper": (_tab(lambda t: setattr(t.columns[0], "lower", 500)), "tabular.columns[0].upper"),
    "infinite bound": (_tab(lambda t: setattr(t.columns[1], "upper", math.inf)), "tabular.columns[1].upper"),
    "NaN bound": (_tab(lambda t: setattr(t.columns[1], "lower", math.nan)), "tabular.columns[1].lower"),
    "integer with fractional bound": (
        _tab(lambda t: setattr(t.columns[0], "upper", 120.5)),
        "tabular.columns[0].upper",
    ),
    "numeric with categories": (_tab(lambda t: t.columns[1].categories.append("a")), "tabular.columns[1].categories"),
    "categorical without categories": (
        _tab(lambda t: t.columns[2].ClearField("categories")),
        "tabular.columns[2].categories",
    ),
    "too many categories": (
        _tab(lambda t: t.columns[2].categories.extend(str(i) for i in range(10_000))),
        "tabular.columns[2].categories",
    ),
    "empty category": (_tab(lambda t: t.columns[2].categories.append("")), "tabular.columns[2].categories[2]"),
    "duplicate category": (_tab(lambda t: t.columns[2].categories.append("no")), "tabular.columns[2].categories[2]"),
    "categorical with bounds": (_tab(lambda t: setattr(t.columns[2], "upper", 1)), "tabular.columns[2].lower"),
    "label column missing": (_tab(lambda t: setattr(t, "label_column", "nope")), "tabular.label_column"),
    "label column not categorical": (_tab(lambda t: setattr(t, "label_column", "age")), "tabular.label_column"),
    "height 0": (_img(lambda i: setattr(i, "height", 0)), "image.height"),
    "width too big": (_img(lambda i: setattr(i, "width", 4097)), "image.width"),
    "channels 2": (_img(lambda i: setattr(i, "channels", 2)), "image.channels"),
    "pixel_max 0": (_img(lambda i: setattr(i, "pixel_max", 0)), "image.pixel_max"),
    "pixel_max inf": (_img(lambda i: setattr(i, "pixel_max", math.inf)), "image.pixel_max"),
    "pixel_max NaN": (_img(lambda i: setattr(i, "pixel_max", math.nan)), "image.pixel_max"),
    "empty class name": (_img(lambda i: i.class_names.append("")), "image.class_names[10]"),
    "duplicate class name": (_img(lambda i: i.class_names.append("3")), "image.class_names[10]"),
    "too many values": (
        _img(lambda i: (setattr(i, "height", 4096), setattr(i, "width", 4096), setattr(i, "channels", 3))),
        "image",
    ),
}


@pytest.mark.parametrize("schema,field", BAD_SCHEMAS.values(), ids=BAD_SCHEMAS.keys())
def test_invalid_schemas(schema, field):
    with pytest.raises(SchemaError) as e:
        validate_schema(schema)
    assert e.value.field == field
    assert str(e.value).startswith(field) and e.value.description
    with pytest.raises(SchemaError):
        schema_from_dict(schema_to_dict(schema))


def test_schema_error_is_value_error():
    assert issubclass(SchemaError, ValueError) and issubclass(ArtifactError, ValueError)


@pytest.mark.parametrize(
    "d",
    [
        [],
        "x",
        {"tabular": 3},
        {"nope": {}},
        {"image": {"height": "tall"}},
        {"tabular": {"columns": [{"type": "NOT_A_TYPE"}]}},
    ],
)
def test_schema_from_dict_refuses_malformed(d):
    with pytest.raises(SchemaError):
        schema_from_dict(d)
