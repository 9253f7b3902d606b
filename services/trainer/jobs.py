"""The trainer's state in SQL (SQLite in WAL mode under the state dir): uploaded datasets, jobs and their notable
progress events.

Every method is one short transaction. State changes are compare-and-set (`transition`), so that a cancel and a
worker claiming the same queued job never both win.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from libsgde.server.sql import SqlStore
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb

metadata = sa.MetaData()

datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner", sa.String(32), nullable=False, index=True),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    # Relative to the state dir.
    sa.Column("path", sa.String(1024), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

jobs = sa.Table(
    "jobs",
    metadata,
    # Submission order (queue order, listing order).
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(32), nullable=False, unique=True),
    sa.Column("owner", sa.String(32), nullable=False, index=True),
    sa.Column("state", sa.Integer, nullable=False, index=True),
    sa.Column("spec", sa.LargeBinary, nullable=False),
    sa.Column("data_schema", sa.LargeBinary, nullable=False),
    sa.Column("dataset", sa.String(2048), nullable=False),
    sa.Column("publish_model", sa.String(200), nullable=False),
    sa.Column("published_version", sa.String(220), nullable=False, default=""),
    sa.Column("artifact_sha256", sa.String(64), nullable=False, default=""),
    sa.Column("privacy", sa.LargeBinary, nullable=True),
    sa.Column("latest_progress", sa.LargeBinary, nullable=True),
    sa.Column("error", sa.Text, nullable=False, default=""),
    # NULL when the client gave none (NULLs never collide in the unique constraint).
    sa.Column("request_id", sa.String(64), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("ended_at", sa.Float, nullable=True),
    sa.UniqueConstraint("owner", "request_id"),
)

# Progress events that carry a message ("noise multiplier ...", "resumed from step 40"): WatchJob replays them, so a
# watcher that arrives late still learns what happened.
job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(32), nullable=False, index=True),
    sa.Column("event", sa.LargeBinary, nullable=False),
)

MAX_EVENTS_PER_JOB = 100

QUEUED, RUNNING, SUCCEEDED, PUBLISHED, FAILED, CANCELLED = (
    tpb.JOB_STATE_QUEUED,
    tpb.JOB_STATE_RUNNING,
    tpb.JOB_STATE_SUCCEEDED,
    tpb.JOB_STATE_PUBLISHED,
    tpb.JOB_STATE_FAILED,
    tpb.JOB_STATE_CANCELLED,
)
# States after which training no longer moves (a SUCCEEDED job may still be published).
ENDED = frozenset({SUCCEEDED, PUBLISHED, FAILED, CANCELLED})


def new_id() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class DatasetRow:
    id: str
    owner: str
    filename: str
    size_bytes: int
    sha256: str
    path: str
    created_at: float


@dataclass(frozen=True)
class JobRow:
    seq: int
    id: str
    owner: str
    state: int
    spec: tpb.TrainingSpec
    data_schema: pb.DataSchema
    dataset: str
    publish_model: str
    published_version: str
    artifact_sha256: str
    privacy: pb.PrivacyReport | None
    latest_progress: tpb.ProgressEvent | None
    error: str
    request_id: str | None
    created_at: float
    started_at: float | None
    ended_at: float | None

    @property
    def name(self) -> str:
        return f"jobs/{self.id}"


class Conflict(Exception):
    """A uniqueness rule was broken (e.g. the request id was used before)."""


class QuotaExceeded(Exception):
    """A per-user limit would be passed; `used` is what the user has now."""

    def __init__(self, used: int):
        super().__init__(used)
        self.used = used


class InUse(Exception):
    """The dataset is named by queued or running jobs (`jobs`)."""

    def __init__(self, job_names: list[str]):
        super().__init__(", ".join(job_names))
        self.jobs = job_names


def _row(r) -> JobRow:
    return JobRow(
        seq=r["seq"],
        id=r["id"],
        owner=r["owner"],
        state=r["state"],
        spec=tpb.TrainingSpec.FromString(r["spec"]),
        data_schema=pb.DataSchema.FromString(r["data_schema"]),
        dataset=r["dataset"],
        publish_model=r["publish_model"],
        published_version=r["published_version"],
        artifact_sha256=r["artifact_sha256"],
        privacy=pb.PrivacyReport.FromString(r["privacy"]) if r["privacy"] is not None else None,
        latest_progress=(
            tpb.ProgressEvent.FromString(r["latest_progress"]) if r["latest_progress"] is not None else None
        ),
        error=r["error"],
        request_id=r["request_id"],
        created_at=r["created_at"],
        started_at=r["started_at"],
        ended_at=r["ended_at"],
    )


def _blob(message) -> bytes:
    return message.SerializeToString(deterministic=True)


class JobStore(SqlStore):
    def __init__(self, url: str):
        super().__init__(url, metadata)

    # -- datasets ----------------------------------------------------------------------------------------------

    def add_dataset(
        self,
        dataset_id: str,
        owner: str,
        filename: str,
        size_bytes: int,
        sha256: str,
        path: str,
        max_owner_bytes: int | None = None,
    ) -> DatasetRow:
        """Records an upload; raises QuotaExceeded if the owner's datasets would pass `max_owner_bytes` (checked in
        the same transaction, so concurrent uploads cannot all pass)."""
        row = DatasetRow(dataset_id, owner, filename, size_bytes, sha256, path, time.time())
        with self._tx() as conn:
            if max_owner_bytes is not None:
                used = self._owner_bytes(conn, owner)
                if used + size_bytes > max_owner_bytes:
                    raise QuotaExceeded(used)
            conn.execute(
                datasets.insert().values(
                    id=row.id,
                    owner=owner,
                    filename=filename,
                    size_bytes=size_bytes,
                    sha256=sha256,
                    path=path,
                    created_at=row.created_at,
                )
            )
        return row

    def get_dataset(self, dataset_id: str) -> DatasetRow | None:
        with self._tx() as conn:
            r = conn.execute(datasets.select().where(datasets.c.id == dataset_id)).mappings().first()
        return DatasetRow(**r) if r else None

    @staticmethod
    def _owner_bytes(conn: sa.Connection, owner: str) -> int:
        total = sa.select(sa.func.coalesce(sa.func.sum(datasets.c.size_bytes), 0)).where(datasets.c.owner == owner)
        return int(conn.execute(total).scalar_one())

    def owner_dataset_bytes(self, owner: str) -> int:
        with self._tx() as conn:
            return self._owner_bytes(conn, owner)

    def list_datasets(self, owner: str, after: tuple[float, str] | None, limit: int) -> list[DatasetRow]:
        """The owner's datasets, newest first, from after (created_at, id) `after` of a previous page."""
        c = datasets.c
        query = datasets.select().where(c.owner == owner)
        if after is not None:
            query = query.where(sa.or_(c.created_at < after[0], sa.and_(c.created_at == after[0], c.id < after[1])))
        with self._tx() as conn:
            rows = conn.execute(query.order_by(c.created_at.desc(), c.id.desc()).limit(limit)).mappings().all()
        return [DatasetRow(**r) for r in rows]

    def delete_dataset(self, dataset_id: str) -> DatasetRow | None:
        """Removes the record (the caller removes the file); raises InUse while queued or running jobs name it."""
        with self._tx() as conn:
            r = conn.execute(datasets.select().where(datasets.c.id == dataset_id)).mappings().first()
            if r is None:
                return None
            users = conn.execute(
                sa.select(jobs.c.id).where(
                    jobs.c.dataset == f"datasets/{dataset_id}", jobs.c.state.in_([QUEUED, RUNNING])
                )
            ).scalars()
            names = [f"jobs/{j}" for j in users]
            if names:
                raise InUse(names)
            conn.execute(datasets.delete().where(datasets.c.id == dataset_id))
        return DatasetRow(**r)

    def dataset_paths(self) -> set[str]:
        with self._tx() as conn:
            return set(conn.execute(sa.select(datasets.c.path)).scalars())

    # -- jobs --------------------------------------------------------------------------------------------------

    def create_job(
        self,
        owner: str,
        spec: tpb.TrainingSpec,
        schema: pb.DataSchema,
        dataset: str,
        publish_model: str,
        request_id: str | None,
        max_unfinished: int | None = None,
    ) -> JobRow:
        """Queues a job; raises QuotaExceeded if the owner has `max_unfinished` queued or running jobs already
        (checked in the same transaction), Conflict if the request id was used before."""
        job_id = new_id()
        try:
            with self._tx() as conn:
                if max_unfinished is not None:
                    used = self._unfinished(conn, owner)
                    if used >= max_unfinished:
                        raise QuotaExceeded(used)
                conn.execute(
                    jobs.insert().values(
                        id=job_id,
                        owner=owner,
                        state=QUEUED,
                        spec=_blob(spec),
                        data_schema=_blob(schema),
                        dataset=dataset,
                        publish_model=publish_model,
                        published_version="",
                        artifact_sha256="",
                        error="",
                        request_id=request_id or None,
                        created_at=time.time(),
                    )
                )
        except sa.exc.IntegrityError as e:
            raise Conflict(f"request id {request_id!r} was used before") from e
        job = self.get_job(job_id)
        assert job is not None
        return job

    @staticmethod
    def _unfinished(conn: sa.Connection, owner: str) -> int:
        count = sa.select(sa.func.count()).where(jobs.c.owner == owner, jobs.c.state.in_([QUEUED, RUNNING]))
        return int(conn.execute(count).scalar_one())

    def unfinished_jobs(self, owner: str) -> int:
        """How many of the owner's jobs are queued or running."""
        with self._tx() as conn:
            return self._unfinished(conn, owner)

    def get_job(self, job_id: str) -> JobRow | None:
        with self._tx() as conn:
            r = conn.execute(jobs.select().where(jobs.c.id == job_id)).mappings().first()
        return _row(r) if r else None

    def find_request(self, owner: str, request_id: str) -> JobRow | None:
        with self._tx() as conn:
            r = (
                conn.execute(jobs.select().where(jobs.c.owner == owner, jobs.c.request_id == request_id))
                .mappings()
                .first()
            )
        return _row(r) if r else None

    def list_jobs(self, owner: str, before_seq: int, limit: int, state: int = 0) -> list[JobRow]:
        """The owner's jobs, newest first, submitted before `before_seq` (0: from the newest)."""
        cond = [jobs.c.owner == owner]
        if before_seq:
            cond.append(jobs.c.seq < before_seq)
        if state:
            cond.append(jobs.c.state == state)
        with self._tx() as conn:
            rows = conn.execute(jobs.select().where(*cond).order_by(jobs.c.seq.desc()).limit(limit)).mappings()
            return [_row(r) for r in rows]

    def jobs_in(self, states: Iterable[int]) -> list[JobRow]:
        """Every job in one of `states`, in submission order."""
        with self._tx() as conn:
            rows = conn.execute(jobs.select().where(jobs.c.state.in_(list(states))).order_by(jobs.c.seq)).mappings()
            return [_row(r) for r in rows]

    def transition(self, job_id: str, from_states: Iterable[int], to_state: int, **values) -> bool:
        """Moves the job to `to_state` (setting `values`) if it is in one of `from_states`; False if it is not."""
        if "privacy" in values and values["privacy"] is not None:
            values["privacy"] = _blob(values["privacy"])
        if "latest_progress" in values and values["latest_progress"] is not None:
            values["latest_progress"] = _blob(values["latest_progress"])
        with self._tx() as conn:
            done = conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.state.in_(list(from_states)))
                .values(state=to_state, **values)
            )
            return done.rowcount == 1

    def claim(self, job_id: str) -> bool:
        """QUEUED -> RUNNING for a worker (the first start time is kept across restarts); False if the job is no
        longer queued (cancelled meanwhile)."""
        with self._tx() as conn:
            done = conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.state == QUEUED)
                .values(state=RUNNING, started_at=sa.func.coalesce(jobs.c.started_at, time.time()))
            )
            return done.rowcount == 1

    def set_progress(
        self, job_id: str, progress: tpb.ProgressEvent, notable: bool = False, while_state: int | None = RUNNING
    ) -> None:
        """Records the latest progress (only while the job is in `while_state`, so that a late event never hides
        the final one); a notable event (one with a message) is also kept for replay."""
        with self._tx() as conn:
            where = [jobs.c.id == job_id]
            if while_state is not None:
                where.append(jobs.c.state == while_state)
            conn.execute(jobs.update().where(*where).values(latest_progress=_blob(progress)))
            if notable:
                conn.execute(job_events.insert().values(job_id=job_id, event=_blob(progress)))
                keep = (
                    sa.select(job_events.c.id)
                    .where(job_events.c.job_id == job_id)
                    .order_by(job_events.c.id.desc())
                    .limit(MAX_EVENTS_PER_JOB)
                )
                conn.execute(job_events.delete().where(job_events.c.job_id == job_id, job_events.c.id.not_in(keep)))

    def events(self, job_id: str) -> list[tpb.ProgressEvent]:
        with self._tx() as conn:
            blobs = conn.execute(
                sa.select(job_events.c.event).where(job_events.c.job_id == job_id).order_by(job_events.c.id)
            ).scalars()
            return [tpb.ProgressEvent.FromString(b) for b in blobs]
