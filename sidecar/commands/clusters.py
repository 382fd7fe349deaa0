"""`kafka-mesh clusters add|list|remove`: the cluster registry of a namespace (sidecar/manage/clusters.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from sidecar.commands.args import key_values
from sidecar.config import ControlSettings
from sidecar.errors import UsageError

EPILOG = """examples:
  kafka-mesh clusters add c4 --bootstrap 127.0.0.1:39092,127.0.0.1:39093 --role consumer --config linger.ms=5
  kafka-mesh clusters add c4 --bootstrap 127.0.0.1:39092 --replace       # redefine it
  kafka-mesh clusters list --json
  kafka-mesh clusters remove c4                                          # refused while a route names it

Secret settings (sasl.password, ssl.key.password, any *.password or *.secret) are printed as ***.
environment: KAFKA_MESH_ETCD (instead of --etcd), KAFKA_MESH_NAMESPACE (instead of --namespace; default "default")
"""


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    clusters = sub.add_parser("clusters", help="register, list and remove Kafka clusters",
                              description="The cluster registry: the Kafka clusters of a namespace's mapping. Each "
                                          "change is a mapping change, at one etcd revision.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    csub = clusters.add_subparsers(dest="clusters_command", metavar="ACTION", required=True)
    c_add = csub.add_parser("add", parents=[common], help="register a cluster",
                            description="Register a Kafka cluster: where it is, its role, and librdkafka settings "
                                        "for the sidecars' producers and consumers of it (checked here, as "
                                        "librdkafka would take them).",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c_add.add_argument("name", metavar="NAME", help="cluster name: 1-128 of [A-Za-z0-9._-]")
    c_add.add_argument("--bootstrap", required=True, metavar="HOST:PORT[,...]", help="its bootstrap servers")
    c_add.add_argument("--role", choices=("fronting", "consumer"), default="fronting",
                       help="fronting (producers write to it; the default) or consumer (fed by a router)")
    c_add.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                       help="a librdkafka property for this cluster's clients (repeat for more)")
    c_add.add_argument("--replace", action="store_true", help="redefine a cluster already registered")
    c_list = csub.add_parser("list", parents=[common], help="list the registered clusters and the routes naming them",
                             epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c_rm = csub.add_parser("remove", parents=[common], help="take a cluster out of the registry",
                           description="Take a cluster out of the registry; refused while a producer or consumer "
                                       "route names it (move its topics first).",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c_rm.add_argument("name", metavar="NAME")
    for p in (c_add, c_list, c_rm):
        p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace, settings: ControlSettings) -> int:
    import meshcore
    from sidecar.control.etcd import Etcd
    from sidecar.control.keys import Keys
    from sidecar.errors import MappingError
    from sidecar.manage import clusters as registry
    from sidecar.mapping.model import Cluster, check_name

    keys = Keys(settings.namespace)
    if args.clusters_command == "add":
        check_name("cluster", args.name)
        config = key_values(args.config, "a librdkafka property")
        try:
            cluster = Cluster.parse(args.name, {"bootstrap": args.bootstrap, "role": args.role, "config": config})
            meshcore.check_config(config)
        except (MappingError, meshcore.ConfigError) as e:
            raise UsageError(f"cluster {args.name!r}: {e}") from None

        async def add() -> int:
            async with Etcd(settings.etcd_endpoint) as etcd:
                return (await registry.add(etcd, keys, cluster, args.replace)).revision

        revision = asyncio.run(add())
        if args.json:
            print(json.dumps({"revision": revision, "namespace": settings.namespace, "name": cluster.name,
                              **cluster.to_json(redact=True)}))
        else:
            print(f"registered cluster {cluster.name} (bootstrap {cluster.bootstrap}, role {cluster.role}) at "
                  f"mapping revision {revision}")
        return 0
    if args.clusters_command == "remove":
        async def remove() -> int:
            async with Etcd(settings.etcd_endpoint) as etcd:
                return (await registry.remove(etcd, keys, args.name)).revision

        revision = asyncio.run(remove())
        if args.json:
            print(json.dumps({"revision": revision, "namespace": settings.namespace, "removed": args.name}))
        else:
            print(f"removed cluster {args.name} at mapping revision {revision}")
        return 0
    if args.clusters_command == "list":
        async def listing() -> tuple[list[registry.Registered], int]:
            async with Etcd(settings.etcd_endpoint) as etcd:
                return await registry.list_clusters(etcd, keys)

        found, revision = asyncio.run(listing())
        if args.json:
            print(json.dumps({"revision": revision, "namespace": settings.namespace, "clusters": [
                {"name": r.cluster.name, **r.cluster.to_json(redact=True),
                 "producer_routes": len(r.producer_routes), "consumer_routes": len(r.consumer_routes)}
                for r in found]}))
            return 0
        rows = [("NAME", "ROLE", "BOOTSTRAP", "ROUTES", "CONFIG")] + [
            (r.cluster.name, r.cluster.role, r.cluster.bootstrap,
             f"{len(r.producer_routes)} producer, {len(r.consumer_routes)} consumer",
             " ".join(f"{k}={v}" for k, v in sorted(r.cluster.to_json(redact=True)["config"].items())) or "-")
            for r in found]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
        print(f"kafka-mesh: {len(found)} cluster(s) in namespace {settings.namespace}, mapping revision {revision}",
              file=sys.stderr)
        return 0
    raise AssertionError(args.clusters_command)
