"""TrainerService: validates requests, authorises the caller (with the registry), and hands work to the job queue and
libsgde. No modelling logic lives here.

Users see and act on their own jobs and datasets only: anyone else's are NOT_FOUND, exactly like ones that do not
exist. The data stays in the silo: no response and no log line carries a value of it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import empty_pb2, timestamp_pb2

from libsgde import errors
from libsgde.domain.names import (
    DATASET_NAME_RE,
    FILENAME_RE,
    JOB_NAME_RE,
    MODEL_ID_RE,
    MODEL_NAME_RE,
    REQUEST_ID_RE,
    SHA256_RE,
    USERNAME_RE,
)
from libsgde.server.gate import RegistryGate
from libsgde.server.streams import first_header
from libsgde.wire.convert import job_state_text, now_to_proto, time_to_proto
from libsgde.wire.limits import CHUNK_SIZE
from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb
from libsgde.wire.proto.sgde.v1 import trainer_pb2_grpc
from services.trainer.jobs import (
    CANCELLED,
    ENDED,
    PUBLISHED,
    QUEUED,
    SUCCEEDED,
    Conflict,
    DatasetRow,
    InUse,
    JobRow,
    JobStore,
    QuotaExceeded,
    new_id,
)
from services.trainer.sources import SourceError, Sources
from services.trainer.worker import Worker

log = logging.getLogger("sgde.trainer")

DEFAULT_PAGE = 50
MAX_PAGE = 1000


@dataclass(frozen=True)
class TrainerSettings:
    max_dataset_bytes: int = 1 << 30
    # How long CancelJob waits for a running job to stop before it answers (the job stops anyway).
    cancel_wait_s: float = 10.0
    publish_timeout_s: float = 600.0
    # Per user: queued + running jobs, and bytes of uploaded datasets kept.
    max_jobs_per_user: int = 16
    max_user_dataset_bytes: int = 4 << 30
    # Datasets CreateJob loads at once (to check them against the schema and N), and how long a call waits for a turn.
    data_checks: int = 2
    data_check_wait_s: float = 5.0


def _ts(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    return None if seconds is None else time_to_proto(seconds)  # None: the field stays unset


def job_message(job: JobRow) -> tpb.Job:
    return tpb.Job(
        name=job.name,
        owner=job.owner,
        state=job.state,
        spec=job.spec,
        data_schema=job.data_schema,
        dataset=job.dataset,
        publish_model=job.publish_model,
        published_version=job.published_version,
        artifact_sha256=job.artifact_sha256,
        privacy=job.privacy,
        latest_progress=job.latest_progress,
        error=job.error,
        create_time=_ts(job.created_at),
        start_time=_ts(job.started_at),
        end_time=_ts(job.ended_at),
    )


def dataset_message(row: DatasetRow) -> tpb.Dataset:
    return tpb.Dataset(
        name=f"datasets/{row.id}",
        filename=row.filename,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        create_time=_ts(row.created_at),
    )


def _page_token(position: object, query: str) -> str:
    raw = json.dumps({"b": position, "q": hashlib.sha256(query.encode()).hexdigest()[:16]}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_page_token(token: str, query: str, valid) -> object | None:
    """The position a previous page's token holds (None for no token); `valid(position)` says if it is well-formed."""
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        position, same = data["b"], data["q"] == hashlib.sha256(query.encode()).hexdigest()[:16]
    except (ValueError, KeyError, TypeError):
        raise errors.FieldError("page_token", "not a token from a previous page of this listing") from None
    if not same or not valid(position):
        raise errors.FieldError("page_token", "the token belongs to a listing with other filters")
    return position


def _page_size(size: int) -> int:
    if size < 0:
        raise errors.FieldError("page_size", "must be >= 0")
    return min(size or DEFAULT_PAGE, MAX_PAGE)


def _event_key(event: tpb.ProgressEvent) -> tuple:
    return event.time.seconds, event.time.nanos, event.state, event.message, event.step


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(
        self,
        store: JobStore,
        worker: Worker,
        sources: Sources,
        gate: RegistryGate,
        state_dir: Path,
        settings: TrainerSettings = TrainerSettings(),
    ):
        self.store, self.worker, self.sources, self.gate = store, worker, sources, gate
        self.state_dir, self.settings = state_dir, settings
        self._data_checks = threading.BoundedSemaphore(settings.data_checks)
        self._publish_locks: dict[str, threading.Lock] = {}
        self._publish_locks_guard = threading.Lock()

    # -- helpers -----------------------------------------------------------------------------------------------

    def _own_job(self, user: str, name: str) -> JobRow:
        m = JOB_NAME_RE.fullmatch(name)
        if not m:
            raise errors.FieldError("name", f"expected jobs/{{id}}, got {name[:200]!r}")
        job = self.store.get_job(m[1])
        if job is None or job.owner != user:
            raise errors.NotFound.hidden(name)
        return job

    def _publish_lock(self, job_id: str) -> threading.Lock:
        with self._publish_locks_guard:
            return self._publish_locks.setdefault(job_id, threading.Lock())

    # -- datasets ----------------------------------------------------------------------------------------------

    def UploadDataset(self, request_iterator: Iterator[tpb.UploadDatasetRequest], context) -> tpb.Dataset:
        user, _ = self.gate.caller(context)
        header = first_header(request_iterator)
        violations = []
        if not FILENAME_RE.fullmatch(header.filename):
            violations.append(
                (
                    "header.filename",
                    "the file's own name (no folders): 1-200 letters, digits, '.', "
                    "'-' or '_'; its extension selects the loader",
                )
            )
        if not SHA256_RE.fullmatch(header.sha256):
            violations.append(("header.sha256", "64 lowercase hex characters"))
        if header.size_bytes > self.settings.max_dataset_bytes:
            raise errors.Exhausted(
                f"a dataset of {header.size_bytes} bytes is over this trainer's limit of "
                f"{self.settings.max_dataset_bytes} bytes"
            )
        if header.size_bytes <= 0:
            violations.append(("header.size_bytes", "must be > 0"))
        if violations:
            raise errors.FieldError.many(violations)
        self._check_dataset_quota(self.store.owner_dataset_bytes(user), header.size_bytes)
        dataset_id = new_id()
        root = self.state_dir / "datasets"
        partial = root / f".upload-{dataset_id}"
        partial.mkdir(parents=True, mode=0o700)
        try:
            digest, seen = hashlib.sha256(), 0
            with open(partial / header.filename, "wb") as f:
                for message in request_iterator:
                    if message.WhichOneof("payload") != "chunk":
                        raise errors.FieldError("chunk", "only chunks may follow the header")
                    data = message.chunk
                    if len(data) > CHUNK_SIZE:
                        raise errors.FieldError("chunk", f"chunks are at most {CHUNK_SIZE} bytes")
                    seen += len(data)
                    if seen > header.size_bytes:
                        raise errors.FieldError(
                            "header.size_bytes", f"more than the announced {header.size_bytes} bytes arrived"
                        )
                    digest.update(data)
                    f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if seen != header.size_bytes:
                raise errors.FieldError(
                    "header.size_bytes", f"{seen} bytes arrived, {header.size_bytes} were announced"
                )
            if digest.hexdigest() != header.sha256:
                raise errors.FieldError("header.sha256", "the uploaded bytes hash to another sha256; nothing was kept")
            os.replace(partial, root / dataset_id)  # visible only once complete and verified
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        try:
            row = self.store.add_dataset(
                dataset_id,
                user,
                header.filename,
                header.size_bytes,
                header.sha256,
                f"datasets/{dataset_id}/{header.filename}",
                max_owner_bytes=self.settings.max_user_dataset_bytes,
            )
        except QuotaExceeded as e:  # another upload of the same user finished first
            shutil.rmtree(root / dataset_id, ignore_errors=True)
            self._check_dataset_quota(e.used, header.size_bytes)
            raise
        except BaseException:
            shutil.rmtree(root / dataset_id, ignore_errors=True)
            raise
        log.info(
            "dataset uploaded", extra={"dataset": f"datasets/{dataset_id}", "owner": user, "bytes": header.size_bytes}
        )
        return dataset_message(row)

    def _check_dataset_quota(self, used: int, size: int) -> None:
        limit = self.settings.max_user_dataset_bytes
        if used + size > limit:
            raise errors.Exhausted(
                f"your uploaded datasets take {used:,} bytes; {size:,} more would pass this trainer's limit of "
                f"{limit:,} bytes per user (SGDE_TRAINER_MAX_USER_DATASET_BYTES): delete some with "
                "`sgde datasets delete` (or Client.delete_dataset)"
            )

    def ListDatasets(self, request: tpb.ListDatasetsRequest, context) -> tpb.ListDatasetsResponse:
        user, _ = self.gate.caller(context)
        size = _page_size(request.page_size)

        def valid(p) -> bool:
            return isinstance(p, list) and len(p) == 2 and isinstance(p[0], float) and isinstance(p[1], str)

        after = _parse_page_token(request.page_token, user, valid)
        rows = self.store.list_datasets(user, tuple(after) if isinstance(after, list) else None, size + 1)
        more, rows = len(rows) > size, rows[:size]
        token = _page_token([rows[-1].created_at, rows[-1].id], user) if more else ""
        return tpb.ListDatasetsResponse(datasets=[dataset_message(r) for r in rows], next_page_token=token)

    def DeleteDataset(self, request: tpb.DeleteDatasetRequest, context) -> empty_pb2.Empty:
        user, _ = self.gate.caller(context)
        m = DATASET_NAME_RE.fullmatch(request.name)
        if not m:
            raise errors.FieldError("name", f"expected datasets/{{id}}, got {request.name[:200]!r}")
        self._delete_dataset(user, m[1], request.name)
        return empty_pb2.Empty()

    def _delete_dataset(self, user: str, dataset_id: str, name: str) -> None:
        row = self.store.get_dataset(dataset_id)
        if row is None or row.owner != user:
            raise errors.NotFound.hidden(name)
        try:
            self.store.delete_dataset(dataset_id)
        except InUse as e:
            raise errors.FailedPrecondition(
                f"{name} is the data of {', '.join(e.jobs[:5])}, queued or running; cancel or wait for them first"
            ) from None
        shutil.rmtree(self.state_dir / "datasets" / dataset_id, ignore_errors=True)
        log.info("dataset deleted", extra={"dataset": name, "owner": user})

    # -- jobs --------------------------------------------------------------------------------------------------

    def _check_publish_model(self, user: str, name: str) -> None:
        m = MODEL_NAME_RE.fullmatch(name)
        if not m or not USERNAME_RE.fullmatch(m[1]) or not MODEL_ID_RE.fullmatch(m[2]):
            raise errors.FieldError("publish_model", f"expected models/{{you}}/{{model}}, got {name[:200]!r}")
        if m[1] != user:
            raise errors.PermissionDenied(
                f"publish_model: you may only publish to your own models (models/{user}/...), not {name[:200]}"
            )

    def _jobs_quota_error(self, used: int) -> errors.Exhausted:
        return errors.Exhausted(
            f"you have {used} queued or running jobs, this trainer's limit per user "
            f"(SGDE_TRAINER_MAX_JOBS_PER_USER = {self.settings.max_jobs_per_user}): wait for one to end, or cancel one"
        )

    def CreateJob(self, request: tpb.CreateJobRequest, context) -> tpb.Job:
        from libsgde.io.datasets import LoadCancelled
        from libsgde.io.training import defaults_chosen, request_violations, spec_for_data
        from libsgde.wire.convert import train_spec_from_proto, train_spec_to_proto

        user, _ = self.gate.caller(context)
        request_id = request.request_id or None
        if request_id is not None:
            if not REQUEST_ID_RE.fullmatch(request_id):
                raise errors.FieldError("request_id", "1-64 letters, digits, '.', '_', ':' or '-'")
            earlier = self.store.find_request(user, request_id)
            if earlier is not None:
                return job_message(earlier)  # a retry: the job it made the first time
        schema = request.data_schema
        spec = train_spec_from_proto(request.spec)
        violations = request_violations(spec, schema)  # what a local run refuses too (libsgde.io.training)
        try:
            self._check_publish_model(user, request.publish_model)
        except errors.FieldError as e:
            violations.extend(e.violations)
        try:
            self.sources.check(request.dataset, user)
        except SourceError as e:
            violations.append(("dataset", str(e)))
        if violations:
            raise errors.FieldError.many(violations)
        unfinished = self.store.unfinished_jobs(user)
        if unfinished >= self.settings.max_jobs_per_user:  # before the load it would cost; create_job checks again
            raise self._jobs_quota_error(unfinished)
        # Load the data once now: its size N fixes delta's bound and the batch size's, and data and schema must agree.
        # At most `data_checks` loads run at once (each takes memory in proportion to the data); a load stops when
        # the caller goes away.
        if not self._data_checks.acquire(timeout=self.settings.data_check_wait_s):
            raise errors.Unavailable("the trainer is checking other datasets; retry in a few seconds")
        try:
            data = self.sources.load(request.dataset, user, schema, should_stop=lambda: not context.is_active())
        except LoadCancelled:
            raise errors.Unavailable("the request was cancelled while its dataset loaded") from None
        finally:
            self._data_checks.release()
        size = len(data)
        del data
        filled = spec_for_data(spec, schema, size)  # FieldError naming the request's field
        try:
            job = self.store.create_job(
                user,
                train_spec_to_proto(filled),
                schema,
                request.dataset,
                request.publish_model,
                request_id,
                max_unfinished=self.settings.max_jobs_per_user,
            )
        except QuotaExceeded as e:
            raise self._jobs_quota_error(e.used) from None
        except Conflict:  # the same request raced itself
            job = self.store.find_request(user, request_id or "")
            if job is None:
                raise
            return job_message(job)
        chosen = defaults_chosen(spec, filled, size)
        if chosen:  # said where they are chosen, so that nobody is surprised by them
            event = tpb.ProgressEvent(job=job.name, state=QUEUED, message="defaults: " + "; ".join(chosen))
            event.time.CopyFrom(now_to_proto())
            self.store.set_progress(job.id, event, notable=True, while_state=QUEUED)
        self.worker.submit(job.id)
        log.info("job created", extra={"job": job.name, "owner": user, "architecture": filled.architecture})
        return job_message(job)

    def GetJob(self, request: tpb.GetJobRequest, context) -> tpb.Job:
        user, _ = self.gate.caller(context)
        return job_message(self._own_job(user, request.name))

    def ListJobs(self, request: tpb.ListJobsRequest, context) -> tpb.ListJobsResponse:
        user, _ = self.gate.caller(context)
        size = _page_size(request.page_size)
        if request.state not in tpb.JobState.values():
            raise errors.FieldError("state", "unknown job state")
        query = f"{user}|{request.state}"
        before = _parse_page_token(request.page_token, query, lambda b: isinstance(b, int) and b >= 1)
        rows = self.store.list_jobs(user, int(before or 0), size + 1, request.state)
        more = len(rows) > size
        rows = rows[:size]
        return tpb.ListJobsResponse(
            jobs=[job_message(r) for r in rows], next_page_token=_page_token(rows[-1].seq, query) if more else ""
        )

    def WatchJob(self, request: tpb.WatchJobRequest, context) -> Iterator[tpb.ProgressEvent]:
        user, _ = self.gate.caller(context)
        job = self._own_job(user, request.name)
        sub = self.worker.hub.subscribe(job.id)  # before reading the state: no event falls in between
        try:
            job = self.store.get_job(job.id) or job
            seen: set[tuple] = set()
            for event in self.store.events(job.id):
                seen.add(_event_key(event))
                yield event
            latest = job.latest_progress
            if latest is not None and _event_key(latest) not in seen:
                seen.add(_event_key(latest))
                yield latest
            elif not seen:
                yield tpb.ProgressEvent(
                    job=job.name, state=job.state, time=timestamp_pb2.Timestamp(seconds=int(time.time()))
                )
            if job.state in ENDED:
                return
            while context.is_active():
                event = sub.get(timeout=1.0)
                if event is None:
                    if self.worker.hub.closed:
                        raise errors.Unavailable(
                            "the trainer is stopping; watch again once it is back (the job resumes)"
                        )
                    continue
                if _event_key(event) in seen:
                    continue
                yield event
                if event.state in ENDED:
                    return
        finally:
            sub.close()

    def CancelJob(self, request: tpb.CancelJobRequest, context) -> tpb.Job:
        user, _ = self.gate.caller(context)
        job = self._own_job(user, request.name)
        if job.state == CANCELLED:
            return job_message(job)
        if job.state in ENDED:
            raise errors.FailedPrecondition(
                f"{job.name} already {job_state_text(job.state)}; there is nothing to cancel"
            )
        self.worker.cancel(job.id)
        deadline = time.monotonic() + self.settings.cancel_wait_s
        while True:
            job = self.store.get_job(job.id) or job
            if job.state in ENDED or time.monotonic() >= deadline or not context.is_active():
                return job_message(job)
            time.sleep(0.05)

    def PublishJobResult(self, request: tpb.PublishJobResultRequest, context) -> tpb.Job:
        user, token = self.gate.caller(context)
        job = self._own_job(user, request.name)
        if len(request.signature) != 64:
            raise errors.FieldError("signature", "your Ed25519 signature (64 bytes) over the job's artifact_sha256")
        with self._publish_lock(job.id):
            job = self.store.get_job(job.id) or job
            if job.state == PUBLISHED:
                raise errors.FailedPrecondition(f"{job.name} was published already, as {job.published_version}")
            if job.state != SUCCEEDED:
                raise errors.FailedPrecondition(
                    f"{job.name} is {job_state_text(job.state)}; only a succeeded job can be published"
                )
            path = self.worker.artifact_path(job.id)
            if not path.is_file():
                raise errors.DataLoss(
                    f"the artifact of {job.name} is missing from the trainer's storage; tell the trainer's operator"
                )
            client = self.gate.session_for(token, user)
            try:
                version = client.publish_signed(
                    path,
                    job.publish_model,
                    job.artifact_sha256,
                    request.signature,
                    create=True,
                    data_schema=job.data_schema,
                    timeout=self.settings.publish_timeout_s,
                )
            except errors.SgdeError as e:
                violations = [("signature" if f == "header.signature" else f, d) for f, d in e.violations]
                raise errors.from_status(
                    e.status, f"the registry refused to publish {job.name}: {e.message}", violations, remote=False
                ) from None
            self.store.transition(job.id, [SUCCEEDED], PUBLISHED, published_version=version.name)
        log.info("job published", extra={"job": job.name, "version": version.name})
        if request.delete_dataset and job.dataset.startswith("datasets/"):
            try:
                self._delete_dataset(user, job.dataset.removeprefix("datasets/"), job.dataset)
            except (errors.NotFound, errors.FailedPrecondition) as e:  # deleted already, or still used: say so
                log.info("dataset kept after publish", extra={"dataset": job.dataset, "reason": e.message})
        return job_message(self.store.get_job(job.id) or job)
