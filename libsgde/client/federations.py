"""Federations through the registry: subscribe (create, invite, accept), push a generator, pull everyone's.

A federation agrees on a data schema, a task (its label column or class names) and a privacy policy; each member
pushes a DP generator trained on that schema, and pulls the others' to train its own model on their synthetic data
and its own real data. The registry admits a generator only if its schema, architecture, N and recomputed
(epsilon, delta) fit the policy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from google.protobuf import field_mask_pb2

from libsgde.client.names import version_name
from libsgde.client.registry import RegistrySession
from libsgde.domain.resources import Federation, FederationGenerator, ModelVersion, PrivacyPolicy
from libsgde.wire.convert import federation_from_proto, generator_from_proto, policy_to_proto
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb


def federation_name(ref: str) -> str:
    """'federations/ID' or 'ID' -> 'federations/ID'."""
    return ref if ref.startswith("federations/") else f"federations/{ref}"


class Federations(RegistrySession):
    """`Client`'s federation calls."""

    def create_federation(
        self, federation_id: str, schema: pb.DataSchema, policy: PrivacyPolicy | None = None, description: str = ""
    ) -> Federation:
        """A new federation on `schema` (with a label column or class names: the task); you are its coordinator."""
        request = rpb.CreateFederationRequest(
            federation_id=federation_id,
            federation=rpb.Federation(
                description=description, data_schema=schema, policy=policy_to_proto(policy or PrivacyPolicy())
            ),
        )
        return federation_from_proto(self._call(self.federations.CreateFederation, request))

    def get_federation(self, ref: str) -> Federation:
        request = rpb.GetFederationRequest(name=federation_name(ref))
        return federation_from_proto(self._call(self.federations.GetFederation, request))

    def list_federations(self, page_size: int = 100) -> Iterator[Federation]:
        """The federations you belong to or are invited to."""
        return self._pages(
            self.federations.ListFederations,
            rpb.ListFederationsRequest(page_size=page_size),
            "federations",
            federation_from_proto,
        )

    def update_federation(
        self, ref: str, *, description: str | None = None, policy: PrivacyPolicy | None = None
    ) -> Federation:
        """Coordinator only; a new policy applies to generators pushed from then on."""
        paths = [p for p, v in (("description", description), ("policy", policy)) if v is not None]
        federation = rpb.Federation(name=federation_name(ref), description=description or "")
        if policy is not None:
            federation.policy.CopyFrom(policy_to_proto(policy))
        request = rpb.UpdateFederationRequest(federation=federation, update_mask=field_mask_pb2.FieldMask(paths=paths))
        return federation_from_proto(self._call(self.federations.UpdateFederation, request))

    def delete_federation(self, ref: str) -> None:
        self._call(self.federations.DeleteFederation, rpb.DeleteFederationRequest(name=federation_name(ref)))

    def invite(self, ref: str, username: str) -> Federation:
        request = rpb.InviteMemberRequest(name=federation_name(ref), username=username)
        return federation_from_proto(self._call(self.federations.InviteMember, request))

    def accept_invitation(self, ref: str) -> Federation:
        request = rpb.AcceptInvitationRequest(name=federation_name(ref))
        return federation_from_proto(self._call(self.federations.AcceptInvitation, request))

    def decline_invitation(self, ref: str) -> None:
        self._call(self.federations.DeclineInvitation, rpb.DeclineInvitationRequest(name=federation_name(ref)))

    def leave_federation(self, ref: str) -> None:
        self._call(self.federations.LeaveFederation, rpb.LeaveFederationRequest(name=federation_name(ref)))

    def remove_member(self, ref: str, username: str) -> Federation:
        request = rpb.RemoveMemberRequest(name=federation_name(ref), username=username)
        return federation_from_proto(self._call(self.federations.RemoveMember, request))

    def push_generator(self, ref: str, model: str) -> FederationGenerator:
        """Submits one of your model versions ("model", "model@3", "you/model@latest") to the federation."""
        request = rpb.PushGeneratorRequest(name=federation_name(ref), version=version_name(model, self._me()))
        return generator_from_proto(self._call(self.federations.PushGenerator, request))

    def generators(self, ref: str) -> list[FederationGenerator]:
        """The admitted generators, one per member."""
        response = self._call(self.federations.ListGenerators, rpb.ListGeneratorsRequest(name=federation_name(ref)))
        return [generator_from_proto(g) for g in response.generators]

    def pull_federation(
        self, ref: str, dest: str | Path, *, include_mine: bool = False
    ) -> list[tuple[Path, ModelVersion]]:
        """Downloads every admitted generator (not your own unless `include_mine`) into the folder `dest`, each
        checked against its sha256 and its owner's signature before it appears."""
        folder = Path(dest)
        folder.mkdir(parents=True, exist_ok=True)
        me = self._me()
        return [self.pull(g.version, folder) for g in self.generators(ref) if include_mine or g.member != me]
