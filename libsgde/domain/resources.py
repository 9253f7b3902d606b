"""The resources the SDK returns: users, models, versions, data sets, jobs, progress, sample metadata.

Plain frozen dataclasses with the fields people read, named as in the contract (protos/sgde/v1), so that
`version.privacy.epsilon` or `job.state` read the same as on the wire. Enumerations are IntEnums with the contract's
numbers (`job.state == JobState.SUCCEEDED`), times are timezone-aware datetimes (None when unset), repeated fields
lists. A data schema stays the contract's DataSchema message (`schema`), which the whole library validates and
encodes from. `libsgde.wire.convert` builds these from messages.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from libsgde.domain.privacy import PrivacyReport
from libsgde.domain.specs import TrainSpec


class _Named(enum.IntEnum):
    @property
    def text(self) -> str:
        """As people write it: "tabular", "shared", "succeeded"."""
        return self.name.lower()


class DataKind(_Named):
    UNSPECIFIED = 0
    TABULAR = 1
    IMAGE = 2


class Visibility(_Named):
    UNSPECIFIED = 0
    PRIVATE = 1  # only the owner
    SHARED = 2  # the owner and the users in shared_with
    PUBLIC = 3  # every registered user


class JobState(_Named):
    UNSPECIFIED = 0
    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3  # trained; waits for its owner to sign and publish
    PUBLISHED = 4
    FAILED = 5
    CANCELLED = 6


class MemberState(_Named):
    UNSPECIFIED = 0
    INVITED = 1
    ACTIVE = 2


class OutputFormat(_Named):
    UNSPECIFIED = 0
    CSV = 1
    NPY = 2
    PARQUET = 3


@dataclass(frozen=True)
class User:
    name: str  # "users/{username}"
    username: str
    email: str  # only in answers about the caller
    signing_public_key: bytes  # raw 32-byte Ed25519 key the user signs artifacts with
    create_time: datetime | None = None


@dataclass(frozen=True)
class Session:
    """What a login gives: the bearer token, when it expires, and who it is for."""

    access_token: str
    expire_time: datetime | None
    user: User | None


@dataclass(frozen=True)
class Model:
    name: str  # "models/{owner}/{model}"
    owner: str
    description: str
    tags: list[str]
    data_schema: Any  # sgde.v1.DataSchema
    data_kind: DataKind
    visibility: Visibility
    shared_with: list[str]  # only shown to the owner
    latest_version: int  # 0 if none
    create_time: datetime | None
    update_time: datetime | None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelVersion:
    name: str  # "models/{owner}/{model}/versions/{number}"
    number: int
    sha256: str
    size_bytes: int
    signature: bytes  # the owner's Ed25519 signature over the artifact's sha256
    architecture: str
    data_kind: DataKind
    privacy: PrivacyReport
    create_time: datetime | None
    manifest_json: str

    @property
    def owner(self) -> str:
        return self.name.split("/")[1]


@dataclass(frozen=True)
class Dataset:
    name: str  # "datasets/{id}", in the trainer's own storage
    filename: str
    size_bytes: int
    sha256: str
    create_time: datetime | None


@dataclass(frozen=True)
class Progress:
    """What a training run reports as it goes (libsgde.ml.train.Run.report)."""

    step: int
    total_steps: int
    epoch: int
    loss: float
    epsilon_spent: float  # the accountant's epsilon for the steps done so far
    examples_per_second: float
    eta_seconds: float
    message: str = ""


@dataclass(frozen=True)
class ProgressEvent(Progress):
    """A job's progress as the trainer streams it: the run's report, with the job, its state and the time."""

    job: str = ""
    state: JobState = JobState.UNSPECIFIED
    time: datetime | None = None


@dataclass(frozen=True)
class Job:
    name: str  # "jobs/{id}"
    owner: str
    state: JobState
    spec: TrainSpec
    data_schema: Any  # sgde.v1.DataSchema
    dataset: str
    publish_model: str
    published_version: str
    artifact_sha256: str
    privacy: PrivacyReport | None  # once trained
    latest_progress: ProgressEvent
    error: str
    create_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None


@dataclass(frozen=True)
class SampleMetadata:
    version: str  # the resolved version (empty for local sampling)
    artifact_sha256: str
    format: OutputFormat
    num_samples: int
    data_schema: Any  # sgde.v1.DataSchema
    privacy: PrivacyReport
    class_counts: list[int]  # per class, in the schema's class order (empty when unconditional)


@dataclass(frozen=True)
class PrivacyPolicy:
    """What a federation admits (0 or empty: no limit)."""

    max_epsilon: float = 0.0
    max_delta: float = 0.0
    architectures: list[str] = field(default_factory=list)
    min_dataset_size: int = 0


@dataclass(frozen=True)
class Member:
    username: str
    state: MemberState
    since: datetime | None  # invited, or accepted


@dataclass(frozen=True)
class Federation:
    name: str  # "federations/{id}"
    coordinator: str
    description: str
    data_schema: Any  # sgde.v1.DataSchema: every member trains on it
    policy: PrivacyPolicy
    members: list[Member]
    create_time: datetime | None
    update_time: datetime | None


@dataclass(frozen=True)
class FederationGenerator:
    """A member's admitted generator; its privacy is the registry's own recomputation."""

    member: str
    version: str  # "models/{owner}/{model}/versions/{n}"
    architecture: str
    privacy: PrivacyReport | None
    admit_time: datetime | None
