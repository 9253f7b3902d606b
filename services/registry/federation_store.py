"""Federations in the registry's database: the federation (its schema and policy), its members and invitees, and
one admitted generator per member. Tables live beside the catalogue's (same metadata, same engine); every method is
one short transaction."""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from services.registry.catalogue import Catalogue, metadata, models, users

INVITED, ACTIVE = rpb.MEMBER_STATE_INVITED, rpb.MEMBER_STATE_ACTIVE

federations = sa.Table(
    "federations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("federation_id", sa.String(64), nullable=False, unique=True),
    sa.Column("coordinator_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("data_schema", sa.LargeBinary, nullable=False),
    sa.Column("policy", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

federation_members = sa.Table(
    "federation_members",
    metadata,
    sa.Column("federation_pk", sa.Integer, sa.ForeignKey("federations.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("state", sa.Integer, nullable=False),
    sa.Column("since", sa.Float, nullable=False),
)

# One admitted generator per member: a model version, by (model, number); deleting the model removes it.
federation_generators = sa.Table(
    "federation_generators",
    metadata,
    sa.Column("federation_pk", sa.Integer, sa.ForeignKey("federations.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("model_pk", sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("architecture", sa.String(64), nullable=False),
    sa.Column("privacy", sa.LargeBinary, nullable=False),  # the registry's recomputation at admission
    sa.Column("admitted_at", sa.Float, nullable=False),
)


@dataclass(frozen=True)
class MemberRow:
    username: str
    user_id: int
    state: int
    since: float


@dataclass(frozen=True)
class FederationRow:
    pk: int
    federation_id: str
    coordinator: str
    coordinator_id: int
    description: str
    data_schema: pb.DataSchema
    policy: rpb.PrivacyPolicy
    members: list[MemberRow]
    created_at: float
    updated_at: float

    @property
    def name(self) -> str:
        return f"federations/{self.federation_id}"

    def member(self, user_id: int) -> MemberRow | None:
        return next((m for m in self.members if m.user_id == user_id), None)


@dataclass(frozen=True)
class GeneratorRow:
    member: str
    owner: str
    model_id: str
    number: int
    architecture: str
    privacy: pb.PrivacyReport
    admitted_at: float


class Exists(Exception):
    """A federation of that id exists already."""


class FederationStore:
    """The federation tables, on the catalogue's engine."""

    def __init__(self, catalogue: Catalogue):
        self._tx = catalogue._tx  # one engine and one way to open a transaction for all the registry's tables
        metadata.create_all(catalogue.engine, tables=[federations, federation_members, federation_generators])

    # -- federations --------------------------------------------------------------------------------------------

    def create(
        self,
        federation_id: str,
        coordinator_id: int,
        description: str,
        schema: pb.DataSchema,
        policy: rpb.PrivacyPolicy,
    ) -> FederationRow:
        now = time.time()
        try:
            with self._tx() as conn:
                pk = conn.execute(
                    federations.insert().values(
                        federation_id=federation_id,
                        coordinator_id=coordinator_id,
                        description=description,
                        data_schema=schema.SerializeToString(deterministic=True),
                        policy=policy.SerializeToString(deterministic=True),
                        created_at=now,
                        updated_at=now,
                    )
                ).inserted_primary_key[0]
                conn.execute(
                    federation_members.insert().values(
                        federation_pk=pk, user_id=coordinator_id, state=ACTIVE, since=now
                    )
                )
        except sa.exc.IntegrityError:
            raise Exists(federation_id) from None
        row = self.get(federation_id)
        assert row is not None
        return row

    def _rows(self, conn: sa.Connection, where) -> list[FederationRow]:
        coordinator = users.alias("coordinator")
        found = (
            conn.execute(
                sa.select(federations, coordinator.c.username)
                .join(coordinator, coordinator.c.id == federations.c.coordinator_id)
                .where(where)
                .order_by(federations.c.federation_id)
            )
            .mappings()
            .all()
        )
        if not found:
            return []
        pks = [r["id"] for r in found]
        members: dict[int, list[MemberRow]] = {pk: [] for pk in pks}
        for m in conn.execute(
            sa.select(federation_members, users.c.username)
            .join(users, users.c.id == federation_members.c.user_id)
            .where(federation_members.c.federation_pk.in_(pks))
            .order_by(users.c.username)
        ).mappings():
            members[m["federation_pk"]].append(MemberRow(m["username"], m["user_id"], m["state"], m["since"]))
        return [
            FederationRow(
                pk=r["id"],
                federation_id=r["federation_id"],
                coordinator=r["username"],
                coordinator_id=r["coordinator_id"],
                description=r["description"],
                data_schema=pb.DataSchema.FromString(r["data_schema"]),
                policy=rpb.PrivacyPolicy.FromString(r["policy"]),
                members=members[r["id"]],
                created_at=r["created_at"],
                updated_at=r["updated_at"],
            )
            for r in found
        ]

    def get(self, federation_id: str) -> FederationRow | None:
        with self._tx() as conn:
            rows = self._rows(conn, federations.c.federation_id == federation_id)
        return rows[0] if rows else None

    def list_for(self, user_id: int, after: str, limit: int) -> list[FederationRow]:
        """The federations `user_id` belongs to or is invited to, by id, after `after`."""
        mine = sa.select(federation_members.c.federation_pk).where(federation_members.c.user_id == user_id)
        with self._tx() as conn:
            rows = self._rows(conn, sa.and_(federations.c.id.in_(mine), federations.c.federation_id > after))
        return rows[:limit]

    def update(self, row: FederationRow, description: str | None, policy: rpb.PrivacyPolicy | None) -> None:
        values: dict = {"updated_at": time.time()}
        if description is not None:
            values["description"] = description
        if policy is not None:
            values["policy"] = policy.SerializeToString(deterministic=True)
        with self._tx() as conn:
            conn.execute(federations.update().where(federations.c.id == row.pk).values(**values))

    def delete(self, row: FederationRow) -> None:
        with self._tx() as conn:
            conn.execute(federation_generators.delete().where(federation_generators.c.federation_pk == row.pk))
            conn.execute(federation_members.delete().where(federation_members.c.federation_pk == row.pk))
            conn.execute(federations.delete().where(federations.c.id == row.pk))

    # -- membership ---------------------------------------------------------------------------------------------

    def invite(self, row: FederationRow, user_id: int) -> bool:
        """Invites `user_id`; False if they are a member or invited already."""
        try:
            with self._tx() as conn:
                conn.execute(
                    federation_members.insert().values(
                        federation_pk=row.pk, user_id=user_id, state=INVITED, since=time.time()
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True

    def accept(self, row: FederationRow, user_id: int) -> None:
        with self._tx() as conn:
            conn.execute(
                federation_members.update()
                .where(federation_members.c.federation_pk == row.pk, federation_members.c.user_id == user_id)
                .values(state=ACTIVE, since=time.time())
            )

    def remove(self, row: FederationRow, user_id: int) -> None:
        """Ends a membership or an invitation, and the member's admitted generator with it."""
        with self._tx() as conn:
            for table in (federation_generators, federation_members):
                conn.execute(table.delete().where(table.c.federation_pk == row.pk, table.c.user_id == user_id))

    # -- generators ---------------------------------------------------------------------------------------------

    def admit(
        self, row: FederationRow, user_id: int, model_pk: int, number: int, architecture: str, privacy: pb.PrivacyReport
    ) -> None:
        """Admits a member's generator, replacing the one it had, in one transaction."""
        values = {
            "model_pk": model_pk,
            "number": number,
            "architecture": architecture,
            "privacy": privacy.SerializeToString(deterministic=True),
            "admitted_at": time.time(),
        }
        g = federation_generators.c
        with self._tx() as conn:
            conn.execute(federation_generators.delete().where(g.federation_pk == row.pk, g.user_id == user_id))
            conn.execute(federation_generators.insert().values(federation_pk=row.pk, user_id=user_id, **values))

    def generators(self, row: FederationRow) -> list[GeneratorRow]:
        g = federation_generators.c
        member, owner = users.alias("member"), users.alias("owner")
        query = (
            sa.select(
                member.c.username.label("member"),
                owner.c.username.label("owner"),
                models.c.model_id,
                g.number,
                g.architecture,
                g.privacy,
                g.admitted_at,
            )
            .select_from(federation_generators)
            .join(member, member.c.id == g.user_id)
            .join(models, models.c.id == g.model_pk)
            .join(owner, owner.c.id == models.c.owner_id)
            .where(g.federation_pk == row.pk)
            .order_by(member.c.username)
        )
        with self._tx() as conn:
            found = conn.execute(query).mappings().all()
        return [
            GeneratorRow(
                r["member"],
                r["owner"],
                r["model_id"],
                r["number"],
                r["architecture"],
                pb.PrivacyReport.FromString(r["privacy"]),
                r["admitted_at"],
            )
            for r in found
        ]

    def admitted_to_member_of(self, user_id: int, model_pk: int, number: int) -> bool:
        """Whether that version is admitted to a federation `user_id` is an active member of."""
        g, m = federation_generators.c, federation_members.c
        query = (
            sa.select(sa.literal(1))
            .select_from(federation_generators.join(federation_members, m.federation_pk == g.federation_pk))
            .where(g.model_pk == model_pk, g.number == number, m.user_id == user_id, m.state == ACTIVE)
            .limit(1)
        )
        with self._tx() as conn:
            return conn.execute(query).first() is not None
