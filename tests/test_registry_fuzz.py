"""Malformed requests of every shape get a clean status from the registry, never an internal error."""
from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libsgde.proto.sgde.v1 import common_pb2 as pb
from libsgde.proto.sgde.v1 import registry_pb2 as rpb
from libsgde.proto.sgde.v1 import registry_pb2_grpc
from libsgde.security import tls
from tests.support.services import user_client

CLEAN = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
         grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED,
         grpc.StatusCode.FAILED_PRECONDITION}
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

names = st.one_of(st.text(max_size=80), st.from_regex(r"models/[a-z]{1,6}/[a-z.]{0,8}(/versions/.{0,6})?",
                                                      fullmatch=True))
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
    clean(lambda: list(r.DownloadVersion(rpb.DownloadVersionRequest(name=name, offset=offset), metadata=md,
                                         timeout=10)))
    clean(lambda: r.DeleteModel(rpb.DeleteModelRequest(name=name), metadata=md, timeout=10))


@FUZZ
@given(size=ints, token=st.text(max_size=60), owner=st.text(max_size=40), tag=st.text(max_size=40), kind=ints,
       parent=names)
def test_listings(caller, size, token, owner, tag, kind, parent):
    md, r = caller._metadata(), caller.registry
    clean(lambda: r.ListModels(rpb.ListModelsRequest(page_size=size, page_token=token, owner=owner, tag=tag,
                                                     data_kind=kind), metadata=md, timeout=10))
    clean(lambda: r.ListVersions(rpb.ListVersionsRequest(parent=parent, page_size=size, page_token=token),
                                 metadata=md, timeout=10))


@FUZZ
@given(model_id=st.text(max_size=70), description=st.text(max_size=50), tags=st.lists(st.text(max_size=40),
       max_size=25), visibility=ints, shared=st.lists(st.text(max_size=35), max_size=4),
       paths=st.lists(st.sampled_from(["description", "tags", "visibility", "shared_with", "name", "x.y", ""]),
                      max_size=4))
def test_create_and_update(caller, model_id, description, tags, visibility, shared, paths):
    md, r = caller._metadata(), caller.registry
    model = pb.Model(description=description, tags=tags, visibility=visibility, shared_with=shared)
    clean(lambda: r.CreateModel(rpb.CreateModelRequest(model_id=model_id, model=model), metadata=md, timeout=10))
    model.name = f"models/{caller.username}/{model_id}"
    clean(lambda: r.UpdateModel(rpb.UpdateModelRequest(model=model, update_mask=field_mask_pb2.FieldMask(
        paths=paths)), metadata=md, timeout=10))


@FUZZ
@given(username=st.text(max_size=40), email=st.text(max_size=40), password=st.text(max_size=300),
       key=st.binary(max_size=40))
def test_register_and_login(registry, pki, username, email, password, key):
    with grpc.secure_channel(registry.address, tls.channel_credentials(pki)) as channel:
        r = registry_pb2_grpc.RegistryServiceStub(channel)
        clean(lambda: r.Register(rpb.RegisterRequest(username=username, email=email, password=password,
                                                     signing_public_key=key), timeout=10))
        clean(lambda: r.Login(rpb.LoginRequest(username=username, password=password), timeout=10))


headers = st.builds(rpb.PublishVersionRequest.Header, model=names, sha256=st.text(max_size=70),
                    size_bytes=st.integers(min_value=-(2**40), max_value=2**40), signature=st.binary(max_size=70))
messages = st.one_of(st.builds(lambda h: rpb.PublishVersionRequest(header=h), headers),
                     st.builds(lambda c: rpb.PublishVersionRequest(chunk=c), st.binary(max_size=3000)),
                     st.just(rpb.PublishVersionRequest()))


@FUZZ
@given(stream=st.lists(messages, max_size=6), own_model=st.booleans())
def test_publish_streams(caller, stream, own_model):
    if own_model and stream and stream[0].WhichOneof("payload") == "header":
        stream[0].header.model = f"models/{caller.username}/fuzz-target"
    clean(lambda: caller.registry.PublishVersion(iter(stream), metadata=caller._metadata(), timeout=10))
