"""The registry's calls, acting for one user (their bearer token) over one channel: accounts, models, versions,
and the transfers of artifacts, verified before a file appears.

`Client` is a RegistrySession with the user's own files (token, signing key) under $SGDE_HOME. A trainer or sampler
acting for a user builds one over its own channel with the token that user forwarded
(`libsgde.server.gate.RegistryGate.session_for`): the same calls and checks, no files.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2, field_mask_pb2

from libsgde.client.names import model_name, version_name
from libsgde.client.transfers import Progress, publish_requests, write_behind
from libsgde.domain.card import ModelCard
from libsgde.domain.resources import Model, ModelVersion, User, Visibility
from libsgde.errors import Conflict, NotFound, SgdeError, Unauthenticated, VerificationError
from libsgde.io.artifact import file_digest
from libsgde.security import signing
from libsgde.wire.convert import (
    card_from_proto,
    model_from_proto,
    user_from_proto,
    version_from_proto,
    visibility_to_proto,
)
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from libsgde.wire.proto.sgde.v1 import registry_pb2_grpc
from libsgde.wire.status import from_rpc_error

T = TypeVar("T")


class RegistrySession:
    def __init__(
        self, channel: grpc.Channel, token: str | None = None, username: str | None = None, timeout: float = 30.0
    ):
        self.registry = registry_pb2_grpc.RegistryServiceStub(channel)
        self.federations = registry_pb2_grpc.FederationServiceStub(channel)
        self.timeout = timeout
        self._token = token
        self._username = username

    @property
    def username(self) -> str | None:
        return self._username

    def _metadata(self) -> list[tuple[str, str]]:
        if not self._token:
            raise Unauthenticated("not logged in: run `sgde login`")
        return [("authorization", f"Bearer {self._token}")]

    def _call(self, method: Any, request: Any, *, auth: bool = True, timeout: float | None = None) -> Any:
        try:
            return method(request, metadata=self._metadata() if auth else None, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def _pages(self, method: Any, request: Any, items: str, convert: Callable[[Any], T]) -> Iterator[T]:
        """Every item of a List call, page after page, converted to its domain type."""
        while True:
            page = self._call(method, request)
            yield from map(convert, getattr(page, items))
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def whoami(self) -> User:
        user = user_from_proto(self._call(self.registry.WhoAmI, empty_pb2.Empty()))
        self._username = user.username
        return user

    def _me(self) -> str:
        return self._username or self.whoami().username

    # -- models ------------------------------------------------------------------------------------------------

    def list_models(
        self, owner: str = "", tag: str = "", data_kind: pb.DataKind = pb.DATA_KIND_UNSPECIFIED, page_size: int = 100
    ) -> Iterator[Model]:
        return self._pages(
            self.registry.ListModels,
            rpb.ListModelsRequest(owner=owner, tag=tag, data_kind=data_kind, page_size=page_size),
            "models",
            model_from_proto,
        )

    def get_model(self, ref: str) -> Model:
        return model_from_proto(
            self._call(self.registry.GetModel, rpb.GetModelRequest(name=model_name(ref, self._username)))
        )

    def create_model(
        self,
        model_id: str,
        description: str = "",
        tags: list[str] | None = None,
        visibility: str = "private",
        shared_with: list[str] | None = None,
        data_schema: pb.DataSchema | None = None,
    ) -> Model:
        model = pb.Model(
            description=description,
            tags=tags or [],
            visibility=visibility_to_proto(visibility),
            shared_with=shared_with or [],
            data_schema=data_schema,
        )
        return model_from_proto(
            self._call(self.registry.CreateModel, rpb.CreateModelRequest(model_id=model_id, model=model))
        )

    def update_model(self, ref: str, **changes: Any) -> Model:
        """Changes description, tags, visibility ('private' | 'shared' | 'public'), shared_with or metrics (the whole
        map; see `set_metrics`)."""
        if "visibility" in changes:
            changes["visibility"] = visibility_to_proto(changes["visibility"])
        model = pb.Model(name=model_name(ref, self._username), **changes)
        return model_from_proto(
            self._call(
                self.registry.UpdateModel,
                rpb.UpdateModelRequest(model=model, update_mask=field_mask_pb2.FieldMask(paths=sorted(changes))),
            )
        )

    def set_metrics(
        self,
        ref: str,
        metrics: Mapping[str, float],
        *,
        merge: bool = True,
        remove: Sequence[str] = (),
        version: int | None = None,
    ) -> Model:
        """Stores evaluation results on a model (owner only): keys of 1-64 characters in a-z 0-9 _ . : / -, finite
        values, at most 200. With `merge` the model's other metrics stay (merged by the registry in one
        transaction, so concurrent evaluations keep each other's keys) and `remove` names keys to drop; without
        it they are replaced. The registry records who stored each key and when, and with `merge` the `version`
        they were measured on (default: the `evaluate.version` that `sgde evaluate` stores among them), so that
        the version's model card shows them."""
        values = {k: float(v) for k, v in metrics.items()}
        if not merge:
            return self.update_model(ref, metrics=values)
        if version is None:  # a value the registry will refuse as a metric says no version
            said = values.get("evaluate.version", 0.0)
            version = int(said) if math.isfinite(said) and said.is_integer() else 0
        request = rpb.MergeModelMetricsRequest(
            name=model_name(ref, self._username), metrics=values, remove=remove, version=version
        )
        return model_from_proto(self._call(self.registry.MergeModelMetrics, request))

    def share(self, ref: str, users: list[str]) -> Model:
        """Adds users to the model's share list and makes it SHARED (unless it is PUBLIC)."""
        model = self.get_model(ref)
        names = list(dict.fromkeys([*model.shared_with, *users]))
        changes: dict = {"shared_with": names}
        if model.visibility == Visibility.PRIVATE:
            changes["visibility"] = "shared"
        return self.update_model(ref, **changes)

    def delete_model(self, ref: str) -> None:
        self._call(self.registry.DeleteModel, rpb.DeleteModelRequest(name=model_name(ref, self._username)))

    def ensure_model(self, name: str, **create_args: Any) -> None:
        """Creates the model `models/{owner}/{model}` unless it exists (a concurrent creation is fine too)."""
        try:
            self.get_model(name)
        except NotFound:
            try:
                self.create_model(name.rsplit("/", 1)[1], **create_args)
            except Conflict:
                pass

    # -- versions ----------------------------------------------------------------------------------------------

    def publish_signed(
        self,
        path: str | Path,
        name: str,
        sha256: str,
        signature: bytes,
        *,
        create: bool = True,
        progress: Progress | None = None,
        timeout: float | None = None,
        **create_args: Any,
    ) -> ModelVersion:
        """Streams an artifact whose sha256 is already signed to PublishVersion of model `name` (made first when
        `create` and missing). `Client.push` signs and calls this; the trainer calls it with a forwarded token and
        the signature its user made on their own machine."""
        path = Path(path)
        if create:
            self.ensure_model(name, **create_args)
        header = rpb.PublishVersionRequest.Header(
            model=name, sha256=sha256, size_bytes=path.stat().st_size, signature=signature
        )
        try:
            return version_from_proto(
                self.registry.PublishVersion(
                    publish_requests(header, path, progress), metadata=self._metadata(), timeout=timeout
                )
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def get_version(self, ref: str) -> ModelVersion:
        return version_from_proto(
            self._call(self.registry.GetVersion, rpb.GetVersionRequest(name=version_name(ref, self._username)))
        )

    def model_card(self, ref: str) -> ModelCard:
        """The model card of a version (MODEL for its latest, MODEL@N, or .../versions/N): data, schema,
        architecture, privacy, metrics with who stored them, audit verdict and signing key, from the registry's
        records, with its markdown (`card.markdown`)."""
        name = version_name(ref, self._username)
        return card_from_proto(self._call(self.registry.GetModelCard, rpb.GetModelCardRequest(name=name)))

    def list_versions(self, ref: str) -> Iterator[ModelVersion]:
        return self._pages(
            self.registry.ListVersions,
            rpb.ListVersionsRequest(parent=model_name(ref, self._username)),
            "versions",
            version_from_proto,
        )

    def pull(
        self,
        ref: str,
        dest: str | Path | None = None,
        *,
        progress: Progress | None = None,
        timeout: float | None = None,
    ) -> tuple[Path, ModelVersion]:
        """Downloads a version (latest by default), resuming a partial download, and verifies its sha256 and its
        owner's signature before it appears at `dest` (default: ./<owner>-<model>-v<n>.safetensors)."""
        version = self.get_version(ref)
        owner, model = version.owner, version.name.split("/")[2]
        default = f"{owner}-{model}-v{version.number}.safetensors"
        dest = Path(dest) if dest else Path.cwd() / default
        if dest.is_dir():
            dest = dest / default
        partial = dest.with_name(dest.name + f".{version.sha256[:12]}.part")
        offset = partial.stat().st_size if partial.exists() else 0
        if offset > version.size_bytes:
            partial.unlink()
            offset = 0
        digest = file_digest(partial) if offset else hashlib.sha256()  # hashed as it arrives: no second read
        try:
            stream = self.registry.DownloadVersion(
                rpb.DownloadVersionRequest(name=version.name, offset=offset), metadata=self._metadata(), timeout=timeout
            )
            with open(partial, "ab") as f:
                with write_behind(f, digest) as write:  # writing and hashing overlap receiving
                    for message in stream:
                        if message.WhichOneof("payload") == "version":
                            if message.version.sha256 != version.sha256:
                                raise SgdeError("the version changed during the download; try again")
                            continue
                        chunk = message.chunk  # each read of the field copies it
                        write(chunk)
                        offset += len(chunk)
                        if progress:
                            progress(offset, version.size_bytes)
                f.flush()
                os.fsync(f.fileno())
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        self.verify(partial, version, owner, digest.hexdigest())
        os.replace(partial, dest)
        return dest, version

    def verify(self, path: Path, version: ModelVersion, owner: str, sha: str | None = None) -> None:
        """Checks a downloaded file (whose sha256 is `sha`, if already known) against the version's sha256 and the
        owner's registered signing key."""
        sha = sha or file_digest(path).hexdigest()
        if sha != version.sha256:
            path.unlink(missing_ok=True)
            raise VerificationError(
                f"downloaded bytes hash to {sha}, expected {version.sha256}; the partial file was removed, pull again"
            )
        user = self._call(self.registry.GetUser, rpb.GetUserRequest(name=f"users/{owner}"))
        if not signing.verify_artifact(user.signing_public_key, sha, version.signature):
            raise VerificationError(
                f"the signature of {version.name} does not verify with {owner}'s key "
                f"({signing.fingerprint(user.signing_public_key)}); do not use this file"
            )
