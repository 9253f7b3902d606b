"""The one place domain types become protobuf messages and back, with enum names and timestamps."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

from google.protobuf import json_format, timestamp_pb2

from libsgde.domain import card as cards
from libsgde.domain import resources as res
from libsgde.domain.privacy import PrivacyComponent, PrivacyReport
from libsgde.domain.specs import TrainSpec
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from libsgde.wire.proto.sgde.v1 import registry_pb2 as rpb
from libsgde.wire.proto.sgde.v1 import sampler_pb2 as spb
from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb


def privacy_to_proto(report: PrivacyReport) -> pb.PrivacyReport:
    return pb.PrivacyReport(
        **{f.name: getattr(report, f.name) for f in dataclasses.fields(PrivacyReport) if f.name != "components"},
        components=[pb.PrivacyComponent(**dataclasses.asdict(c)) for c in report.components],
    )


def privacy_from_proto(message: pb.PrivacyReport) -> PrivacyReport:
    fields = {f.name: getattr(message, f.name) for f in dataclasses.fields(PrivacyReport) if f.name != "components"}
    components = tuple(
        PrivacyComponent(**{f.name: getattr(c, f.name) for f in dataclasses.fields(PrivacyComponent)})
        for c in message.components
    )
    return PrivacyReport(**fields, components=components)


def train_spec_from_proto(spec: tpb.TrainingSpec) -> TrainSpec:
    return TrainSpec(
        architecture=spec.architecture,
        target_epsilon=spec.target_epsilon,
        config=json_format.MessageToDict(spec.config) if spec.HasField("config") else None,
        delta=spec.delta,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        clip_norm=spec.clip_norm,
        learning_rate=spec.learning_rate,
        seed=spec.seed,
    )


def train_spec_to_proto(spec: TrainSpec) -> tpb.TrainingSpec:
    fields = dataclasses.asdict(spec)
    config = fields.pop("config")
    out = tpb.TrainingSpec(**fields)
    if config is not None:
        out.config.update(config)
    return out


def visibility_to_proto(text: str) -> pb.Visibility:
    """ "shared" -> VISIBILITY_SHARED (a KeyError for another word)."""
    return pb.Visibility.Value(f"VISIBILITY_{res.Visibility[text.upper()].name}")


def job_state_text(state: int) -> str:
    """JOB_STATE_SUCCEEDED -> "succeeded"."""
    return res.JobState(state).text


# -- resources (what the SDK returns) ------------------------------------------------------------------------------


def time_to_proto(seconds: float) -> timestamp_pb2.Timestamp:
    """A Timestamp of these epoch seconds."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def now_to_proto() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def time_from_proto(stamp: timestamp_pb2.Timestamp) -> datetime | None:
    """A timezone-aware datetime, or None for an unset timestamp."""
    return stamp.ToDatetime(UTC) if stamp.seconds or stamp.nanos else None


def user_from_proto(m: rpb.User) -> res.User:
    return res.User(m.name, m.username, m.email, bytes(m.signing_public_key), time_from_proto(m.create_time))


def session_from_proto(m: rpb.LoginResponse) -> res.Session:
    return res.Session(
        m.access_token, time_from_proto(m.expire_time), user_from_proto(m.user) if m.HasField("user") else None
    )


def model_from_proto(m: pb.Model) -> res.Model:
    return res.Model(
        m.name,
        m.owner,
        m.description,
        list(m.tags),
        m.data_schema,
        res.DataKind(m.data_kind),
        res.Visibility(m.visibility),
        list(m.shared_with),
        m.latest_version,
        time_from_proto(m.create_time),
        time_from_proto(m.update_time),
        dict(m.metrics),
    )


def version_from_proto(m: pb.ModelVersion) -> res.ModelVersion:
    return res.ModelVersion(
        m.name,
        m.number,
        m.sha256,
        m.size_bytes,
        bytes(m.signature),
        m.architecture,
        res.DataKind(m.data_kind),
        privacy_from_proto(m.privacy),
        time_from_proto(m.create_time),
        m.manifest_json,
    )


def dataset_from_proto(m: tpb.Dataset) -> res.Dataset:
    return res.Dataset(m.name, m.filename, m.size_bytes, m.sha256, time_from_proto(m.create_time))


def progress_from_proto(m: tpb.ProgressEvent) -> res.ProgressEvent:
    return res.ProgressEvent(
        step=m.step,
        total_steps=m.total_steps,
        epoch=m.epoch,
        loss=m.loss,
        epsilon_spent=m.epsilon_spent,
        examples_per_second=m.examples_per_second,
        eta_seconds=m.eta_seconds,
        message=m.message,
        job=m.job,
        state=res.JobState(m.state),
        time=time_from_proto(m.time),
    )


def job_from_proto(m: tpb.Job) -> res.Job:
    return res.Job(
        m.name,
        m.owner,
        res.JobState(m.state),
        train_spec_from_proto(m.spec),
        m.data_schema,
        m.dataset,
        m.publish_model,
        m.published_version,
        m.artifact_sha256,
        privacy_from_proto(m.privacy) if m.HasField("privacy") else None,
        progress_from_proto(m.latest_progress),
        m.error,
        time_from_proto(m.create_time),
        time_from_proto(m.start_time),
        time_from_proto(m.end_time),
    )


def sample_metadata_from_proto(m: spb.SampleMetadata) -> res.SampleMetadata:
    return res.SampleMetadata(
        m.version,
        m.artifact_sha256,
        res.OutputFormat(m.format),
        m.num_samples,
        m.data_schema,
        privacy_from_proto(m.privacy),
        list(m.class_counts),
    )


def policy_to_proto(p: res.PrivacyPolicy) -> rpb.PrivacyPolicy:
    return rpb.PrivacyPolicy(
        max_epsilon=p.max_epsilon,
        max_delta=p.max_delta,
        architectures=list(p.architectures),
        min_dataset_size=p.min_dataset_size,
    )


def federation_from_proto(m: rpb.Federation) -> res.Federation:
    policy = res.PrivacyPolicy(
        m.policy.max_epsilon, m.policy.max_delta, list(m.policy.architectures), m.policy.min_dataset_size
    )
    members = [res.Member(x.username, res.MemberState(x.state), time_from_proto(x.since)) for x in m.members]
    return res.Federation(
        m.name,
        m.coordinator,
        m.description,
        m.data_schema,
        policy,
        members,
        time_from_proto(m.create_time),
        time_from_proto(m.update_time),
    )


def generator_from_proto(m: rpb.Generator) -> res.FederationGenerator:
    return res.FederationGenerator(
        m.member,
        m.version,
        m.architecture,
        privacy_from_proto(m.privacy) if m.HasField("privacy") else None,
        time_from_proto(m.admit_time),
    )


def schema_summary_from_proto(schema: pb.DataSchema) -> cards.SchemaSummary:
    """A model card's view of a schema: column types, bounds, category counts, nullability, point masses, or the
    image shape; and the label's classes."""
    kind = schema.WhichOneof("kind")
    if kind == "image":
        image = schema.image
        return cards.SchemaSummary(
            res.DataKind.IMAGE,
            classes=list(image.class_names),
            height=image.height,
            width=image.width,
            channels=image.channels,
            pixel_max=image.pixel_max,
        )
    if kind != "tabular":
        return cards.SchemaSummary(res.DataKind.UNSPECIFIED)
    columns, classes = [], []
    for c in schema.tabular.columns:
        categorical = c.type == pb.COLUMN_TYPE_CATEGORICAL
        columns.append(
            cards.ColumnSummary(
                name=c.name,
                type=pb.ColumnType.Name(c.type).removeprefix("COLUMN_TYPE_").lower(),
                lower=None if categorical else c.lower,
                upper=None if categorical else c.upper,
                categories=len(c.categories),
                nullable=c.nullable,
                point_masses=list(c.point_masses),
            )
        )
        if c.name == schema.tabular.label_column:
            classes = list(c.categories)
    return cards.SchemaSummary(res.DataKind.TABULAR, columns, schema.tabular.label_column, classes)


def metric_record_from_proto(m: rpb.MetricRecord) -> cards.MetricRecord:
    return cards.MetricRecord(m.key, m.value, m.author, time_from_proto(m.update_time), m.version)


def card_from_proto(m: rpb.ModelCard) -> cards.ModelCard:
    return cards.ModelCard(
        name=m.name,
        version=m.version,
        model=m.model,
        owner=m.owner,
        description=m.description,
        tags=list(m.tags),
        data_kind=res.DataKind(m.data_kind),
        schema=schema_summary_from_proto(m.data_schema),
        architecture=m.architecture,
        architecture_config=json.loads(m.architecture_config_json or "{}"),
        training=json.loads(m.training_json or "{}"),
        privacy=privacy_from_proto(m.privacy),
        metrics=[metric_record_from_proto(r) for r in m.metrics],
        audit_verdict=m.audit_verdict,
        signing_key_fingerprint=m.signing_key_fingerprint,
        signature_verified=m.signature_verified,
        sha256=m.sha256,
        size_bytes=m.size_bytes,
        create_time=time_from_proto(m.create_time),
        markdown=m.markdown,
    )
