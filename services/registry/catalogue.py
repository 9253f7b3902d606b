"""The registry's metadata in SQL (SQLite by default, or PostgreSQL): users, models, shares, versions, blobs.

Every method is one short transaction. Blobs live elsewhere (libsgde.server.storage); this module records them, and
decides when one may be deleted, for every registry process that shares the database (see `blobs` below).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa

from libsgde import errors
from libsgde.server.auth import LockoutPolicy
from libsgde.server.sql import SqlStore, db_clock
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("username", sa.String(32), nullable=False, unique=True),
    sa.Column("email", sa.String(254), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("signing_public_key", sa.LargeBinary(32), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    # No longer read (failed logins are counted in login_attempts); kept so that databases made before that table
    # (tables are made by create_all, there are no migrations) still accept new users.
    sa.Column("failed_logins", sa.Integer, nullable=False, default=0),
    sa.Column("locked_until", sa.Float, nullable=False, default=0.0),
    # Ids are never reused (tokens are bound to one), also in SQLite, which would otherwise give a deleted highest id
    # to the next account (create_all makes new tables so; an older SQLite table keeps plain rowids). PostgreSQL's
    # sequences never reuse one.
    sqlite_autoincrement=True,
)

# Failed logins per subject: "account:<username>" (whether or not such a user exists, so that a lockout says nothing
# about who exists) and "source:<address>" (so that one address cannot lock out many accounts, nor many addresses
# guess one account beyond its limit). A login reserves its attempt here before its password is checked.
login_attempts = sa.Table(
    "login_attempts",
    metadata,
    sa.Column("subject", sa.String(100), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("locked_until", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False, index=True),
)

# The health check's write: a row of a few pages, written and deleted, so that a database with no room left (a full
# disk, a full PostgreSQL tablespace) is noticed before logins find it.
write_probes = sa.Table(
    "write_probes",
    metadata,
    sa.Column("probe", sa.String(40), primary_key=True),
    sa.Column("payload", sa.LargeBinary, nullable=False),
)
PROBE_BYTES = 8192

models = sa.Table(
    "models",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("model_id", sa.String(64), nullable=False),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("visibility", sa.Integer, nullable=False),
    sa.Column("data_kind", sa.Integer, nullable=False, default=0),
    sa.Column("data_schema", sa.LargeBinary, nullable=True),
    sa.Column("latest_version", sa.Integer, nullable=False, default=0),
    sa.Column("metrics", sa.Text, nullable=False, default="{}"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("owner_id", "model_id"),
)

model_tags = sa.Table(
    "model_tags",
    metadata,
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("tag", sa.String(32), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
)

model_shares = sa.Table(
    "model_shares",
    metadata,
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
)

versions = sa.Table(
    "versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("signature", sa.LargeBinary(64), nullable=False),
    sa.Column("architecture", sa.String(64), nullable=False),
    sa.Column("data_kind", sa.Integer, nullable=False),
    sa.Column("privacy", sa.LargeBinary, nullable=False),
    sa.Column("manifest_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("model_id", "number"),
)

# Who stored each of a model's current metrics, when, and the version it was measured on (0: not said): the model
# cards' provenance. One row per key of `models.metrics`, written in the same transaction as the map; a key without a
# row was stored before this table existed.
metric_records = sa.Table(
    "metric_records",
    metadata,
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("author", sa.String(32), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# The blob store's contents, guarded across processes. The rule: a blob is deleted from the store only by
# release_blob, with its `blobs` row locked, when no version references it and no upload of it is live; a version is
# added only under the same lock, by a live upload that was registered (begin_upload, under the lock) before its bytes
# were stored. So a deleter either ran before the upload registered (and the upload stores the bytes again after it),
# or it sees the upload or the version and keeps the blob: no version ever points at a deleted blob. An upload's lease
# ends on the database's clock (one clock for all replicas); a publish that outlives it is refused, so a replica
# killed mid-upload blocks nothing for longer than the lease.
blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),  # the blob store may hold these bytes
)

blob_uploads = sa.Table(
    "blob_uploads",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("expires_at", sa.Float, nullable=False),  # seconds since the epoch, on the database's clock
)


@dataclass(frozen=True)
class UserRow:
    id: int
    username: str
    email: str
    password_hash: str
    signing_public_key: bytes
    created_at: float
    failed_logins: int
    locked_until: float


@dataclass(frozen=True)
class ModelRow:
    id: int
    owner: str
    owner_id: int
    model_id: str
    description: str
    tags: list[str]
    visibility: int
    data_kind: int
    data_schema: pb.DataSchema | None
    latest_version: int
    shared_with: list[str]
    metrics: dict[str, float]
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class VersionRow:
    model: ModelRow
    number: int
    sha256: str
    size_bytes: int
    signature: bytes
    architecture: str
    data_kind: int
    privacy: pb.PrivacyReport
    manifest_json: str
    created_at: float


log = logging.getLogger("sgde.registry")


@dataclass(frozen=True)
class MetricProvenance:
    author: str
    version: int
    updated_at: float


class Conflict(Exception):
    """A uniqueness rule was broken (the name is taken)."""


@dataclass(frozen=True)
class Quota:
    """Per-user limits on what the registry stores."""

    versions_per_model: int
    stored_bytes_per_user: int


class QuotaExceeded(Exception):
    """A publish would pass a Quota: `limit` names which ("versions_per_model", "stored_bytes_per_user"), `used`
    is what the user has now."""

    def __init__(self, limit: str, used: int):
        super().__init__(limit, used)
        self.limit, self.used = limit, used


class TooManyMetrics(Exception):
    """A metrics merge would leave more keys than allowed (args[0]: how many)."""


class Gone(Exception):
    """The row a write depends on disappeared meanwhile."""


class Locked(Exception):
    """Logins for `subject` are refused for `seconds` more (too many failures)."""

    def __init__(self, subject: str, seconds: float):
        super().__init__(subject, seconds)
        self.subject = subject
        self.seconds = seconds


PURGE_EVERY_SECONDS = 600.0  # how often a registry forgets long-idle login subjects


class UploadExpired(Exception):
    """The upload outlived its lease: its blob may have been deleted meanwhile, so it may not become a version."""


class Catalogue(SqlStore):
    def __init__(self, url: str):
        super().__init__(url, metadata)
        self._next_purge = 0.0
        self._probe = uuid.uuid4().hex  # one per registry: replicas probe at once

    @contextmanager
    def _writing(self, what: str) -> Iterator[sa.Connection]:
        """A transaction whose failure to write (a full disk, a read-only or unreachable database) is UNAVAILABLE
        with a message for the operator, not an internal error."""
        try:
            with self._tx() as conn:
                yield conn
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as e:
            log.error("database refused a write", extra={"what": what, "error": str(e.orig or e)[:300]})
            raise errors.Unavailable(
                f"the registry cannot record {what} now: its database refuses writes (full disk, read-only or "
                "unreachable); nothing was done; try again later, and tell the registry's operator",
                retry_after=30.0,
            ) from None

    # -- users -------------------------------------------------------------------------------------------------

    def create_user(self, username: str, email: str, password_hash: str, public_key: bytes) -> UserRow:
        now = time.time()
        try:
            with self._writing("new accounts") as conn:
                conn.execute(
                    users.insert().values(
                        username=username,
                        email=email,
                        password_hash=password_hash,
                        signing_public_key=public_key,
                        created_at=now,
                        failed_logins=0,
                        locked_until=0.0,
                    )
                )
        except sa.exc.IntegrityError as e:
            raise Conflict(f"username {username!r} is taken") from e
        user = self.get_user(username)
        assert user is not None
        return user

    def get_user(self, username: str) -> UserRow | None:
        with self._tx() as conn:
            row = conn.execute(users.select().where(users.c.username == username)).mappings().first()
        return UserRow(**row) if row else None

    def reserve_login(self, subjects: list[tuple[str, LockoutPolicy]]) -> None:
        """Counts one failed login for every subject, in one transaction, before the password is checked: a check
        runs only once its failure is on record, so concurrent guesses (through any number of registries sharing
        the database) get no more checks than the policy allows, and a store that cannot record them lets none
        through. Raises Locked (nothing counted) while a subject is locked; locks a subject whose count now passes
        its policy's free failures (a success clears the account's, see `login_succeeded`). Subjects are taken in
        the order given (the source, then the account), so concurrent reservations cannot deadlock."""
        now = time.time()
        if now >= self._next_purge:
            self._purge_attempts(now, max(p.forget_after_seconds for _, p in subjects))
        # Another registry adding one of our new subjects meanwhile fails the transaction (IntegrityError): that
        # subject exists from then on, so len(subjects) retries are enough.
        for attempt in range(len(subjects) + 1):
            try:
                with self._writing("login attempts") as conn:
                    self._reserve(conn, subjects, now)
                return
            except sa.exc.IntegrityError:
                if attempt == len(subjects):
                    raise

    @staticmethod
    def _reserve(conn: sa.Connection, subjects: list[tuple[str, LockoutPolicy]], now: float) -> None:
        names = [s for s, _ in subjects]
        known = set(
            conn.execute(sa.select(login_attempts.c.subject).where(login_attempts.c.subject.in_(names))).scalars()
        )
        for subject in names:
            if subject not in known:
                conn.execute(
                    login_attempts.insert().values(subject=subject, failures=0, locked_until=0.0, updated_at=now)
                )
        c = login_attempts.c
        for subject, policy in subjects:
            counted = conn.execute(
                login_attempts.update()
                .where(c.subject == subject, c.locked_until <= now)
                .values(
                    failures=sa.case((c.updated_at < now - policy.forget_after_seconds, 1), else_=c.failures + 1),
                    updated_at=now,
                )
            )
            if counted.rowcount != 1:
                until = conn.execute(sa.select(c.locked_until).where(c.subject == subject)).scalar_one()
                raise Locked(subject, until - now)  # the transaction rolls back: nothing is counted
            failures = conn.execute(sa.select(c.failures).where(c.subject == subject)).scalar_one()
            lock = policy.lock_seconds(failures)
            if lock > 0:
                conn.execute(login_attempts.update().where(c.subject == subject).values(locked_until=now + lock))

    def login_succeeded(self, account: str, source: str) -> None:
        """Clears the account's failures (the reserved attempt was not one) and takes back the source's reservation;
        a source's lock stays, so that successes on an account of one's own cannot unlock guessing at others."""
        c = login_attempts.c
        with self._writing("login attempts") as conn:  # source first, as `reserve_login` takes them: no deadlock
            conn.execute(
                login_attempts.update()
                .where(c.subject == source)
                .values(failures=sa.case((c.failures > 0, c.failures - 1), else_=0))
            )
            conn.execute(login_attempts.update().where(c.subject == account).values(failures=0, locked_until=0.0))

    def _purge_attempts(self, now: float, older_than: float) -> None:
        """Forgets subjects without an attempt for `older_than` seconds (unknown names must not pile up)."""
        self._next_purge = now + PURGE_EVERY_SECONDS
        c = login_attempts.c
        with self._writing("login attempts") as conn:
            conn.execute(login_attempts.delete().where(c.updated_at < now - older_than, c.locked_until < now))

    def check_writable(self) -> None:
        """Raises unless the database takes a write of a few pages now (the health check: a registry that cannot
        record failed logins must not be sent logins)."""
        with self._tx() as conn:
            conn.execute(write_probes.insert().values(probe=self._probe, payload=secrets.token_bytes(PROBE_BYTES)))
            conn.execute(write_probes.delete().where(write_probes.c.probe == self._probe))

    def usernames_to_ids(self, conn: sa.Connection, names: list[str]) -> dict[str, int]:
        rows = conn.execute(sa.select(users.c.username, users.c.id).where(users.c.username.in_(names))).all()
        return {r.username: r.id for r in rows}

    # -- models ------------------------------------------------------------------------------------------------

    def _model_rows(self, conn: sa.Connection, where, limit: int | None = None) -> list[ModelRow]:
        q = (
            sa.select(models, users.c.username.label("owner"))
            .join(users, users.c.id == models.c.owner_id)
            .where(where)
            .order_by(models.c.id)
        )
        if limit is not None:
            q = q.limit(limit)
        rows = conn.execute(q).mappings().all()
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        tags: dict[int, list[str]] = {i: [] for i in ids}
        for r in conn.execute(
            sa.select(model_tags).where(model_tags.c.model_id.in_(ids)).order_by(model_tags.c.position)
        ):
            tags[r.model_id].append(r.tag)
        shares: dict[int, list[str]] = {i: [] for i in ids}
        for r in conn.execute(
            sa.select(model_shares.c.model_id, users.c.username)
            .join(users, users.c.id == model_shares.c.user_id)
            .where(model_shares.c.model_id.in_(ids))
            .order_by(users.c.username)
        ):
            shares[r.model_id].append(r.username)
        out = []
        for r in rows:
            schema = pb.DataSchema.FromString(r["data_schema"]) if r["data_schema"] else None
            out.append(
                ModelRow(
                    id=r["id"],
                    owner=r["owner"],
                    owner_id=r["owner_id"],
                    model_id=r["model_id"],
                    description=r["description"],
                    tags=tags[r["id"]],
                    visibility=r["visibility"],
                    data_kind=r["data_kind"],
                    data_schema=schema,
                    latest_version=r["latest_version"],
                    shared_with=shares[r["id"]],
                    metrics=json.loads(r["metrics"]),
                    created_at=r["created_at"],
                    updated_at=r["updated_at"],
                )
            )
        return out

    def create_model(
        self,
        owner: UserRow,
        model_id: str,
        description: str,
        tags: list[str],
        visibility: int,
        shared_with: list[str],
        schema: pb.DataSchema | None,
        data_kind: int,
    ) -> ModelRow:
        now = time.time()
        try:
            with self._tx() as conn:
                share_ids = self._share_ids(conn, shared_with)
                new_id = conn.execute(
                    models.insert().values(
                        owner_id=owner.id,
                        model_id=model_id,
                        description=description,
                        visibility=visibility,
                        data_kind=data_kind,
                        data_schema=schema.SerializeToString(deterministic=True) if schema else None,
                        latest_version=0,
                        metrics="{}",
                        created_at=now,
                        updated_at=now,
                    )
                ).inserted_primary_key[0]
                self._set_tags(conn, new_id, tags)
                self._set_shares(conn, new_id, share_ids)
        except sa.exc.IntegrityError as e:
            raise Conflict(f"models/{owner.username}/{model_id} already exists") from e
        model = self.get_model(owner.username, model_id)
        assert model is not None
        return model

    def _share_ids(self, conn: sa.Connection, names: list[str]) -> list[int]:
        found = self.usernames_to_ids(conn, names)
        missing = [n for n in names if n not in found]
        if missing:
            raise KeyError(missing[0])
        return [found[n] for n in names]

    def _set_tags(self, conn: sa.Connection, model_pk: int, tags: list[str]) -> None:
        conn.execute(model_tags.delete().where(model_tags.c.model_id == model_pk))
        if tags:
            conn.execute(
                model_tags.insert(), [{"model_id": model_pk, "tag": t, "position": i} for i, t in enumerate(tags)]
            )

    def _set_shares(self, conn: sa.Connection, model_pk: int, user_ids: list[int]) -> None:
        conn.execute(model_shares.delete().where(model_shares.c.model_id == model_pk))
        if user_ids:
            conn.execute(model_shares.insert(), [{"model_id": model_pk, "user_id": u} for u in user_ids])

    def get_model(self, owner: str, model_id: str) -> ModelRow | None:
        with self._tx() as conn:
            rows = self._model_rows(conn, sa.and_(users.c.username == owner, models.c.model_id == model_id))
        return rows[0] if rows else None

    @staticmethod
    def visible_to(user_id: int):
        """SQL condition: the model is visible to this user."""
        shared = sa.select(model_shares.c.model_id).where(model_shares.c.user_id == user_id)
        return sa.or_(
            models.c.owner_id == user_id,
            models.c.visibility == pb.VISIBILITY_PUBLIC,
            sa.and_(models.c.visibility == pb.VISIBILITY_SHARED, models.c.id.in_(shared)),
        )

    def list_models(
        self, viewer_id: int, after_id: int, limit: int, owner: str = "", tag: str = "", data_kind: int = 0
    ) -> list[ModelRow]:
        cond = [self.visible_to(viewer_id), models.c.id > after_id]
        if owner:
            cond.append(users.c.username == owner)
        if tag:
            cond.append(models.c.id.in_(sa.select(model_tags.c.model_id).where(model_tags.c.tag == tag)))
        if data_kind:
            cond.append(models.c.data_kind == data_kind)
        with self._tx() as conn:
            return self._model_rows(conn, sa.and_(*cond), limit)

    def update_model(
        self,
        model: ModelRow,
        *,
        description: str | None = None,
        tags: list[str] | None = None,
        visibility: int | None = None,
        shared_with: list[str] | None = None,
        metrics: dict[str, float] | None = None,
        author: str = "",
    ) -> ModelRow:
        """Changes what is given; `author` (the caller) is recorded as the author of every metric in `metrics`."""
        values: dict = {"updated_at": time.time()}
        if metrics is not None:  # the whole map is replaced, as a field mask naming a map field means
            values["metrics"] = json.dumps(metrics, sort_keys=True)
        if description is not None:
            values["description"] = description
        if visibility is not None:
            values["visibility"] = visibility
        with self._tx() as conn:
            if conn.execute(models.update().where(models.c.id == model.id).values(**values)).rowcount != 1:
                raise Gone(model.model_id)
            if tags is not None:
                self._set_tags(conn, model.id, tags)
            if shared_with is not None:
                self._set_shares(conn, model.id, self._share_ids(conn, shared_with))
            if metrics is not None:
                conn.execute(metric_records.delete().where(metric_records.c.model_id == model.id))
                self._record_metrics(conn, model.id, list(metrics), author, 0, values["updated_at"])
        updated = self.get_model(model.owner, model.model_id)
        if updated is None:
            raise Gone(model.model_id)
        return updated

    def merge_metrics(
        self,
        model: ModelRow,
        metrics: dict[str, float],
        remove: list[str],
        limit: int,
        author: str = "",
        version: int = 0,
    ) -> ModelRow:
        """Sets `metrics` and removes `remove` in one transaction (the row locked while it is read and written),
        recording `author` and the `version` they were measured on for each key set; raises TooManyMetrics if the
        result would hold more than `limit` keys, Gone if the model is gone."""
        with self._tx() as conn:
            current = conn.execute(
                sa.select(models.c.metrics).where(models.c.id == model.id).with_for_update()
            ).scalar_one_or_none()
            if current is None:
                raise Gone(model.model_id)
            merged = {k: v for k, v in json.loads(current or "{}").items() if k not in set(remove)}
            merged.update(metrics)
            if len(merged) > limit:
                raise TooManyMetrics(len(merged))
            now = time.time()
            conn.execute(
                models.update()
                .where(models.c.id == model.id)
                .values(metrics=json.dumps(merged, sort_keys=True), updated_at=now)
            )
            replaced = sorted({*remove, *metrics})  # their records go; those set are written anew below
            if replaced:
                c = metric_records.c
                conn.execute(metric_records.delete().where(c.model_id == model.id, c.key.in_(replaced)))
            self._record_metrics(conn, model.id, list(metrics), author, version, now)
        updated = self.get_model(model.owner, model.model_id)
        if updated is None:
            raise Gone(model.model_id)
        return updated

    @staticmethod
    def _record_metrics(
        conn: sa.Connection, model_pk: int, keys: list[str], author: str, version: int, now: float
    ) -> None:
        if keys:
            conn.execute(
                metric_records.insert(),
                [
                    {"model_id": model_pk, "key": k, "author": author, "version": version, "updated_at": now}
                    for k in keys
                ],
            )

    def metrics_with_provenance(self, model: ModelRow) -> dict[str, tuple[float, MetricProvenance | None]]:
        """The model's metrics now, each with who stored it, when, and on which version (None for keys stored
        before the registry recorded this), read in one transaction so that no value is paired with another
        writer's record."""
        c = metric_records.c
        with self._tx() as conn:
            # FOR SHARE: waits for a writer of the row (which holds it FOR UPDATE), so under PostgreSQL's READ
            # COMMITTED the records read next are those committed with this map.
            stored = conn.execute(
                sa.select(models.c.metrics).where(models.c.id == model.id).with_for_update(read=True)
            ).scalar()
            rows = conn.execute(sa.select(metric_records).where(c.model_id == model.id)).mappings()
            provenance = {r["key"]: MetricProvenance(r["author"], r["version"], r["updated_at"]) for r in rows}
        metrics = json.loads(stored) if stored is not None else {}
        return {key: (value, provenance.get(key)) for key, value in metrics.items()}

    def delete_model(self, model: ModelRow) -> list[str]:
        """Deletes the model and its versions; returns the sha256 of their blobs, for release_blob to delete those
        no one uses. (Deciding that here would be wrong: two transactions deleting a blob's last two references,
        each seeing the other's version still there, would both keep it.)"""
        with self._tx() as conn:
            shas = set(conn.execute(sa.select(versions.c.sha256).where(versions.c.model_id == model.id)).scalars())
            conn.execute(versions.delete().where(versions.c.model_id == model.id))
            conn.execute(model_tags.delete().where(model_tags.c.model_id == model.id))
            conn.execute(model_shares.delete().where(model_shares.c.model_id == model.id))
            conn.execute(metric_records.delete().where(metric_records.c.model_id == model.id))
            conn.execute(models.delete().where(models.c.id == model.id))
        return sorted(shas)

    # -- versions ----------------------------------------------------------------------------------------------

    def add_version(
        self,
        model: ModelRow,
        *,
        sha256: str,
        size_bytes: int,
        signature: bytes,
        architecture: str,
        data_kind: int,
        privacy: pb.PrivacyReport,
        manifest_json: str,
        schema: pb.DataSchema,
        upload: int,
        quota: Quota | None = None,
    ) -> int:
        """Allocates the next number and records the version in one transaction, ending `upload` (begin_upload's,
        whose bytes are stored); sets the model's schema if it had none. Raises Gone if the model was deleted
        meanwhile, UploadExpired if the upload's lease ended, QuotaExceeded if the version would pass `quota`
        (checked with the owner's row locked, so concurrent publishes through any replica cannot all pass)."""
        now = time.time()
        with self._tx() as conn:
            if quota is not None:
                conn.execute(sa.select(users.c.id).where(users.c.id == model.owner_id).with_for_update())
                self._check_quota(conn, model, size_bytes, quota)
            self._lock_blob(conn, sha256)
            live = conn.execute(
                sa.select(blob_uploads.c.id).where(
                    blob_uploads.c.id == upload,
                    blob_uploads.c.sha256 == sha256,
                    blob_uploads.c.expires_at > db_clock(conn.dialect.name),
                )
            ).first()
            if live is None:
                raise UploadExpired(sha256)
            conn.execute(blob_uploads.delete().where(blob_uploads.c.id == upload))
            bumped = conn.execute(
                models.update()
                .where(models.c.id == model.id)
                .values(
                    latest_version=models.c.latest_version + 1,
                    updated_at=now,
                    data_kind=data_kind,
                    data_schema=sa.func.coalesce(models.c.data_schema, schema.SerializeToString(deterministic=True)),
                )
            )
            if bumped.rowcount != 1:
                raise Gone(model.model_id)
            number = conn.execute(sa.select(models.c.latest_version).where(models.c.id == model.id)).scalar_one()
            conn.execute(
                versions.insert().values(
                    model_id=model.id,
                    number=number,
                    sha256=sha256,
                    size_bytes=size_bytes,
                    signature=signature,
                    architecture=architecture,
                    data_kind=data_kind,
                    privacy=privacy.SerializeToString(deterministic=True),
                    manifest_json=manifest_json,
                    created_at=now,
                )
            )
        return number

    def _check_quota(self, conn: sa.Connection, model: ModelRow, size_bytes: int, quota: Quota) -> None:
        count = sa.select(sa.func.count()).select_from(versions).where(versions.c.model_id == model.id)
        used = int(conn.execute(count).scalar_one())
        if used >= quota.versions_per_model:
            raise QuotaExceeded("versions_per_model", used)
        stored = self._stored_bytes(conn, model.owner_id)
        if stored + size_bytes > quota.stored_bytes_per_user:
            raise QuotaExceeded("stored_bytes_per_user", stored)

    @staticmethod
    def _stored_bytes(conn: sa.Connection, owner_id: int) -> int:
        total = (
            sa.select(sa.func.coalesce(sa.func.sum(versions.c.size_bytes), 0))
            .select_from(versions.join(models, versions.c.model_id == models.c.id))
            .where(models.c.owner_id == owner_id)
        )
        return int(conn.execute(total).scalar_one())

    def check_quota(self, model: ModelRow, size_bytes: int, quota: Quota) -> None:
        """Raises QuotaExceeded if a version of `size_bytes` would pass `quota` now (before its bytes are sent;
        add_version checks again, atomically)."""
        with self._tx() as conn:
            self._check_quota(conn, model, size_bytes, quota)

    def _version_rows(self, conn: sa.Connection, model: ModelRow, where, limit: int | None = None) -> list[VersionRow]:
        q = sa.select(versions).where(versions.c.model_id == model.id, where).order_by(versions.c.number)
        if limit is not None:
            q = q.limit(limit)
        return [
            VersionRow(
                model=model,
                number=r["number"],
                sha256=r["sha256"],
                size_bytes=r["size_bytes"],
                signature=r["signature"],
                architecture=r["architecture"],
                data_kind=r["data_kind"],
                privacy=pb.PrivacyReport.FromString(r["privacy"]),
                manifest_json=r["manifest_json"],
                created_at=r["created_at"],
            )
            for r in conn.execute(q).mappings()
        ]

    def get_version(self, model: ModelRow, number: int | None) -> VersionRow | None:
        """Version `number` of the model, or its newest when number is None."""
        with self._tx() as conn:
            if number is None:
                number = conn.execute(
                    sa.select(sa.func.max(versions.c.number)).where(versions.c.model_id == model.id)
                ).scalar()
                if number is None:
                    return None
            rows = self._version_rows(conn, model, versions.c.number == number)
        return rows[0] if rows else None

    def list_versions(self, model: ModelRow, after: int, limit: int) -> list[VersionRow]:
        with self._tx() as conn:
            return self._version_rows(conn, model, versions.c.number > after, limit)

    # -- blobs (the rule is above, at the `blobs` table) ----------------------------------------------------------

    def _lock_blob(self, conn: sa.Connection, sha256: str) -> None:
        """Locks the blob's row until the transaction ends, making it first if missing. (SQLite has no row locks:
        its transactions all take the database's write lock, BEGIN IMMEDIATE, which serialises them anyway.)"""
        for _ in range(5):
            try:
                with conn.begin_nested():
                    conn.execute(blobs.insert().values(sha256=sha256))
            except sa.exc.IntegrityError:
                pass  # there already
            locked = conn.execute(sa.select(blobs.c.sha256).where(blobs.c.sha256 == sha256).with_for_update())
            if locked.first() is not None:
                return
            # a deleter removed the row between our insert and our lock (PostgreSQL, READ COMMITTED): once more
        raise RuntimeError(f"could not lock blob {sha256}: its row keeps disappearing")

    def begin_upload(self, sha256: str, lease_seconds: float) -> int:
        """Registers an upload of these bytes, before they are stored: no deleter removes the blob while it is
        live, for `lease_seconds` at most. Returns its id, for add_version or release_blob."""
        with self._tx() as conn:
            self._lock_blob(conn, sha256)
            expires = db_clock(conn.dialect.name) + lease_seconds
            return conn.execute(blob_uploads.insert().values(sha256=sha256, expires_at=expires)).inserted_primary_key[0]

    def release_blob(self, sha256: str, delete_blob: Callable[[str], None], upload: int | None = None) -> bool:
        """Ends `upload` (if given), then deletes the blob, calling `delete_blob` with its row locked, if no version
        references it and no upload of it is live. Returns whether it was deleted; an error from `delete_blob` leaves
        the row, so that unreferenced_blobs finds it again."""
        if upload is not None:
            with self._tx() as conn:
                conn.execute(blob_uploads.delete().where(blob_uploads.c.id == upload))
        with self._tx() as conn:
            self._lock_blob(conn, sha256)
            if conn.execute(sa.select(self._in_use(conn, sha256))).scalar():
                return False
            delete_blob(sha256)  # still locked: no upload can register until the bytes are gone
            conn.execute(blob_uploads.delete().where(blob_uploads.c.sha256 == sha256))  # expired ones
            conn.execute(blobs.delete().where(blobs.c.sha256 == sha256))
        return True

    @staticmethod
    def _in_use(conn: sa.Connection, sha256) -> sa.ColumnElement[bool]:
        """SQL, true while a version references the blob `sha256` (a value, or a column to correlate with) or a live
        upload is storing it."""
        referenced = sa.select(versions.c.id).where(versions.c.sha256 == sha256).exists()
        uploading = (
            sa.select(blob_uploads.c.id)
            .where(blob_uploads.c.sha256 == sha256, blob_uploads.c.expires_at > db_clock(conn.dialect.name))
            .exists()
        )
        return sa.or_(referenced, uploading)

    def unreferenced_blobs(self) -> list[str]:
        """Blobs that no version references and no live upload is storing: left by a replica killed mid-publish
        (after its lease), or by a deletion the blob store refused. release_blob deletes them."""
        with self._tx() as conn:
            query = sa.select(blobs.c.sha256).where(~self._in_use(conn, blobs.c.sha256)).order_by(blobs.c.sha256)
            return list(conn.execute(query).scalars())
