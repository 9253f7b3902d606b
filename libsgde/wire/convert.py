"""The one place domain types become protobuf messages and back, with enum names and timestamps."""
from __future__ import annotations

import dataclasses
from typing import Any

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


def enum_text(enum: Any, value: int) -> str:
    """An enum value as people write it: DATA_KIND_TABULAR -> "tabular", JOB_STATE_SUCCEEDED -> "succeeded"."""
    name = enum.Name(value)
    prefix = next((p for p in _ENUM_PREFIXES if name.startswith(p)), "")
    return name.removeprefix(prefix).lower()


def enum_value(enum: Any, text: str) -> int:
    """The inverse of `enum_text`: ("tabular", DataKind) -> DATA_KIND_TABULAR."""
    for name, number in enum.items():
        if enum_text(enum, number) == text:
            return number
    raise KeyError(text)


_ENUM_PREFIXES = ("DATA_KIND_", "JOB_STATE_", "VISIBILITY_", "COLUMN_TYPE_", "OUTPUT_FORMAT_")
DATA_KINDS = {"tabular": pb.DATA_KIND_TABULAR, "image": pb.DATA_KIND_IMAGE}
VISIBILITIES = {"private": pb.VISIBILITY_PRIVATE, "shared": pb.VISIBILITY_SHARED, "public": pb.VISIBILITY_PUBLIC}


def job_state_text(state: int) -> str:
    return enum_text(tpb.JobState, state)
