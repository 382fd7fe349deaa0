"""Consume through a kafka-mesh sidecar with the Python client (sidecar.client.Consumer): one stream of records from
every cluster the mapping routes the topics to, each printed with the cluster it came from and acked once printed.
Stops on Ctrl-C or after --count records; either way it closes cleanly, so the sidecar commits what was acked.

    python examples/python/consume.py --target 127.0.0.1:7420 --group demo --start earliest orders

See examples/README.md for the sandbox, mapping and sidecar to run it against.
"""

from __future__ import annotations

import argparse
import sys

from sidecar.client import (
    ClusterStateChanged,
    ConsumedRecord,
    Consumer,
    ConsumerEvent,
    PartitionsAssigned,
    PartitionsRevoked,
    SubscribeError,
)


def show(r: ConsumedRecord) -> str:
    key = "null" if r.key is None else r.key.decode("utf-8", "backslashreplace")
    value = "null" if r.value is None else r.value.decode("utf-8", "backslashreplace")
    return f"{r.cluster}/{r.topic}[{r.partition}]@{r.offset} key={key} value={value}"


def on_event(ev: ConsumerEvent) -> None:
    # Runs inside poll(), on this thread, in order with the records.
    if isinstance(ev, (PartitionsAssigned, PartitionsRevoked)):
        what = "assigned" if isinstance(ev, PartitionsAssigned) else "revoked"
        print(f"# {what} {ev.cluster}/{ev.topic} partitions {list(ev.partitions)}", file=sys.stderr)
    elif isinstance(ev, ClusterStateChanged):
        print(f"# cluster {ev.cluster} {'available' if ev.available else 'unavailable: ' + ev.reason}",
              file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="example: python examples/python/consume.py --target unix:/run/user/0/kafka-mesh/sidecar.sock "
               "--group billing --start earliest --count 10 orders audit",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("topics", nargs="+", help="the topics to consume")
    parser.add_argument("--target", default="127.0.0.1:7420",
                        help="the sidecar: unix:PATH or HOST:PORT (default 127.0.0.1:7420)")
    parser.add_argument("--group", default="kafka-mesh-example", help="the consumer group (default kafka-mesh-example)")
    parser.add_argument("--start", choices=("latest", "earliest"), default="latest",
                        help="where a partition the group has no committed offset for begins (default latest)")
    parser.add_argument("--count", type=int, default=None, help="stop after this many records (default: Ctrl-C)")
    args = parser.parse_args(argv)
    if args.count is not None and args.count < 1:
        parser.error("--count must be >= 1")

    seen = 0
    try:
        with Consumer(args.target, group=args.group, start=args.start, on_event=on_event) as consumer:
            consumer.subscribe(args.topics)
            while args.count is None or seen < args.count:
                left = None if args.count is None else args.count - seen
                # A timeout keeps the loop responsive; max_records leaves what is past --count unacked, so it comes
                # again to the group instead of being skipped.
                records = consumer.poll(timeout=1.0, max_records=left)
                for r in records:
                    print(show(r), flush=True)
                consumer.ack(records)
                seen += len(records)
            # leaving the block sends the last acks and closes the stream
    except KeyboardInterrupt:
        pass                                  # the with block has closed the consumer
    except SubscribeError as e:               # refused (e.code INVALID_ARGUMENT, FAILED_PRECONDITION) or broken
        print(f"consume.py: {e}", file=sys.stderr)
        return 1
    print(f"consumed {seen} record(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
