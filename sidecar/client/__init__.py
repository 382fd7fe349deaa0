"""The Python client of the kafka-mesh sidecar: a batching producer over the Produce RPC (see producer.py for its
threads). Only the names below are public; the generated stubs stay private."""

from sidecar.client.errors import ClientError, ErrorCode, ProducerClosedError, RecordError, StreamError
from sidecar.client.producer import BatchResult, Producer, RecordResult, stream

__all__ = [
    "BatchResult",
    "ClientError",
    "ErrorCode",
    "Producer",
    "ProducerClosedError",
    "RecordError",
    "RecordResult",
    "StreamError",
    "stream",
]
