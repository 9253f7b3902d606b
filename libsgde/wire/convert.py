"""The one place domain types become protobuf messages and back, with enum names and timestamps."""
from __future__ import annotations

import dataclasses

from google.protobuf import json_format

from libsgde.domain.privacy import PrivacyReport
from libsgde.domain.specs import TrainSpec
from libsgde.wire.proto.sgde.v1 import common_pb2 as pb
from libsgde.wire.proto.sgde.v1 import trainer_pb2 as tpb


def privacy_to_proto(report: PrivacyReport) -> pb.PrivacyReport:
    return pb.PrivacyReport(**dataclasses.asdict(report))


def privacy_from_proto(message: pb.PrivacyReport) -> PrivacyReport:
    return PrivacyReport(**{f.name: getattr(message, f.name) for f in dataclasses.fields(PrivacyReport)})


def train_spec_from_proto(spec: tpb.TrainingSpec) -> TrainSpec:
    return TrainSpec(architecture=spec.architecture, target_epsilon=spec.target_epsilon,
                     config=json_format.MessageToDict(spec.config) if spec.HasField("config") else None,
                     delta=spec.delta, epochs=spec.epochs, batch_size=spec.batch_size, clip_norm=spec.clip_norm,
                     learning_rate=spec.learning_rate, seed=spec.seed)


def train_spec_to_proto(spec: TrainSpec) -> tpb.TrainingSpec:
    fields = dataclasses.asdict(spec)
    config = fields.pop("config")
    out = tpb.TrainingSpec(**fields)
    if config is not None:
        out.config.update(config)
    return out
