"""The Python client of the kafka-mesh sidecar: a batching producer over the Produce RPC and a consumer over the
Subscribe RPC (see producer.py and consumer.py for their threads). Only the names below are public; the generated
stubs stay private."""

from sidecar.client.consumer import (
    AckRange,
    AcksIgnored,
    ClustersChanged,
    ClusterStateChanged,
    ConsumedRecord,
    Consumer,
    ConsumerEvent,
    PartitionsAssigned,
    PartitionsRevoked,
)
from sidecar.client.errors import (
    ClientError,
    ConsumerClosedError,
    ErrorCode,
    ProducerClosedError,
    RecordError,
    StreamError,
    SubscribeError,
)
from sidecar.client.producer import BatchResult, Producer, RecordResult, stream

__all__ = [
    "AckRange",
    "AcksIgnored",
    "BatchResult",
    "ClientError",
    "ClusterStateChanged",
    "ClustersChanged",
    "ConsumedRecord",
    "Consumer",
    "ConsumerClosedError",
    "ConsumerEvent",
    "ErrorCode",
    "PartitionsAssigned",
    "PartitionsRevoked",
    "Producer",
    "ProducerClosedError",
    "RecordError",
    "RecordResult",
    "StreamError",
    "SubscribeError",
    "stream",
]
