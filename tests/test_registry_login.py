"""Login under attack: bounded password checks, lockout that concurrency and unknown names cannot get around, a
database that cannot record failures letting no one in, and the registry's state closed to other users."""

from __future__ import annotations

import os
import re
import stat
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy import event

from libsgde import errors
from libsgde.client import Client, SgdeError
from libsgde.security import tls
from libsgde.server import auth
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from libsgde.wire.proto.sgde.v1 import registry_pb2_grpc
from libsgde.wire.status import retry_after
from services.registry.catalogue import Catalogue, Locked, users
from tests.support.fixtures import start_registry
from tests.support.services import PASSWORD, RegistryProcess, make_artifact, user_client, wait_healthy

CODE = grpc.StatusCode
integration = pytest.mark.integration  # real servers on loopback sockets


def storm(stubs: list, logins: list[tuple[str, str]]) -> list[grpc.RpcError | rpb.LoginResponse]:
    """All `logins` at once (released together by a barrier), spread over `stubs`; each answer or error, in order.
    The generous timeout only detects a hang."""
    barrier = threading.Barrier(len(logins))

    def one(i: int):
        username, password = logins[i]
        barrier.wait(timeout=60)
        try:
            return stubs[i % len(stubs)].Login(rpb.LoginRequest(username=username, password=password), timeout=120)
        except grpc.RpcError as e:
            return e

    with ThreadPoolExecutor(len(logins)) as pool:
        return list(pool.map(one, range(len(logins))))


def codes(answers) -> list[grpc.StatusCode]:
    return [a.code() if isinstance(a, grpc.RpcError) else CODE.OK for a in answers]


def stub(address: str, pki: tls.PkiPaths, channels: list) -> registry_pb2_grpc.RegistryServiceStub:
    channel = grpc.secure_channel(address, tls.channel_credentials(pki))
    channels.append(channel)
    return registry_pb2_grpc.RegistryServiceStub(channel)


@integration
def test_a_storm_of_logins_runs_at_most_the_cap_of_checks_and_refuses_the_rest(tmp_path, pki):
    """64 concurrent logins for names that do not exist took the registry to 2.1 GiB (32 MiB per scrypt, no cap)."""
    running, handle = start_registry(tmp_path / "r", pki, max_password_checks=2, login_failures_per_source=10_000)
    channels: list = []
    try:
        logins = [(f"nobody-{i}", "not the password") for i in range(16)]
        answers = storm([stub(running.address, pki, channels)], logins)
        got = codes(answers)
        assert set(got) <= {CODE.UNAUTHENTICATED, CODE.UNAVAILABLE}, got  # every call answered: none hangs
        refused = [a for a in answers if a.code() == CODE.UNAVAILABLE]
        assert refused, "no login was refused although 16 came at once and 2 may be checked"
        for error in refused:
            assert "try again in 1 s" in error.details() and retry_after(error) == 1.0
        checks = handle.password_checks
        assert checks.peak <= 2 and checks.running == 0
        assert checks.computed == got.count(CODE.UNAUTHENTICATED)  # refused at once: no check, nothing counted
        assert checks.refused == len(refused)
    finally:
        for channel in channels:
            channel.close()
        handle.stop(grace=1)


@integration
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_concurrent_guesses_through_two_registry_processes_get_five_checks(tmp_path, pki, database, request):
    """40 concurrent wrong passwords were all checked and nothing locked (the lock state was read before the check
    and written from a stale count). Attempts alternate between two registry processes sharing one database: a
    SQLite file, or PostgreSQL, as the production overlay's replicas share theirs."""
    home = tmp_path / "shared"
    home.mkdir()
    env = {"SGDE_REGISTRY_MAX_PASSWORD_CHECKS": "16", "SGDE_REGISTRY_LOGIN_FAILURES_PER_SOURCE": "1000"}
    if database == "postgres":
        env["SGDE_REGISTRY_DATABASE_URL"] = request.getfixturevalue("postgres").new_database("logins")
    blobs = (home / "blobs").as_uri()
    first = RegistryProcess(home, pki, blobs, env)
    first.start()
    second = RegistryProcess(home, pki, blobs, env)
    channels: list = []
    try:
        second.start()
        victim = user_client(first.address, pki, tmp_path / "homes")
        stubs = [stub(first.address, pki, channels), stub(second.address, pki, channels)]
        got = codes(storm(stubs, [(victim.username, "a wrong guess!")] * 12))
        assert got.count(CODE.UNAUTHENTICATED) == auth.LOCKOUT_FREE_FAILURES + 1, got  # checked: 5, as allowed
        assert got.count(CODE.RESOURCE_EXHAUSTED) == 12 - auth.LOCKOUT_FREE_FAILURES - 1, got
        with pytest.raises(grpc.RpcError) as locked:  # the right password too, on either registry
            stubs[1].Login(rpb.LoginRequest(username=victim.username, password=PASSWORD), timeout=30)
        assert locked.value.code() == CODE.RESOURCE_EXHAUSTED and retry_after(locked.value)
        victim.close()
    finally:
        for channel in channels:
            channel.close()
        second.stop()
        first.stop()


def _shape(answer: grpc.RpcError, username: str) -> tuple:
    message = re.sub(r"\d+", "N", answer.details().replace(username, "<name>"))
    return answer.code(), message, retry_after(answer) is not None


@integration
def test_an_unknown_name_is_answered_exactly_like_a_real_account(tmp_path, pki):
    """RESOURCE_EXHAUSTED came only for real users: lockout told who exists."""
    running, handle = start_registry(tmp_path / "r", pki)
    channels: list = []
    try:
        alice = user_client(running.address, pki, tmp_path / "homes")
        r = stub(running.address, pki, channels)
        nobody = f"u{uuid.uuid4().hex[:10]}"  # the same length and form as alice's name
        seen = {}
        for name in (alice.username, nobody):
            answers = []
            for _ in range(7):
                with pytest.raises(grpc.RpcError) as info:
                    r.Login(rpb.LoginRequest(username=name, password="wrong password!!"), timeout=30)
                answers.append(_shape(info.value, name))
            seen[name] = answers
        assert seen[alice.username] == seen[nobody]
        assert [a[0] for a in seen[nobody]] == [CODE.UNAUTHENTICATED] * 5 + [CODE.RESOURCE_EXHAUSTED] * 2
        # Names no account can have are refused as such, before any check (the rules are public).
        for name, password in (("Not A Name", "whatever it is"), (alice.username, "x" * 300)):
            with pytest.raises(grpc.RpcError) as info:
                r.Login(rpb.LoginRequest(username=name, password=password), timeout=30)
            assert info.value.code() == CODE.INVALID_ARGUMENT
        alice.close()
    finally:
        for channel in channels:
            channel.close()
        handle.stop(grace=1)


@integration
def test_one_source_cannot_spray_guesses_over_many_accounts(tmp_path, pki):
    running, handle = start_registry(tmp_path / "r", pki, login_failures_per_source=3)
    client = Client(running.address, home=tmp_path / "attacker", pki=pki.root)
    try:
        client.register("carol", "carol@example.org", PASSWORD)
        for i in range(4):  # one guess at each of 4 names: 3 free failures, the 4th is checked and slows the source
            with pytest.raises(SgdeError) as info:
                client.login(f"name-{i}", "a wrong guess!")
            assert info.value.code == CODE.UNAUTHENTICATED
        with pytest.raises(SgdeError) as info:
            client.login("carol", PASSWORD)  # a fifth account, even with its password, waits
        assert info.value.code == CODE.RESOURCE_EXHAUSTED and "from your address" in str(info.value)
        assert info.value.retry_after and info.value.retry_after > 1
    finally:
        client.close()
        handle.stop(grace=1)


@integration
def test_a_database_that_refuses_writes_lets_no_one_in(tmp_path, pki):
    """With the disk full, wrong passwords got INTERNAL and were not counted while the right one succeeded: an
    unlimited guessing oracle. Here the database refuses every write (a read-only database)."""
    running, handle = start_registry(tmp_path / "r", pki, health_check_seconds=0.2)
    client = Client(running.address, home=tmp_path / "c", pki=pki.root)
    engine = handle.catalogue.engine

    def read_only(dbapi_conn, _record):
        dbapi_conn.execute("PRAGMA query_only = ON")

    try:
        client.register("dora", "dora@example.org", PASSWORD)
        event.listen(engine, "connect", read_only)
        engine.dispose()  # every connection from here on refuses writes
        for password in ["a wrong guess!"] * 6 + [PASSWORD]:
            with pytest.raises(SgdeError) as info:
                client.login("dora", password)
            assert info.value.code == CODE.UNAVAILABLE, info.value  # no check without a record: no token
            assert "refuses writes" in str(info.value) and info.value.retry_after
        with pytest.raises(SgdeError) as info:
            client.register("erin", "erin@example.org", PASSWORD)
        assert info.value.code == CODE.UNAVAILABLE
        wait_healthy(running.address, pki, timeout=30, serving=False)
        event.remove(engine, "connect", read_only)
        engine.dispose()
        wait_healthy(running.address, pki, timeout=30)
        client.login("dora", PASSWORD)  # the refused attempts were never counted, nor checked
        assert client.whoami().username == "dora"
    finally:
        client.close()
        handle.stop(grace=1)


@integration
def test_registry_state_is_closed_to_other_users(tmp_path, pki):
    """registry.db (password hashes) and blobs (private models) were 0644 in a 0755 folder under umask 022."""
    previous = os.umask(0o022)
    try:
        running, handle = start_registry(tmp_path / "fresh" / "registry", pki)
        try:
            owner = user_client(running.address, pki, tmp_path / "homes")
            owner.push(make_artifact(tmp_path / "a.safetensors"), "private-model")
            owner.close()
        finally:
            handle.stop(grace=1)
    finally:
        os.umask(previous)
    root = tmp_path / "fresh" / "registry"

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(root) == 0o700
    files = [root / "registry.db", root / "token.pem", *(root / "registry.db-wal", root / "registry.db-shm")]
    for path in files:
        if path.exists():
            assert mode(path) == 0o600, path
    blobs = list(running.blob_root.rglob("*"))
    assert any(p.is_file() for p in blobs) and mode(running.blob_root) == 0o700
    for path in blobs:
        assert mode(path) == (0o600 if path.is_file() else 0o700), path


@integration
def test_a_token_does_not_pass_to_a_new_account_of_the_same_name(tmp_path, pki):
    running, handle = start_registry(tmp_path / "r", pki)
    try:
        old = user_client(running.address, pki, tmp_path / "old", "frank")
        with handle.catalogue.engine.begin() as conn:  # the operator deletes the account (there is no RPC for it)
            conn.execute(users.delete().where(users.c.username == "frank"))
        new = user_client(running.address, pki, tmp_path / "new", "frank")
        with pytest.raises(SgdeError) as info:
            old.whoami()
        assert info.value.code == CODE.UNAUTHENTICATED
        assert new.whoami().username == "frank"
        old.close()
        new.close()
    finally:
        handle.stop(grace=1)


@integration
def test_register_refuses_an_email_longer_than_its_column(tmp_path, pki):
    """EMAIL_RE allows 317 characters; the column holds 254: SQLite stored it, PostgreSQL would answer INTERNAL."""
    running, handle = start_registry(tmp_path / "r", pki)
    client = Client(running.address, home=tmp_path / "c", pki=pki.root)
    try:
        with pytest.raises(SgdeError) as info:
            client.register("gina", f"{'g' * 64}@{'e' * 188}.{'x' * 63}", PASSWORD)
        assert info.value.code == CODE.INVALID_ARGUMENT and [f for f, _ in info.value.violations] == ["email"]
    finally:
        client.close()
        handle.stop(grace=1)


# -- unit: the catalogue's attempt counting and the check slots (no sockets) -------------------------------------


SOURCE = auth.LockoutPolicy(free_failures=1000, forget_after_seconds=3600)


def test_many_sources_do_not_get_past_an_accounts_limit(tmp_path):
    catalogue = Catalogue(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        for i in range(auth.LOCKOUT_FREE_FAILURES + 1):
            catalogue.reserve_login([(f"source:10.0.0.{i}", SOURCE), ("account:alice", auth.ACCOUNT_LOCKOUT)])
        with pytest.raises(Locked) as info:
            catalogue.reserve_login([("source:10.0.1.1", SOURCE), ("account:alice", auth.ACCOUNT_LOCKOUT)])
        assert info.value.subject == "account:alice" and info.value.seconds > 29
        catalogue.login_succeeded("account:alice", "source:10.0.0.0")  # a success clears the account
        catalogue.reserve_login([("source:10.0.1.1", SOURCE), ("account:alice", auth.ACCOUNT_LOCKOUT)])
    finally:
        catalogue.close()


def test_a_full_database_is_unavailable_and_unhealthy_while_reads_work(tmp_path):
    """SQLite's own limit on the database's pages gives the error of a full disk (SQLITE_FULL)."""
    catalogue = Catalogue(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        catalogue.check_writable()

        @event.listens_for(catalogue.engine, "connect")
        def no_growth(dbapi_conn, _record):
            dbapi_conn.execute("PRAGMA max_page_count = 1")  # raised to the pages in use: none may be added

        catalogue.engine.dispose()
        with pytest.raises(errors.Unavailable) as info:
            for i in range(5000):  # each new name is a new row: the pages run out
                catalogue.reserve_login([(f"source:{i}", SOURCE), (f"account:n{i}", auth.ACCOUNT_LOCKOUT)])
        assert "refuses writes" in str(info.value) and info.value.retry_after
        catalogue.ping()  # reads still work
        with pytest.raises(sa.exc.OperationalError, match="full"):
            catalogue.check_writable()
    finally:
        catalogue.close()


def test_password_check_slots_refuse_at_once_when_taken():
    checks = auth.PasswordChecks(2)
    with checks.slot(), checks.slot():
        with pytest.raises(errors.Unavailable) as info:
            with checks.slot():
                pass
        assert info.value.retry_after == 1.0
    with checks.slot():
        assert not checks.verify("a password here", auth.hash_password("another one here"))
    assert (checks.computed, checks.peak, checks.running, checks.refused) == (1, 1, 0, 1)
