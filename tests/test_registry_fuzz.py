"""Malformed requests of every shape get a clean status from the registry, never an internal error."""

from __future__ import annotations

import hashlib

import grpc
import pytest
from google.protobuf import field_mask_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libsgde.security import signing, tls
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from libsgde.wire.proto.sgde.v1 import registry_pb2_grpc
from tests.support.services import make_artifact, user_client

pytestmark = pytest.mark.integration  # real servers on loopback sockets

CLEAN = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

names = st.one_of(
    st.text(max_size=80), st.from_regex(r"models/[a-z]{1,6}/[a-z.]{0,8}(/versions/.{0,6})?", fullmatch=True)
)
ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)


@pytest.fixture(scope="module")
def caller(registry, pki, tmp_path_factory):
    client = user_client(registry.address, pki, tmp_path_factory.mktemp("fuzz"))
    client.create_model("fuzz-target")
    yield client
    client.close()


def clean(call) -> None:
    try:
        call()
    except grpc.RpcError as e:
        assert e.code() in CLEAN, f"{e.code()}: {e.details()}"


@FUZZ
@given(name=names, offset=st.integers(min_value=-(2**62), max_value=2**62))
def test_lookups(caller, name, offset):
    md, r = caller._metadata(), caller.registry
    clean(lambda: r.GetModel(rpb.GetModelRequest(name=name), metadata=md, timeout=10))
    clean(lambda: r.GetVersion(rpb.GetVersionRequest(name=name), metadata=md, timeout=10))
    clean(lambda: r.GetUser(rpb.GetUserRequest(name=name), metadata=md, timeout=10))
    clean(lambda: r.GetModelCard(rpb.GetModelCardRequest(name=name), metadata=md, timeout=10))
    clean(
        lambda: list(r.DownloadVersion(rpb.DownloadVersionRequest(name=name, offset=offset), metadata=md, timeout=10))
    )
    clean(lambda: r.DeleteModel(rpb.DeleteModelRequest(name=name), metadata=md, timeout=10))


@FUZZ
@given(
    size=ints, token=st.text(max_size=60), owner=st.text(max_size=40), tag=st.text(max_size=40), kind=ints, parent=names
)
def test_listings(caller, size, token, owner, tag, kind, parent):
    md, r = caller._metadata(), caller.registry
    clean(
        lambda: r.ListModels(
            rpb.ListModelsRequest(page_size=size, page_token=token, owner=owner, tag=tag, data_kind=kind),
            metadata=md,
            timeout=10,
        )
    )
    clean(
        lambda: r.ListVersions(
            rpb.ListVersionsRequest(parent=parent, page_size=size, page_token=token), metadata=md, timeout=10
        )
    )


@FUZZ
@given(
    model_id=st.text(max_size=70),
    description=st.text(max_size=50),
    tags=st.lists(st.text(max_size=40), max_size=25),
    visibility=ints,
    shared=st.lists(st.text(max_size=35), max_size=4),
    paths=st.lists(
        st.sampled_from(["description", "tags", "visibility", "shared_with", "metrics", "name", "x.y", ""]), max_size=4
    ),
    metrics=st.dictionaries(st.text(max_size=70), st.floats(), max_size=4),
)
def test_create_and_update(caller, model_id, description, tags, visibility, shared, paths, metrics):
    md, r = caller._metadata(), caller.registry
    model = pb.Model(description=description, tags=tags, visibility=visibility, shared_with=shared, metrics=metrics)
    clean(lambda: r.CreateModel(rpb.CreateModelRequest(model_id=model_id, model=model), metadata=md, timeout=10))
    model.name = f"models/{caller.username}/{model_id}"
    clean(
        lambda: r.UpdateModel(
            rpb.UpdateModelRequest(model=model, update_mask=field_mask_pb2.FieldMask(paths=paths)),
            metadata=md,
            timeout=10,
        )
    )
    merge = rpb.MergeModelMetricsRequest(name=model.name, metrics=metrics, version=visibility)
    clean(lambda: r.MergeModelMetrics(merge, metadata=md, timeout=10))


@FUZZ
@given(
    username=st.text(max_size=40),
    email=st.text(max_size=40),
    password=st.text(max_size=300),
    key=st.binary(max_size=40),
)
def test_register_and_login(registry, pki, username, email, password, key):
    with grpc.secure_channel(registry.address, tls.channel_credentials(pki)) as channel:
        r = registry_pb2_grpc.RegistryServiceStub(channel)
        clean(
            lambda: r.Register(
                rpb.RegisterRequest(username=username, email=email, password=password, signing_public_key=key),
                timeout=10,
            )
        )
        clean(lambda: r.Login(rpb.LoginRequest(username=username, password=password), timeout=10))


headers = st.builds(
    rpb.PublishVersionRequest.Header,
    model=names,
    sha256=st.text(max_size=70),
    size_bytes=st.integers(min_value=-(2**40), max_value=2**40),
    signature=st.binary(max_size=70),
)
messages = st.one_of(
    st.builds(lambda h: rpb.PublishVersionRequest(header=h), headers),
    st.builds(lambda c: rpb.PublishVersionRequest(chunk=c), st.binary(max_size=3000)),
    st.just(rpb.PublishVersionRequest()),
)


@FUZZ
@given(stream=st.lists(messages, max_size=6), own_model=st.booleans())
def test_publish_streams(caller, stream, own_model):
    if own_model and stream and stream[0].WhichOneof("payload") == "header":
        stream[0].header.model = f"models/{caller.username}/fuzz-target"
    clean(lambda: caller.registry.PublishVersion(iter(stream), metadata=caller._metadata(), timeout=10))


# -- publish streams that get past the header checks: a real sha256 and a valid signature by the caller ------------


def signed_header(caller, data: bytes, size: int | None = None, model: str = "fuzz-target"):
    sha = hashlib.sha256(data).hexdigest()
    key = signing.load_signing_key(caller.signing_key_path(caller.username))
    return rpb.PublishVersionRequest(
        header=rpb.PublishVersionRequest.Header(
            model=f"models/{caller.username}/{model}",
            sha256=sha,
            size_bytes=len(data) if size is None else size,
            signature=signing.sign_artifact(key, sha),
        )
    )


def chunked(data: bytes, cuts: list[int]) -> list[rpb.PublishVersionRequest]:
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [rpb.PublishVersionRequest(chunk=data[a:b]) for a, b in zip(bounds, bounds[1:])]


@pytest.fixture(scope="module")
def artifact_bytes(tmp_path_factory) -> bytes:
    return make_artifact(tmp_path_factory.mktemp("fuzz-art") / "a.safetensors", n_floats=256).read_bytes()


sizes = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.integers(min_value=-2, max_value=16),
    st.sampled_from([(512 << 20), (512 << 20) + 1, 2**62]),
)


@FUZZ
@given(
    data=st.binary(max_size=4000),
    size=st.one_of(st.none(), sizes),
    cuts=st.lists(st.integers(0, 5000), max_size=4),
    shape=st.sampled_from(["normal", "no-header", "two-headers", "header-last", "empty-chunk"]),
)
def test_signed_publish_of_random_bytes(caller, data, size, cuts, shape):
    header, chunks = signed_header(caller, data, size), chunked(data, cuts)
    stream = {
        "normal": [header, *chunks],
        "no-header": chunks,
        "two-headers": [header, *chunks[:1], header, *chunks[1:]],
        "header-last": [*chunks, header],
        "empty-chunk": [header, rpb.PublishVersionRequest(chunk=b""), *chunks],
    }[shape]
    clean(lambda: caller.registry.PublishVersion(iter(stream), metadata=caller._metadata(), timeout=10))


@FUZZ
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
    lie_size=st.integers(-3, 3),
    cuts=st.lists(st.integers(0, 5000), max_size=3),
)
def test_signed_publish_of_damaged_artifacts(caller, artifact_bytes, flips, cut, lie_size, cuts):
    """A valid artifact with bytes changed (mostly in its header) or cut short, honestly hashed and signed: the
    registry must reject it cleanly (or accept it, if the damage left a valid artifact)."""
    data = bytearray(artifact_bytes)
    header_end = 8 + int.from_bytes(data[:8], "little")
    for where, value in flips:
        data[where % header_end] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    data = bytes(data)
    size = len(data) + lie_size if lie_size and len(data) + lie_size > 0 else None
    stream = [signed_header(caller, data, size), *chunked(data, cuts)]
    clean(lambda: caller.registry.PublishVersion(iter(stream), metadata=caller._metadata(), timeout=10))
