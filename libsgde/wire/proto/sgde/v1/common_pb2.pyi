import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_KIND_UNSPECIFIED: _ClassVar[DataKind]
    DATA_KIND_TABULAR: _ClassVar[DataKind]
    DATA_KIND_IMAGE: _ClassVar[DataKind]

class ColumnType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLUMN_TYPE_UNSPECIFIED: _ClassVar[ColumnType]
    COLUMN_TYPE_CONTINUOUS: _ClassVar[ColumnType]
    COLUMN_TYPE_INTEGER: _ClassVar[ColumnType]
    COLUMN_TYPE_CATEGORICAL: _ClassVar[ColumnType]

class Visibility(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VISIBILITY_UNSPECIFIED: _ClassVar[Visibility]
    VISIBILITY_PRIVATE: _ClassVar[Visibility]
    VISIBILITY_SHARED: _ClassVar[Visibility]
    VISIBILITY_PUBLIC: _ClassVar[Visibility]
DATA_KIND_UNSPECIFIED: DataKind
DATA_KIND_TABULAR: DataKind
DATA_KIND_IMAGE: DataKind
COLUMN_TYPE_UNSPECIFIED: ColumnType
COLUMN_TYPE_CONTINUOUS: ColumnType
COLUMN_TYPE_INTEGER: ColumnType
COLUMN_TYPE_CATEGORICAL: ColumnType
VISIBILITY_UNSPECIFIED: Visibility
VISIBILITY_PRIVATE: Visibility
VISIBILITY_SHARED: Visibility
VISIBILITY_PUBLIC: Visibility

class DataSchema(_message.Message):
    __slots__ = ("tabular", "image")
    TABULAR_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    tabular: TabularSchema
    image: ImageSchema
    def __init__(self, tabular: _Optional[_Union[TabularSchema, _Mapping]] = ..., image: _Optional[_Union[ImageSchema, _Mapping]] = ...) -> None: ...

class Column(_message.Message):
    __slots__ = ("name", "type", "lower", "upper", "categories", "nullable", "point_masses")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    NULLABLE_FIELD_NUMBER: _ClassVar[int]
    POINT_MASSES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ColumnType
    lower: float
    upper: float
    categories: _containers.RepeatedScalarFieldContainer[str]
    nullable: bool
    point_masses: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ColumnType, str]] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ..., categories: _Optional[_Iterable[str]] = ..., nullable: _Optional[bool] = ..., point_masses: _Optional[_Iterable[float]] = ...) -> None: ...

class CsvOptions(_message.Message):
    __slots__ = ("no_header", "delimiter", "strip_whitespace", "na_tokens")
    NO_HEADER_FIELD_NUMBER: _ClassVar[int]
    DELIMITER_FIELD_NUMBER: _ClassVar[int]
    STRIP_WHITESPACE_FIELD_NUMBER: _ClassVar[int]
    NA_TOKENS_FIELD_NUMBER: _ClassVar[int]
    no_header: bool
    delimiter: str
    strip_whitespace: bool
    na_tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, no_header: _Optional[bool] = ..., delimiter: _Optional[str] = ..., strip_whitespace: _Optional[bool] = ..., na_tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class TabularSchema(_message.Message):
    __slots__ = ("columns", "label_column", "csv")
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    LABEL_COLUMN_FIELD_NUMBER: _ClassVar[int]
    CSV_FIELD_NUMBER: _ClassVar[int]
    columns: _containers.RepeatedCompositeFieldContainer[Column]
    label_column: str
    csv: CsvOptions
    def __init__(self, columns: _Optional[_Iterable[_Union[Column, _Mapping]]] = ..., label_column: _Optional[str] = ..., csv: _Optional[_Union[CsvOptions, _Mapping]] = ...) -> None: ...

class ImageSchema(_message.Message):
    __slots__ = ("height", "width", "channels", "class_names", "pixel_max")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    PIXEL_MAX_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    channels: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    pixel_max: float
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., pixel_max: _Optional[float] = ...) -> None: ...

class PrivacyReport(_message.Message):
    __slots__ = ("mechanism", "epsilon", "delta", "accountant", "noise_multiplier", "sampling_rate", "steps", "clip_norm", "dataset_size", "rdp_epsilon", "components")
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_RATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    DATASET_SIZE_FIELD_NUMBER: _ClassVar[int]
    RDP_EPSILON_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    mechanism: str
    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float
    sampling_rate: float
    steps: int
    clip_norm: float
    dataset_size: int
    rdp_epsilon: float
    components: _containers.RepeatedCompositeFieldContainer[PrivacyComponent]
    def __init__(self, mechanism: _Optional[str] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., accountant: _Optional[str] = ..., noise_multiplier: _Optional[float] = ..., sampling_rate: _Optional[float] = ..., steps: _Optional[int] = ..., clip_norm: _Optional[float] = ..., dataset_size: _Optional[int] = ..., rdp_epsilon: _Optional[float] = ..., components: _Optional[_Iterable[_Union[PrivacyComponent, _Mapping]]] = ...) -> None: ...

class PrivacyComponent(_message.Message):
    __slots__ = ("purpose", "kind", "noise_multiplier", "sampling_rate", "steps", "clip_norm", "pure_epsilon")
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_RATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    PURE_EPSILON_FIELD_NUMBER: _ClassVar[int]
    purpose: str
    kind: str
    noise_multiplier: float
    sampling_rate: float
    steps: int
    clip_norm: float
    pure_epsilon: float
    def __init__(self, purpose: _Optional[str] = ..., kind: _Optional[str] = ..., noise_multiplier: _Optional[float] = ..., sampling_rate: _Optional[float] = ..., steps: _Optional[int] = ..., clip_norm: _Optional[float] = ..., pure_epsilon: _Optional[float] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "owner", "description", "tags", "data_schema", "data_kind", "visibility", "shared_with", "latest_version", "create_time", "update_time", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    DATA_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    DATA_KIND_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    SHARED_WITH_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    name: str
    owner: str
    description: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    data_schema: DataSchema
    data_kind: DataKind
    visibility: Visibility
    shared_with: _containers.RepeatedScalarFieldContainer[str]
    latest_version: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., owner: _Optional[str] = ..., description: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., data_schema: _Optional[_Union[DataSchema, _Mapping]] = ..., data_kind: _Optional[_Union[DataKind, str]] = ..., visibility: _Optional[_Union[Visibility, str]] = ..., shared_with: _Optional[_Iterable[str]] = ..., latest_version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("name", "number", "sha256", "size_bytes", "signature", "architecture", "data_kind", "privacy", "create_time", "manifest_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    DATA_KIND_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    number: int
    sha256: str
    size_bytes: int
    signature: bytes
    architecture: str
    data_kind: DataKind
    privacy: PrivacyReport
    create_time: _timestamp_pb2.Timestamp
    manifest_json: str
    def __init__(self, name: _Optional[str] = ..., number: _Optional[int] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., signature: _Optional[bytes] = ..., architecture: _Optional[str] = ..., data_kind: _Optional[_Union[DataKind, str]] = ..., privacy: _Optional[_Union[PrivacyReport, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., manifest_json: _Optional[str] = ...) -> None: ...
