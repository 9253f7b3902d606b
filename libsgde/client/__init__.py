"""The Python SDK: what a user scripts against. The `sgde` command is a thin face over it.

    from libsgde.client import Client
    c = Client()                       # certificates and token under $SGDE_HOME
    c.login("alice", password)
    c.push("model.safetensors", "alice/digits")
    for m in c.list_models(): print(m.name)

    ds = c.upload_dataset("adult.csv")                      # training runs in the silo's trainer
    job = c.create_job(TrainSpec("cvae", target_epsilon=1.0), schema, ds.name, "adult-cvae")
    for event in c.watch_job(job.name): print(event.step, event.epsilon_spent)
    c.publish_job(job.name)                                 # signed here: the key never leaves this machine

    s = c.sample("alice/adult-dp", 10_000, seed=1)          # the sampler streams synthetic data, checked by sha256
    s.values["age"], s.labels, s.metadata.privacy.epsilon
    c.sample("alice/adult-dp", class_counts={"yes": 500, "no": 500}, format="csv", out="synthetic.csv")
    sample_local("alice-adult-dp-v1.safetensors", 10_000, seed=1)  # a pulled artifact, no server: the same values
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import grpc
from google.protobuf import empty_pb2, field_mask_pb2

from libsgde import config
from libsgde.errors import (DataLoss, FailedPrecondition, FieldError, Internal, NotFound, SgdeError, Unavailable,
                            VerificationError)
from libsgde.wire.status import from_rpc_error
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from libsgde.wire.proto.sgde.v1 import registry_pb2_grpc
from libsgde.wire.proto.sgde.v1 import sampler_pb2 as spb
from libsgde.wire.proto.sgde.v1 import sampler_pb2_grpc
from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb
from libsgde.wire.proto.sgde.v1 import trainer_pb2_grpc
from libsgde.security import signing, tls
from libsgde.security.tls import write_private
from libsgde.server.storage import CHUNK_SIZE

Progress = Callable[[int, int], None]  # (bytes done, bytes in all); for sampling (samples done, samples in all)

VISIBILITIES = {"private": pb.VISIBILITY_PRIVATE, "shared": pb.VISIBILITY_SHARED, "public": pb.VISIBILITY_PUBLIC}


def model_name(ref: str, me: str | None = None) -> str:
    """'alice/digits' or 'models/alice/digits' -> 'models/alice/digits'; 'digits' -> models/<me>/digits."""
    if ref.startswith("models/"):
        return ref
    if "/" in ref:
        return f"models/{ref}"
    if not me:
        raise SgdeError(f"say whose model {ref!r} is: OWNER/{ref}")
    return f"models/{me}/{ref}"


def version_name(ref: str, me: str | None = None) -> str:
    """A model reference, optionally ending in /versions/N or @N -> a version name (latest by default)."""
    if "@" in ref:
        ref, number = ref.rsplit("@", 1)
        return f"{model_name(ref, me)}/versions/{number}"
    if "/versions/" in ref:
        return model_name(ref, me)
    return f"{model_name(ref, me)}/versions/latest"


def _sha256_file(path: Path):
    """The running sha256 of a file's bytes (call .hexdigest(), or .update() to continue it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_SIZE):
            digest.update(block)
    return digest


def secure_channel(address: str, credentials: grpc.ChannelCredentials) -> grpc.Channel:
    """A mutual-TLS channel with SGDE's message size limits."""
    return grpc.secure_channel(address, credentials, options=[
        ("grpc.max_receive_message_length", 4 << 20), ("grpc.max_send_message_length", 4 << 20)])


class Client:
    """A connection to the registry (and, when used, the trainer and the sampler) over mutual TLS, acting for the
    user whose token is under $SGDE_HOME.

    A service acting for a user (the trainer publishing a job's result) builds one with `Client.forwarding`: over
    its own channel, with the token the user sent, reading no files."""

    def __init__(self, registry: str | None = None, *, trainer: str | None = None, sampler: str | None = None,
                 home: Path | None = None, pki: Path | None = None, identity: str = tls.CLIENT,
                 token: str | None = None, timeout: float = 30.0, channel: grpc.Channel | None = None):
        self.home = Path(home) if home else config.sgde_home()
        self.pki = tls.PkiPaths(Path(pki) if pki else (self.home / "pki" if home else config.pki_dir()))
        self.address = registry or config.service_address("registry")
        self.trainer_address = trainer or config.service_address("trainer")
        self.sampler_address = sampler or config.service_address("sampler")
        self.identity = identity
        self.timeout = timeout
        self._owns_channel = channel is None
        self._channel = channel or secure_channel(self.address, tls.channel_credentials(self.pki, identity))
        self.registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._trainer_channel: grpc.Channel | None = None
        self._trainer: trainer_pb2_grpc.TrainerServiceStub | None = None
        self._sampler_channel: grpc.Channel | None = None
        self._sampler: sampler_pb2_grpc.SamplerServiceStub | None = None
        self._token = token
        self._username: str | None = None
        if token is None:
            saved = self._load_token()
            if saved:
                self._token, self._username = saved["access_token"], saved["username"]

    @classmethod
    def forwarding(cls, channel: grpc.Channel, token: str, username: str | None = None,
                   timeout: float = 30.0) -> Client:
        """A registry client that acts with a forwarded user token over an existing channel (not closed by
        `close`); it reads no token or key files."""
        client = cls(channel=channel, token=token, timeout=timeout)
        client._username = username
        return client

    @property
    def trainer(self) -> trainer_pb2_grpc.TrainerServiceStub:
        """The trainer's stub; its channel opens on first use."""
        if self._trainer is None:
            self._trainer_channel = secure_channel(self.trainer_address,
                                                   tls.channel_credentials(self.pki, self.identity))
            self._trainer = trainer_pb2_grpc.TrainerServiceStub(self._trainer_channel)
        return self._trainer

    @property
    def sampler(self) -> sampler_pb2_grpc.SamplerServiceStub:
        """The sampler's stub; its channel opens on first use."""
        if self._sampler is None:
            self._sampler_channel = secure_channel(self.sampler_address,
                                                   tls.channel_credentials(self.pki, self.identity))
            self._sampler = sampler_pb2_grpc.SamplerServiceStub(self._sampler_channel)
        return self._sampler

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()
        if self._trainer_channel is not None:
            self._trainer_channel.close()
        if self._sampler_channel is not None:
            self._sampler_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- session -----------------------------------------------------------------------------------------------

    @property
    def token_path(self) -> Path:
        return self.home / "token.json"

    def signing_key_path(self, username: str) -> Path:
        return self.home / "keys" / f"{username}.pem"

    def _load_token(self) -> dict | None:
        try:
            saved = json.loads(self.token_path.read_text())
        except (OSError, ValueError):
            return None
        if saved.get("registry") != self.address:
            return None
        return saved

    def _metadata(self) -> list[tuple[str, str]]:
        if not self._token:
            raise SgdeError("not logged in: run `sgde login`")
        return [("authorization", f"Bearer {self._token}")]

    def _call(self, method, request, *, auth: bool = True, timeout: float | None = None):
        try:
            return method(request, metadata=self._metadata() if auth else None, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    @property
    def username(self) -> str | None:
        return self._username

    def register(self, username: str, email: str, password: str) -> rpb.User:
        """Registers a user. Their Ed25519 signing key is made here, kept under $SGDE_HOME/keys (mode 0600), and
        only its public half is sent."""
        key_path = self.signing_key_path(username)
        if key_path.exists():
            key = signing.load_signing_key(key_path)  # a retry after a failed registration keeps the same key
        else:
            key = signing.generate_signing_key()
            key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            signing.save_signing_key(key, key_path)
        return self._call(self.registry.Register, rpb.RegisterRequest(
            username=username, email=email, password=password,
            signing_public_key=signing.public_key_bytes(key)), auth=False)

    def login(self, username: str, password: str, save: bool = True) -> rpb.LoginResponse:
        reply = self._call(self.registry.Login, rpb.LoginRequest(username=username, password=password), auth=False)
        self._token, self._username = reply.access_token, username
        if save:
            write_private(self.token_path, json.dumps({
                "registry": self.address, "username": username, "access_token": reply.access_token,
                "expires": reply.expire_time.ToDatetime(timezone.utc).isoformat()}).encode())
        return reply

    def logout(self) -> None:
        self._token = self._username = None
        self.token_path.unlink(missing_ok=True)

    def whoami(self) -> rpb.User:
        user = self._call(self.registry.WhoAmI, empty_pb2.Empty())
        self._username = user.username
        return user

    def _me(self) -> str:
        return self._username or self.whoami().username

    # -- models ------------------------------------------------------------------------------------------------

    def list_models(self, owner: str = "", tag: str = "", data_kind: int = 0, page_size: int = 100
                    ) -> Iterator[pb.Model]:
        token = ""
        while True:
            page = self._call(self.registry.ListModels, rpb.ListModelsRequest(
                owner=owner, tag=tag, data_kind=data_kind, page_size=page_size, page_token=token))
            yield from page.models
            token = page.next_page_token
            if not token:
                return

    def get_model(self, ref: str) -> pb.Model:
        return self._call(self.registry.GetModel, rpb.GetModelRequest(name=model_name(ref, self._username)))

    def create_model(self, model_id: str, description: str = "", tags: list[str] | None = None,
                     visibility: str = "private", shared_with: list[str] | None = None,
                     data_schema: pb.DataSchema | None = None) -> pb.Model:
        model = pb.Model(description=description, tags=tags or [], visibility=VISIBILITIES[visibility],
                         shared_with=shared_with or [], data_schema=data_schema)
        return self._call(self.registry.CreateModel, rpb.CreateModelRequest(model_id=model_id, model=model))

    def update_model(self, ref: str, **changes) -> pb.Model:
        """Changes description, tags, visibility ('private' | 'shared' | 'public'), shared_with or metrics (the whole
        map; see `set_metrics`)."""
        if "visibility" in changes:
            changes["visibility"] = VISIBILITIES[changes["visibility"]]
        model = pb.Model(name=model_name(ref, self._username), **changes)
        return self._call(self.registry.UpdateModel, rpb.UpdateModelRequest(
            model=model, update_mask=field_mask_pb2.FieldMask(paths=sorted(changes))))

    def set_metrics(self, ref: str, metrics: Mapping[str, float], *, merge: bool = True) -> pb.Model:
        """Stores evaluation results on a model (owner only): keys of 1-64 characters in a-z 0-9 _ . : / -, finite
        values, at most 200. With `merge` the model's other metrics stay (read, merge, write: a concurrent writer's
        change between the two can be lost); without it they are replaced."""
        merged = {**(self.get_model(ref).metrics if merge else {}), **{k: float(v) for k, v in metrics.items()}}
        return self.update_model(ref, metrics=merged)

    def share(self, ref: str, users: list[str]) -> pb.Model:
        """Adds users to the model's share list and makes it SHARED (unless it is PUBLIC)."""
        model = self.get_model(ref)
        names = list(dict.fromkeys([*model.shared_with, *users]))
        changes: dict = {"shared_with": names}
        if model.visibility == pb.VISIBILITY_PRIVATE:
            changes["visibility"] = "shared"
        return self.update_model(ref, **changes)

    def delete_model(self, ref: str) -> None:
        self._call(self.registry.DeleteModel, rpb.DeleteModelRequest(name=model_name(ref, self._username)))

    # -- versions ----------------------------------------------------------------------------------------------

    def push(self, path: str | Path, ref: str, *, create: bool = True, progress: Progress | None = None,
             timeout: float | None = None, **create_args) -> pb.ModelVersion:
        """Publishes an artifact file as the next version of a model (made first when `create` and missing).
        The file's sha256 is signed with the caller's signing key."""
        path = Path(path)
        me = self._me()
        key = signing.load_signing_key(self.signing_key_path(me))
        sha = _sha256_file(path).hexdigest()
        return self.publish_signed(path, model_name(ref, me), sha, signing.sign_artifact(key, sha), create=create,
                                   progress=progress, timeout=timeout, **create_args)

    def ensure_model(self, name: str, **create_args) -> None:
        """Creates the model `models/{owner}/{model}` unless it exists (a concurrent creation is fine too)."""
        try:
            self.get_model(name)
        except SgdeError as e:
            if not isinstance(e, NotFound):
                raise
            try:
                self.create_model(name.rsplit("/", 1)[1], **create_args)
            except SgdeError as e2:
                if e2.status != "ALREADY_EXISTS":
                    raise

    def publish_signed(self, path: str | Path, name: str, sha256: str, signature: bytes, *, create: bool = True,
                       progress: Progress | None = None, timeout: float | None = None,
                       **create_args) -> pb.ModelVersion:
        """Streams an artifact whose sha256 is already signed to PublishVersion of model `name` (made first when
        `create` and missing). `push` signs and calls this; the trainer calls it with a forwarded token and the
        signature its user made on their own machine."""
        path = Path(path)
        if create:
            self.ensure_model(name, **create_args)
        header = rpb.PublishVersionRequest.Header(model=name, sha256=sha256, size_bytes=path.stat().st_size,
                                                  signature=signature)
        try:
            return self.registry.PublishVersion(publish_requests(header, path, progress), metadata=self._metadata(),
                                                timeout=timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def get_version(self, ref: str) -> pb.ModelVersion:
        return self._call(self.registry.GetVersion, rpb.GetVersionRequest(name=version_name(ref, self._username)))

    def list_versions(self, ref: str) -> Iterator[pb.ModelVersion]:
        token = ""
        while True:
            page = self._call(self.registry.ListVersions, rpb.ListVersionsRequest(
                parent=model_name(ref, self._username), page_token=token))
            yield from page.versions
            token = page.next_page_token
            if not token:
                return

    def pull(self, ref: str, dest: str | Path | None = None, *, progress: Progress | None = None,
             timeout: float | None = None) -> tuple[Path, pb.ModelVersion]:
        """Downloads a version (latest by default), resuming a partial download, and verifies its sha256 and its
        owner's signature before it appears at `dest` (default: ./<owner>-<model>-v<n>.safetensors)."""
        version = self.get_version(ref)
        owner = version.name.split("/")[1]
        dest = Path(dest) if dest else Path.cwd() / f"{owner}-{version.name.split('/')[2]}-v{version.number}.safetensors"
        if dest.is_dir():
            dest = dest / f"{owner}-{version.name.split('/')[2]}-v{version.number}.safetensors"
        partial = dest.with_name(dest.name + f".{version.sha256[:12]}.part")
        offset = partial.stat().st_size if partial.exists() else 0
        if offset > version.size_bytes:
            partial.unlink()
            offset = 0
        digest = _sha256_file(partial) if offset else hashlib.sha256()  # hashed as it arrives: no second read
        try:
            stream = self.registry.DownloadVersion(
                rpb.DownloadVersionRequest(name=version.name, offset=offset), metadata=self._metadata(),
                timeout=timeout)
            with open(partial, "ab") as f:
                for message in stream:
                    if message.WhichOneof("payload") == "version":
                        if message.version.sha256 != version.sha256:
                            raise SgdeError("the version changed during the download; try again")
                        continue
                    f.write(message.chunk)
                    digest.update(message.chunk)
                    offset += len(message.chunk)
                    if progress:
                        progress(offset, version.size_bytes)
                f.flush()
                os.fsync(f.fileno())
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        self.verify(partial, version, owner, digest.hexdigest())
        os.replace(partial, dest)
        return dest, version

    def verify(self, path: Path, version: pb.ModelVersion, owner: str, sha: str | None = None) -> None:
        """Checks a downloaded file (whose sha256 is `sha`, if already known) against the version's sha256 and the
        owner's registered signing key."""
        sha = sha or _sha256_file(path).hexdigest()
        if sha != version.sha256:
            path.unlink(missing_ok=True)
            raise VerificationError(f"downloaded bytes hash to {sha}, expected {version.sha256}; the partial file "
                                    "was removed, pull again")
        user = self._call(self.registry.GetUser, rpb.GetUserRequest(name=f"users/{owner}"))
        if not signing.verify_artifact(user.signing_public_key, sha, version.signature):
            raise VerificationError(f"the signature of {version.name} does not verify with {owner}'s key "
                                    f"({signing.fingerprint(user.signing_public_key)}); do not use this file")

    # -- training (the trainer service) ------------------------------------------------------------------------

    def upload_dataset(self, path: str | Path, progress: Progress | None = None,
                       timeout: float | None = None) -> tpb.Dataset:
        """Uploads a data file (.csv, .npz, MNIST-style .gz) into the trainer's own storage, checked against its
        sha256 there; returns the Dataset, whose name ("datasets/...") a job can train on. The file stays in the
        silo: the trainer never passes it on."""
        path = Path(path)
        size = path.stat().st_size
        header = tpb.UploadDatasetRequest.Header(filename=path.name, size_bytes=size,
                                                 sha256=_sha256_file(path).hexdigest())

        def requests() -> Iterator[tpb.UploadDatasetRequest]:
            yield tpb.UploadDatasetRequest(header=header)
            for block in _file_chunks(path, progress, size):
                yield tpb.UploadDatasetRequest(chunk=block)

        try:
            return self.trainer.UploadDataset(requests(), metadata=self._metadata(), timeout=timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def create_job(self, spec, schema: pb.DataSchema, dataset: str | tpb.Dataset, publish_model: str,
                   request_id: str | None = None, timeout: float | None = 600.0) -> tpb.Job:
        """Submits a training job. `spec` is a libsgde.TrainSpec or a TrainingSpec message (0 / empty fields
        mean the default); `dataset` an uploaded Dataset (or its name), a path under the trainer's data root or
        "s3://bucket/key" in the silo's store; `publish_model` the model the result goes to ("name",
        "you/name" or "models/you/name"). The trainer checks spec, schema and data before it answers.
        `request_id` makes a retry return the same job instead of a second one (a fresh one by default)."""
        if not isinstance(spec, tpb.TrainingSpec):
            from libsgde.wire.convert import train_spec_to_proto
            spec = train_spec_to_proto(spec)
        if isinstance(dataset, tpb.Dataset):
            dataset = dataset.name
        me = self._username if "/" in publish_model else self._me()
        request = tpb.CreateJobRequest(spec=spec, data_schema=schema, dataset=str(dataset),
                                       publish_model=model_name(publish_model, me),
                                       request_id=request_id or uuid.uuid4().hex)
        return self._call(self.trainer.CreateJob, request, timeout=timeout)

    def get_job(self, name: str) -> tpb.Job:
        return self._call(self.trainer.GetJob, tpb.GetJobRequest(name=job_name(name)))

    def list_jobs(self, state: int = 0, page_size: int = 100) -> Iterator[tpb.Job]:
        """Your jobs, newest first (only those in `state`, if given)."""
        token = ""
        while True:
            page = self._call(self.trainer.ListJobs, tpb.ListJobsRequest(page_size=page_size, page_token=token,
                                                                          state=state))
            yield from page.jobs
            token = page.next_page_token
            if not token:
                return

    def watch_job(self, name: str, timeout: float | None = None) -> Iterator[tpb.ProgressEvent]:
        """The job's progress until it ends: first the notable events so far (and the latest progress), then live
        events; the last one carries the final state. Stop iterating to stop watching (the job goes on)."""
        stream = self.trainer.WatchJob(tpb.WatchJobRequest(name=job_name(name)), metadata=self._metadata(),
                                       timeout=timeout)
        try:
            yield from stream
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            stream.cancel()

    def cancel_job(self, name: str) -> tpb.Job:
        """Cancels a queued job at once, or asks a running one to stop (it stops within a training step)."""
        return self._call(self.trainer.CancelJob, tpb.CancelJobRequest(name=job_name(name)))

    def publish_job(self, name: str, timeout: float | None = 600.0) -> tpb.Job:
        """Signs a SUCCEEDED job's artifact sha256 here, with your signing key, and has the trainer publish the
        artifact to the registry with that signature. Returns the job (PUBLISHED, with `published_version`)."""
        job = self.get_job(name)
        if job.state != tpb.JOB_STATE_SUCCEEDED or not job.artifact_sha256:
            state = tpb.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
            where = f" as {job.published_version}" if job.published_version else ""
            raise FailedPrecondition(f"{job.name} is {state}{where}; only a succeeded job can be published")
        key = signing.load_signing_key(self.signing_key_path(self._me()))
        return self._call(self.trainer.PublishJobResult, tpb.PublishJobResultRequest(
            name=job.name, signature=signing.sign_artifact(key, job.artifact_sha256)), timeout=timeout)

    # -- sampling (the sampler service) ------------------------------------------------------------------------

    def sample(self, model: str, num_samples: int = 0, *, seed: int = 0,
               class_counts: Mapping[str, int] | None = None, format: str = "npy", out: str | Path | None = None,
               progress: Progress | None = None, chunk_samples: int = 0, timeout: float | None = None) -> Samples:
        """Synthetic samples streamed by the sampler from a model version (MODEL, MODEL@N or .../versions/N; the
        latest by default): `num_samples` of them (classes drawn from the model's class prior), or exactly
        `class_counts` ({class name: count}; the output is grouped by class in the schema's class order).
        `format` is "npy", "csv" (tables) or "parquet" (tables; where the sampler has pyarrow). The same request and
        seed give the same bytes. The stream is checked against its sha256; with `out` its bytes are written to that
        file atomically (nothing appears there unless the whole stream arrived and verified). `progress(done, total)`
        is called as samples arrive. Stopping early (Ctrl-C) cancels the call, and the sampler stops generating."""
        from libsgde.io.formats import format_name
        from libsgde.io.sampling import SamplingError
        try:
            fmt = format_name(format)
        except SamplingError as e:
            raise FieldError(e.field, e.description, message=str(e)) from None
        me = self._username if "/" in model else self._me()
        request = spb.SampleRequest(model=version_name(model, me), num_samples=num_samples, seed=seed,
                                    class_counts=dict(class_counts or {}), format=FORMAT_VALUES[fmt],
                                    chunk_samples=chunk_samples)
        stream = self.sampler.Sample(request, metadata=self._metadata(), timeout=timeout)
        state: dict = {}

        def pieces() -> Iterator[bytes]:
            for message in stream:
                which = message.WhichOneof("payload")
                if which == "metadata":
                    state["metadata"] = message.metadata
                    if progress:
                        progress(0, message.metadata.num_samples)
                elif which == "chunk":
                    if "metadata" not in state:
                        raise Internal("the sampler sent data before its metadata")
                    yield message.chunk
                    if progress:
                        progress(message.samples_done, state["metadata"].num_samples)
                elif message.sha256:
                    state["sha256"] = message.sha256

        try:
            digest, data, path = _collect(pieces(), out)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            stream.cancel()  # a no-op once the stream ended; otherwise the sampler stops generating
        if "sha256" not in state:
            _discard(path)
            raise Unavailable("the sample stream ended before its last message; nothing was kept, try again")
        if state["sha256"] != digest:
            _discard(path)
            raise VerificationError(f"the sampled bytes hash to {digest}, the sampler announced {state['sha256']}; "
                                    "nothing was kept, try again")
        metadata = state["metadata"]
        if path is not None:
            os.replace(path, out)
            path = Path(out)
        return Samples(metadata, digest, FORMAT_NAMES[metadata.format], data, path)


FORMAT_VALUES = {"csv": spb.OUTPUT_FORMAT_CSV, "npy": spb.OUTPUT_FORMAT_NPY, "parquet": spb.OUTPUT_FORMAT_PARQUET}
FORMAT_NAMES = {value: name for name, value in FORMAT_VALUES.items()}


@dataclass
class Samples:
    """Sampled data: the stream's metadata (resolved version, artifact sha256, schema, privacy report, per-class
    counts), the sha256 of its bytes, and the bytes themselves (`data`), or the file they were written to (`path`).

    `values` and `labels` are decoded on first use, in the types the schema's encoder decodes to: tabular values are
    {column: array} (the label column as class names), images an [N, H, W, C] array; labels are int32 class indices
    in the schema's order (None for an unconditional model)."""

    metadata: spb.SampleMetadata
    sha256: str
    format: str
    data: bytes | None = None
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.metadata.num_samples)

    def raw(self) -> bytes:
        """The output's bytes (read from `path` when written to a file)."""
        return self.data if self.data is not None else Path(self.path).read_bytes()

    @cached_property
    def _decoded(self):
        from libsgde.io.formats import read_samples
        return read_samples(self.data if self.data is not None else self.path, self.format,
                            self.metadata.data_schema, list(self.metadata.class_counts))

    @property
    def values(self):
        return self._decoded[0]

    @property
    def labels(self):
        return self._decoded[1]

    @property
    def class_names(self) -> list[str]:
        from libsgde.io.sampling import class_names
        return class_names(self.metadata.data_schema)

    def to_dataframe(self):
        """A pandas DataFrame (pandas is imported only here): tabular samples one column per schema column; images
        an `image` column of [H, W, C] arrays and a `label` column of class names (when conditional)."""
        try:
            import pandas as pd
        except ImportError:
            raise SgdeError("to_dataframe needs pandas: pip install pandas") from None
        if isinstance(self.values, dict):
            return pd.DataFrame(self.values)
        frame = pd.DataFrame({"image": list(self.values)})
        if self.labels is not None:
            frame["label"] = [self.class_names[i] for i in self.labels]
        return frame


def _collect(pieces: Iterable[bytes], out: str | Path | None) -> tuple[str, bytes | None, Path | None]:
    """Hashes the pieces and keeps them: in memory, or (with `out`) in a temporary file beside `out`, fsynced (its
    caller renames it into place). Returns (sha256, bytes or None, temporary path or None)."""
    digest = hashlib.sha256()
    if out is None:
        parts = []
        for piece in pieces:
            digest.update(piece)
            parts.append(piece)
        return digest.hexdigest(), b"".join(parts), None
    out = Path(out)
    fd, tmp = tempfile.mkstemp(dir=out.parent if str(out.parent) else ".", prefix=f".{out.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            for piece in pieces:
                digest.update(piece)
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest(), None, Path(tmp)


def _discard(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


_LOCAL_SAMPLERS: OrderedDict[str, object] = OrderedDict()  # artifact sha256 -> CompiledSampler
_LOCAL_LOCK = threading.Lock()


def sample_local(path: str | Path, num_samples: int = 0, seed: int = 0,
                 class_counts: Mapping[str, int] | None = None, *, format: str = "npy",
                 out: str | Path | None = None, chunk_samples: int = 0,
                 progress: Progress | None = None) -> Samples:
    """Samples from an artifact file (one `Client.pull` verified) with no server: the same bytes, and so the same
    values, as the sampler streams for the same request (num_samples or class_counts, seed, format,
    chunk_samples). Loads through the strict reader; the last few compiled generators are kept, by sha256."""
    from libsgde.io.artifact import ArtifactError, sha256_file
    from libsgde.io.formats import FormatUnavailable, check_format, encode_stream
    from libsgde.io.generator import load_generator
    from libsgde.io.sampling import CompiledSampler, SamplingError, label_counts, plan_labels

    path = Path(path)
    sha = sha256_file(path)
    with _LOCAL_LOCK:
        sampler = _LOCAL_SAMPLERS.get(sha)
        if sampler is not None:
            _LOCAL_SAMPLERS.move_to_end(sha)
    if sampler is None:
        try:
            sampler = CompiledSampler(load_generator(path))
        except ArtifactError as e:
            raise FailedPrecondition(f"{path}: not a generator this SDK can load: {e}") from None
        with _LOCAL_LOCK:
            _LOCAL_SAMPLERS[sha] = sampler
            while len(_LOCAL_SAMPLERS) > 4:
                _LOCAL_SAMPLERS.popitem(last=False)
    generator = sampler.generator
    try:
        fmt = check_format(format, sampler.schema)
        labels = plan_labels(generator, num_samples, class_counts, seed)
        total = len(labels) if labels is not None else int(num_samples)
        stream = encode_stream(sampler, labels if labels is not None else total, seed, fmt, chunk_samples)

        def pieces() -> Iterator[bytes]:
            for data, done in stream:
                yield data
                if progress:
                    progress(done, total)

        digest, data, tmp = _collect(pieces(), out)
    except FormatUnavailable as e:
        raise FailedPrecondition(str(e), [(e.field, e.description)]) from None
    except SamplingError as e:
        raise FieldError(e.field, e.description, message=str(e)) from None
    if tmp is not None:
        os.replace(tmp, out)
    metadata = spb.SampleMetadata(artifact_sha256=sha, format=FORMAT_VALUES[fmt], num_samples=total,
                                  data_schema=sampler.schema, privacy=generator.manifest.privacy,
                                  class_counts=label_counts(labels, generator.space.num_classes))
    return Samples(metadata, digest, fmt, data, Path(out) if out is not None else None)


def job_name(ref: str) -> str:
    """'jobs/ID' or 'ID' -> 'jobs/ID'."""
    return ref if ref.startswith("jobs/") else f"jobs/{ref}"


def _file_chunks(path: Path, progress: Progress | None, size: int) -> Iterator[bytes]:
    done = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK_SIZE):
            done += len(block)
            yield block
            if progress:
                progress(done, size)


def publish_requests(header: rpb.PublishVersionRequest.Header, path: Path,
                     progress: Progress | None = None) -> Iterator[rpb.PublishVersionRequest]:
    """The PublishVersion request stream: the header, then the file in chunks of at most 1 MiB."""
    yield rpb.PublishVersionRequest(header=header)
    for block in _file_chunks(path, progress, header.size_bytes):
        yield rpb.PublishVersionRequest(chunk=block)


def token_expiry(home: Path | None = None) -> datetime | None:
    """When the saved token expires, if there is one."""
    try:
        saved = json.loads(((home or config.sgde_home()) / "token.json").read_text())
        return datetime.fromisoformat(saved["expires"])
    except (OSError, ValueError, KeyError):
        return None
