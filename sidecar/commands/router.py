"""`kafka-mesh router`: run a router process (sidecar/router/service.py)."""

from __future__ import annotations

import argparse
from typing import Any

from sidecar.commands.args import add_process_flags

EPILOG = """examples:
  kafka-mesh router --etcd http://127.0.0.1:2379                 # runs the rules of router "main"
  kafka-mesh router --etcd http://127.0.0.1:2379 --name eu       # runs the rules whose "router" is "eu"
  kafka-mesh router --mapping mapping.json --name main           # a mapping file instead of etcd

Processes started with the same --name (on one host or many) share the source partitions: they form one consumer
group per source cluster (kafka-mesh.router.NAMESPACE.NAME), and one takes over what another leaves. A source offset
is committed only once every target acknowledged the record and every record before it: killed, a router copies again
at most what it had in flight. `kafka-mesh status` shows the live routers, their rules' counts and their lag.
environment: KAFKA_MESH_ETCD, KAFKA_MESH_NAMESPACE, KAFKA_MESH_CACHE_DIR, KAFKA_MESH_LOG_LEVEL (instead of the flags)
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("router", help="copy topics from fronting to consumer clusters by the mapping's router rules",
                       description="Copy every topic of the mapping's router rules (those of this router's --name) "
                                   "from their source clusters to their sink clusters, through the rules' steps, "
                                   "at least once; rule changes apply live.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--etcd", metavar="URL", help="etcd endpoint, http://HOST:PORT")
    p.add_argument("--namespace", metavar="NS", help="mapping namespace (default: default)")
    p.add_argument("--name", metavar="R", help="run the rules whose \"router\" is R (default: main); also names the "
                                               "consumer group")
    p.add_argument("--mapping", dest="mapping_file", metavar="FILE", help="route by this mapping file instead of etcd")
    p.add_argument("--instance", metavar="ID", help="this process's name in `kafka-mesh status` (default: host-pid)")
    p.add_argument("--cache-dir", metavar="DIR", help="where the last applied mapping is cached")
    p.add_argument("--commit-interval-ms", metavar="MS",
                   help="commit acknowledged source offsets this often; a router killed with -9 copies again at most "
                        "this interval's records and what it had in flight (default 1000)")
    p.add_argument("--max-inflight-records", metavar="N",
                   help="per source partition: pause reading it past this many records not yet acknowledged by "
                        "every target (default 20000)")
    p.add_argument("--max-inflight-bytes", metavar="N",
                   help="per source partition: the same bound in bytes of keys and values (default 16 MiB)")
    p.add_argument("--drain-timeout-s", metavar="S",
                   help="at stop: wait this long for the records in flight before committing (default 10)")
    p.add_argument("--status-ttl-s", metavar="S", help="the lease of this process's status entry (default 10)")
    p.add_argument("--etcd-timeout-s", metavar="S", help="an etcd request's timeout (default 5)")
    add_process_flags(p, "")


def run(args: argparse.Namespace) -> int:
    from sidecar import memory

    memory.limit_arenas()           # before librdkafka's threads exist
    from sidecar import logs
    from sidecar.config import RouterSettings
    from sidecar.router import service

    settings = RouterSettings.build(vars(args))
    logs.setup(settings.log_level)
    return service.run(settings)
