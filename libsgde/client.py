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
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import grpc
from google.protobuf import empty_pb2, field_mask_pb2

from libsgde import config
from libsgde.errors import describe_rpc_error, field_violations
from libsgde.proto.sgde.v1 import common_pb2 as pb
from libsgde.proto.sgde.v1 import registry_pb2 as rpb
from libsgde.proto.sgde.v1 import registry_pb2_grpc
from libsgde.proto.sgde.v1 import trainer_pb2 as tpb
from libsgde.proto.sgde.v1 import trainer_pb2_grpc
from libsgde.security import signing, tls
from libsgde.security.tls import write_private
from libsgde.storage import CHUNK_SIZE

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)

VISIBILITIES = {"private": pb.VISIBILITY_PRIVATE, "shared": pb.VISIBILITY_SHARED, "public": pb.VISIBILITY_PUBLIC}


class SgdeError(Exception):
    """A failed call: the gRPC status name, the server's message and any field violations."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None,
                 violations: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.code = code
        self.violations = violations or []

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> SgdeError:
        code = error.code() if hasattr(error, "code") else None
        return cls(describe_rpc_error(error), code, field_violations(error))


class VerificationError(SgdeError):
    """A downloaded artifact does not match its sha256 or its owner's signature."""


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
    """A connection to the registry (and, when used, the trainer) over mutual TLS, acting for the user whose token is
    under $SGDE_HOME.

    A service acting for a user (the trainer publishing a job's result) builds one with `Client.forwarding`: over
    its own channel, with the token the user sent, reading no files."""

    def __init__(self, registry: str | None = None, *, trainer: str | None = None, home: Path | None = None,
                 pki: Path | None = None, identity: str = tls.CLIENT, token: str | None = None,
                 timeout: float = 30.0, channel: grpc.Channel | None = None):
        self.home = Path(home) if home else config.sgde_home()
        self.pki = tls.PkiPaths(Path(pki) if pki else (self.home / "pki" if home else config.pki_dir()))
        self.address = registry or config.service_address("registry")
        self.trainer_address = trainer or config.service_address("trainer")
        self.identity = identity
        self.timeout = timeout
        self._owns_channel = channel is None
        self._channel = channel or secure_channel(self.address, tls.channel_credentials(self.pki, identity))
        self.registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._trainer_channel: grpc.Channel | None = None
        self._trainer: trainer_pb2_grpc.TrainerServiceStub | None = None
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

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()
        if self._trainer_channel is not None:
            self._trainer_channel.close()

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
            raise SgdeError.from_rpc(e) from None

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
        """Changes description, tags, visibility ('private' | 'shared' | 'public') or shared_with."""
        if "visibility" in changes:
            changes["visibility"] = VISIBILITIES[changes["visibility"]]
        model = pb.Model(name=model_name(ref, self._username), **changes)
        return self._call(self.registry.UpdateModel, rpb.UpdateModelRequest(
            model=model, update_mask=field_mask_pb2.FieldMask(paths=sorted(changes))))

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
            if e.code != grpc.StatusCode.NOT_FOUND:
                raise
            try:
                self.create_model(name.rsplit("/", 1)[1], **create_args)
            except SgdeError as e2:
                if e2.code != grpc.StatusCode.ALREADY_EXISTS:
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
            raise SgdeError.from_rpc(e) from None

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
            raise SgdeError.from_rpc(e) from None
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
            raise SgdeError.from_rpc(e) from None

    def create_job(self, spec, schema: pb.DataSchema, dataset: str | tpb.Dataset, publish_model: str,
                   request_id: str | None = None, timeout: float | None = 600.0) -> tpb.Job:
        """Submits a training job. `spec` is a libsgde.train.TrainSpec or a TrainingSpec message (0 / empty fields
        mean the default); `dataset` an uploaded Dataset (or its name), a path under the trainer's data root or
        "s3://bucket/key" in the silo's store; `publish_model` the model the result goes to ("name",
        "you/name" or "models/you/name"). The trainer checks spec, schema and data before it answers.
        `request_id` makes a retry return the same job instead of a second one (a fresh one by default)."""
        if not isinstance(spec, tpb.TrainingSpec):
            spec = spec.to_proto()
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
            raise SgdeError.from_rpc(e) from None
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
            raise SgdeError(f"{job.name} is {state}{where}; only a succeeded job can be published",
                            grpc.StatusCode.FAILED_PRECONDITION)
        key = signing.load_signing_key(self.signing_key_path(self._me()))
        return self._call(self.trainer.PublishJobResult, tpb.PublishJobResultRequest(
            name=job.name, signature=signing.sign_artifact(key, job.artifact_sha256)), timeout=timeout)


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
