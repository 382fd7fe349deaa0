"""A raw Subscribe stream for the tests: what the application sends and receives, recorded, with acks sent when the
test says (or after every batch), and credit granted back after every batch."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from sidecar.api.kafkamesh.v1 import mesh_pb2 as M

Rec = tuple[str, str, int, int, bytes]          # cluster, topic, partition, offset, value


class SubStream:
    def __init__(self, target: str, group: str, topics: list[str], *, auto_ack: bool = True,
                 start: int = M.START_POSITION_EARLIEST, credit_records: int = 500, credit_bytes: int = 1 << 20,
                 max_records: int = 0, grant: bool = True) -> None:
        self.auto_ack = auto_ack
        self.grant = grant
        self.records: list[Rec] = []
        self.consumed: list[M.ConsumedRecord] = []              # the same records whole (headers, timestamps)
        self.events: list[M.Event] = []
        self.event_at: list[float] = []                          # when each event arrived (perf_counter)
        self.acked: set[tuple[str, str, int, int]] = set()       # what the test acked (sent)
        self.status: grpc.StatusCode | None = None
        self.details = ""
        self._lock = threading.Lock()
        self._outbox: queue.Queue[M.SubscribeRequest | None] = queue.Queue()
        self._outbox.put(M.SubscribeRequest(subscription=M.Subscription(
            group=group, topics=topics, start=start, max_records=max_records,
            credit=M.Credit(records=credit_records, bytes=credit_bytes))))
        self._channel = grpc.insecure_channel(target)
        self._call = self._channel.stream_stream("/kafkamesh.v1.Mesh/Subscribe")(self._requests())
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _requests(self) -> Iterator[bytes]:
        while (item := self._outbox.get()) is not None:
            yield item.SerializeToString()

    def _read(self) -> None:
        try:
            for raw in self._call:
                resp = M.SubscribeResponse.FromString(raw)
                if resp.WhichOneof("kind") == "event":
                    with self._lock:
                        self.events.append(resp.event)
                        self.event_at.append(time.perf_counter())
                    continue
                got: list[Rec] = []
                whole: list[M.ConsumedRecord] = []
                for g in resp.records.partitions:
                    got += [(g.cluster, g.topic, g.partition, r.offset, r.value) for r in g.records]
                    whole += g.records
                with self._lock:
                    self.records += got
                    self.consumed += whole
                req = M.SubscribeRequest()
                if self.auto_ack:
                    req.acks.CopyFrom(self._ack_message(got))
                if self.grant:
                    req.credit.CopyFrom(M.Credit(records=len(got), bytes=len(raw)))
                if self.auto_ack or self.grant:
                    self._outbox.put(req)           # the ack and the credit a batch frees, in one message
            self.status = grpc.StatusCode.OK
        except grpc.RpcError as e:
            self.status = e.code()
            self.details = e.details() or ""

    def _ack_message(self, recs: list[Rec]) -> M.Acks:
        with self._lock:
            self.acked.update((c, t, p, o) for c, t, p, o, _ in recs)
        return M.Acks(ranges=[M.AckRange(cluster=c, topic=t, partition=p, first_offset=o, last_offset=o)
                              for c, t, p, o, _ in recs])

    def ack(self, recs: list[Rec]) -> None:
        self._outbox.put(M.SubscribeRequest(acks=self._ack_message(recs)))

    def send(self, req: M.SubscribeRequest) -> None:
        self._outbox.put(req)

    def wait(self, pred: Callable[[SubStream], bool], timeout: float = 60, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not pred(self):
            if self.status is not None:
                raise AssertionError(f"stream ended ({self.status}: {self.details}) while waiting for {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {len(self.records)} records, "
                                     f"events {[e.WhichOneof('kind') for e in self.events]}")
            time.sleep(0.05)

    def values(self) -> list[str]:
        with self._lock:
            return [v.decode() for *_, v in self.records]

    def timed_events(self) -> list[tuple[M.Event, float]]:
        """Every event with when it arrived (time.perf_counter)."""
        with self._lock:
            return list(zip(self.events, self.event_at, strict=True))

    def event_kinds(self) -> list[str]:
        with self._lock:
            return [str(e.WhichOneof("kind")) for e in self.events]

    def close(self, timeout: float = 30) -> grpc.StatusCode | None:
        """Half-close (a clean end) and wait for the sidecar to end the call."""
        self._outbox.put(None)
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        self._call.cancel()
        self._channel.close()
        assert not alive, "the sidecar did not end the stream after the half-close"
        return self.status

    def cancel(self) -> None:
        self._outbox.put(None)
        self._call.cancel()
        self._thread.join(10)
        self._channel.close()

    def __enter__(self) -> SubStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread.is_alive():
            self.cancel()
