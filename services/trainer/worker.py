"""The job queue: at most `max_jobs` trainings at once (the others stay QUEUED, in submission order), cancellation,
progress fan-out to watchers, throttled persistence of the latest progress, and recovery after a restart.

Training itself is libsgde.io.training.train, run in a worker thread; the data is loaded through `Sources` at run time
(never kept in memory between jobs, never logged).
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Counter, Gauge

from libsgde.domain.specs import spec_field
from libsgde.wire.convert import job_state_text, now_to_proto
from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb
from services.trainer.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobRow, JobStore
from services.trainer.sources import DataMismatch, SourceError, Sources, is_sealed

log = logging.getLogger("sgde.trainer")

ARTIFACT_NAME = "model.safetensors"

JOBS_ENDED = Counter("sgde_trainer_jobs_ended_total", "Training jobs that ended, by final state", ["state"])
JOBS_RUNNING = Gauge("sgde_trainer_jobs_running", "Training jobs running now")
TRAINING_SECONDS = Counter("sgde_trainer_training_seconds_total", "Seconds spent running training jobs")


class Subscription:
    """One watcher's queue of events. When the watcher falls behind, the oldest progress events are dropped
    (the newest one says where the job is); an event that ends the job is never dropped."""

    def __init__(self, hub: Hub, job_id: str, maxlen: int = 256):
        self.hub, self.job_id, self.maxlen = hub, job_id, maxlen
        self._items: collections.deque[tpb.ProgressEvent] = collections.deque()
        self._cond = threading.Condition()
        self.closed = False

    def put(self, event: tpb.ProgressEvent) -> None:
        with self._cond:
            if len(self._items) >= self.maxlen:
                self._items.popleft()
            self._items.append(event)
            self._cond.notify_all()

    def get(self, timeout: float) -> tpb.ProgressEvent | None:
        """The next event, or None after `timeout` seconds or once the hub closed."""
        with self._cond:
            if not self._items and not self.closed:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def wake(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def close(self) -> None:
        self.hub.unsubscribe(self)


class Hub:
    """Fan-out of each job's events to its watchers."""

    def __init__(self):
        self._subs: dict[str, set[Subscription]] = collections.defaultdict(set)
        self._lock = threading.Lock()
        self.closed = False

    def subscribe(self, job_id: str) -> Subscription:
        sub = Subscription(self, job_id)
        with self._lock:
            self._subs[job_id].add(sub)
            if self.closed:
                sub.wake()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.job_id]

    def publish(self, job_id: str, event: tpb.ProgressEvent) -> None:
        with self._lock:
            subs = list(self._subs.get(job_id, ()))
        for sub in subs:
            sub.put(event)

    def close(self) -> None:
        """Ends every watch (the server is stopping)."""
        with self._lock:
            self.closed = True
            subs = [s for group in self._subs.values() for s in group]
        for sub in subs:
            sub.wake()


class Worker:
    def __init__(
        self,
        store: JobStore,
        sources: Sources,
        state_dir: Path,
        max_jobs: int = 1,
        persist_every: float = 2.0,
        checkpoint_every_s: float | None = None,
    ):
        if max_jobs < 1:
            raise ValueError("max_jobs must be at least 1")
        self.store, self.sources, self.state_dir = store, sources, state_dir
        self.max_jobs, self.persist_every, self.checkpoint_every_s = max_jobs, persist_every, checkpoint_every_s
        self.hub = Hub()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stops: dict[str, threading.Event] = {}  # running jobs: their stop request
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        # The mechanism's secret for a job; None: 32 fresh random bytes (libsgde.io.training.train), kept in the
        # job's checkpoint only. The integration tests replace it, to compare a job's artifact with a local run's.
        self.secret_for: Callable[[JobRow], bytes | None] = lambda job: None

    def job_dir(self, job_id: str) -> Path:
        return self.state_dir / "jobs" / job_id

    def artifact_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / ARTIFACT_NAME

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Re-queues what a previous run left RUNNING (to resume from its checkpoint) or QUEUED, in submission
        order, then starts the worker threads."""
        for job in self.store.jobs_in([RUNNING, QUEUED]):
            if job.state == RUNNING and self.store.transition(job.id, [RUNNING], QUEUED):
                event = self._event(
                    job, QUEUED, "the trainer restarted: queued again, to resume from the last checkpoint"
                )
                self.store.set_progress(job.id, event, notable=True, while_state=QUEUED)
                log.info("job re-queued after restart", extra={"job": job.name})
            self._queue.put(job.id)
        for i in range(self.max_jobs):
            thread = threading.Thread(target=self._loop, name=f"trainer-job-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stops taking jobs, asks running ones to checkpoint and stop (they stay RUNNING in the store and resume
        at the next start), and ends every watch."""
        self._closing.set()
        self.hub.close()
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def submit(self, job_id: str) -> None:
        self._queue.put(job_id)

    def cancel(self, job_id: str) -> None:
        """A queued job is cancelled at once; a running one is asked to stop (it checkpoints, then ends
        CANCELLED)."""
        job = self.store.get_job(job_id)
        if job is not None and self.store.transition(job_id, [QUEUED], CANCELLED, ended_at=time.time()):
            self._end(job, CANCELLED, "cancelled before it started")
            return
        with self._lock:
            stop = self._stops.get(job_id)
        if stop is not None:
            stop.set()

    # -- running -----------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None or self._closing.is_set():
                return
            try:
                self._run(job_id)
            except Exception:  # never lose the worker thread
                log.exception("job runner failed", extra={"job": f"jobs/{job_id}"})

    def _event(
        self, job: JobRow, state: int, message: str = "", base: tpb.ProgressEvent | None = None
    ) -> tpb.ProgressEvent:
        event = tpb.ProgressEvent()
        if base is not None:
            event.CopyFrom(base)
        event.job, event.state, event.message = job.name, state, message
        event.time.CopyFrom(now_to_proto())
        return event

    def _end(
        self,
        job: JobRow,
        state: int,
        message: str,
        base: tpb.ProgressEvent | None = None,
        from_running: dict | None = None,
    ) -> None:
        """Records the job's end and tells watchers. With `from_running` (the columns to set), the job moves from
        RUNNING to `state` here; without, it is in `state` already."""
        event = self._event(job, state, message, base)
        if from_running is not None:
            self.store.transition(job.id, [RUNNING], state, latest_progress=event, ended_at=time.time(), **from_running)
        self.store.set_progress(job.id, event, notable=True, while_state=state)
        if state in (CANCELLED, FAILED):
            shutil.rmtree(self.job_dir(job.id), ignore_errors=True)
        JOBS_ENDED.labels(job_state_text(state)).inc()
        self.hub.publish(job.id, event)
        log.info("job ended", extra={"job": job.name, "state": job_state_text(state)})

    def _run(self, job_id: str) -> None:
        stop = threading.Event()
        with self._lock:
            self._stops[job_id] = stop  # before the claim, so a cancel racing the claim finds it
        try:
            if not self.store.claim(job_id):
                return  # cancelled while queued
            job = self.store.get_job(job_id)
            assert job is not None
            started = self._event(job, RUNNING, "started")
            self.store.set_progress(job.id, started, notable=True)
            self.hub.publish(job.id, started)
            log.info("job started", extra={"job": job.name, "owner": job.owner, "architecture": job.spec.architecture})
            started_at = time.monotonic()
            JOBS_RUNNING.inc()
            try:
                self._train(job, stop)
            finally:
                JOBS_RUNNING.dec()
                TRAINING_SECONDS.inc(time.monotonic() - started_at)
        finally:
            with self._lock:
                self._stops.pop(job_id, None)

    def _train(self, job: JobRow, stop: threading.Event) -> None:
        from libsgde.io.datasets import LoadCancelled
        from libsgde.io.training import CHECKPOINT_EVERY_S, SpecError, TrainingCancelled, check_spec, train
        from libsgde.ml.privacy.accounting import PrivacyError
        from libsgde.wire.convert import train_spec_from_proto

        latest = tpb.ProgressEvent()
        persisted_at = 0.0
        # The loss of a DP-SGD step is computed on the private batch and is not noised: on data the user may not
        # read, it is withheld (NaN). A mechanism whose loss is post-processing of its release shows it.
        withhold_loss = is_sealed(job.dataset) and _loss_reveals_data(job.spec.architecture)

        def on_progress(p) -> None:
            nonlocal persisted_at
            event = tpb.ProgressEvent(
                job=job.name,
                state=RUNNING,
                step=p.step,
                total_steps=p.total_steps,
                epoch=p.epoch,
                loss=math.nan if withhold_loss else p.loss,
                epsilon_spent=p.epsilon_spent,
                examples_per_second=p.examples_per_second,
                eta_seconds=p.eta_seconds,
                message=p.message,
            )
            event.time.CopyFrom(now_to_proto())
            latest.CopyFrom(event)
            self.hub.publish(job.id, event)
            now = time.monotonic()
            if p.message or now - persisted_at >= self.persist_every:
                persisted_at = now
                self.store.set_progress(job.id, event, notable=bool(p.message))

        def fail(error: str) -> None:
            self._end(job, FAILED, error, latest, {"error": error})

        out_dir = self.job_dir(job.id)
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            data = self.sources.load(job.dataset, job.owner, job.data_schema, should_stop=stop.is_set)
            spec = check_spec(train_spec_from_proto(job.spec), job.data_schema, len(data))
            if stop.is_set():  # cancelled while the data loaded
                raise TrainingCancelled("before the first step")
            result = train(
                data,
                job.data_schema,
                spec,
                self.artifact_path(job.id),
                on_progress=on_progress,
                checkpoint_dir=out_dir / "checkpoint",
                checkpoint_every_s=self.checkpoint_every_s or CHECKPOINT_EVERY_S,
                should_stop=lambda: stop.is_set() or self._closing.is_set(),
                secret=self.secret_for(job),
            )
        except (TrainingCancelled, LoadCancelled):
            if stop.is_set():
                self._end(job, CANCELLED, "cancelled", latest, {})
            else:  # the trainer is stopping: the job stays RUNNING and resumes from its checkpoint next start
                log.info("job paused for shutdown", extra={"job": job.name})
            return
        except SourceError as e:
            return fail(f"dataset: {e}")
        except DataMismatch as e:
            return fail(f"{e.field}: {e.description}")
        except (SpecError, PrivacyError) as e:
            return fail(f"{spec_field(e.field)}: {e.description}")
        except Exception as e:
            log.exception("training failed", extra={"job": job.name})
            return fail(f"training failed ({type(e).__name__}); the trainer's log has the details")
        del data
        privacy = result.privacy
        self._end(
            job,
            SUCCEEDED,
            f"trained: epsilon {privacy.epsilon:.4g} at delta {privacy.delta:.3g} "
            f"({privacy.mechanism}); publish it with `sgde jobs publish {job.name}`",
            latest,
            {"artifact_sha256": result.sha256, "privacy": privacy},
        )


def _loss_reveals_data(architecture: str) -> bool:
    from libsgde.ml.architectures import ConfigError, get_architecture

    try:
        return get_architecture(architecture).mechanism.loss_reveals_data
    except ConfigError:  # an unknown architecture fails the job later, with its own error
        return True
