"""The trainer's calls (training runs inside the silo): upload data, create, watch, cancel and publish jobs."""

from __future__ import annotations

import abc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from libsgde.client.names import dataset_name, job_name, model_name
from libsgde.client.registry import RegistrySession
from libsgde.client.transfers import Progress, cancelling, file_chunks
from libsgde.domain.resources import Dataset, Job, JobState, ProgressEvent
from libsgde.errors import FailedPrecondition
from libsgde.io.artifact import file_digest
from libsgde.security import signing
from libsgde.wire.convert import dataset_from_proto, job_from_proto, progress_from_proto, train_spec_to_proto
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb
from libsgde.wire.proto.sgde.v1 import trainer_pb2_grpc
from libsgde.wire.status import from_rpc_error


class Jobs(RegistrySession, abc.ABC):
    """`Client`'s training calls: a registry session that also reaches the trainer, and signs with the user's key."""

    @property
    @abc.abstractmethod
    def trainer(self) -> trainer_pb2_grpc.TrainerServiceStub:
        """The trainer's stub (Client opens its channel)."""

    @abc.abstractmethod
    def signing_key_path(self, username: str) -> Path:
        """Where the user's signing key is (Client knows)."""

    def upload_dataset(
        self, path: str | Path, progress: Progress | None = None, timeout: float | None = None
    ) -> Dataset:
        """Uploads a data file (.csv, .npz, MNIST-style .gz) into the trainer's own storage, checked against its
        sha256 there; returns the Dataset, whose name ("datasets/...") a job can train on. The file stays in the
        silo: the trainer never passes it on."""
        path = Path(path)
        size = path.stat().st_size
        header = tpb.UploadDatasetRequest.Header(
            filename=path.name, size_bytes=size, sha256=file_digest(path).hexdigest()
        )

        def requests() -> Iterator[tpb.UploadDatasetRequest]:
            yield tpb.UploadDatasetRequest(header=header)
            for block in file_chunks(path, progress, size):
                yield tpb.UploadDatasetRequest(chunk=block)

        try:
            return dataset_from_proto(
                self.trainer.UploadDataset(requests(), metadata=self._metadata(), timeout=timeout)
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def create_job(
        self,
        spec: Any,
        schema: pb.DataSchema,
        dataset: str | Dataset,
        publish_model: str,
        request_id: str | None = None,
        timeout: float | None = 600.0,
    ) -> Job:
        """Submits a training job. `spec` is a libsgde.TrainSpec or a TrainingSpec message (0 / empty fields
        mean the default); `dataset` an uploaded Dataset (or its name), a path under the trainer's data root or
        "s3://bucket/key" in the silo's store; `publish_model` the model the result goes to ("name",
        "you/name" or "models/you/name"). The trainer checks spec, schema and data before it answers.
        `request_id` makes a retry return the same job instead of a second one (a fresh one by default)."""
        if not isinstance(spec, tpb.TrainingSpec):
            spec = train_spec_to_proto(spec)
        if isinstance(dataset, Dataset):
            dataset = dataset.name
        me = self._username if "/" in publish_model else self._me()
        request = tpb.CreateJobRequest(
            spec=spec,
            data_schema=schema,
            dataset=str(dataset),
            publish_model=model_name(publish_model, me),
            request_id=request_id or uuid.uuid4().hex,
        )
        return job_from_proto(self._call(self.trainer.CreateJob, request, timeout=timeout))

    def get_job(self, name: str) -> Job:
        return job_from_proto(self._call(self.trainer.GetJob, tpb.GetJobRequest(name=job_name(name))))

    def list_jobs(self, state: tpb.JobState = tpb.JOB_STATE_UNSPECIFIED, page_size: int = 100) -> Iterator[Job]:
        """Your jobs, newest first (only those in `state`, if given)."""
        return self._pages(
            self.trainer.ListJobs, tpb.ListJobsRequest(page_size=page_size, state=state), "jobs", job_from_proto
        )

    def watch_job(self, name: str, timeout: float | None = None) -> Iterator[ProgressEvent]:
        """The job's progress until it ends: first the notable events so far (and the latest progress), then live
        events; the last one carries the final state. Stop iterating to stop watching (the job goes on)."""
        stream = self.trainer.WatchJob(
            tpb.WatchJobRequest(name=job_name(name)), metadata=self._metadata(), timeout=timeout
        )
        with cancelling(stream):
            try:
                yield from map(progress_from_proto, stream)
            except grpc.RpcError as e:
                raise from_rpc_error(e) from None

    def cancel_job(self, name: str) -> Job:
        """Cancels a queued job at once, or asks a running one to stop (it stops within a training step)."""
        return job_from_proto(self._call(self.trainer.CancelJob, tpb.CancelJobRequest(name=job_name(name))))

    def list_datasets(self, page_size: int = 100) -> Iterator[Dataset]:
        """Your uploaded datasets in the trainer, newest first."""
        return self._pages(
            self.trainer.ListDatasets, tpb.ListDatasetsRequest(page_size=page_size), "datasets", dataset_from_proto
        )

    def delete_dataset(self, name: str | Dataset) -> None:
        """Deletes one of your uploads from the trainer (refused while a queued or running job uses it)."""
        if isinstance(name, Dataset):
            name = name.name
        self._call(self.trainer.DeleteDataset, tpb.DeleteDatasetRequest(name=dataset_name(name)))

    def publish_job(self, name: str, timeout: float | None = 600.0, delete_dataset: bool = False) -> Job:
        """Signs a SUCCEEDED job's artifact sha256 here, with your signing key, and has the trainer publish the
        artifact to the registry with that signature. Returns the job (PUBLISHED, with `published_version`).
        `delete_dataset` has the trainer delete the job's uploaded dataset once it is published."""
        job = self.get_job(name)
        if job.state != JobState.SUCCEEDED or not job.artifact_sha256:
            state = job.state.text
            where = f" as {job.published_version}" if job.published_version else ""
            raise FailedPrecondition(f"{job.name} is {state}{where}; only a succeeded job can be published")
        key = signing.load_signing_key(self.signing_key_path(self._me()))
        return job_from_proto(
            self._call(
                self.trainer.PublishJobResult,
                tpb.PublishJobResultRequest(
                    name=job.name,
                    signature=signing.sign_artifact(key, job.artifact_sha256),
                    delete_dataset=delete_dataset,
                ),
                timeout=timeout,
            )
        )
