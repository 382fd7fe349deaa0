"""`kafka-mesh topic create|describe`: balanced topics on the registry's clusters (sidecar/manage/topics.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from sidecar.commands.args import key_values, positive
from sidecar.config import ControlSettings
from sidecar.errors import UsageError

EPILOG = """examples:
  kafka-mesh topic create orders --cluster c1                        # 2 partitions per broker of c1
  kafka-mesh topic create orders --cluster c1 --partitions-per-broker 4 --replication 3 --config retention.ms=86400000
  kafka-mesh topic describe orders --json

Partitions are a whole number per broker (the seed's balance rule): --partitions N must be a multiple of the
cluster's broker count. Replicas are assigned so that every broker leads the same number of partitions.
environment: KAFKA_MESH_ETCD (instead of --etcd), KAFKA_MESH_NAMESPACE (instead of --namespace; default "default")
"""


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    topic = sub.add_parser("topic", help="create balanced topics and describe them across clusters",
                           description="Topics on the mesh's Kafka clusters.", epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    tsub = topic.add_subparsers(dest="topic_command", metavar="ACTION", required=True)
    t_create = tsub.add_parser("create", parents=[common], help="create a topic with balanced partitions",
                               description="Create topic NAME on registered cluster C with a whole number of "
                                           "partitions per broker and leaders spread evenly over the brokers.",
                               epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    t_create.add_argument("name", metavar="NAME")
    t_create.add_argument("--cluster", required=True, metavar="C", help="a cluster of the registry")
    count = t_create.add_mutually_exclusive_group()
    count.add_argument("--partitions-per-broker", type=positive, metavar="K",
                       help="K partitions per broker (default 2)")
    count.add_argument("--partitions", type=positive, metavar="N",
                       help="N partitions in all: a multiple of the cluster's broker count")
    t_create.add_argument("--replication", type=positive, metavar="R",
                          help="replicas of each partition (default: 3, or the broker count if fewer)")
    t_create.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                          help="a topic config (retention.ms=..., cleanup.policy=compact, ...); repeat for more")
    t_describe = tsub.add_parser("describe", parents=[common], help="the topic on every cluster of the mapping",
                                 description="For every cluster of the mapping that has topic NAME: its "
                                             "partitions, the partitions each broker leads and the end offsets; "
                                             "and the routes that name NAME.",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    t_describe.add_argument("name", metavar="NAME")
    for p in (t_create, t_describe):
        p.add_argument("--json", action="store_true", help="print one JSON object")
    t_move = tsub.add_parser("move", parents=[common], help="move a topic to another cluster, losing nothing",
                             description="Move topic NAME from cluster C1 to C2 while apps produce and subscribe: "
                                         "create it on C2, let subscribers read both, switch producers, wait until "
                                         "C1 receives nothing more (the fence) and every consumer group has read C1 "
                                         "up to it, then let subscribers read C2 only. Each phase is recorded in "
                                         "etcd: run the command again after it stopped and it goes on where it "
                                         "was. Progress goes to stdout.",
                             epilog=EPILOG_MOVE, formatter_class=argparse.RawDescriptionHelpFormatter)
    t_move.add_argument("name", metavar="NAME")
    t_move.add_argument("--to", required=True, metavar="C2", help="the cluster to move the topic to")
    t_move.add_argument("--from", dest="source", metavar="C1",
                        help="the cluster to move it from (default: the one its producer route writes to)")
    t_move.add_argument("--abort", action="store_true",
                        help="undo a move that has not switched producers yet: both routes as they were")
    t_move.add_argument("--force", action="store_true",
                        help="move even when C2 has the topic with another partition count (keys change partition)")
    t_move.add_argument("--timeout", type=positive, default=3600, metavar="S",
                        help="give up waiting after S seconds (default 3600); the move stays where it is")
    t_move.add_argument("--json", action="store_true",
                        help="print each progress line as a JSON object: time, phase, message (one per line)")


EPILOG_MOVE = """examples:
  kafka-mesh topic move orders --to c2                 # from the cluster its producer route names
  kafka-mesh topic move orders --to c2 --timeout 600   # run it again to resume where it stopped
  kafka-mesh topic move orders --to c2 --abort         # before the producer switch only

The copy on the old cluster is left for the operator to delete once the move is done.
"""


def _move(args: argparse.Namespace, settings: ControlSettings) -> int:
    from sidecar.control.etcd import Etcd
    from sidecar.control.keys import Keys
    from sidecar.manage.move import Move

    def say(line: str) -> None:
        if args.json:       # the phase is what a line starts with: "switched: ...", "drain: ..."
            phase = line.split(":", 1)[0] if ":" in line.split(" ", 1)[0] else ""
            print(json.dumps({"time": time.time(), "phase": phase, "message": line}), flush=True)
        else:
            print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)

    async def go() -> None:
        async with Etcd(settings.etcd_endpoint) as etcd:
            move = Move(etcd, Keys(settings.namespace), say, args.timeout)
            if args.abort:
                await move.abort(args.name)
            else:
                await move.run(args.name, args.to, args.source, args.force)

    asyncio.run(go())
    return 0


def run(args: argparse.Namespace, settings: ControlSettings) -> int:
    from sidecar.control.etcd import Etcd
    from sidecar.control.keys import Keys
    from sidecar.errors import MappingError
    from sidecar.manage import topics
    from sidecar.manage.mapping import load
    from sidecar.mapping.model import Mapping, check_topic

    try:
        check_topic("topic", args.name)
    except MappingError as e:
        raise UsageError(str(e)) from None
    if args.topic_command == "move":
        return _move(args, settings)
    config = key_values(args.config, "a topic config") if args.topic_command == "create" else {}

    async def mapping() -> Mapping:
        async with Etcd(settings.etcd_endpoint) as etcd:
            return await load(etcd, Keys(settings.namespace))

    current = asyncio.run(mapping())
    if args.topic_command == "create":
        cluster = current.clusters.get(args.cluster)
        if cluster is None:
            known = ", ".join(sorted(current.clusters)) or "none"
            raise UsageError(f"no cluster {args.cluster!r} in namespace {settings.namespace} (registered: {known})")
        made = topics.create(cluster, args.name, args.partitions_per_broker, args.partitions, args.replication,
                             config)
        if args.json:
            print(json.dumps(made))
        else:
            leaders = ", ".join(f"broker {b}: {n}" for b, n in made["leaders"].items())
            print(f"created topic {args.name} on cluster {cluster.name}: {made['partitions']} partitions over "
                  f"{made['brokers']} broker(s), replication {made['replication']}; leaders {leaders}")
        return 0
    found, routes = topics.describe(current, args.name)
    if args.json:
        print(json.dumps({"topic": args.name, "revision": current.revision, "clusters": [f.to_json() for f in found],
                          "routes": routes}))
        return 0
    if not found:
        print(f"topic {args.name}: on no cluster of the mapping")
    for f in found:
        if f.error and not f.partitions:
            print(f"{f.cluster}: {f.error}")
            continue
        leaders = ", ".join(f"broker {b}: {n}" for b, n in sorted(f.leaders.items()))
        print(f"{f.cluster}: {f.partitions} partitions, leaders {leaders}; {sum(f.end_offsets.values())} records "
              f"(end offsets {', '.join(f'{p}:{o}' for p, o in sorted(f.end_offsets.items()))})"
              + (f"; {f.error}" if f.error else ""))
    producer = routes["producer"]
    print(f"producer route: {producer or 'none'}" + (f" -> {', '.join(routes['producer_sinks'])}" if producer else ""))
    print(f"consumer route: {', '.join(routes['consumer']) if routes['consumer'] else 'none'}; subscribers read "
          f"{', '.join(routes['read_from']) or 'nothing'}")
    return 0
