from libsgde.wire.proto.sgde.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FederationQuota(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEDERATION_QUOTA_UNSPECIFIED: _ClassVar[FederationQuota]
    FEDERATION_QUOTA_EQUAL: _ClassVar[FederationQuota]
    FEDERATION_QUOTA_PROPORTIONAL_TO_N: _ClassVar[FederationQuota]

class OutputFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_FORMAT_UNSPECIFIED: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_CSV: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_NPY: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_PARQUET: _ClassVar[OutputFormat]
FEDERATION_QUOTA_UNSPECIFIED: FederationQuota
FEDERATION_QUOTA_EQUAL: FederationQuota
FEDERATION_QUOTA_PROPORTIONAL_TO_N: FederationQuota
OUTPUT_FORMAT_UNSPECIFIED: OutputFormat
OUTPUT_FORMAT_CSV: OutputFormat
OUTPUT_FORMAT_NPY: OutputFormat
OUTPUT_FORMAT_PARQUET: OutputFormat

class SampleFederationRequest(_message.Message):
    __slots__ = ("federation", "num_samples", "seed", "class_counts", "format", "chunk_samples", "quota", "include_own")
    class ClassCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CLASS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_OWN_FIELD_NUMBER: _ClassVar[int]
    federation: str
    num_samples: int
    seed: int
    class_counts: _containers.ScalarMap[str, int]
    format: OutputFormat
    chunk_samples: int
    quota: FederationQuota
    include_own: bool
    def __init__(self, federation: _Optional[str] = ..., num_samples: _Optional[int] = ..., seed: _Optional[int] = ..., class_counts: _Optional[_Mapping[str, int]] = ..., format: _Optional[_Union[OutputFormat, str]] = ..., chunk_samples: _Optional[int] = ..., quota: _Optional[_Union[FederationQuota, str]] = ..., include_own: _Optional[bool] = ...) -> None: ...

class SampleFederationResponse(_message.Message):
    __slots__ = ("source", "sample")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    source: str
    sample: SampleResponse
    def __init__(self, source: _Optional[str] = ..., sample: _Optional[_Union[SampleResponse, _Mapping]] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("model", "num_samples", "seed", "class_counts", "format", "chunk_samples")
    class ClassCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CLASS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    model: str
    num_samples: int
    seed: int
    class_counts: _containers.ScalarMap[str, int]
    format: OutputFormat
    chunk_samples: int
    def __init__(self, model: _Optional[str] = ..., num_samples: _Optional[int] = ..., seed: _Optional[int] = ..., class_counts: _Optional[_Mapping[str, int]] = ..., format: _Optional[_Union[OutputFormat, str]] = ..., chunk_samples: _Optional[int] = ...) -> None: ...

class SampleMetadata(_message.Message):
    __slots__ = ("version", "artifact_sha256", "format", "num_samples", "data_schema", "privacy", "class_counts")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DATA_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    CLASS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    version: str
    artifact_sha256: str
    format: OutputFormat
    num_samples: int
    data_schema: _common_pb2.DataSchema
    privacy: _common_pb2.PrivacyReport
    class_counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, version: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., format: _Optional[_Union[OutputFormat, str]] = ..., num_samples: _Optional[int] = ..., data_schema: _Optional[_Union[_common_pb2.DataSchema, _Mapping]] = ..., privacy: _Optional[_Union[_common_pb2.PrivacyReport, _Mapping]] = ..., class_counts: _Optional[_Iterable[int]] = ...) -> None: ...

class SampleResponse(_message.Message):
    __slots__ = ("metadata", "chunk", "samples_done", "sha256")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_DONE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    metadata: SampleMetadata
    chunk: bytes
    samples_done: int
    sha256: str
    def __init__(self, metadata: _Optional[_Union[SampleMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ..., samples_done: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...
