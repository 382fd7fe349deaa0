from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_NO_ROUTE: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_TOPIC: _ClassVar[ErrorCode]
    ERROR_CODE_RECORD_TOO_LARGE: _ClassVar[ErrorCode]
    ERROR_CODE_CLUSTER_UNAVAILABLE: _ClassVar[ErrorCode]
    ERROR_CODE_UNKNOWN_PARTITION: _ClassVar[ErrorCode]
    ERROR_CODE_NOT_AUTHORIZED: _ClassVar[ErrorCode]
    ERROR_CODE_QUOTA_EXCEEDED: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]
    ERROR_CODE_UNKNOWN_TOPIC: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_RECORD: _ClassVar[ErrorCode]

class StartPosition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    START_POSITION_UNSPECIFIED: _ClassVar[StartPosition]
    START_POSITION_EARLIEST: _ClassVar[StartPosition]
    START_POSITION_LATEST: _ClassVar[StartPosition]
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_NO_ROUTE: ErrorCode
ERROR_CODE_INVALID_TOPIC: ErrorCode
ERROR_CODE_RECORD_TOO_LARGE: ErrorCode
ERROR_CODE_CLUSTER_UNAVAILABLE: ErrorCode
ERROR_CODE_UNKNOWN_PARTITION: ErrorCode
ERROR_CODE_NOT_AUTHORIZED: ErrorCode
ERROR_CODE_QUOTA_EXCEEDED: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode
ERROR_CODE_UNKNOWN_TOPIC: ErrorCode
ERROR_CODE_INVALID_RECORD: ErrorCode
START_POSITION_UNSPECIFIED: StartPosition
START_POSITION_EARLIEST: StartPosition
START_POSITION_LATEST: StartPosition

class ProduceRequest(_message.Message):
    __slots__ = ("batch_id", "records")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, batch_id: _Optional[int] = ..., records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("topic", "key", "value", "headers", "timestamp_ms", "partition")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    topic: str
    key: bytes
    value: bytes
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    timestamp_ms: int
    partition: int
    def __init__(self, topic: _Optional[str] = ..., key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., timestamp_ms: _Optional[int] = ..., partition: _Optional[int] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("key", "value", "raw_key")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    RAW_KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    raw_key: bytes
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., raw_key: _Optional[bytes] = ...) -> None: ...

class ProduceResponse(_message.Message):
    __slots__ = ("batch_id", "ok_count", "errors", "mapping_revision")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    OK_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    MAPPING_REVISION_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    ok_count: int
    errors: _containers.RepeatedCompositeFieldContainer[RecordError]
    mapping_revision: int
    def __init__(self, batch_id: _Optional[int] = ..., ok_count: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[RecordError, _Mapping]]] = ..., mapping_revision: _Optional[int] = ...) -> None: ...

class RecordError(_message.Message):
    __slots__ = ("index", "code", "message", "count")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    index: int
    code: ErrorCode
    message: str
    count: int
    def __init__(self, index: _Optional[int] = ..., code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("subscription", "acks", "credit")
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    subscription: Subscription
    acks: Acks
    credit: Credit
    def __init__(self, subscription: _Optional[_Union[Subscription, _Mapping]] = ..., acks: _Optional[_Union[Acks, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ...) -> None: ...

class Subscription(_message.Message):
    __slots__ = ("group", "topics", "start", "max_records", "max_wait_ms", "credit", "max_response_bytes")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    MAX_RECORDS_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    MAX_RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    group: str
    topics: _containers.RepeatedScalarFieldContainer[str]
    start: StartPosition
    max_records: int
    max_wait_ms: int
    credit: Credit
    max_response_bytes: int
    def __init__(self, group: _Optional[str] = ..., topics: _Optional[_Iterable[str]] = ..., start: _Optional[_Union[StartPosition, str]] = ..., max_records: _Optional[int] = ..., max_wait_ms: _Optional[int] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., max_response_bytes: _Optional[int] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("records", "bytes")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    records: int
    bytes: int
    def __init__(self, records: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class Acks(_message.Message):
    __slots__ = ("ranges",)
    RANGES_FIELD_NUMBER: _ClassVar[int]
    ranges: _containers.RepeatedCompositeFieldContainer[AckRange]
    def __init__(self, ranges: _Optional[_Iterable[_Union[AckRange, _Mapping]]] = ...) -> None: ...

class AckRange(_message.Message):
    __slots__ = ("cluster", "topic", "partition", "first_offset", "last_offset")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    FIRST_OFFSET_FIELD_NUMBER: _ClassVar[int]
    LAST_OFFSET_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    def __init__(self, cluster: _Optional[str] = ..., topic: _Optional[str] = ..., partition: _Optional[int] = ..., first_offset: _Optional[int] = ..., last_offset: _Optional[int] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("records", "event")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    records: RecordBatch
    event: Event
    def __init__(self, records: _Optional[_Union[RecordBatch, _Mapping]] = ..., event: _Optional[_Union[Event, _Mapping]] = ...) -> None: ...

class RecordBatch(_message.Message):
    __slots__ = ("partitions",)
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    partitions: _containers.RepeatedCompositeFieldContainer[PartitionRecords]
    def __init__(self, partitions: _Optional[_Iterable[_Union[PartitionRecords, _Mapping]]] = ...) -> None: ...

class PartitionRecords(_message.Message):
    __slots__ = ("cluster", "topic", "partition", "records")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    topic: str
    partition: int
    records: _containers.RepeatedCompositeFieldContainer[ConsumedRecord]
    def __init__(self, cluster: _Optional[str] = ..., topic: _Optional[str] = ..., partition: _Optional[int] = ..., records: _Optional[_Iterable[_Union[ConsumedRecord, _Mapping]]] = ...) -> None: ...

class ConsumedRecord(_message.Message):
    __slots__ = ("offset", "key", "value", "headers", "timestamp_ms")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    offset: int
    key: bytes
    value: bytes
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    timestamp_ms: int
    def __init__(self, offset: _Optional[int] = ..., key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("assigned", "revoked", "clusters_changed", "cluster_state", "acks_ignored")
    ASSIGNED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_STATE_FIELD_NUMBER: _ClassVar[int]
    ACKS_IGNORED_FIELD_NUMBER: _ClassVar[int]
    assigned: PartitionSet
    revoked: PartitionSet
    clusters_changed: ClustersChanged
    cluster_state: ClusterState
    acks_ignored: Acks
    def __init__(self, assigned: _Optional[_Union[PartitionSet, _Mapping]] = ..., revoked: _Optional[_Union[PartitionSet, _Mapping]] = ..., clusters_changed: _Optional[_Union[ClustersChanged, _Mapping]] = ..., cluster_state: _Optional[_Union[ClusterState, _Mapping]] = ..., acks_ignored: _Optional[_Union[Acks, _Mapping]] = ...) -> None: ...

class PartitionSet(_message.Message):
    __slots__ = ("cluster", "topic", "partitions")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    topic: str
    partitions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, cluster: _Optional[str] = ..., topic: _Optional[str] = ..., partitions: _Optional[_Iterable[int]] = ...) -> None: ...

class ClustersChanged(_message.Message):
    __slots__ = ("topic", "clusters", "mapping_revision")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    MAPPING_REVISION_FIELD_NUMBER: _ClassVar[int]
    topic: str
    clusters: _containers.RepeatedScalarFieldContainer[str]
    mapping_revision: int
    def __init__(self, topic: _Optional[str] = ..., clusters: _Optional[_Iterable[str]] = ..., mapping_revision: _Optional[int] = ...) -> None: ...

class ClusterState(_message.Message):
    __slots__ = ("cluster", "available", "reason")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    available: bool
    reason: str
    def __init__(self, cluster: _Optional[str] = ..., available: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...
