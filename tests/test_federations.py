"""Federations over real mutual TLS: who may do what (no existence leak), what is admitted (each refusal names its
field), and pulling every member's generator, whatever its model's own visibility."""

from __future__ import annotations

import hashlib
import json

import grpc
import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY

from libsgde.cli import main
from libsgde.client import Client, SgdeError
from libsgde.domain.resources import MemberState, PrivacyPolicy
from libsgde.io.artifact import build_manifest, load_artifact, read_header, write_artifact
from libsgde.io.schema import schema_to_dict
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from libsgde.wire.proto.sgde.v1 import sampler_pb2 as spb
from tests.support.fixtures import store_unchecked
from tests.support.sampler import start_sampler
from tests.support.services import make_artifact, merf_privacy, tabular_schema
from tests.support.trainer import wait_for, write_csv

pytestmark = pytest.mark.integration  # real servers on loopback sockets

CODE = grpc.StatusCode
POLICY = PrivacyPolicy(max_epsilon=10.0, max_delta=1e-3, architectures=["dp-merf"], min_dataset_size=100)


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def refusal(call) -> SgdeError:
    with pytest.raises(SgdeError) as info:
        call()
    return info.value


def fields(error: SgdeError) -> list[str]:
    return [f for f, _ in error.violations]


@pytest.fixture
def hospitals(new_user):
    """A federation: alice coordinates, bob is a member, carol is invited, dave is not in it."""
    alice, bob, carol, dave = new_user(), new_user(), new_user(), new_user()
    fed = f"hospitals-{alice.username}"
    alice.create_federation(fed, tabular_schema(), POLICY, description="patients")
    alice.invite(fed, bob.username)
    bob.accept_invitation(fed)
    alice.invite(fed, carol.username)
    return fed, alice, bob, carol, dave


def push(client, fed: str, tmp_path, model: str, **privacy):
    path = make_artifact(tmp_path / f"{client.username}-{model}.safetensors", privacy=merf_privacy(**privacy))
    client.push(path, model)  # private: only federation membership lets others read it
    return client.push_generator(fed, model)


def test_who_may_do_what_and_no_existence_leak(hospitals, tmp_path):
    fed, alice, bob, carol, dave = hospitals
    federation = alice.get_federation(fed)
    states = {m.username: m.state for m in federation.members}
    assert states == {
        alice.username: MemberState.ACTIVE,
        bob.username: MemberState.ACTIVE,
        carol.username: MemberState.INVITED,
    }
    assert federation.policy == POLICY and federation.coordinator == alice.username

    # Dave, and a federation that does not exist: the same code and message, for every call.
    missing = "no-such-federation"
    calls = {
        "get": lambda c, f: c.get_federation(f),
        "generators": lambda c, f: c.generators(f),
        "accept": lambda c, f: c.accept_invitation(f),
        "decline": lambda c, f: c.decline_invitation(f),
        "leave": lambda c, f: c.leave_federation(f),
        "invite": lambda c, f: c.invite(f, bob.username),
        "remove": lambda c, f: c.remove_member(f, bob.username),
        "update": lambda c, f: c.update_federation(f, description="x"),
        "delete": lambda c, f: c.delete_federation(f),
        "push": lambda c, f: c.push_generator(f, "anything@1"),
    }
    for what, call in calls.items():
        theirs = refusal(lambda call=call: call(dave, fed))
        absent = refusal(lambda call=call: call(dave, missing))
        assert theirs.code == absent.code == CODE.NOT_FOUND, what
        assert theirs.message.replace(fed, "F") == absent.message.replace(missing, "F"), what
    assert [f.name for f in dave.list_federations()] == []

    # Carol, invited: sees it (to decide), may accept or decline, nothing else.
    assert carol.get_federation(fed).name == f"federations/{fed}"
    assert [f.name for f in carol.list_federations()] == [f"federations/{fed}"]
    assert refusal(lambda: carol.generators(fed)).code == CODE.PERMISSION_DENIED
    assert refusal(lambda: push(carol, fed, tmp_path, "early")).code == CODE.PERMISSION_DENIED

    # Bob, a member: pushes and pulls, may not run the federation.
    push(bob, fed, tmp_path, "bob-model")
    for what in ("invite", "remove", "update", "delete"):
        assert refusal(lambda what=what: calls[what](bob, fed)).code == CODE.PERMISSION_DENIED, what
    assert refusal(lambda: alice.leave_federation(fed)).code == CODE.FAILED_PRECONDITION  # the coordinator deletes

    # Removed, Bob is an outsider again: NOT_FOUND, and his generator left with him.
    alice.remove_member(fed, bob.username)
    assert refusal(lambda: bob.get_federation(fed)).code == CODE.NOT_FOUND
    assert alice.generators(fed) == []
    carol.decline_invitation(fed)
    assert refusal(lambda: carol.get_federation(fed)).code == CODE.NOT_FOUND
    alice.delete_federation(fed)
    assert refusal(lambda: alice.get_federation(fed)).code == CODE.NOT_FOUND


def test_admission_refusals_name_the_field(hospitals, tmp_path, registry):
    fed, alice, bob, carol, dave = hospitals

    other = tabular_schema()
    other.tabular.columns[0].upper = 99
    path = make_artifact(tmp_path / "other.safetensors", schema=other, privacy=merf_privacy())
    bob.push(path, "other-schema")
    error = refusal(lambda: bob.push_generator(fed, "other-schema"))
    assert fields(error) == ["version.data_schema.tabular.columns[0].upper"]

    for model, privacy, field in (
        ("small", {"dataset_size": 50}, "version.privacy.dataset_size"),
        ("loose", {"noise_multiplier": 0.3}, "version.privacy.epsilon"),
        ("wide-delta", {"delta": 1.5e-3}, "version.privacy.delta"),  # over the policy's 1e-3, under 1/N
    ):
        error = refusal(lambda model=model, privacy=privacy: push(bob, fed, tmp_path, model, **privacy))
        assert fields(error) == [field], (model, str(error))
    bob.push(make_artifact(tmp_path / "nodp.safetensors"), "no-dp")
    assert fields(refusal(lambda: bob.push_generator(fed, "no-dp"))) == ["version.privacy.mechanism"]

    alice.update_federation(fed, policy=PrivacyPolicy(architectures=["cvae"]))
    assert fields(refusal(lambda: push(bob, fed, tmp_path, "merf"))) == ["version.architecture"]
    alice.update_federation(fed, policy=POLICY)

    # A version whose claim the accountant does not confirm (a registry from before the publish check holds one).
    honest = merf_privacy()
    lie = type(honest)()
    lie.CopyFrom(honest)
    lie.epsilon = honest.epsilon / 10
    source = make_artifact(tmp_path / "lie-src.safetensors", privacy=honest)
    header = read_header(source)
    manifest = build_manifest("dp-merf", header.manifest.config, tabular_schema(), lie, {"note": "hand-edited"})
    tensors = load_artifact(source)[1]
    write_artifact(tmp_path / "lie.safetensors", tensors, manifest)
    version = store_unchecked(registry, bob, "hand-edited", tmp_path / "lie.safetensors")
    assert fields(refusal(lambda: bob.push_generator(fed, version))) == ["version.privacy.epsilon"]

    alice.push(make_artifact(tmp_path / "alices.safetensors", privacy=merf_privacy()), "alices")
    error = refusal(lambda: bob.push_generator(fed, f"{alice.username}/alices@1"))
    assert error.code in (CODE.NOT_FOUND, CODE.INVALID_ARGUMENT)  # private: bob cannot even see it
    alice.update_model("alices", visibility="public")
    assert fields(refusal(lambda: bob.push_generator(fed, f"{alice.username}/alices@1"))) == ["version"]
    assert alice.generators(fed) == []  # nothing was admitted


def test_push_replaces_and_members_pull_every_generator(hospitals, tmp_path):
    fed, alice, bob, carol, dave = hospitals
    first = push(bob, fed, tmp_path, "bob-v", noise_multiplier=4.0)
    again = push(bob, fed, tmp_path, "bob-w", noise_multiplier=5.0)
    mine = push(alice, fed, tmp_path, "alice-v")
    generators = {g.member: g for g in alice.generators(fed)}
    assert set(generators) == {alice.username, bob.username}  # one per member: bob's newer push replaced his first
    assert generators[bob.username].version == again.version != first.version
    assert generators[bob.username].privacy.epsilon == merf_privacy(noise_multiplier=5.0).epsilon

    pulled = alice.pull_federation(fed, tmp_path / "pulled")  # bob's model is private, yet alice may read it
    assert [v.name for _, v in pulled] == [again.version]
    path, version = pulled[0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == version.sha256
    assert refusal(lambda: dave.pull(again.version, tmp_path / "dave")).code == CODE.NOT_FOUND
    assert len(bob.pull_federation(fed, tmp_path / "bobs", include_mine=True)) == 2
    assert mine.member == alice.username

    bob.leave_federation(fed)
    assert [g.member for g in alice.generators(fed)] == [alice.username]
    assert refusal(lambda: alice.pull(again.version, tmp_path / "after")).code == CODE.NOT_FOUND


def test_create_refuses_what_would_not_work(new_user):
    alice = new_user()
    no_task = tabular_schema()
    no_task.tabular.label_column = ""
    assert fields(refusal(lambda: alice.create_federation("no-task", no_task))) == ["federation.data_schema"]
    bad = PrivacyPolicy(max_epsilon=-1, architectures=["evil-net"])
    error = refusal(lambda: alice.create_federation("bad-policy", tabular_schema(), bad))
    assert fields(error) == ["federation.policy.max_epsilon", "federation.policy.architectures"]
    assert fields(refusal(lambda: alice.create_federation("Bad Id", tabular_schema()))) == ["federation_id"]
    alice.create_federation(f"taken-{alice.username}", tabular_schema())
    assert (
        refusal(lambda: alice.create_federation(f"taken-{alice.username}", tabular_schema())).code
        == CODE.ALREADY_EXISTS
    )
    raw = rpb.CreateFederationRequest(federation_id="raw", federation=rpb.Federation(coordinator="someone"))
    with pytest.raises(grpc.RpcError) as info:
        alice.federations.CreateFederation(raw, metadata=alice._metadata())
    assert info.value.code() == CODE.INVALID_ARGUMENT


def test_the_cli_runs_a_federation(hospitals, registry, pki, tmp_path, monkeypatch):
    fed, alice, bob, carol, dave = hospitals
    monkeypatch.setenv("SGDE_PKI_DIR", str(pki.root))
    monkeypatch.setenv("SGDE_REGISTRY_ADDRESS", registry.address)
    runner = CliRunner()

    def sgde(client, *args: str, ok: bool = True) -> str:
        monkeypatch.setenv("SGDE_HOME", str(client.home))
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(schema_to_dict(tabular_schema())))
    clinics = f"clinics-{alice.username}"
    created = sgde(
        alice, "federation", "create", clinics, "--schema", str(schema), "--max-epsilon", "10", "--arch", "dp-merf"
    )
    assert f"federations/{clinics}" in created and "epsilon <= 10" in created
    sgde(alice, "federation", "invite", clinics, bob.username)
    assert "invited" in sgde(bob, "federation", "list")
    sgde(bob, "federation", "accept", clinics)
    bob.push(make_artifact(tmp_path / "bobs.safetensors", privacy=merf_privacy()), "bobs")
    assert "checked by the registry" in sgde(bob, "federation", "push", clinics, "bobs")
    shown = sgde(alice, "federation", "show", clinics)
    assert f"models/{bob.username}/bobs/versions/1" in shown and "dp-merf" in shown
    pulled = sgde(alice, "federation", "pull", clinics, "--out", str(tmp_path / "pulled"))
    assert f"models/{bob.username}/bobs/versions/1" in pulled and len(list((tmp_path / "pulled").iterdir())) == 1
    assert "not found" in sgde(dave, "federation", "show", clinics, ok=False)
    sgde(bob, "federation", "leave", clinics)
    sgde(alice, "federation", "delete", clinics, "--yes")
    listed = json.loads(sgde(bob, "federation", "list", "--json"))
    assert [f["name"] for f in listed] == [f"federations/{fed}"]  # clinics is gone; hospitals stays
    shown = json.loads(sgde(alice, "federation", "show", fed, "--json"))
    assert shown["policy"]["max_epsilon"] == POLICY.max_epsilon and shown["generators"] == []
    assert {m["username"]: m["state"] for m in shown["members"]}[bob.username] == "active"


@pytest.fixture(scope="module")
def sampler(tmp_path_factory, pki, registry):
    cfg, handle = start_sampler(tmp_path_factory.mktemp("federation-sampler"), pki, registry.address)
    yield cfg.listen
    handle.stop(grace=1)


def with_sampler(client, address: str) -> Client:
    return Client(client.address, sampler=address, home=client.home, pki=client.pki.root)


def test_sample_federation_quotas_sources_and_seeds(hospitals, sampler, tmp_path, monkeypatch):
    fed, alice, bob, carol, dave = hospitals
    carol.accept_invitation(fed)
    for client, n in ((alice, 500), (bob, 100), (carol, 300)):
        push(client, fed, tmp_path, f"gen-{n}", dataset_size=n)
    me = with_sampler(alice, sampler)

    n_of = {bob.username: 100, carol.username: 300}
    first, second = sorted(n_of)  # parts come in the members' order

    equal = me.sample_federation(fed, 41, seed=7)
    assert [(m, len(s)) for m, s in equal.parts] == [(first, 21), (second, 20)]  # not alice's own
    assert list(equal.sources) == [first] * 21 + [second] * 20 and len(equal.values["age"]) == 41
    again = me.sample_federation(fed, 41, seed=7)
    assert [s.sha256 for _, s in again.parts] == [s.sha256 for _, s in equal.parts]  # reproducible per seed
    other = me.sample_federation(fed, 41, seed=8)
    assert [s.sha256 for _, s in other.parts] != [s.sha256 for _, s in equal.parts]

    proportional = me.sample_federation(fed, 40, seed=7, quota="proportional")
    assert [len(s) for _, s in proportional.parts] == [n_of[first] // 10, n_of[second] // 10]  # N: 100 and 300
    every = me.sample_federation(fed, 30, seed=7, include_own=True)
    assert [m for m, _ in every.parts] == sorted([alice.username, bob.username, carol.username])

    by_class = me.sample_federation(fed, seed=7, class_counts={"no": 5, "yes": 3})
    counts = [list(s.metadata.class_counts) for _, s in by_class.parts]
    assert counts == [[3, 2], [2, 1]] and by_class.labels.tolist() == [0, 0, 0, 1, 1, 0, 0, 1]

    # The same through the CLI: one file per member.
    for name, value in (("SGDE_HOME", alice.home), ("SGDE_SAMPLER_ADDRESS", sampler), ("SGDE_PKI_DIR", alice.pki.root)):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("SGDE_REGISTRY_ADDRESS", alice.address)
    args = ["federation", "sample", fed, "-n", "41", "--seed", "7", "--format", "csv", "--out", str(tmp_path / "s")]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    files = {p.stem: p for p in (tmp_path / "s").iterdir()}
    assert sorted(files) == [first, second] and "21 samples" in result.output
    assert len(files[first].read_text().splitlines()) == 22  # a header and 21 rows

    assert refusal(lambda: with_sampler(dave, sampler).sample_federation(fed, 10)).code == CODE.NOT_FOUND
    assert refusal(lambda: me.sample_federation(fed, 10, quota="random")).code == CODE.INVALID_ARGUMENT


def test_a_cancelled_federation_stream_stops(hospitals, sampler, tmp_path):
    fed, alice, bob, *_ = hospitals
    push(bob, fed, tmp_path, "big")
    me = with_sampler(alice, sampler)
    request = spb.SampleFederationRequest(federation=f"federations/{fed}", num_samples=1_000_000, chunk_samples=64)
    stream = me.sampler.SampleFederation(request, metadata=me._metadata(), timeout=60)
    assert next(stream).source == bob.username
    assert next(stream).sample.HasField("metadata")
    before = metric("sgde_sampler_samples_total")
    stream.cancel()
    wait_for(lambda: metric("sgde_sampler_active_streams") == 0, timeout=20, what="the sampler to stop")
    stopped = metric("sgde_sampler_samples_total")
    assert stopped - before < 1_000_000
    wait_for(lambda: True, timeout=1)
    assert metric("sgde_sampler_samples_total") == stopped  # nothing more is generated


def test_federation_evaluate_reports_what_membership_buys(hospitals, sampler, tmp_path, monkeypatch):
    fed, alice, bob, *_ = hospitals
    push(bob, fed, tmp_path, "bobs")
    for name, value in (("SGDE_HOME", alice.home), ("SGDE_SAMPLER_ADDRESS", sampler), ("SGDE_PKI_DIR", alice.pki.root)):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("SGDE_REGISTRY_ADDRESS", alice.address)
    train, holdout = write_csv(tmp_path / "train.csv", rows=60, seed=1), write_csv(tmp_path / "real.csv", seed=2)
    args = ["federation", "evaluate", fed, "--train", str(train), "--real", str(holdout), "--classifier", "logreg"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "ev")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "(a) local" in result.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["context"]["synthetic_rows_by_member"] == {bob.username: 60}  # the others' only, as many as hers
    assert set(report["results"][0]["accuracy"]) == {"local", "others", "both"}
    assert (tmp_path / "ev" / "membership.png").stat().st_size > 0
