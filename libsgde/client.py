"""The Python SDK: what a user scripts against. The `sgde` command is a thin face over it.

    from libsgde.client import Client
    c = Client()                       # certificates and token under $SGDE_HOME
    c.login("alice", password)
    c.push("model.safetensors", "alice/digits")
    for m in c.list_models(): print(m.name)
"""
from __future__ import annotations

import hashlib
import json
import os
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


class Client:
    """A connection to the registry over mutual TLS, acting for the user whose token is under $SGDE_HOME."""

    def __init__(self, registry: str | None = None, *, home: Path | None = None, pki: Path | None = None,
                 identity: str = tls.CLIENT, token: str | None = None, timeout: float = 30.0):
        self.home = Path(home) if home else config.sgde_home()
        self.pki = tls.PkiPaths(Path(pki) if pki else (self.home / "pki" if home else config.pki_dir()))
        self.address = registry or config.service_address("registry")
        self.timeout = timeout
        self._channel = grpc.secure_channel(
            self.address, tls.channel_credentials(self.pki, identity),
            options=[("grpc.max_receive_message_length", 4 << 20), ("grpc.max_send_message_length", 4 << 20)])
        self.registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._token = token
        self._username: str | None = None
        if token is None:
            saved = self._load_token()
            if saved:
                self._token, self._username = saved["access_token"], saved["username"]

    def close(self) -> None:
        self._channel.close()

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
        name = model_name(ref, me)
        if create:
            try:
                self.get_model(name)
            except SgdeError as e:
                if e.code != grpc.StatusCode.NOT_FOUND:
                    raise
                self.create_model(name.rsplit("/", 1)[1], **create_args)
        key = signing.load_signing_key(self.signing_key_path(me))
        size = path.stat().st_size
        sha = _sha256_file(path).hexdigest()
        header = rpb.PublishVersionRequest.Header(model=name, sha256=sha, size_bytes=size,
                                                  signature=signing.sign_artifact(key, sha))

        def requests() -> Iterator[rpb.PublishVersionRequest]:
            yield rpb.PublishVersionRequest(header=header)
            done = 0
            with open(path, "rb") as f:
                while block := f.read(CHUNK_SIZE):
                    done += len(block)
                    yield rpb.PublishVersionRequest(chunk=block)
                    if progress:
                        progress(done, size)

        try:
            return self.registry.PublishVersion(requests(), metadata=self._metadata(), timeout=timeout)
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


def token_expiry(home: Path | None = None) -> datetime | None:
    """When the saved token expires, if there is one."""
    try:
        saved = json.loads(((home or config.sgde_home()) / "token.json").read_text())
        return datetime.fromisoformat(saved["expires"])
    except (OSError, ValueError, KeyError):
        return None
