"""Two registry processes on one PostgreSQL and one S3 bucket, as the production overlay runs them: what one replica
does, the other sees, and neither can break the other's invariants (a version's blob is in the bucket; a blob in the
bucket has a version, or an upload still going)."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from libsgde.client import Client, SgdeError
from libsgde.security import signing
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from tests.support.fixtures import Replicas
from tests.support.services import PASSWORD, make_artifact, user_client

pytestmark = pytest.mark.integration  # real servers on loopback sockets

CODE = grpc.StatusCode


def clients_of(replicas: Replicas, tmp_path: Path) -> list[Client]:
    """One user, registered and logged in on the first replica; a client of theirs for each replica, all on the token
    the first one issued."""
    first = user_client(replicas.addresses[0], replicas.pki, tmp_path)
    return [first] + [on_token(a, first, replicas) for a in replicas.addresses[1:]]


def on_token(address: str, client: Client, replicas: Replicas) -> Client:
    """A client of `address` acting with `client`'s token (and signing key); whoami proves the token works there."""
    other = Client(address, home=client.home, pki=replicas.pki.root, token=client._token)
    assert other.whoami().username == client.username
    return other


def blobs_in_bucket(replicas: Replicas) -> set[str]:
    objects = replicas.seaweed.client().list_objects(replicas.bucket, prefix="sha256/", recursive=True)
    return {o.object_name.removeprefix("sha256/") for o in objects}


def database_of(replicas: Replicas) -> str:
    return replicas.database_url.rsplit("/", 1)[1]


@contextmanager
def row_locks(postgres, replicas: Replicas, select: str) -> Iterator[None]:
    """Holds the rows `select` names locked (FOR UPDATE) in a transaction of the test's own: a replica's write to them
    waits until the block ends. This stops a replica at a chosen point, to run the other one there."""
    with postgres.connect(database_of(replicas)) as conn:
        conn.execute("BEGIN")
        conn.execute(f"{select} FOR UPDATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")


def lock_waiters(postgres, replicas: Replicas) -> int:
    """How many of the database's sessions wait for a lock."""
    found = postgres.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
        database_of(replicas),
    )
    return found[0][0]


def wait_for(what: str, check: Callable[[], object], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_token_issued_by_one_replica_is_accepted_by_the_other(two_registries, tmp_path):
    on_first, on_second = clients_of(two_registries, tmp_path)  # the first replica's token, on the second
    model = on_second.create_model("made-on-the-second")
    assert on_first.get_model("made-on-the-second").name == model.name
    # and the other way: a token the second replica issues works on the first
    second_login = Client(two_registries.addresses[1], home=on_first.home, pki=two_registries.pki.root)
    second_login.login(on_first.username, PASSWORD, save=False)
    back_on_first = on_token(two_registries.addresses[0], second_login, two_registries)
    assert back_on_first.get_model("made-on-the-second").name == model.name
    for client in (on_first, on_second, second_login, back_on_first):
        client.close()


def test_concurrent_publishes_downloads_and_deletes_of_one_blob_across_replicas(two_registries, tmp_path):
    """The same bytes published into new models through one replica while the models holding them are deleted
    (and downloaded) through the other. Each round ends with: every published version downloadable (its blob is
    there), and, once the last holder is deleted, the blob gone (no orphan)."""
    clients = clients_of(two_registries, tmp_path)
    art = make_artifact(tmp_path / "same.safetensors", n_floats=64)
    data = art.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    rng = random.Random(12)
    failures: list[str] = []

    def after_jitter(op, *args, most: float):
        time.sleep(rng.random() * most)  # sweep the racing operations across each other's windows
        return op(*args)

    def publish(client: Client, model: str) -> str:
        return client.push(art, model, create=False).name

    def new_holder(client: Client, model: str) -> str:
        client.create_model(model)
        return model

    def download(client: Client, model: str, dest: Path) -> None:
        try:
            path, _ = client.pull(model, dest)
        except SgdeError as e:  # deleted first: fine; anything else (DATA_LOSS: its blob went) is not
            if e.code != CODE.NOT_FOUND:
                failures.append(f"download of {model}: {e}")
            return
        if path.read_bytes() != data:
            failures.append(f"download of {model}: other bytes")

    def delete_all(holders: list[str], pool: ThreadPoolExecutor) -> None:
        done = [pool.submit(after_jitter, clients[i % 2].delete_model, m, most=0.005) for i, m in enumerate(holders)]
        for f in done:
            f.result()

    holders = [new_holder(clients[i], f"start-{i}") for i in (0, 1)]
    for i, model in enumerate(holders):
        publish(clients[i], model)
    with ThreadPoolExecutor(8) as pool:
        for round_ in range(30):
            if round_ % 3 == 2:  # the two last holders deleted at once, through different replicas
                delete_all(holders, pool)
                assert sha not in blobs_in_bucket(two_registries), f"round {round_}: orphan blob"
                holders = [new_holder(clients[i], f"again{round_}-{i}") for i in (0, 1)]
                for i, model in enumerate(holders):
                    publish(clients[i], model)
                continue
            fresh = [new_holder(clients[i], f"m{round_}-{i}") for i in (0, 1)]
            tasks = [
                pool.submit(after_jitter, clients[i % 2].delete_model, m, most=0.06) for i, m in enumerate(holders)
            ]
            tasks += [
                pool.submit(after_jitter, download, clients[(i + 1) % 2], m, tmp_path / f"d{round_}-{i}", most=0.06)
                for i, m in enumerate(holders)
            ]
            published = [pool.submit(publish, clients[(i + 1) % 2], m) for i, m in enumerate(fresh)]
            for task in tasks:
                task.result()
            names = [p.result() for p in published]
            for i, name in enumerate(names):  # no lost version, and its blob is there
                model = fresh[i]
                assert [v.name for v in clients[i].list_versions(model)] == [name], f"round {round_}: lost {name}"
                download(clients[i], model, tmp_path / f"check{round_}-{i}")
            assert not failures, f"round {round_}: {failures}"
            assert sha in blobs_in_bucket(two_registries), f"round {round_}: the blob of {names} is gone"
            holders = fresh
        delete_all(holders, pool)
    assert sha not in blobs_in_bucket(two_registries), "every holder is deleted: so is the blob"
    for client in clients:
        client.close()


def test_a_delete_never_removes_the_blob_of_a_publish_about_to_commit(two_registries, postgres, tmp_path):
    """One replica's publish stopped between storing the bytes and committing the version (the test holds the target
    model's row); meanwhile the other replica deletes the only model that held the same bytes. The blob must stay:
    the publish commits when let go, and its version downloads."""
    on_first, on_second = clients_of(two_registries, tmp_path)
    art = make_artifact(tmp_path / "same.safetensors", n_floats=64, seed=3)
    on_first.push(art, "holder")
    on_second.create_model("newcomer")
    with ThreadPoolExecutor(2) as pool:
        with row_locks(postgres, two_registries, "SELECT id FROM models WHERE model_id = 'newcomer'"):
            publish = pool.submit(on_second.push, art, "newcomer", create=False)
            wait_for("the publish to wait at its commit", lambda: lock_waiters(postgres, two_registries) == 1)
            delete = pool.submit(on_first.delete_model, "holder")
            # the delete either finishes meanwhile or waits for the publish: both are allowed; deleting the blob is not
            wait_for(
                "the delete to finish or wait", lambda: delete.done() or lock_waiters(postgres, two_registries) > 1
            )
        assert publish.result().number == 1
        delete.result()
    path, _ = on_first.pull("newcomer", tmp_path / "back.safetensors")  # DATA_LOSS if its blob was deleted
    assert path.read_bytes() == art.read_bytes()
    assert hashlib.sha256(art.read_bytes()).hexdigest() in blobs_in_bucket(two_registries)
    for client in (on_first, on_second):
        client.close()


def test_a_replica_killed_mid_publish_leaves_nothing_half_visible(two_registries, postgres, tmp_path):
    """Killed after storing the bytes, before committing the version (the test holds the blob's row lock, so the
    commit waits, then kills the replica): no version appears, the blob left behind is invisible, a replica starting
    after the upload's lease deletes it, and the same bytes publish again."""
    lease = 4
    doomed = two_registries.replica(SGDE_REGISTRY_UPLOAD_LEASE_SECONDS=str(lease))
    doomed.start()
    alice, survivor = clients_of(two_registries, tmp_path)[:2]
    alice.create_model("interrupted")
    art = make_artifact(tmp_path / "a.safetensors", n_floats=64, seed=5)
    data = art.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    key = signing.load_signing_key(alice.signing_key_path(alice.username))
    header = rpb.PublishVersionRequest.Header(
        model=f"models/{alice.username}/interrupted",
        sha256=sha,
        size_bytes=len(data),
        signature=signing.sign_artifact(key, sha),
    )
    send_rest = threading.Event()

    def requests():
        yield rpb.PublishVersionRequest(header=header)
        send_rest.wait(60)
        yield rpb.PublishVersionRequest(chunk=data)

    on_doomed = on_token(doomed.address, alice, two_registries)

    def rows(sql: str) -> list[tuple]:
        return postgres.execute(sql, database_of(two_registries))

    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(on_doomed.registry.PublishVersion, requests(), metadata=on_doomed._metadata(), timeout=60)
        wait_for("the upload to register", lambda: rows(f"SELECT 1 FROM blob_uploads WHERE sha256 = '{sha}'"))
        with row_locks(postgres, two_registries, f"SELECT 1 FROM blobs WHERE sha256 = '{sha}'"):
            send_rest.set()
            wait_for("the commit to wait for the lock", lambda: lock_waiters(postgres, two_registries) == 1)
            assert sha in blobs_in_bucket(two_registries), "the bytes are stored, the version not yet committed"
            doomed.kill()
        with pytest.raises(grpc.RpcError) as info:
            call.result()
        assert info.value.code() == CODE.UNAVAILABLE
    on_doomed.close()

    # Nothing half-visible: no version, no version number taken, on either surviving replica.
    for client in (alice, survivor):
        assert list(client.list_versions("interrupted")) == []
        assert client.get_model("interrupted").latest_version == 0
    # The blob without a version is harmless meanwhile (nothing lists or serves it); after the dead upload's lease,
    # the next replica to start deletes it.
    assert sha in blobs_in_bucket(two_registries)
    wait_for(
        "the lease to end",
        lambda: rows(
            f"SELECT 1 FROM blob_uploads WHERE sha256 = '{sha}' AND expires_at < extract(epoch FROM clock_timestamp())"
        ),
    )
    two_registries.replica().start()
    assert sha not in blobs_in_bucket(two_registries)
    for table in ("blob_uploads", "blobs"):
        assert rows(f"SELECT * FROM {table} WHERE sha256 = '{sha}'") == []
    # and the bytes publish again, whole
    assert alice.push(art, "interrupted").number == 1
    path, _ = survivor.pull("interrupted", tmp_path / "back.safetensors")
    assert path.read_bytes() == data
    alice.close()
    survivor.close()


def test_replicas_starting_together_create_the_tables_once(postgres):
    """Each replica creates the tables it finds missing as it starts: several at once on an empty database must not
    each try and all but one fail on the duplicate."""
    from services.registry.catalogue import Catalogue

    def open_catalogue(url: str, barrier: threading.Barrier) -> None:
        barrier.wait(10)
        Catalogue(url).close()

    for _ in range(3):
        url, barrier = postgres.new_database("together"), threading.Barrier(4)
        with ThreadPoolExecutor(4) as pool:
            for started in [pool.submit(open_catalogue, url, barrier) for _ in range(4)]:
                started.result()
