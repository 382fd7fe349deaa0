"""Reading a ProduceResponse's errors record by record in tests: each RecordError stands for `count` consecutive
records (0 means 1), and entries past a response's first 1,000 carry no message."""

from __future__ import annotations

from typing import Any


def per_record(resp: Any) -> list[tuple[int, int, str]]:
    """(index, code, message) of every failed record, in index order (an entry without text: its own empty text)."""
    return [(i, e.code, e.message) for e in resp.errors for i in range(e.index, e.index + max(e.count, 1))]
