"""The registry over real mutual TLS on loopback: accounts, tokens, models, versions, visibility, errors; each test on
SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import empty_pb2

from libsgde.client import Client, SgdeError
from libsgde.io.artifact import build_manifest, write_artifact
from libsgde.ml.mechanisms import MeanEmbeddingRelease
from libsgde.security import signing
from libsgde.server import auth
from libsgde.wire.convert import privacy_to_proto
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from libsgde.wire.status import field_violations
from tests.support.fixtures import RunningRegistry, start_registry
from tests.support.services import PASSWORD, generator_tensors, make_artifact, merf_config, tabular_schema

pytestmark = pytest.mark.integration  # real servers on loopback sockets

CODE = grpc.StatusCode


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def registry(request) -> RunningRegistry:
    """Every test here (through `registry` or `new_user`) runs on the registry with SQLite, then with PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_registry")


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(SgdeError) as info:
        call()
    return info.value.code


def raw_publish(
    client: Client,
    model: str,
    data: bytes,
    *,
    sha: str | None = None,
    size: int | None = None,
    signature: bytes | None = None,
    chunk: int = 1 << 20,
):
    """PublishVersion with full control over the header, to send lies."""
    sha = sha or hashlib.sha256(data).hexdigest()
    key = signing.load_signing_key(client.signing_key_path(client.username))
    header = rpb.PublishVersionRequest.Header(
        model=model,
        sha256=sha,
        size_bytes=len(data) if size is None else size,
        signature=signature or signing.sign_artifact(key, sha),
    )
    requests = [rpb.PublishVersionRequest(header=header)] + [
        rpb.PublishVersionRequest(chunk=data[i : i + chunk]) for i in range(0, len(data), chunk)
    ]
    return client.registry.PublishVersion(iter(requests), metadata=client._metadata(), timeout=30)


def blob_files(registry) -> list:
    return [p for p in registry.blob_root.rglob("*") if p.is_file()]


# -- accounts and tokens -------------------------------------------------------------------------------------------


def test_register_login_whoami(new_user):
    alice = new_user()
    me = alice.whoami()
    assert me.username == alice.username and me.email == f"{alice.username}@example.org"
    assert len(me.signing_public_key) == 32


def test_other_users_never_see_email(new_user):
    alice, bob = new_user(), new_user()
    seen = bob.registry.GetUser(rpb.GetUserRequest(name=f"users/{alice.username}"), metadata=bob._metadata())
    assert seen.username == alice.username and seen.email == ""
    assert seen.signing_public_key == alice.whoami().signing_public_key


def test_register_refuses_bad_fields_and_duplicates(registry, pki, tmp_path, new_user):
    client = Client(registry.address, home=tmp_path / "x", pki=pki.root)
    with pytest.raises(SgdeError) as info:
        client.register("Bad Name", "not-an-email", "short")
    assert info.value.code == CODE.INVALID_ARGUMENT
    assert {f for f, _ in info.value.violations} == {"username", "email", "password"}
    alice = new_user()
    assert code_of(lambda: client.register(alice.username, "a@example.org", PASSWORD)) == CODE.ALREADY_EXISTS
    # A trailing newline passed every `^...$` rule of the first release: "alice\n" registered beside alice, and
    # models/alice\n/m listed as if it were alice's.
    for username, email in ((f"{alice.username}\n", "b@example.org"), ("fresh-name", "b@example.org\n")):
        with pytest.raises(SgdeError) as info:
            client.register(username, email, PASSWORD)
        assert info.value.code == CODE.INVALID_ARGUMENT, (username, email)
    assert code_of(lambda: alice.get_model(f"{alice.username}\n/m")) == CODE.INVALID_ARGUMENT


def test_wrong_password_and_lockout(registry, pki, tmp_path, new_user):
    alice = new_user()
    client = Client(registry.address, home=tmp_path / "attacker", pki=pki.root)
    assert code_of(lambda: client.login(alice.username, "wrong password!!")) == CODE.UNAUTHENTICATED
    assert code_of(lambda: client.login("nobody-here", "wrong password!!")) == CODE.UNAUTHENTICATED
    for _ in range(4):
        code_of(lambda: client.login(alice.username, "wrong password!!"))
    # Locked now: even the right password is refused for a while.
    with pytest.raises(SgdeError) as info:
        client.login(alice.username, PASSWORD)
    assert info.value.code == CODE.RESOURCE_EXHAUSTED and "try again in" in str(info.value)


def test_no_expired_or_forged_token(registry, pki, tmp_path, new_user):
    alice = new_user()
    key = auth.load_or_create_token_key(registry.config.token_key)
    expired, _ = auth.TokenIssuer(key).issue(alice.username, now=datetime.now(UTC) - timedelta(hours=2))
    forged, _ = auth.TokenIssuer(Ed25519PrivateKey.generate()).issue(alice.username)
    wrong_audience, _ = auth.TokenIssuer(key, audience="elsewhere").issue(alice.username)
    for token in (expired, forged, wrong_audience, "not-a-token"):
        client = Client(registry.address, home=tmp_path / "t", pki=pki.root, token=token)
        assert code_of(client.whoami) == CODE.UNAUTHENTICATED
    anonymous = Client(registry.address, home=tmp_path / "anon", pki=pki.root)
    with pytest.raises(grpc.RpcError) as info:
        anonymous.registry.WhoAmI(empty_pb2.Empty(), timeout=5)
    assert info.value.code() == CODE.UNAUTHENTICATED


# -- publish and download ------------------------------------------------------------------------------------------


def test_publish_get_download_round_trip(new_user, tmp_path):
    alice = new_user()
    art = make_artifact(tmp_path / "a.safetensors", n_floats=600_000)  # ~2.3 MiB: several chunks
    v1 = alice.push(art, "digits", description="first", tags=["digits", "vae"])
    v2 = alice.push(make_artifact(tmp_path / "b.safetensors", seed=1), "digits")
    assert (v1.number, v2.number) == (1, 2)
    assert v1.sha256 == hashlib.sha256(art.read_bytes()).hexdigest() and v1.size_bytes == art.stat().st_size
    assert v1.architecture == "dp-merf" and v1.data_kind == pb.DATA_KIND_TABULAR
    assert v1.privacy.mechanism == "none"
    model = alice.get_model("digits")
    assert model.latest_version == 2 and model.data_kind == pb.DATA_KIND_TABULAR
    assert list(model.tags) == ["digits", "vae"] and model.data_schema.HasField("tabular")
    path, version = alice.pull(f"{alice.username}/digits@1", tmp_path / "out.safetensors")
    assert path.read_bytes() == art.read_bytes() and version.number == 1
    assert alice.get_version("digits").number == 2  # latest
    assert [v.number for v in alice.list_versions("digits")] == [1, 2]


def test_download_resumes_from_offset(new_user, tmp_path):
    alice = new_user()
    art = make_artifact(tmp_path / "a.safetensors", n_floats=400_000)
    alice.push(art, "resume")
    data = art.read_bytes()
    # A partial download already on disk: pull asks only for the rest.
    version = alice.get_version("resume")
    dest = tmp_path / "dl.safetensors"
    partial = dest.with_name(dest.name + f".{version.sha256[:12]}.part")
    partial.write_bytes(data[:1_000_003])
    path, _ = alice.pull("resume", dest)
    assert path.read_bytes() == data and not partial.exists()
    stream = alice.registry.DownloadVersion(
        rpb.DownloadVersionRequest(name=version.name, offset=len(data) - 10), metadata=alice._metadata()
    )
    chunks = [m.chunk for m in stream if m.WhichOneof("payload") == "chunk"]
    assert b"".join(chunks) == data[-10:]


def test_publish_with_wrong_sha_or_signature_stores_nothing(registry, new_user, tmp_path):
    alice = new_user()
    alice.create_model("lies")
    data = make_artifact(tmp_path / "a.safetensors", seed=7).read_bytes()
    before = set(blob_files(registry))
    wrong_sha = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(grpc.RpcError) as info:
        raw_publish(alice, f"models/{alice.username}/lies", data, sha=wrong_sha)
    assert info.value.code() == CODE.INVALID_ARGUMENT
    other_key = signing.generate_signing_key()
    with pytest.raises(grpc.RpcError) as info:
        raw_publish(
            alice,
            f"models/{alice.username}/lies",
            data,
            signature=signing.sign_artifact(other_key, hashlib.sha256(data).hexdigest()),
        )
    assert info.value.code() == CODE.INVALID_ARGUMENT and "signature" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        raw_publish(alice, f"models/{alice.username}/lies", data, size=len(data) + 5)
    assert info.value.code() == CODE.INVALID_ARGUMENT
    assert list(alice.list_versions("lies")) == []
    assert set(blob_files(registry)) == before
    assert not list(registry.blob_root.rglob(".tmp*"))


def test_publish_refuses_files_that_are_not_artifacts(registry, new_user, tmp_path):
    alice = new_user()
    alice.create_model("junk")
    before = set(blob_files(registry))
    for data in (
        b"hello world, not safetensors",
        (10**9).to_bytes(8, "little") + b"{}",
        make_artifact(tmp_path / "t.safetensors").read_bytes()[:-3],
    ):
        with pytest.raises(grpc.RpcError) as info:
            raw_publish(alice, f"models/{alice.username}/junk", data)
        assert info.value.code() == CODE.INVALID_ARGUMENT, data[:20]
        assert field_violations(info.value)
    assert set(blob_files(registry)) == before


# -- the tensor check at publish: the tensors must be exactly those the manifest's architecture and config imply --


def tiny_artifact(path: Path, edit=None) -> bytes:
    """The bytes of a tiny dp-merf artifact (hidden [8], latent_dim 2; tensors generator/dense0/kernel [4, 8],
    generator/dense0/bias [8], generator/dense1/kernel [8, 1], generator/dense1/bias [1], class_prior [2]) after
    `edit(tensors, manifest_fields)`. write_artifact checks the header but not the tensors, as any writer may."""
    schema = tabular_schema()
    config = merf_config(schema, [8])
    tensors = generator_tensors(schema, config)
    fields = {
        "architecture": "dp-merf",
        "config": config,
        "data_schema": schema,
        "training": {"note": "test"},
        "privacy": pb.PrivacyReport(mechanism="none", epsilon=float("inf")),
    }
    if edit:
        edit(tensors, fields)
    write_artifact(path, tensors, build_manifest(**fields))
    return path.read_bytes()


def publish_refused(registry, client: Client, model_id: str, data: bytes) -> grpc.RpcError:
    """Publishes `data` and returns the refusal, after checking that it is INVALID_ARGUMENT and stored nothing."""
    client.create_model(model_id)
    with pytest.raises(grpc.RpcError) as info:
        raw_publish(client, f"models/{client.username}/{model_id}", data)
    assert info.value.code() == CODE.INVALID_ARGUMENT, info.value.details()
    assert [f for f, _ in field_violations(info.value)] == ["chunk"]
    assert "not a valid SGDE artifact" in info.value.details()
    assert list(client.list_versions(model_id)) == [] and client.get_model(model_id).latest_version == 0
    sha = hashlib.sha256(data).hexdigest()
    assert not [p for p in blob_files(registry) if p.name == sha], "no blob of the refused artifact"
    assert not list(registry.blob_root.rglob(".tmp*"))
    return info.value


def test_a_privacy_claim_the_accountant_does_not_confirm_is_refused(registry, new_user, tmp_path):
    """The registry recomputes epsilon from the manifest's own mechanism parameters at every publish; on the first
    release a self-declared report (here: a tenth of the true epsilon) was published and shown to everyone."""
    honest = privacy_to_proto(MeanEmbeddingRelease().report(4.0, 1.0, 1, 0.0, 500, 1e-4))
    lie = pb.PrivacyReport()
    lie.CopyFrom(honest)
    lie.epsilon = honest.epsilon / 10
    alice = new_user()
    data = tiny_artifact(tmp_path / "lie.safetensors", edit=lambda t, f: f.update(privacy=lie))
    error = publish_refused(registry, alice, "liar", data)
    assert "the accountant gives" in error.details()
    tiny_artifact(tmp_path / "honest.safetensors", edit=lambda t, f: f.update(privacy=honest))
    version = alice.push(tmp_path / "honest.safetensors", "honest")
    assert version.privacy.epsilon == honest.epsilon and version.privacy.mechanism == "dp-merf"


def test_a_well_formed_tiny_artifact_publishes(new_user, tmp_path):
    alice = new_user()
    data = tiny_artifact(tmp_path / "good.safetensors")
    version = alice.push(tmp_path / "good.safetensors", "tiny")
    assert version.number == 1 and version.sha256 == hashlib.sha256(data).hexdigest()
    assert version.architecture == "dp-merf"


def test_publish_refuses_a_missing_tensor(registry, new_user, tmp_path):
    data = tiny_artifact(tmp_path / "a.safetensors", lambda t, m: t.pop("generator/dense1/bias"))
    error = publish_refused(registry, new_user(), "missing-tensor", data)
    assert "missing ['generator/dense1/bias'], unexpected []" in error.details()


def test_publish_refuses_an_extra_tensor(registry, new_user, tmp_path):
    data = tiny_artifact(
        tmp_path / "a.safetensors", lambda t, m: t.update({"generator/dense2/kernel": np.zeros((1, 1), np.float32)})
    )
    error = publish_refused(registry, new_user(), "extra-tensor", data)
    assert "missing [], unexpected ['generator/dense2/kernel']" in error.details()


def test_publish_refuses_a_tensor_of_the_wrong_shape(registry, new_user, tmp_path):
    data = tiny_artifact(
        tmp_path / "a.safetensors", lambda t, m: t.update({"generator/dense0/kernel": np.zeros((4, 9), np.float32)})
    )
    error = publish_refused(registry, new_user(), "wrong-shape", data)
    assert "tensor 'generator/dense0/kernel' is F32[4, 9]" in error.details()
    assert "implies F32[4, 8]" in error.details()


def test_publish_refuses_a_tensor_of_the_wrong_dtype(registry, new_user, tmp_path):
    data = tiny_artifact(
        tmp_path / "a.safetensors",
        lambda t, m: t.update({"generator/dense0/bias": t["generator/dense0/bias"].astype(np.float16)}),
    )
    error = publish_refused(registry, new_user(), "wrong-dtype", data)
    assert "tensor 'generator/dense0/bias' is F16[8]" in error.details() and "implies F32[8]" in error.details()


def test_publish_refuses_an_unknown_architecture(registry, new_user, tmp_path):
    data = tiny_artifact(tmp_path / "a.safetensors", lambda t, m: m.update(architecture="evil-net"))
    error = publish_refused(registry, new_user(), "unknown-arch", data)
    assert "manifest architecture: unknown architecture 'evil-net'" in error.details()


def test_publish_refuses_an_incomplete_config(registry, new_user, tmp_path):
    data = tiny_artifact(tmp_path / "a.safetensors", lambda t, m: m["config"].pop("generator_batch"))
    error = publish_refused(registry, new_user(), "incomplete-config", data)
    assert "manifest config: incomplete" in error.details() and "does not state generator_batch" in error.details()


def test_publish_refuses_a_config_value_out_of_range(registry, new_user, tmp_path):
    data = tiny_artifact(tmp_path / "a.safetensors", lambda t, m: m["config"].update(latent_dim=10**9))
    error = publish_refused(registry, new_user(), "out-of-range", data)
    assert "manifest config.latent_dim: must be an integer in [1, 1024]" in error.details()


def test_publish_refuses_a_config_that_implies_other_shapes(registry, new_user, tmp_path):
    data = tiny_artifact(tmp_path / "a.safetensors", lambda t, m: m["config"].update(hidden=[16]))  # tensors: [8]
    error = publish_refused(registry, new_user(), "other-shapes", data)
    assert re.search(
        r"tensor 'generator/dense0/(kernel|bias)' is F32\[(4, )?8\]; architecture 'dp-merf' with this "
        r"config implies F32\[(4, )?16\]",
        error.details(),
    ), error.details()


def test_publish_refuses_a_different_schema(new_user, tmp_path):
    alice = new_user()
    alice.push(make_artifact(tmp_path / "a.safetensors"), "schema-bound")
    image = pb.DataSchema(image=pb.ImageSchema(height=8, width=8, channels=1, class_names=["a", "b"], pixel_max=16))
    other = make_artifact(tmp_path / "b.safetensors", schema=image)
    assert code_of(lambda: alice.push(other, "schema-bound")) == CODE.FAILED_PRECONDITION


def test_size_limit(tmp_path, pki, new_user):
    small, handle = start_registry(tmp_path / "small", pki, max_version_bytes=10_000)
    try:
        client = Client(small.address, home=tmp_path / "h", pki=pki.root)
        client.register("sizer", "s@example.org", PASSWORD)
        client.login("sizer", PASSWORD)
        art = make_artifact(tmp_path / "big.safetensors", n_floats=10_000)
        assert code_of(lambda: client.push(art, "big")) == CODE.RESOURCE_EXHAUSTED
        client.close()
    finally:
        handle.stop(grace=1)


# -- visibility ----------------------------------------------------------------------------------------------------


def test_private_models_are_invisible_to_others(new_user, tmp_path):
    alice, bob = new_user(), new_user()
    alice.push(make_artifact(tmp_path / "a.safetensors"), "secret")
    name = f"{alice.username}/secret"
    assert code_of(lambda: bob.get_model(name)) == CODE.NOT_FOUND
    assert code_of(lambda: bob.get_version(name)) == CODE.NOT_FOUND
    assert code_of(lambda: bob.pull(name, tmp_path / "x")) == CODE.NOT_FOUND
    assert code_of(lambda: bob.update_model(name, description="mine now")) == CODE.NOT_FOUND
    assert code_of(lambda: bob.delete_model(name)) == CODE.NOT_FOUND
    assert code_of(lambda: bob.push(tmp_path / "a.safetensors", name, create=False)) == CODE.NOT_FOUND
    # Same answer as for a model that does not exist: nothing leaks.
    assert code_of(lambda: bob.get_model(f"{alice.username}/no-such-model")) == CODE.NOT_FOUND
    assert name not in {m.name.removeprefix("models/") for m in bob.list_models()}


def test_sharing_and_public(new_user, tmp_path):
    alice, bob, carol = new_user(), new_user(), new_user()
    alice.push(make_artifact(tmp_path / "a.safetensors"), "shared-one")
    name = f"{alice.username}/shared-one"
    model = alice.share("shared-one", [bob.username])
    assert model.visibility == pb.VISIBILITY_SHARED and list(model.shared_with) == [bob.username]
    seen = bob.get_model(name)
    assert seen.shared_with == []  # only the owner sees the share list
    bob.pull(name, tmp_path / "bob.safetensors")
    assert code_of(lambda: bob.update_model(name, description="x")) == CODE.PERMISSION_DENIED
    assert code_of(lambda: bob.delete_model(name)) == CODE.PERMISSION_DENIED
    assert code_of(lambda: carol.get_model(name)) == CODE.NOT_FOUND
    alice.update_model("shared-one", visibility="public")
    assert carol.get_model(name).visibility == pb.VISIBILITY_PUBLIC
    assert code_of(lambda: alice.share("shared-one", ["no-such-user"])) == CODE.INVALID_ARGUMENT


def test_delete_removes_versions_and_unshared_blobs(registry, new_user, tmp_path):
    alice = new_user()
    art = make_artifact(tmp_path / "a.safetensors", seed=123)
    v = alice.push(art, "doomed")
    alice.push(art, "twin")  # same bytes, second model: the blob is shared
    blob = [p for p in blob_files(registry) if p.name == v.sha256]
    assert len(blob) == 1
    alice.delete_model("doomed")
    assert blob[0].exists(), "still used by the twin"
    assert code_of(lambda: alice.get_model("doomed")) == CODE.NOT_FOUND
    alice.delete_model("twin")
    assert not blob[0].exists()


def test_list_filters_and_pagination(new_user, tmp_path):
    alice, bob = new_user(), new_user()
    art = make_artifact(tmp_path / "a.safetensors")
    for i in range(5):
        alice.push(art, f"m{i}", tags=["even"] if i % 2 == 0 else ["odd"], visibility="public")
    mine = rpb.ListModelsRequest(owner=alice.username, page_size=2)
    pages, token = [], ""
    while True:
        mine.page_token = token
        page = bob.registry.ListModels(mine, metadata=bob._metadata())
        pages.append([m.name for m in page.models])
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert sorted(sum(pages, [])) == [f"models/{alice.username}/m{i}" for i in range(5)]
    evens = [m.name for m in bob.list_models(owner=alice.username, tag="even")]
    assert evens == [f"models/{alice.username}/m{i}" for i in (0, 2, 4)]
    assert list(bob.list_models(owner=alice.username, data_kind=pb.DATA_KIND_IMAGE)) == []
    first = bob.registry.ListModels(rpb.ListModelsRequest(owner=alice.username, page_size=2), metadata=bob._metadata())
    with pytest.raises(grpc.RpcError) as info:  # a token from another listing
        bob.registry.ListModels(
            rpb.ListModelsRequest(tag="odd", page_token=first.next_page_token), metadata=bob._metadata()
        )
    assert info.value.code() == CODE.INVALID_ARGUMENT


def test_metrics_are_set_by_the_owner_and_validated(new_user, tmp_path):
    alice, bob = new_user(), new_user()
    alice.push(make_artifact(tmp_path / "a.safetensors"), "judged", visibility="public")
    name = f"{alice.username}/judged"
    model = alice.set_metrics("judged", {"tstr.logreg": 0.9, "audit.mia_auc": 0.51})
    assert dict(model.metrics) == {"tstr.logreg": 0.9, "audit.mia_auc": 0.51}
    model = alice.set_metrics("judged", {"tstr.logreg": 0.8, "audit.flagged": 0})  # merged, not replaced
    assert dict(model.metrics) == {"tstr.logreg": 0.8, "audit.mia_auc": 0.51, "audit.flagged": 0.0}
    assert dict(bob.get_model(name).metrics) == dict(model.metrics)  # visible to whoever sees the model
    assert dict(alice.set_metrics("judged", {"x": 1}, merge=False).metrics) == {"x": 1.0}

    for bad, field in (
        ({"Upper.Case": 1.0}, "model.metrics"),
        ({"nan": float("nan")}, "model.metrics"),
        ({"inf": float("inf")}, "model.metrics"),
        ({"k" * 65: 1.0}, "model.metrics"),
        ({f"m{i}": 1.0 for i in range(201)}, "model.metrics"),
    ):
        with pytest.raises(SgdeError) as info:
            alice.set_metrics("judged", bad, merge=False)
        assert info.value.code == CODE.INVALID_ARGUMENT and [f for f, _ in info.value.violations] == [field]
    assert code_of(lambda: bob.set_metrics(name, {"tstr.logreg": 1.0})) == CODE.PERMISSION_DENIED
    assert dict(alice.get_model("judged").metrics) == {"x": 1.0}  # nothing bad was stored


def test_concurrent_metric_merges_keep_each_others_keys(new_user, tmp_path):
    """The SDK used to read, merge and write: two evaluations at once lost each other's keys. The registry merges
    in one transaction now, and counts the limit on the merged map."""
    alice = new_user()
    alice.create_model("judged")
    keys = [f"eval{i}.score" for i in range(12)]
    with ThreadPoolExecutor(len(keys)) as pool:
        list(pool.map(lambda k: alice.set_metrics("judged", {k: 1.0}), keys))
    assert sorted(alice.get_model("judged").metrics) == sorted(keys)
    assert dict(alice.set_metrics("judged", {"extra": 2.0}, remove=keys[1:]).metrics) == {keys[0]: 1.0, "extra": 2.0}
    alice.set_metrics("judged", {f"m{i}": 1.0 for i in range(150)})
    with pytest.raises(SgdeError) as info:
        alice.set_metrics("judged", {f"n{i}": 1.0 for i in range(60)})
    assert info.value.code == CODE.INVALID_ARGUMENT and "over the limit of 200" in str(info.value)


def test_create_model_refuses_fields_it_would_ignore(new_user):
    alice = new_user()
    for model, field in (
        (pb.Model(metrics={"tstr.logreg": 0.9}), "model.metrics"),
        (pb.Model(name="models/someone/else"), "model.name"),
        (pb.Model(owner="someone"), "model.owner"),
        (pb.Model(data_kind=pb.DATA_KIND_IMAGE), "model.data_kind"),
        (pb.Model(latest_version=3), "model"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            alice.registry.CreateModel(rpb.CreateModelRequest(model_id="m", model=model), metadata=alice._metadata())
        assert info.value.code() == CODE.INVALID_ARGUMENT
        assert [f for f, _ in field_violations(info.value)] == [field]
    same = pb.Model(name=f"models/{alice.username}/m", owner=alice.username, description="fine")
    made = alice.registry.CreateModel(rpb.CreateModelRequest(model_id="m", model=same), metadata=alice._metadata())
    assert made.description == "fine"


def test_per_user_quotas_on_versions_and_stored_bytes(pki, tmp_path):
    """Limits that protect the registry: versions per model and stored bytes per user, refused with
    RESOURCE_EXHAUSTED naming the limit, before the bytes are sent; deleting a model frees its bytes."""
    one = make_artifact(tmp_path / "a.safetensors").stat().st_size
    small, handle = start_registry(tmp_path / "small", pki, max_versions_per_model=2, max_user_bytes=3 * one + one // 2)
    try:
        alice = Client(small.address, home=tmp_path / "alice", pki=pki.root)
        alice.register("alice", "alice@example.org", PASSWORD)
        alice.login("alice", PASSWORD)
        artifacts = [make_artifact(tmp_path / f"{i}.safetensors", seed=i) for i in range(4)]
        alice.push(artifacts[0], "first")
        alice.push(artifacts[1], "first")
        with pytest.raises(SgdeError) as info:
            alice.push(artifacts[2], "first")
        assert info.value.code == CODE.RESOURCE_EXHAUSTED and "SGDE_REGISTRY_MAX_VERSIONS_PER_MODEL = 2" in str(
            info.value
        )
        alice.push(artifacts[2], "second")
        with pytest.raises(SgdeError) as info:
            alice.push(artifacts[3], "second")
        assert info.value.code == CODE.RESOURCE_EXHAUSTED and "SGDE_REGISTRY_MAX_USER_BYTES" in str(info.value)
        assert [v.number for v in alice.list_versions("second")] == [1]  # nothing half-published
        alice.delete_model("first")
        assert alice.push(artifacts[3], "second").number == 2  # the space is free again
    finally:
        handle.stop(grace=1)
