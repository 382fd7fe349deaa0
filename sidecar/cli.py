"""The `kafka-mesh` command. Thin: it parses arguments, builds settings, calls the modules that do the work, and
prints; every error is one line naming its cause."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from sidecar.commands import clusters as clusters_command
from sidecar.commands import router as router_command
from sidecar.commands import status as status_command
from sidecar.commands import topic as topic_command
from sidecar.commands.args import add_process_flags, whole
from sidecar.config import ControlSettings, DevSettings
from sidecar.errors import ConflictError, MappingError, MeshError, MoveError, UsageError

EPILOG_DEV = """examples:
  kafka-mesh dev up --clusters 3            # three one-broker clusters and etcd, in the background
  kafka-mesh dev up --clusters 2 --brokers-per-cluster 3 --json
  kafka-mesh dev status
  kafka-mesh dev down                       # stop them and remove their data

environment: KAFKA_MESH_STATE_DIR (where servers keep data and logs), KAFKA_MESH_CACHE_DIR (Kafka jars),
KAFKA_HOME (use an unpacked Kafka instead of Maven), ETCD_BIN, JAVA, MVN, KAFKA_MESH_BROKER_HEAP_MB (default 384)
"""

EPILOG_MAPPING = """examples:
  kafka-mesh mapping apply mapping.json --etcd http://127.0.0.1:2379     # atomic, at one etcd revision
  kafka-mesh mapping validate mapping.json                               # no etcd needed
  kafka-mesh mapping diff mapping.json --etcd http://127.0.0.1:2379      # what apply would change, and the revision
  kafka-mesh mapping show --etcd http://127.0.0.1:2379                   # what is in force, secrets redacted
  kafka-mesh mapping show --show-secrets --etcd ... > mapping.json       # the same, apply-able as it is
  KAFKA_MESH_ETCD=http://127.0.0.1:2379 kafka-mesh mapping show --json --namespace prod

a mapping file (README, "The mapping"; each section in the seed's own format):
  {"clusters": {"c1": {"bootstrap": "127.0.0.1:19092", "role": "fronting", "config": {"linger.ms": "5"}},
                "c2": {"bootstrap": "127.0.0.1:29092", "role": "consumer"}},
   "producer": {"t1, t2": {"where": [{"sink": "c1"}]},
                "__default__": {"where": [{"sink": "c1"}, {"sink": "c2"}]}},
   "consumer": {"foo": [{"vip": "c1"}, {"vip": "c2"}]}}
a section left out stays as it is in etcd; a section given replaces that section whole.

environment: KAFKA_MESH_ETCD (instead of --etcd), KAFKA_MESH_NAMESPACE (instead of --namespace; default "default")
"""


def _progress(msg: str) -> None:
    print(f"kafka-mesh: {msg}", file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """argparse's, with its refusals on one line (no usage block above them), like the command's own: the subcommand
    parsers are of this class too (add_subparsers makes them of their parent's)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kafka-mesh",
        description="kafka-mesh: use many Kafka clusters as one, through a per-host gRPC sidecar.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    dev = sub.add_parser("dev", help="a local sandbox of real Kafka clusters and etcd",
                         description="A local sandbox: real Apache Kafka clusters (KRaft) and one etcd on "
                                     "loopback ports, running in the background.",
                         epilog=EPILOG_DEV, formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = dev.add_subparsers(dest="dev_command", metavar="ACTION", required=True)
    d_up = dsub.add_parser("up", help="start the sandbox (or show the one running)", epilog=EPILOG_DEV,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Start N Kafka clusters and one etcd on free loopback ports, register the "
                                       "clusters in etcd, and return once every broker answers.")
    d_up.add_argument("--clusters", type=whole, default=3, metavar="N", help="Kafka clusters to start (default 3)")
    d_up.add_argument("--brokers-per-cluster", type=whole, default=1, metavar="B",
                      help="brokers in each cluster (default 1)")
    d_up.add_argument("--port-base", type=whole, default=None, metavar="PORT",
                      help="use PORT, PORT+1, ... instead of free ports chosen by the system")
    d_up.add_argument("--timeout", type=float, default=180.0, metavar="SECONDS",
                      help="give up when the servers are not ready by then (default 180)")
    d_up.add_argument("--json", action="store_true", help="print one JSON object describing the sandbox")
    d_st = dsub.add_parser("status", help="show what the sandbox runs")
    d_st.add_argument("--json", action="store_true", help="print one JSON object")
    dsub.add_parser("down", help="stop the sandbox and remove its data")
    dsub.add_parser("fetch", help="download the Kafka broker jars now (dev up does it on first use)")
    _add_mapping_parser(sub)
    clusters_command.add_parser(sub, _etcd_options())
    topic_command.add_parser(sub, _etcd_options())
    status_command.add_parser(sub, _etcd_options())
    _add_sidecar_parser(sub)
    router_command.add_parser(sub)
    return parser


def _etcd_options() -> argparse.ArgumentParser:
    """--etcd and --namespace, shared by the commands that talk to etcd."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--etcd", metavar="URL", default=None,
                        help="etcd endpoint, http://HOST:PORT (default: $KAFKA_MESH_ETCD)")
    common.add_argument("--namespace", metavar="NS", default=None,
                        help="mapping namespace (default: $KAFKA_MESH_NAMESPACE, else default)")
    return common


def _add_mapping_parser(sub: Any) -> None:
    mapping = sub.add_parser("mapping", help="apply and show the topic-to-cluster mapping in etcd",
                             description="The mapping: Kafka clusters, producer routes and consumer routes, kept in "
                                         "etcd under /kafka-mesh/NAMESPACE/; each change takes effect at one etcd "
                                         "revision.",
                             epilog=EPILOG_MAPPING, formatter_class=argparse.RawDescriptionHelpFormatter)
    msub = mapping.add_subparsers(dest="mapping_command", metavar="ACTION", required=True)
    etcd = _etcd_options()

    def action(name: str, help: str, description: str, parents: tuple[argparse.ArgumentParser, ...] = ()) -> Any:
        return msub.add_parser(name, help=help, description=description, parents=list(parents), epilog=EPILOG_MAPPING,
                               formatter_class=argparse.RawDescriptionHelpFormatter)

    m_apply = action("apply", "validate a mapping file and make it the mapping in force, atomically",
                              description="Validate FILE against what etcd holds and make the sections it has the "
                                          "mapping in force, at one etcd revision: sidecars see all of the change "
                                          "or none of it. Routes that FILE no longer has are removed; sections FILE "
                                          "leaves out stay as they are. Any size fits etcd's default request limits. "
                                          "Exit status 3 when the mapping changed under the apply (another "
                                          "operator, or --expect-revision).", parents=(etcd,))
    m_apply.add_argument("file", metavar="FILE", help="a JSON mapping document")
    m_apply.add_argument("--expect-revision", metavar="N", type=int, default=None,
                         help="apply only if the mapping in force is still that of revision N (what `show` or the "
                              "last `apply` printed); else exit 3 naming the revision found")
    m_validate = action("validate", "check a mapping file without etcd",
                                 description="Check FILE on its own: JSON syntax (with the line of an error), each "
                                             "section's form, topic names, and, when FILE has a clusters section, "
                                             "that every sink and vip is one of its clusters (without one, they "
                                             "are checked against etcd by `diff` and `apply`). Exit status 2 and "
                                             "the first problem, naming its key, when it is not valid.")
    m_validate.add_argument("file", metavar="FILE", help="a JSON mapping document")
    m_validate.add_argument("--json", action="store_true", help="print one JSON object")
    m_diff = action("diff", "print what `apply FILE` would change, entry by entry",
                             description="Check FILE as `apply` does and print, entry by entry, what applying it "
                                         "would add (+), remove (-) or change (~), then (on stderr) the revision "
                                         "of the mapping it was compared with: pass it to `apply "
                                         "--expect-revision` so that the apply fails if the mapping changed in "
                                         "between. Secret cluster settings print as ***. Writes nothing.",
                    parents=(etcd,))
    m_diff.add_argument("file", metavar="FILE", help="a JSON mapping document")
    m_show = action("show", "print the mapping in force and its etcd revisions",
                             description="Print the mapping in force as a JSON document (one consistent read). Its "
                                         "revision (what `apply` printed, and what --expect-revision takes) goes to "
                                         "stderr. Secret cluster settings (sasl."
                                         "password, ssl.key.pem, any *.password or *.secret) print as ***, "
                                         "which `apply` refuses; with --show-secrets the output can be applied "
                                         "again as it is.", parents=(etcd,))
    for p in (m_apply, m_diff, m_show):
        p.add_argument("--json", action="store_true", help="print one JSON object")
    m_show.add_argument("--show-secrets", action="store_true",
                        help="print secret cluster settings in clear (default: ***)")


EPILOG_SIDECAR = """examples:
  kafka-mesh sidecar --etcd http://127.0.0.1:2379
  kafka-mesh sidecar --etcd http://127.0.0.1:2379 --namespace team-a --listen unix:/run/kafka-mesh.sock
  kafka-mesh sidecar --mapping mapping.json --listen 127.0.0.1:7420     # no etcd: serve one mapping file

Every setting can also come from a TOML file (--config FILE, same names with underscores) or from the environment
(KAFKA_MESH_ETCD, KAFKA_MESH_NAMESPACE, KAFKA_MESH_LISTEN=a,b, KAFKA_MESH_MAPPING_FILE, ...); a flag beats the
environment, which beats the file. SIGTERM: stop accepting streams, answer the batches in flight, exit 0.
"""


def _add_sidecar_parser(sub: Any) -> None:
    p = sub.add_parser("sidecar", help="run the per-host sidecar (the Produce API over gRPC)",
                       description="Serve the kafkamesh.v1.Mesh gRPC API on a Unix socket and 127.0.0.1, routing "
                                   "each topic to the clusters the mapping in etcd names; mapping changes apply live.",
                       epilog=EPILOG_SIDECAR, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--etcd", metavar="URL", help="etcd endpoint, http://HOST:PORT")
    p.add_argument("--namespace", metavar="NS", help="mapping namespace (default: default)")
    p.add_argument("--listen", metavar="ADDR", action="append", default=[],
                   help="unix:PATH or HOST:PORT; repeat for several (default: a Unix socket under $XDG_RUNTIME_DIR "
                        "and 127.0.0.1:7420)")
    p.add_argument("--socket-mode", metavar="MODE",
                   help="the Unix socket's permissions, octal: 600 (default, this user only) or 660 (its group too)")
    p.add_argument("--config", metavar="FILE", help="a TOML file of settings")
    p.add_argument("--mapping", dest="mapping_file", metavar="FILE", help="serve this mapping file instead of etcd")
    p.add_argument("--host-id", metavar="NAME", help="this sidecar's name in etcd's status/ (default: host name)")
    p.add_argument("--cache-dir", metavar="DIR", help="where the last applied mapping is cached")
    p.add_argument("--max-inflight-bytes", metavar="N", help="per stream: stop reading past this (default 64 MiB)")
    p.add_argument("--memory-budget-bytes", metavar="N",
                   help="the process's memory budget; Produce requests in flight over all streams hold at most half "
                        "(default: a quarter of the host's memory, 512 MiB-8 GiB)")
    p.add_argument("--delivery-timeout-ms", metavar="MS", help="fail a record not acknowledged by then (default 60000)")
    p.add_argument("--max-timestamp-ahead-ms", metavar="MS",
                   help="fail a record timestamped further ahead of the clock (default 3600000, Kafka's own default "
                        "limit; 0: no check)")
    p.add_argument("--topic-checks", action=argparse.BooleanOptionalAction, default=None,
                   help="fail alone a record its topic's config makes the broker refuse (no key on a compacted "
                        "topic, a timestamp outside the topic's bounds, over its max.message.bytes), which the "
                        "broker would refuse with other apps' records of its batch; needs DescribeConfigs on the "
                        "topics (default: on)")
    p.add_argument("--shutdown-grace-s", metavar="S", help="on SIGTERM, time for in-flight batches (default 30)")
    p.add_argument("--commit-interval-ms", metavar="MS",
                   help="Subscribe: commit acked offsets this often; a sidecar killed with -9 delivers again what "
                        "was acked in the last interval (default 1000)")
    p.add_argument("--drain-timeout-s", metavar="S",
                   help="Subscribe: when the mapping drops a cluster from a stream, wait this long for the acks of "
                        "what it sent before committing and closing (default 10)")
    p.add_argument("--status-ttl-s", metavar="S",
                   help="the lease of this sidecar's status entry in etcd; a sidecar paused or cut off from etcd "
                        "for longer acknowledges nothing it routed before (default 10)")
    p.add_argument("--etcd-timeout-s", metavar="S",
                   help="an etcd request's timeout, and how long Produce requests wait for the lease to come back "
                        "before the sidecar routes by the mapping it has (default 5)")
    add_process_flags(p, "README, \"Metrics\"; ")
    p.add_argument("--metrics-topics", metavar="N",
                   help="the metrics label records by topic for the first N topics the mapping's producer routes "
                        "name; every other topic counts under __default__ (default 1000; 0: none by name)")
    p.add_argument("--http-listen", metavar="HOST:PORT",
                   help="serve HTTP produce at http://HOST:PORT/v1/topics/TOPIC/records (README, \"HTTP produce\"; "
                        "default: off; :PORT means 127.0.0.1)")
    p.add_argument("--http-max-body-bytes", metavar="N", help="the largest HTTP produce body (default 16 MiB)")


def _sidecar(args: argparse.Namespace) -> int:
    from sidecar import memory

    memory.limit_arenas()           # before grpc's and librdkafka's threads exist
    from sidecar import logs, server
    from sidecar.config import SidecarSettings

    settings = SidecarSettings.build(vars(args))
    logs.setup(settings.log_level)
    return server.run(settings)


def _print_sandbox(doc: dict[str, Any]) -> None:
    etcd = doc["etcd"]
    def state(ok: bool) -> str:
        return "running" if ok else "NOT RUNNING"

    print(f"etcd      {etcd['endpoint']:<28} {state(etcd.get('running', True))}  "
          f"(pid {etcd['pid']}, log {etcd['log']})")
    for c in doc["clusters"]:
        print(f"{c['name']:<9} {c['bootstrap']:<28} {state(c.get('running', True))}  "
              f"({len(c['brokers'])} broker(s); logs under {doc['state_dir']}/{c['name']})")
    print(f"namespace {doc['namespace']}; clusters registered in its mapping (kafka-mesh mapping show)")


def _dev(args: argparse.Namespace, settings: DevSettings) -> int:
    from sidecar.dev import sandbox

    if args.dev_command == "up":
        box, started = sandbox.up(settings, clusters=args.clusters, brokers_per_cluster=args.brokers_per_cluster,
                                  port_base=args.port_base, progress=_progress, timeout=args.timeout)
        if not started:
            _progress(f"a sandbox is already running in {settings.state_dir}; not starting another")
        doc = box.to_json()
        if args.json:
            print(json.dumps(doc))
        else:
            _print_sandbox(doc)
        return 0
    if args.dev_command == "status":
        current = sandbox.status(settings)
        if current is None:
            if args.json:
                print(json.dumps({"running": False, "state_dir": str(settings.state_dir)}))
            else:
                print(f"no sandbox is running (state dir {settings.state_dir})")
            return 0
        if args.json:
            print(json.dumps(current))
        else:
            _print_sandbox(current)
        return 0 if current["running"] else 1
    if args.dev_command == "fetch":
        from sidecar.dev import kafka_dist

        print(kafka_dist.classpath(settings, _progress))
        return 0
    if args.dev_command == "down":
        if not sandbox.down(settings, progress=_progress):
            print(f"no sandbox is running (state dir {settings.state_dir}); nothing to stop")
        else:
            print("sandbox stopped")
        return 0
    raise AssertionError(args.dev_command)


def _counted(counts: dict[str, int]) -> str:
    """A mapping's counts as printed; router rules only when there are some (most mappings have none)."""
    text = (f"clusters: {counts['clusters']}, producer routes: {counts['producer_routes']}, "
            f"consumer routes: {counts['consumer_routes']}")
    return f"{text}, router rules: {counts['router_rules']}" if counts["router_rules"] else text


def _validate(args: argparse.Namespace) -> int:
    from sidecar.mapping.document import read_document
    from sidecar.mapping.model import Mapping

    doc = read_document(args.file)
    try:
        checked = Mapping.from_document(doc, check_references="clusters" in doc)
    except MappingError as e:
        raise MappingError(f"{args.file}: {e}") from None
    counts = checked.counts()
    if args.json:
        print(json.dumps({"file": args.file, "valid": True, "references_checked": "clusters" in doc, **counts}))
    else:
        print(f"{args.file}: valid ({_counted(counts)})")
        if "clusters" not in doc:
            _progress("no clusters section: the clusters the routes name are checked against etcd by `diff` "
                      "and `apply`")
    return 0


def _mapping(args: argparse.Namespace, settings: ControlSettings) -> int:
    from sidecar.control.etcd import Etcd
    from sidecar.control.keys import Keys
    from sidecar.manage import mapping as mapping_mod
    from sidecar.mapping.document import read_document
    from sidecar.mapping.model import Mapping

    keys = Keys(settings.namespace)
    if args.mapping_command == "apply":
        doc = read_document(args.file)      # a bad file is refused before etcd is contacted

        async def apply() -> Mapping:
            async with Etcd(settings.etcd_endpoint) as etcd:
                return await mapping_mod.apply_mapping(etcd, keys, doc, args.expect_revision)

        applied = asyncio.run(apply())
        counts = applied.counts()
        if args.json:
            print(json.dumps({"revision": applied.revision, "namespace": settings.namespace, **counts}))
        else:
            print(f"applied mapping at revision {applied.revision} ({_counted(counts)})")
        return 0
    if args.mapping_command == "diff":
        doc = read_document(args.file)

        async def diff() -> tuple[list[mapping_mod.Difference], mapping_mod.Plan]:
            async with Etcd(settings.etcd_endpoint) as etcd:
                return await mapping_mod.differences(etcd, keys, doc)

        changes, plan = asyncio.run(diff())
        if args.json:
            print(json.dumps({"revision": plan.read_at, "changes": [
                {"op": c.op, "section": c.section, "key": c.key, "before": c.before, "after": c.after}
                for c in changes]}))
            return 0
        for c in changes:
            before, after = json.dumps(c.before, sort_keys=True), json.dumps(c.after, sort_keys=True)
            what = {"+": after, "-": before, "~": f"{before} -> {after}"}[c.op]
            print(f"{c.op} {c.section}.{c.key}  {what}")
        _progress(f"{len(changes)} change(s) against the mapping at revision {plan.read_at}; apply with: "
                  f"kafka-mesh mapping apply {args.file} --expect-revision {plan.read_at}" if changes else
                  f"no changes against the mapping at revision {plan.read_at}")
        return 0
    if args.mapping_command == "show":
        async def load() -> Mapping:
            async with Etcd(settings.etcd_endpoint) as etcd:
                return await mapping_mod.load(etcd, keys)

        current = asyncio.run(load())
        doc = current.to_document(redact=not args.show_secrets)
        if args.json:
            print(json.dumps({"revision": current.revision, "mapping": doc}))
        else:
            print(json.dumps(doc, indent=2))
            _progress(f"mapping of namespace {settings.namespace} at revision {current.revision} (under "
                      f"{keys.root})" if current.revision else
                      f"no mapping applied yet in namespace {settings.namespace} (under {keys.root})")
        return 0
    raise AssertionError(args.mapping_command)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "dev":
            return _dev(args, DevSettings.from_env())
        if args.command == "mapping" and args.mapping_command == "validate":
            return _validate(args)
        if args.command == "mapping":
            return _mapping(args, ControlSettings.build(etcd=args.etcd, namespace=args.namespace))
        if args.command == "clusters":
            return clusters_command.run(args, ControlSettings.build(etcd=args.etcd, namespace=args.namespace))
        if args.command == "topic":
            return topic_command.run(args, ControlSettings.build(etcd=args.etcd, namespace=args.namespace))
        if args.command == "status":
            return status_command.run(args, ControlSettings.build(etcd=args.etcd, namespace=args.namespace))
        if args.command == "sidecar":
            return _sidecar(args)
        if args.command == "router":
            return router_command.run(args)
    except ConflictError as e:
        print(f"kafka-mesh: error: {e}", file=sys.stderr)
        return 3
    except MoveError as e:
        print(f"kafka-mesh: error: {e}", file=sys.stderr)
        return 4
    except (UsageError, MappingError) as e:
        print(f"kafka-mesh: error: {e}", file=sys.stderr)
        return 2
    except (MeshError, ValueError) as e:
        print(f"kafka-mesh: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kafka-mesh: interrupted", file=sys.stderr)
        return 130
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
