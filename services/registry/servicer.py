"""RegistryService: validates requests, authorises the caller, and calls the catalogue and the blob store."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from libsgde import errors
from libsgde.domain.names import (
    EMAIL_RE,
    METRIC_KEY_RE,
    MODEL_ID_RE,
    MODEL_NAME_RE,
    SHA256_RE,
    TAG_RE,
    USER_NAME_RE,
    USERNAME_RE,
    VERSION_NAME_RE,
)
from libsgde.io.artifact import ArtifactError, ArtifactHeader, HeaderSniffer, Manifest, TensorInfo
from libsgde.io.schema import SchemaError, data_kind, schemas_equal, validate_schema
from libsgde.security import signing
from libsgde.server import auth
from libsgde.server.storage import BlobIntegrityError, BlobNotFound, BlobStore, StorageUnavailable
from libsgde.server.streams import first_header, read_ahead
from libsgde.wire.convert import time_to_proto
from libsgde.wire.limits import CHUNK_SIZE
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from libsgde.wire.proto.sgde.v1 import registry_pb2_grpc
from services.registry.cards import model_card
from services.registry.catalogue import (
    Catalogue,
    Conflict,
    Gone,
    Locked,
    ModelRow,
    Quota,
    QuotaExceeded,
    TooManyMetrics,
    UploadExpired,
    UserRow,
    VersionRow,
)
from services.registry.federation_store import FederationStore

log = logging.getLogger("sgde.registry")

MAX_DESCRIPTION = 4000
MAX_EMAIL = 254  # RFC 5321's limit, and the users table's column
MAX_TAGS = 20
MAX_SHARES = 256
DEFAULT_PAGE = 50
MAX_PAGE = 1000
UPDATABLE = {"description", "tags", "visibility", "shared_with", "metrics"}
MAX_METRICS = 200


@dataclass(frozen=True)
class RegistrySettings:
    max_version_bytes: int = 512 << 20
    # Password checks (scrypt, 32 MiB each) at once; more are refused with UNAVAILABLE.
    max_password_checks: int = 4
    # Failed logins from one source address before its logins slow down.
    source_lockout: auth.LockoutPolicy = auth.LockoutPolicy(auth.SOURCE_FREE_FAILURES, auth.SOURCE_FORGET_SECONDS)
    # How long a publish may take, header to commit; an upload older than this no longer keeps its blob from deletion
    # (so one that a killed replica left keeps it no longer), and may not become a version.
    upload_lease_seconds: float = 3600.0
    # Per user: versions one model may hold, and bytes of artifacts stored (every version counted).
    quota: Quota = Quota(versions_per_model=1000, stored_bytes_per_user=20 << 30)


def _parse_model_name(name: str, field: str = "name") -> tuple[str, str]:
    m = MODEL_NAME_RE.fullmatch(name)
    if not m or not USERNAME_RE.fullmatch(m[1]) or not MODEL_ID_RE.fullmatch(m[2]):
        raise errors.FieldError(field, f"expected models/{{owner}}/{{model}}, got {name[:200]!r}")
    return m[1], m[2]


def _parse_version_name(name: str) -> tuple[str, str, int | None]:
    m = VERSION_NAME_RE.fullmatch(name)
    if not m or not USERNAME_RE.fullmatch(m[1]) or not MODEL_ID_RE.fullmatch(m[2]):
        raise errors.FieldError(
            "name", f"expected models/{{owner}}/{{model}}/versions/{{n|latest}}, got {name[:200]!r}"
        )
    if m[3] == "latest":
        return m[1], m[2], None
    if not re.fullmatch(r"[0-9]{1,10}", m[3]) or not 0 < int(m[3]) < 2**31:
        raise errors.FieldError("name", f"version must be a positive number or 'latest', got {m[3][:20]!r}")
    return m[1], m[2], int(m[3])


class _PageToken:
    """Opaque page tokens: the last id seen, bound to the query's filters so they cannot be mixed up."""

    @staticmethod
    def encode(after: int, query: str) -> str:
        raw = json.dumps({"a": after, "q": hashlib.sha256(query.encode()).hexdigest()[:16]}).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def decode(token: str, query: str) -> int:
        if not token:
            return 0
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            after = data["a"]
            same = data["q"] == hashlib.sha256(query.encode()).hexdigest()[:16]
        except (ValueError, KeyError, TypeError):
            raise errors.FieldError("page_token", "not a token from a previous page of this listing") from None
        if not same or not isinstance(after, int) or after < 0:
            raise errors.FieldError("page_token", "the token belongs to a listing with other filters")
        return after


def _check_artifact(manifest: Manifest, tensors: dict[str, TensorInfo]) -> None:
    """Run on the header at publish: the strict reader's architecture check (libsgde.io.generator.check_tensors),
    and the privacy claim recomputed by the accountant (libsgde.io.privacy). Imported at first use: they import JAX
    and flax (architectures compute their tensor shapes with jax.eval_shape), which would add seconds to the
    registry's start-up."""
    from libsgde.io.generator import check_tensors
    from libsgde.io.privacy import check_privacy_claim

    check_tensors(manifest, tensors)
    check_privacy_claim(manifest)


def _recorded_privacy(manifest: Manifest) -> pb.PrivacyReport:
    """The privacy report a version records: its epsilons as the accountant recomputed them at publish (cached:
    _check_artifact computed them moments before)."""
    from libsgde.io.privacy import check_privacy_claim

    return check_privacy_claim(manifest)


def _page_size(size: int) -> int:
    if size < 0:
        raise errors.FieldError("page_size", "must be >= 0")
    return min(size or DEFAULT_PAGE, MAX_PAGE)


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(
        self,
        catalogue: Catalogue,
        store: BlobStore,
        issuer: auth.TokenIssuer,
        verifier: auth.TokenVerifier,
        settings: RegistrySettings = RegistrySettings(),
        federations: FederationStore | None = None,
    ):
        self.catalogue = catalogue
        self.federations = federations
        self.store = store
        self.issuer = issuer
        self.verifier = verifier
        self.settings = settings
        self.password_checks = auth.PasswordChecks(settings.max_password_checks)

    # -- helpers -----------------------------------------------------------------------------------------------

    def _caller(self, context: grpc.ServicerContext) -> UserRow:
        token = auth.bearer_token_from_metadata(context.invocation_metadata())
        if not token:
            raise errors.Unauthenticated("no bearer token: run `sgde login` (metadata `authorization: Bearer ...`)")
        try:
            claims = self.verifier.verify(token)
        except auth.InvalidToken as e:
            raise errors.Unauthenticated(str(e)) from None
        user = self.catalogue.get_user(claims.username)
        if user is None:
            raise errors.Unauthenticated("the token's user no longer exists")
        if claims.user_id != user.id:
            raise errors.Unauthenticated(
                "the token names no account id (issued before this registry bound tokens to accounts): "
                "run `sgde login` again"
                if claims.user_id is None
                else "the token was issued to an account of this name that no longer exists: run `sgde login` again"
            )
        return user

    @staticmethod
    def _can_see(user: UserRow, model: ModelRow) -> bool:
        return (
            model.owner_id == user.id
            or model.visibility == pb.VISIBILITY_PUBLIC
            or (model.visibility == pb.VISIBILITY_SHARED and user.username in model.shared_with)
        )

    def _visible_model(self, user: UserRow, name: str, field: str = "name") -> ModelRow:
        owner, model_id = _parse_model_name(name, field)
        model = self.catalogue.get_model(owner, model_id)
        if model is None or not self._can_see(user, model):
            raise errors.NotFound.hidden(name)
        return model

    def _owned_model(self, user: UserRow, name: str, field: str = "name") -> ModelRow:
        model = self._visible_model(user, name, field)
        if model.owner_id != user.id:
            raise errors.PermissionDenied(f"only {model.owner} may change {name}")
        return model

    def _visible_version(self, user: UserRow, name: str) -> VersionRow:
        """A version the caller may read: of a model it may see, or admitted to a federation it is a member of."""
        owner, model_id, number = _parse_version_name(name)
        model = self.catalogue.get_model(owner, model_id)
        version = self.catalogue.get_version(model, number) if model is not None else None
        if version is None or not (self._can_see(user, version.model) or self._admitted_for(user, version)):
            raise errors.NotFound.hidden(name)
        return version

    def _admitted_for(self, user: UserRow, version: VersionRow) -> bool:
        return self.federations is not None and self.federations.admitted_to_member_of(
            user.id, version.model.id, version.number
        )

    @staticmethod
    def _user_message(user: UserRow, viewer: UserRow | None) -> rpb.User:
        return rpb.User(
            name=f"users/{user.username}",
            username=user.username,
            email=user.email if viewer is not None and viewer.id == user.id else "",
            signing_public_key=user.signing_public_key,
            create_time=time_to_proto(user.created_at),
        )

    @staticmethod
    def _model_message(model: ModelRow, viewer: UserRow) -> pb.Model:
        return pb.Model(
            name=f"models/{model.owner}/{model.model_id}",
            owner=model.owner,
            description=model.description,
            tags=model.tags,
            data_schema=model.data_schema,
            data_kind=model.data_kind,
            visibility=model.visibility,
            shared_with=model.shared_with if model.owner_id == viewer.id else [],
            latest_version=model.latest_version,
            create_time=time_to_proto(model.created_at),
            update_time=time_to_proto(model.updated_at),
            metrics=model.metrics,
        )

    @staticmethod
    def _version_message(version: VersionRow) -> pb.ModelVersion:
        m = version.model
        return pb.ModelVersion(
            name=f"models/{m.owner}/{m.model_id}/versions/{version.number}",
            number=version.number,
            sha256=version.sha256,
            size_bytes=version.size_bytes,
            signature=version.signature,
            architecture=version.architecture,
            data_kind=version.data_kind,
            privacy=version.privacy,
            create_time=time_to_proto(version.created_at),
            manifest_json=version.manifest_json,
        )

    # -- users -------------------------------------------------------------------------------------------------

    def Register(self, request: rpb.RegisterRequest, context) -> rpb.User:
        violations = []
        if not USERNAME_RE.fullmatch(request.username):
            violations.append(
                ("username", "3-32 characters: lowercase letters, digits, '-' and '_', starting with a letter")
            )
        if not EMAIL_RE.fullmatch(request.email):
            violations.append(("email", "not an email address"))
        elif len(request.email) > MAX_EMAIL:  # the column's size: PostgreSQL would refuse it (INTERNAL)
            violations.append(("email", f"at most {MAX_EMAIL} characters"))
        try:
            auth.check_password_policy(request.password, request.username)
        except auth.PasswordPolicyError as e:
            violations.append(("password", str(e)))
        try:
            signing.parse_public_key(request.signing_public_key)
        except ValueError:
            violations.append(("signing_public_key", "must be a raw 32-byte Ed25519 public key"))
        if violations:
            raise errors.FieldError.many(violations)
        with self.password_checks.slot():
            password_hash = self.password_checks.hash(request.password)
        try:
            user = self.catalogue.create_user(
                request.username, request.email, password_hash, request.signing_public_key
            )
        except Conflict:
            raise errors.Conflict(f"username {request.username!r} is taken") from None
        return self._user_message(user, user)

    def Login(self, request: rpb.LoginRequest, context) -> rpb.LoginResponse:
        username, password = request.username, request.password
        if not USERNAME_RE.fullmatch(username):  # no account can have it: saying so tells nothing about who exists
            raise errors.FieldError(
                "username", "not a username (3-32 lowercase letters, digits, '-' or '_', starting with a letter)"
            )
        if auth.normalised_length(password) > auth.MAX_PASSWORD_LENGTH:
            raise errors.FieldError("password", f"longer than any password may be ({auth.MAX_PASSWORD_LENGTH})")
        account, source = f"account:{username}", f"source:{auth.source_address(context.peer())}"
        # Every answer below is the same for a name without an account: the attempt is counted, the check is spent.
        with self.password_checks.slot():
            try:
                self.catalogue.reserve_login([(source, self.settings.source_lockout), (account, auth.ACCOUNT_LOCKOUT)])
            except Locked as e:
                wait = int(e.seconds) + 1
                whose = f"for {username}" if e.subject == account else "from your address"
                raise errors.Exhausted(
                    f"too many failed logins {whose}: try again in {wait} s", retry_after=wait
                ) from None
            user = self.catalogue.get_user(username)
            if user is None:
                self.password_checks.burn(password)
                raise errors.Unauthenticated("wrong username or password")
            if not self.password_checks.verify(password, user.password_hash):
                raise errors.Unauthenticated("wrong username or password")
            self.catalogue.login_succeeded(account, source)
        token, expires = self.issuer.issue(user.username, user_id=user.id)
        expire_time = timestamp_pb2.Timestamp()
        expire_time.FromDatetime(expires)
        return rpb.LoginResponse(access_token=token, expire_time=expire_time, user=self._user_message(user, user))

    def WhoAmI(self, request, context) -> rpb.User:
        user = self._caller(context)
        return self._user_message(user, user)

    def GetUser(self, request: rpb.GetUserRequest, context) -> rpb.User:
        viewer = self._caller(context)
        m = USER_NAME_RE.fullmatch(request.name)
        if not m or not USERNAME_RE.fullmatch(m[1]):
            raise errors.FieldError("name", f"expected users/{{username}}, got {request.name[:200]!r}")
        user = self.catalogue.get_user(m[1])
        if user is None:
            raise errors.NotFound.hidden(request.name)
        return self._user_message(user, viewer)

    # -- models ------------------------------------------------------------------------------------------------

    @staticmethod
    def _check_model_fields(model: pb.Model, paths: set[str], prefix: str = "model.") -> list[tuple[str, str]]:
        violations = []
        if "description" in paths and len(model.description) > MAX_DESCRIPTION:
            violations.append((prefix + "description", f"at most {MAX_DESCRIPTION} characters"))
        if "tags" in paths:
            bad = [t for t in model.tags if not TAG_RE.fullmatch(t)]
            if bad:
                violations.append((prefix + "tags", f"tag {bad[0][:40]!r}: 1-32 lowercase letters, digits or '-'"))
            elif len(model.tags) > MAX_TAGS or len(set(model.tags)) != len(model.tags):
                violations.append((prefix + "tags", f"at most {MAX_TAGS} distinct tags"))
        if "visibility" in paths and model.visibility not in (
            pb.VISIBILITY_PRIVATE,
            pb.VISIBILITY_SHARED,
            pb.VISIBILITY_PUBLIC,
        ):
            violations.append((prefix + "visibility", "PRIVATE, SHARED or PUBLIC"))
        if "shared_with" in paths:
            bad = [u for u in model.shared_with if not USERNAME_RE.fullmatch(u)]
            if bad:
                violations.append((prefix + "shared_with", f"{bad[0][:40]!r} is not a username"))
            elif len(model.shared_with) > MAX_SHARES or len(set(model.shared_with)) != len(model.shared_with):
                violations.append((prefix + "shared_with", f"at most {MAX_SHARES} distinct usernames"))
        if "metrics" in paths:
            bad = [k for k in model.metrics if not METRIC_KEY_RE.fullmatch(k)]
            if bad:
                violations.append((prefix + "metrics", f"key {bad[0][:40]!r}: 1-64 of a-z 0-9 _ . : / -"))
            elif len(model.metrics) > MAX_METRICS:
                violations.append((prefix + "metrics", f"at most {MAX_METRICS} metrics (got {len(model.metrics)})"))
            else:
                infinite = sorted(k for k, v in model.metrics.items() if not math.isfinite(v))
                if infinite:
                    violations.append((prefix + "metrics", f"{infinite[0]!r}: values must be finite numbers"))
        return violations

    @staticmethod
    def _ignored_model_fields(model: pb.Model, owner: str, model_id: str) -> list[tuple[str, str]]:
        """CreateModel refuses what it would not store rather than dropping it silently."""
        violations = []
        if model.name and model.name != f"models/{owner}/{model_id}":
            violations.append(("model.name", f"leave it empty: the model will be models/{owner}/{model_id[:64]}"))
        if model.owner and model.owner != owner:
            violations.append(("model.owner", "leave it empty: the owner is the caller"))
        if model.metrics:
            violations.append(("model.metrics", "set metrics once the model exists (MergeModelMetrics)"))
        if model.data_kind:
            violations.append(("model.data_kind", "leave it empty: it follows from data_schema"))
        if model.latest_version or model.HasField("create_time") or model.HasField("update_time"):
            violations.append(("model", "latest_version, create_time and update_time are the registry's to set"))
        return violations

    def MergeModelMetrics(self, request: rpb.MergeModelMetricsRequest, context) -> pb.Model:
        user = self._caller(context)
        violations = self._check_model_fields(pb.Model(metrics=request.metrics), {"metrics"}, prefix="")
        bad = [k for k in request.remove if not METRIC_KEY_RE.fullmatch(k)]
        if bad:
            violations.append(("remove", f"key {bad[0][:40]!r}: 1-64 of a-z 0-9 _ . : / -"))
        if violations:
            raise errors.FieldError.many(violations)
        model = self._owned_model(user, request.name)
        if not 0 <= request.version <= model.latest_version:
            raise errors.FieldError(
                "version",
                f"{request.name} has no version {request.version}; give the number of the version measured "
                f"(1-{model.latest_version}), or 0",
            )
        try:
            row = self.catalogue.merge_metrics(
                model,
                dict(request.metrics),
                list(request.remove),
                MAX_METRICS,
                author=user.username,
                version=request.version,
            )
        except TooManyMetrics as e:
            raise errors.FieldError(
                "metrics", f"the model would hold {e.args[0]} metrics, over the limit of {MAX_METRICS}; remove some"
            ) from None
        except Gone:
            raise errors.NotFound.hidden(request.name) from None
        return self._model_message(row, user)

    def CreateModel(self, request: rpb.CreateModelRequest, context) -> pb.Model:
        user = self._caller(context)
        violations = []
        if not MODEL_ID_RE.fullmatch(request.model_id):
            violations.append(("model_id", "1-64 characters: lowercase letters, digits, '.', '-', '_'"))
        model = request.model
        visibility = model.visibility or pb.VISIBILITY_PRIVATE
        given = {"description", "tags", "shared_with"} | ({"visibility"} if model.visibility else set())
        violations += self._check_model_fields(model, given)  # an unset visibility is PRIVATE
        violations += self._ignored_model_fields(model, user.username, request.model_id)
        schema = None
        if model.HasField("data_schema"):
            try:
                validate_schema(model.data_schema)
                schema = model.data_schema
            except SchemaError as e:
                violations.append((f"model.data_schema.{e.field}", str(e)))
        if violations:
            raise errors.FieldError.many(violations)
        try:
            row = self.catalogue.create_model(
                user,
                request.model_id,
                model.description,
                list(model.tags),
                visibility,
                list(model.shared_with),
                schema,
                data_kind(schema) if schema else 0,
            )
        except Conflict as e:
            raise errors.Conflict(str(e)) from None
        except KeyError as e:
            raise errors.FieldError("model.shared_with", f"no user named {e.args[0]!r}") from None
        return self._model_message(row, user)

    def GetModel(self, request: rpb.GetModelRequest, context) -> pb.Model:
        user = self._caller(context)
        return self._model_message(self._visible_model(user, request.name), user)

    def ListModels(self, request: rpb.ListModelsRequest, context) -> rpb.ListModelsResponse:
        user = self._caller(context)
        size = _page_size(request.page_size)
        if request.owner and not USERNAME_RE.fullmatch(request.owner):
            raise errors.FieldError("owner", "not a username")
        if request.tag and not TAG_RE.fullmatch(request.tag):
            raise errors.FieldError("tag", "not a tag")
        if request.data_kind not in pb.DataKind.values():
            raise errors.FieldError("data_kind", "unknown data kind")
        query = f"{user.id}|{request.owner}|{request.tag}|{request.data_kind}"
        after = _PageToken.decode(request.page_token, query)
        rows = self.catalogue.list_models(user.id, after, size + 1, request.owner, request.tag, request.data_kind)
        more = len(rows) > size
        rows = rows[:size]
        token = _PageToken.encode(rows[-1].id, query) if more else ""
        return rpb.ListModelsResponse(models=[self._model_message(r, user) for r in rows], next_page_token=token)

    def UpdateModel(self, request: rpb.UpdateModelRequest, context) -> pb.Model:
        user = self._caller(context)
        paths = set(request.update_mask.paths)
        if not paths:
            raise errors.FieldError("update_mask", f"name the fields to change: {', '.join(sorted(UPDATABLE))}")
        unknown = paths - UPDATABLE
        if unknown:
            raise errors.FieldError(
                "update_mask", f"cannot change {sorted(unknown)[0]!r}; changeable: {', '.join(sorted(UPDATABLE))}"
            )
        violations = self._check_model_fields(request.model, paths)
        if violations:
            raise errors.FieldError.many(violations)
        model = self._owned_model(user, request.model.name, "model.name")
        m = request.model
        try:
            row = self.catalogue.update_model(
                model,
                description=m.description if "description" in paths else None,
                tags=list(m.tags) if "tags" in paths else None,
                visibility=m.visibility if "visibility" in paths else None,
                shared_with=list(m.shared_with) if "shared_with" in paths else None,
                metrics=dict(m.metrics) if "metrics" in paths else None,
                author=user.username,
            )
        except KeyError as e:
            raise errors.FieldError("model.shared_with", f"no user named {e.args[0]!r}") from None
        except Gone:
            raise errors.NotFound.hidden(request.model.name) from None
        return self._model_message(row, user)

    def DeleteModel(self, request: rpb.DeleteModelRequest, context) -> empty_pb2.Empty:
        user = self._caller(context)
        model = self._owned_model(user, request.name)
        for sha in self.catalogue.delete_model(model):
            self._release_blob(sha)
        return empty_pb2.Empty()

    def _release_blob(self, sha256: str, upload: int | None = None) -> None:
        """Deletes the blob if no version uses it and no upload is storing it, in this replica or another (the
        catalogue's rule, at its `blobs` table)."""
        try:
            self.catalogue.release_blob(sha256, self.store.delete, upload)
        except StorageUnavailable:
            # The catalogue no longer points at it; an unreachable store leaves an unreferenced blob that a later
            # publish of the same bytes reuses, or the next start-up's sweep deletes. Log it for the operator.
            log.warning("could not delete unreferenced blob", extra={"sha256": sha256})

    def _quota_error(self, e: QuotaExceeded, size: int) -> errors.Exhausted:
        quota = self.settings.quota
        if e.limit == "versions_per_model":
            return errors.Exhausted(
                f"the model holds {e.used} versions, this registry's limit (SGDE_REGISTRY_MAX_VERSIONS_PER_MODEL = "
                f"{quota.versions_per_model}): publish to a new model"
            )
        return errors.Exhausted(
            f"your models' versions take {e.used:,} bytes; {size:,} more would pass this registry's limit of "
            f"{quota.stored_bytes_per_user:,} bytes per user (SGDE_REGISTRY_MAX_USER_BYTES): delete a model first"
        )

    def sweep_unreferenced_blobs(self) -> int:
        """Deletes the blobs that nothing references (left by a replica killed mid-publish, after their upload's
        lease, or by a deletion the store refused); returns how many it tried."""
        shas = self.catalogue.unreferenced_blobs()
        for sha in shas:
            self._release_blob(sha)
        try:  # multipart uploads of such a replica: older than the lease, none of them can still commit
            self.store.sweep_abandoned_uploads(self.settings.upload_lease_seconds)
        except StorageUnavailable:
            log.warning("could not sweep abandoned uploads from blob storage")
        return len(shas)

    # -- versions ----------------------------------------------------------------------------------------------

    def PublishVersion(self, request_iterator: Iterator[rpb.PublishVersionRequest], context) -> pb.ModelVersion:
        user = self._caller(context)
        header = first_header(request_iterator)
        violations = []
        if not SHA256_RE.fullmatch(header.sha256):
            violations.append(("header.sha256", "64 lowercase hex characters"))
        if not 0 < header.size_bytes <= self.settings.max_version_bytes:
            if header.size_bytes > self.settings.max_version_bytes:
                raise errors.Exhausted(
                    f"artifact of {header.size_bytes} bytes is over this registry's limit of "
                    f"{self.settings.max_version_bytes} bytes"
                )
            violations.append(("header.size_bytes", "must be > 0"))
        if len(header.signature) != 64:
            violations.append(("header.signature", "an Ed25519 signature of 64 bytes over the sha256"))
        if violations:
            raise errors.FieldError.many(violations)
        model = self._owned_model(user, header.model, "header.model")
        if not signing.verify_artifact(user.signing_public_key, header.sha256, header.signature):
            raise errors.FieldError(
                "header.signature",
                "does not verify with your registered signing key over this sha256; sign with the key you registered",
            )
        try:
            self.catalogue.check_quota(model, header.size_bytes, self.settings.quota)  # before the bytes come
        except QuotaExceeded as e:
            raise self._quota_error(e, header.size_bytes) from None
        try:
            sniffer = HeaderSniffer(header.size_bytes, _check_artifact)  # tensors and privacy claim checked
        except ArtifactError as e:  # a declared size too small to hold an artifact (1-7 bytes)
            raise errors.FieldError("header.size_bytes", str(e)) from None
        parsed: list[ArtifactHeader] = []

        def chunks() -> Iterator[bytes]:
            for message in request_iterator:
                if message.WhichOneof("payload") != "chunk":
                    raise errors.FieldError("chunk", "only chunks may follow the header")
                data = message.chunk
                if len(data) > CHUNK_SIZE:
                    raise errors.FieldError("chunk", f"chunks are at most {CHUNK_SIZE} bytes")
                if not sniffer.done:
                    # ArtifactError (a malformed header, or tensors not those the architecture implies) stops the
                    # upload before anything is stored
                    result = sniffer.feed(data)
                    if result is not None:
                        self._check_manifest(model, result)
                        parsed.append(result)
                yield data

        # Registered before the bytes are stored, so that no replica deletes them from under this publish.
        upload = self.catalogue.begin_upload(header.sha256, self.settings.upload_lease_seconds)
        number = None
        try:
            try:
                # Receiving goes on while storage sends parts (several at once to S3): up to 8 chunks wait between.
                self.store.put(header.sha256, read_ahead(chunks(), depth=8), header.size_bytes)
            except ArtifactError as e:
                raise errors.FieldError("chunk", f"not a valid SGDE artifact: {e}") from None
            except BlobIntegrityError as e:
                raise errors.FieldError("header", f"the uploaded bytes do not match the header: {e}") from None
            except StorageUnavailable as e:
                raise errors.Unavailable(f"blob storage is unavailable, nothing was published: {e}") from None
            if not parsed:
                raise errors.FieldError("chunk", "not a valid SGDE artifact: the stream ended inside its header")
            manifest = parsed[0].manifest
            try:
                number = self.catalogue.add_version(
                    model,
                    sha256=header.sha256,
                    size_bytes=header.size_bytes,
                    signature=header.signature,
                    architecture=manifest.architecture,
                    data_kind=manifest.data_kind,
                    privacy=_recorded_privacy(manifest),
                    manifest_json=manifest.to_json(),
                    schema=manifest.data_schema,
                    upload=upload,
                    quota=self.settings.quota,
                )
            except QuotaExceeded as e:  # another publish of the same user committed first
                raise self._quota_error(e, header.size_bytes) from None
            except Gone:  # deleted by its owner in the meantime
                raise errors.NotFound.hidden(header.model) from None
            except UploadExpired:
                raise errors.Unavailable(
                    f"the publish took longer than this registry allows ({self.settings.upload_lease_seconds:g} s "
                    "from header to commit); nothing was published: publish again"
                ) from None
        finally:
            if number is None:  # refused or failed: the bytes go unless another version or upload has them
                self._release_blob(header.sha256, upload)
        version = self.catalogue.get_version(model, number)
        if version is None:  # deleted by its owner in the meantime
            raise errors.NotFound.hidden(header.model)
        log.info(
            "published",
            extra={"version": f"{header.model}/versions/{number}", "sha256": header.sha256, "bytes": header.size_bytes},
        )
        return self._version_message(version)

    @staticmethod
    def _check_manifest(model: ModelRow, header: ArtifactHeader) -> None:
        schema = header.manifest.data_schema
        if model.data_schema is not None and not schemas_equal(model.data_schema, schema):
            raise errors.FailedPrecondition(
                f"the artifact's data schema differs from the schema of models/"
                f"{model.owner}/{model.model_id}; publish it as a new model"
            )

    def GetVersion(self, request: rpb.GetVersionRequest, context) -> pb.ModelVersion:
        user = self._caller(context)
        return self._version_message(self._visible_version(user, request.name))

    def ListVersions(self, request: rpb.ListVersionsRequest, context) -> rpb.ListVersionsResponse:
        user = self._caller(context)
        size = _page_size(request.page_size)
        model = self._visible_model(user, request.parent, "parent")
        after = _PageToken.decode(request.page_token, request.parent)
        rows = self.catalogue.list_versions(model, after, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        token = _PageToken.encode(rows[-1].number, request.parent) if more else ""
        return rpb.ListVersionsResponse(versions=[self._version_message(v) for v in rows], next_page_token=token)

    def GetModelCard(self, request: rpb.GetModelCardRequest, context) -> rpb.ModelCard:
        user = self._caller(context)
        version = self._visible_version(user, request.name.removesuffix("/card"))
        owner = self.catalogue.get_user(version.model.owner)
        if owner is None:  # an owner is never deleted while their models exist
            raise errors.NotFound.hidden(request.name)
        sees_model = self._can_see(user, version.model)
        return model_card(version, owner, reader_sees_model=sees_model, catalogue=self.catalogue)

    def DownloadVersion(self, request: rpb.DownloadVersionRequest, context) -> Iterator[rpb.DownloadVersionResponse]:
        user = self._caller(context)
        version = self._visible_version(user, request.name)
        if not 0 <= request.offset <= version.size_bytes:
            raise errors.FieldError("offset", f"must be between 0 and {version.size_bytes}")
        try:
            chunks = self.store.get(version.sha256, request.offset)
        except StorageUnavailable as e:
            raise errors.Unavailable(f"blob storage is unavailable: {e}; try again later") from None
        except BlobNotFound:
            log.error("catalogued blob is missing", extra={"sha256": version.sha256})
            raise errors.DataLoss(
                f"the blob of {request.name} is missing from storage; tell the registry's operator"
            ) from None
        yield rpb.DownloadVersionResponse(version=self._version_message(version))
        try:
            # The store reads ahead itself (S3: concurrent ranged GETs); closing stops it when the caller goes.
            with contextlib.closing(iter(chunks)) as pieces:
                for chunk in pieces:
                    if not context.is_active():
                        return
                    yield rpb.DownloadVersionResponse(chunk=chunk)
        except StorageUnavailable as e:
            raise errors.Unavailable(
                f"blob storage failed during the download: {e}; resume from the offset you reached"
            ) from None
