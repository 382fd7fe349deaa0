"""Produce through a kafka-mesh sidecar with the Python client (sidecar.client), three ways, and print what
happened to every record: bytes with a future per record, objects of a class decorated with @stream, and one batch
through the fast path (send_batch, one future for the batch).

    python examples/python/produce.py --target 127.0.0.1:7420 --topic orders --count 5

See examples/README.md for the sandbox, mapping and sidecar to run it against.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from concurrent.futures import Future

from sidecar.client import Producer, RecordError, RecordResult, StreamError, stream


def outcome(fut: Future[RecordResult]) -> str:
    try:
        r = fut.result()
    except RecordError as e:                  # this record only: e.code is an ErrorCode, e.g. ErrorCode.NO_ROUTE
        return f"failed: {e.code.name}: {e.message}"
    except StreamError as e:                  # the stream ended before the answer: the record's fate is unknown
        return f"unknown: {e}"
    return f"written (batch {r.batch_id}, mapping revision {r.mapping_revision})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="example: python examples/python/produce.py --target unix:/run/user/0/kafka-mesh/sidecar.sock "
               "--topic t1",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:7420",
                        help="the sidecar: unix:PATH or HOST:PORT (default 127.0.0.1:7420)")
    parser.add_argument("--topic", default="orders", help="the topic to write (default orders)")
    parser.add_argument("--count", type=int, default=5, help="records of each kind (default 5)")
    args = parser.parse_args(argv)

    # A class's topic is fixed where the class is written; it is the command line's here.
    @stream(args.topic, key="customer")
    @dataclasses.dataclass
    class Order:                              # value: the JSON of its fields; key: its customer
        customer: str
        amount_cents: int

    try:
        with Producer(args.target, linger_ms=5) as producer:
            plain = [producer.send(args.topic, f"record {i}".encode(), key=f"k{i}".encode())
                     for i in range(args.count)]
            orders = [producer.send(Order(f"customer-{i % 3}", 100 * i)) for i in range(args.count)]
            fast = producer.send_batch(args.topic, [f"fast {i}".encode() for i in range(args.count)])
            # On purpose, a record that fails alone (its topic name is invalid), to show a per-record error.
            bad = producer.send("not a topic!", b"refused")
            # leaving the block flushes: every future below is done
    except StreamError as e:
        print(f"produce.py: {e}", file=sys.stderr)
        return 1

    for i, f in enumerate(plain):
        print(f"send {args.topic} record {i}: {outcome(f)}")
    for i, f in enumerate(orders):
        print(f"send Order {i}: {outcome(f)}")
    print(f"send to 'not a topic!' (on purpose): {outcome(bad)}")
    try:
        batch = fast.result()
    except StreamError as e:
        print(f"send_batch: unknown: {e}")
        return 1
    print(f"send_batch of {args.count}: {batch.ok_count} written (batch {batch.batch_id}, mapping revision "
          f"{batch.mapping_revision})" + "".join(f"\n  record {e.index}: {e.code.name}: {e.message}"
                                                 for e in batch.errors))
    failed = sum(f.exception() is not None for f in [*plain, *orders]) + len(batch.errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
