"""`kafka-mesh status`: the live sidecars and routers of a namespace and what each has applied and does, and which
clusters answer."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from sidecar.config import ControlSettings

EPILOG = """examples:
  kafka-mesh status                       # once
  kafka-mesh status --watch 2             # every 2 seconds, until Ctrl-C
  kafka-mesh status --json

A sidecar or router process is listed while its status entry's lease lives (it is refreshed every few seconds; one
that died goes once the lease expires). BEHIND marks one that has not applied the mapping's current revision yet.
A router shows each rule's records in, out (sent to its sinks; again when read again), filtered and dead-lettered,
and per source cluster its partitions, the records left to copy (lag), the partitions paused because a target holds
them back, and those being read again because a target refused a record (with the cluster, topic and error).
environment: KAFKA_MESH_ETCD (instead of --etcd), KAFKA_MESH_NAMESPACE (instead of --namespace; default "default")
"""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0.5 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"expected 0.5 to 3600 seconds, got {value:g}")
    return value


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status", parents=[common],
                       help="the live sidecars and routers, the revision each applied, the clusters",
                       description="Every live sidecar of the namespace (from its status entry): the mapping "
                                   "revision it applied, its streams and the records it holds unacknowledged per "
                                   "cluster; and whether each cluster of the mapping answers.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--watch", nargs="?", const=2.0, type=_seconds, metavar="SECONDS",
                   help="print again every SECONDS (default 2) until interrupted")
    p.add_argument("--json", action="store_true", help="print one JSON object (one per line with --watch)")


def _lines(revision: int, entries: list[dict[str, Any]], reach: list[Any]) -> list[str]:
    rows = [("SIDECAR", "REVISION", "STREAMS", "IN FLIGHT", "VERSION", "UP")]
    now = time.time()
    for e in entries:
        if "error" in e:
            rows.append((str(e.get("host", "?")), "?", "?", e["error"], "", ""))
            continue
        applied = int(e.get("revision", -1))
        flight = ", ".join(f"{c}:{n}" for c, n in sorted((e.get("in_flight") or {}).items())) or "-"
        up = max(0, int(now - int(e.get("started", now))))
        rows.append((str(e.get("host", "?")), f"{applied}" + ("" if applied >= revision else " BEHIND"),
                     str(e.get("streams", 0)), flight, str(e.get("version", "?")), f"{up // 60}m{up % 60:02d}s"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out.append("")
    for r in reach:
        state = f"reachable, {r.brokers} broker(s)" if r.brokers else f"UNREACHABLE: {r.error}"
        out.append(f"cluster {r.cluster} ({r.bootstrap}): {state}")
    return out


def _router_lines(revision: int, entries: list[dict[str, Any]]) -> list[str]:
    """Each live router process: its rules' counts and, per source cluster, its partitions and lag."""
    out: list[str] = []
    for e in entries:
        if "error" in e:
            out.append(f"router ? ({e.get('instance', '?')}): {e['error']}")
            continue
        applied = int(e.get("revision", -1))
        out.append(f"router {e.get('router', '?')} instance {e.get('instance', '?')} (pid {e.get('pid', '?')}): "
                   f"revision {applied}{'' if applied >= revision else ' BEHIND'}, group {e.get('group', '?')}")
        for rule, r in sorted((e.get("rules") or {}).items()):
            out.append(f"  rule {rule}: {', '.join(r.get('topics', []))} from {', '.join(r.get('from', []))} to "
                       f"{', '.join(r.get('where', []))}: in {r.get('in', 0):,}, out {r.get('out', 0):,}, filtered "
                       f"{r.get('filtered', 0):,}, dead-lettered {r.get('dead_lettered', 0):,}")
        for source, s in sorted((e.get("sources") or {}).items()):
            lag = s.get("lag") or {}
            worst = ", ".join(f"{p}:{n:,}" for p, n in list(lag.items())[:4])
            line = (f"  source {source}: {s.get('assigned', 0)} partition(s), lag {s.get('lag_total', 0):,}"
                    + (f" (most: {worst})" if worst and s.get("lag_total") else ""))
            if s.get("paused"):
                line += f", PAUSED {', '.join(s['paused'][:8])}" + (" ..." if len(s["paused"]) > 8 else "")
            if s.get("down"):
                line += f", UNREACHABLE: {s['down']}"
            if s.get("skipped"):
                line += f", SKIPPED {s['skipped']} error(s) instead of records (last: {s.get('skipped_last', '')})"
            if s.get("error"):
                line += f", FAILED: {s['error']}"
            out.append(line)
            for part, why in sorted((s.get("failing") or {}).items())[:4]:
                out.append(f"    {part} retrying: {why}")
    return out


def run(args: argparse.Namespace, settings: ControlSettings) -> int:
    from sidecar.control.etcd import Etcd
    from sidecar.control.keys import Keys
    from sidecar.manage import status

    keys = Keys(settings.namespace)

    async def once(etcd: Etcd) -> None:
        snap = await status.snapshot(etcd, keys)
        revision = snap.mapping.revision
        if args.json:
            print(json.dumps({"namespace": settings.namespace, "revision": revision, "sidecars": snap.sidecars,
                              "routers": snap.routers,
                              "clusters": [{"name": r.cluster, "bootstrap": r.bootstrap, "brokers": r.brokers,
                                            **({"error": r.error} if r.error else {})} for r in snap.reach]}),
                  flush=True)
            return
        print(f"namespace {settings.namespace}, mapping revision {revision}, {len(snap.sidecars)} live sidecar(s), "
              f"{len(snap.routers)} live router process(es)"
              + (f", at {time.strftime('%H:%M:%S')}" if args.watch else ""))
        print("\n".join(_lines(revision, snap.sidecars, snap.reach)), flush=True)
        if snap.routers:
            print("\n".join(["", *_router_lines(revision, snap.routers)]), flush=True)

    async def main() -> None:
        async with Etcd(settings.etcd_endpoint) as etcd:
            await once(etcd)
            while args.watch:
                await asyncio.sleep(args.watch)
                if not args.json:
                    print("", flush=True)
                await once(etcd)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("", file=sys.stderr)
    return 0
