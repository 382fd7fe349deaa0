"""At-least-once offset tracking for one partition of one cluster on one Subscribe stream.

The sidecar delivers a partition's records in offset order; the application acks ranges of offsets in any order.
The committable offset (Kafka's "next offset to read") is the first offset delivered and not yet acked: an offset is
committed only once it and every record before it in the partition are acked. Offsets Kafka skips (compacted records,
transaction markers) lie between delivered records and are never waited for.

Everything here is per ack range or per delivered run of records, never per record. Not thread-safe: one stream's
event-loop task owns its trackers.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass
class PartitionOffsets:
    """start: the offset delivery began at (the committed offset, or where the reset policy put it)."""

    start: int
    _end: int = -1                                             # one past the last delivered offset
    _pending: list[list[int]] = field(default_factory=list)   # delivered, not acked: sorted disjoint [lo, hi)

    def __post_init__(self) -> None:
        if self._end < 0:
            self._end = self.start

    @property
    def delivered_end(self) -> int:
        return self._end

    def delivered(self, first: int, last: int) -> None:
        """Records first..last (inclusive, with possible gaps Kafka skipped) were sent to the application."""
        if first < self._end or last < first:
            raise ValueError(f"delivered {first}..{last} does not follow {self._end - 1}")
        if self._pending and self._pending[-1][1] == first:
            self._pending[-1][1] = last + 1
        else:
            self._pending.append([first, last + 1])
        self._end = last + 1

    def rewind(self, first: int) -> None:
        """Delivery starts again at first (before the delivery end) without the partition having moved: what was
        delivered from first on counts as not delivered; unacked offsets before first stay unacked."""
        self._pending = [[a, min(b, first)] for a, b in self._pending if a < first]
        self._end = first
        self.start = min(self.start, first)

    def ack(self, first: int, last: int) -> list[tuple[int, int]]:
        """Mark first..last (inclusive) processed. Returns the sub-ranges that were never delivered on this stream
        (before start or at/after the delivery end): those are ignored. Acking an offset twice is harmless."""
        if last < first:
            return [(first, last)]
        ignored: list[tuple[int, int]] = []
        if first < self.start:
            ignored.append((first, min(last, self.start - 1)))
        if last >= self._end:
            ignored.append((max(first, self._end), last))
        lo, hi = max(first, self.start), min(last + 1, self._end)
        if lo < hi:
            self._remove(lo, hi)
        return ignored

    def _remove(self, lo: int, hi: int) -> None:
        pending = self._pending
        i = bisect.bisect_right(pending, [lo, float("inf")]) - 1
        i = max(i, 0)
        out: list[list[int]] = pending[:i]
        for a, b in pending[i:]:
            if b <= lo or a >= hi:
                out.append([a, b])
                continue
            if a < lo:
                out.append([a, lo])
            if b > hi:
                out.append([hi, b])
        self._pending = out

    def committable(self) -> int:
        """The offset to commit: every offset before it is acked or was never a record."""
        return self._pending[0][0] if self._pending else self._end

    @property
    def unacked(self) -> int:
        """How many delivered offsets (counting skipped ones inside a delivered run) await an ack."""
        return sum(b - a for a, b in self._pending)
