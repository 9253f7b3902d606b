"""FederationService: validates requests, authorises the caller against the federation's membership, and admits
generators by the federation's schema and policy. Who may do what:

    non-member (or removed, or declined): NOT_FOUND for everything, as if the federation did not exist
    invitee:      Get, Accept, Decline
    member:       Get, List, Push, ListGenerators, Leave (and DownloadVersion of every admitted generator)
    coordinator:  all of it, and Update, Delete, Invite, Remove (it cannot leave: it deletes)
"""

from __future__ import annotations

import logging
import math

from google.protobuf import empty_pb2

from libsgde import errors
from libsgde.domain.names import FEDERATION_ID_RE, FEDERATION_NAME_RE, USERNAME_RE
from libsgde.io.artifact import ArtifactError, parse_manifest
from libsgde.io.schema import SchemaError, first_difference, validate_schema
from libsgde.wire.convert import time_to_proto
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from libsgde.wire.proto.sgde.v1 import registry_pb2_grpc
from services.registry.catalogue import UserRow
from services.registry.federation_store import ACTIVE, INVITED, Exists, FederationRow, FederationStore, GeneratorRow
from services.registry.servicer import RegistryServicer

log = logging.getLogger("sgde.registry")

MAX_DESCRIPTION = 2000
MAX_ARCHITECTURES = 20
MAX_PAGE = 200
UPDATABLE = {"description", "policy"}


def federation_message(row: FederationRow) -> rpb.Federation:
    return rpb.Federation(
        name=row.name,
        coordinator=row.coordinator,
        description=row.description,
        data_schema=row.data_schema,
        policy=row.policy,
        members=[rpb.Member(username=m.username, state=m.state, since=time_to_proto(m.since)) for m in row.members],
        create_time=time_to_proto(row.created_at),
        update_time=time_to_proto(row.updated_at),
    )


def generator_message(g: GeneratorRow) -> rpb.Generator:
    return rpb.Generator(
        member=g.member,
        version=f"models/{g.owner}/{g.model_id}/versions/{g.number}",
        architecture=g.architecture,
        privacy=g.privacy,
        admit_time=time_to_proto(g.admitted_at),
    )


def _check_policy(policy: rpb.PrivacyPolicy, field: str = "federation.policy") -> list[tuple[str, str]]:
    from libsgde.ml.architectures import ARCHITECTURES  # JAX: imported at first use, as the publish checks are

    violations = []
    if not (math.isfinite(policy.max_epsilon) and policy.max_epsilon >= 0):
        violations.append((f"{field}.max_epsilon", "a finite number >= 0 (0: no limit)"))
    if not 0 <= policy.max_delta < 1:
        violations.append((f"{field}.max_delta", "in [0, 1) (0: no limit)"))
    if policy.min_dataset_size < 0:
        violations.append((f"{field}.min_dataset_size", "must be >= 0 (0: no limit)"))
    unknown = [a for a in policy.architectures if a not in ARCHITECTURES]
    if unknown or len(policy.architectures) > MAX_ARCHITECTURES:
        violations.append(
            (f"{field}.architectures", f"at most {MAX_ARCHITECTURES} of {', '.join(sorted(ARCHITECTURES))}")
        )
    return violations


class FederationServicer(registry_pb2_grpc.FederationServiceServicer):
    def __init__(self, registry: RegistryServicer, store: FederationStore):
        self.registry, self.store = registry, store

    # -- who may do what ----------------------------------------------------------------------------------------

    def _federation(self, user: UserRow, name: str, field: str = "name") -> FederationRow:
        """The federation, if the caller is a member or invitee; NOT_FOUND otherwise (no existence leak)."""
        m = FEDERATION_NAME_RE.fullmatch(name)
        if not m:
            raise errors.FieldError(field, f"expected federations/{{id}}, got {name[:200]!r}")
        row = self.store.get(m[1])
        if row is None or row.member(user.id) is None:
            raise errors.NotFound.hidden(name)
        return row

    def _as_member(self, user: UserRow, name: str) -> FederationRow:
        row = self._federation(user, name)
        member = row.member(user.id)
        assert member is not None
        if member.state != ACTIVE:
            raise errors.PermissionDenied(f"you are invited to {name}: accept the invitation first")
        return row

    def _as_coordinator(self, user: UserRow, name: str) -> FederationRow:
        row = self._as_member(user, name)
        if row.coordinator_id != user.id:
            raise errors.PermissionDenied(f"only {name}'s coordinator, {row.coordinator}, may do that")
        return row

    def _user(self, username: str, field: str = "username") -> UserRow:
        user = self.registry.catalogue.get_user(username) if USERNAME_RE.fullmatch(username) else None
        if user is None:
            raise errors.FieldError(field, f"no user named {username[:40]!r}")
        return user

    # -- federations --------------------------------------------------------------------------------------------

    def CreateFederation(self, request: rpb.CreateFederationRequest, context) -> rpb.Federation:
        user = self.registry._caller(context)
        f = request.federation
        violations = []
        if not FEDERATION_ID_RE.fullmatch(request.federation_id):
            violations.append(("federation_id", "1-64 characters: lowercase letters, digits, '.', '-', '_'"))
        if len(f.description) > MAX_DESCRIPTION:
            violations.append(("federation.description", f"at most {MAX_DESCRIPTION} characters"))
        if not f.HasField("data_schema"):
            violations.append(("federation.data_schema", "the schema every member trains on"))
        else:
            try:
                validate_schema(f.data_schema)
                task = f.data_schema.tabular.label_column or list(f.data_schema.image.class_names)
                if not task:
                    violations.append(
                        ("federation.data_schema", "name the task: a label column (tabular) or class names (images)")
                    )
            except SchemaError as e:
                violations.append((f"federation.data_schema.{e.field}".rstrip("."), e.description))
        violations += _check_policy(f.policy)
        if f.name or f.coordinator or f.members or f.HasField("create_time") or f.HasField("update_time"):
            violations.append(("federation", "only description, data_schema and policy may be set"))
        if violations:
            raise errors.FieldError.many(violations)
        try:
            row = self.store.create(request.federation_id, user.id, f.description, f.data_schema, f.policy)
        except Exists:
            raise errors.Conflict(f"federations/{request.federation_id} exists already; choose another id") from None
        log.info("federation created", extra={"federation": row.name, "coordinator": user.username})
        return federation_message(row)

    def GetFederation(self, request: rpb.GetFederationRequest, context) -> rpb.Federation:
        user = self.registry._caller(context)
        return federation_message(self._federation(user, request.name))

    def ListFederations(self, request: rpb.ListFederationsRequest, context) -> rpb.ListFederationsResponse:
        user = self.registry._caller(context)
        if request.page_size < 0:
            raise errors.FieldError("page_size", "must be >= 0")
        if request.page_token and not FEDERATION_ID_RE.fullmatch(request.page_token):
            raise errors.FieldError("page_token", "not a token from a previous page of this listing")
        size = min(request.page_size or 50, MAX_PAGE)
        rows = self.store.list_for(user.id, request.page_token, size + 1)
        more, rows = len(rows) > size, rows[:size]
        return rpb.ListFederationsResponse(
            federations=[federation_message(r) for r in rows],
            next_page_token=rows[-1].federation_id if more else "",
        )

    def UpdateFederation(self, request: rpb.UpdateFederationRequest, context) -> rpb.Federation:
        user = self.registry._caller(context)
        paths = set(request.update_mask.paths)
        if not paths or paths - UPDATABLE:
            raise errors.FieldError("update_mask", f"name the fields to change, of: {', '.join(sorted(UPDATABLE))}")
        f = request.federation
        violations = _check_policy(f.policy) if "policy" in paths else []
        if "description" in paths and len(f.description) > MAX_DESCRIPTION:
            violations.append(("federation.description", f"at most {MAX_DESCRIPTION} characters"))
        if violations:
            raise errors.FieldError.many(violations)
        row = self._as_coordinator(user, f.name)
        self.store.update(
            row, f.description if "description" in paths else None, f.policy if "policy" in paths else None
        )
        return federation_message(self._federation(user, f.name))

    def DeleteFederation(self, request: rpb.DeleteFederationRequest, context) -> empty_pb2.Empty:
        user = self.registry._caller(context)
        self.store.delete(self._as_coordinator(user, request.name))
        log.info("federation deleted", extra={"federation": request.name})
        return empty_pb2.Empty()

    # -- membership ---------------------------------------------------------------------------------------------

    def InviteMember(self, request: rpb.InviteMemberRequest, context) -> rpb.Federation:
        user = self.registry._caller(context)
        row = self._as_coordinator(user, request.name)
        invitee = self._user(request.username)
        if not self.store.invite(row, invitee.id):
            raise errors.Conflict(f"{invitee.username} is a member of {row.name} or invited already")
        return federation_message(self._federation(user, request.name))

    def _as_invitee(self, user: UserRow, name: str, member_says: str) -> FederationRow:
        row = self._federation(user, name)
        member = row.member(user.id)
        assert member is not None
        if member.state != INVITED:
            raise errors.FailedPrecondition(f"you are a member of {row.name} {member_says}")
        return row

    def AcceptInvitation(self, request: rpb.AcceptInvitationRequest, context) -> rpb.Federation:
        user = self.registry._caller(context)
        row = self._as_invitee(user, request.name, "already")
        self.store.accept(row, user.id)
        return federation_message(self._federation(user, request.name))

    def DeclineInvitation(self, request: rpb.DeclineInvitationRequest, context) -> empty_pb2.Empty:
        user = self.registry._caller(context)
        row = self._as_invitee(user, request.name, "already: leave it instead")
        self.store.remove(row, user.id)
        return empty_pb2.Empty()

    def LeaveFederation(self, request: rpb.LeaveFederationRequest, context) -> empty_pb2.Empty:
        user = self.registry._caller(context)
        row = self._as_member(user, request.name)
        if row.coordinator_id == user.id:
            raise errors.FailedPrecondition(f"the coordinator cannot leave {row.name}; delete it instead")
        self.store.remove(row, user.id)
        return empty_pb2.Empty()

    def RemoveMember(self, request: rpb.RemoveMemberRequest, context) -> rpb.Federation:
        user = self.registry._caller(context)
        row = self._as_coordinator(user, request.name)
        target = self._user(request.username)
        if target.id == user.id:
            raise errors.FailedPrecondition(f"the coordinator cannot remove itself from {row.name}; delete it instead")
        if row.member(target.id) is None:
            raise errors.FieldError("username", f"{target.username} is neither a member of {row.name} nor invited")
        self.store.remove(row, target.id)
        return federation_message(self._federation(user, request.name))

    # -- generators ---------------------------------------------------------------------------------------------

    def PushGenerator(self, request: rpb.PushGeneratorRequest, context) -> rpb.Generator:
        from libsgde.io.privacy import check_privacy_claim  # JAX: at first use

        user = self.registry._caller(context)
        row = self._as_member(user, request.name)
        version = self.registry._visible_version(user, request.version)
        if version.model.owner_id != user.id:
            raise errors.FieldError("version", f"push your own model versions only (models/{user.username}/...)")
        try:
            manifest = parse_manifest(version.manifest_json)
            check_privacy_claim(manifest)  # again: versions published before the registry checked claims exist
        except ArtifactError as e:
            raise errors.FieldError(f"version.{e.field or 'manifest'}", str(e)) from None
        privacy = manifest.privacy
        policy = row.policy
        violations = []
        different = first_difference(manifest.data_schema, row.data_schema)
        if different:
            violations.append((f"version.data_schema.{different}", f"differs from {row.name}'s schema here"))
        if policy.architectures and manifest.architecture not in policy.architectures:
            violations.append(
                ("version.architecture", f"{manifest.architecture!r}; allowed: {', '.join(policy.architectures)}")
            )
        if privacy.mechanism == "none":
            violations.append(("version.privacy.mechanism", "not differentially private; train with DP"))
        else:
            if policy.max_epsilon and privacy.epsilon > policy.max_epsilon:
                violations.append(
                    ("version.privacy.epsilon", f"{privacy.epsilon:.4g}, over the policy's {policy.max_epsilon:g}")
                )
            if policy.max_delta and privacy.delta > policy.max_delta:
                violations.append(
                    ("version.privacy.delta", f"{privacy.delta:.3g}, over the policy's {policy.max_delta:g}")
                )
            if privacy.dataset_size < policy.min_dataset_size:
                violations.append(
                    ("version.privacy.dataset_size", f"under the policy's smallest N, {policy.min_dataset_size}")
                )
        if violations:
            raise errors.FieldError.many(violations, message=f"{row.name} does not admit {request.version}")
        self.store.admit(row, user.id, version.model.id, version.number, manifest.architecture, privacy)
        admitted = next(g for g in self.store.generators(row) if g.member == user.username)
        log.info("generator admitted", extra={"federation": row.name, "version": request.version})
        return generator_message(admitted)

    def ListGenerators(self, request: rpb.ListGeneratorsRequest, context) -> rpb.ListGeneratorsResponse:
        user = self.registry._caller(context)
        row = self._as_member(user, request.name)
        return rpb.ListGeneratorsResponse(generators=[generator_message(g) for g in self.store.generators(row)])
