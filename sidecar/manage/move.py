"""`kafka-mesh topic move`: move a topic from cluster C1 to C2 without losing a record (README, "Moving a topic").

Phases, each recorded in etcd under /kafka-mesh/<ns>/moves/<topic> before the next starts, so that the command run
again after it died resumes where it stopped:

    created    the topic exists on C2 with C1's partition count
    reading    consumer route [C1, C2] applied by every live sidecar (subscribers read both)
    switching  saved just before the producer route names C2: from here on the move cannot be aborted
    switched   producer route with C2 in C1's place applied by every live sidecar, and each has nothing left in
               flight to C1 (or had time to deliver or fail it)
    fenced     C1's end offsets for the topic stayed still for a quiet window (the fence)
    drained    every consumer group with offsets for the topic on C1 committed the fence
    done       consumer route without C1; C1's copy of the topic is left for the operator to delete

`--abort` before `switching` puts both routes back as they were; from it on, it is refused: records may be on C2.
One command at a time runs (or aborts) a topic's move: it holds a lock under a lease in etcd (move-locks/<topic>),
so a second is refused, and a command killed holds the move for at most LOCK_TTL_S.

Runs on the caller's event loop; the Kafka calls (confluent-kafka's AdminClient) run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sidecar.control.etcd import Etcd
from sidecar.control.keys import Keys
from sidecar.errors import MoveError, UsageError
from sidecar.manage import drain, status, topics
from sidecar.manage.mapping import edit, load
from sidecar.mapping.model import DEFAULT_ROUTE, Mapping, ProducerRoute

#: "switching" is saved before the producer route is written: from then on, records may be acknowledged on the
#: target, so the move can no longer be aborted.
PHASES = ("created", "reading", "switching", "switched", "fenced", "drained", "done")
#: How long C1's end offsets must stay still before the move trusts that nothing writes there any more.
QUIET_S = 5.0
#: How often the waits look again.
POLL_S = 0.5


@dataclass
class State:
    topic: str
    source: str
    target: str
    phase: str = ""
    partitions: int = 0
    producer_key: str | None = None           # the topic's own producer route before the move (None: none)
    producer_before: Any = None                # its value then
    consumer_before: Any = None                # the topic's consumer route then (None: none)
    fence: dict[str, int] = field(default_factory=dict)     # partition -> C1's end offset, once fenced
    revisions: dict[str, int] = field(default_factory=dict)
    started: float = 0.0

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> State:
        return cls(**json.loads(raw))


def key(keys: Keys, topic: str) -> str:
    return f"{keys.root}moves/{topic}"


def lock_key(keys: Keys, topic: str) -> str:
    """Held, under a lease, by the one command running (or aborting) the move of topic."""
    return f"{keys.root}move-locks/{topic}"


#: The lock's lease: a command killed holds its move for at most this long.
LOCK_TTL_S = 10


Progress = Callable[[str], None]


class Move:
    def __init__(self, etcd: Etcd, keys: Keys, progress: Progress, timeout_s: float) -> None:
        self._etcd = etcd
        self._keys = keys
        self._say = progress
        self._deadline = time.monotonic() + timeout_s

    # -- the state in etcd --------------------------------------------------------------------------------------

    async def _read(self, topic: str) -> tuple[State | None, int]:
        got = await self._etcd.get(key(self._keys, topic))
        return (None, 0) if got is None else (State.decode(got[0]), got[1])

    async def _save(self, state: State, expect: int) -> int:
        revision = await self._etcd.swap(key(self._keys, state.topic), state.encode(), expect)
        if revision is None:
            raise MoveError(f"another move of topic {state.topic} changed its state meanwhile; only one may run")
        return revision

    # -- mapping edits ------------------------------------------------------------------------------------------

    async def _edit(self, what: str, change: Callable[[Mapping], dict[str, Any]]) -> int:
        """Apply the sections change makes of the mapping in force; returns the revision."""
        applied = await edit(self._etcd, self._keys, change)
        self._say(f"{what}: mapping revision {applied.revision}")
        return applied.revision

    def _timed_out(self) -> bool:
        return time.monotonic() > self._deadline

    async def _until(self, check: Callable[[], Awaitable[tuple[str | None, str, str]]]) -> None:
        """Poll check until it says done: check gives (the line saying it is done, or None; the progress line,
        printed when it changes; the error when time is up)."""
        last = ""
        while True:
            done, line, failure = await check()
            if done is not None:
                self._say(done)
                return
            if line != last:
                self._say(line)
                last = line
            if self._timed_out():
                raise MoveError(failure)
            await asyncio.sleep(POLL_S)

    async def _wait_applied(self, revision: int, why: str) -> None:
        """Until every live sidecar applied revision."""
        async def check() -> tuple[str | None, str, str]:
            entries = await status.sidecars(self._etcd, self._keys)
            late = status.behind(entries, revision)
            return (None if late else f"{why}: all {len(entries)} live sidecar(s) applied revision {revision}",
                    f"{why}: waiting for {len(late)} of {len(entries)} sidecar(s) to apply revision {revision}: "
                    f"{', '.join(late[:5])}{' ...' if len(late) > 5 else ''}",
                    f"{why}: sidecar(s) {', '.join(late)} did not apply revision {revision} in time; run the "
                    "command again to go on waiting")

        await self._until(check)

    async def _wait_flushed(self, cluster: str, revision: int, since: float) -> None:
        """Until no live sidecar has a batch in flight that was routed before revision (the producer switch,
        written at `since`): each reports the oldest revision it still has in flight, in an entry that applied
        revision. A sidecar that does not report it (an older version) must report nothing in flight for cluster in
        an entry written after since. Either way, a sidecar's delivery timeout after the switch its batches are
        delivered or failed."""
        def flushed(e: dict[str, Any]) -> bool:
            if "oldest_in_flight" in e:
                oldest = e["oldest_in_flight"]
                return int(e.get("revision", -1)) >= revision and (oldest is None or int(oldest) >= revision)
            return float(e.get("at", 0)) > since and not (e.get("in_flight") or {}).get(cluster)

        async def check() -> tuple[str | None, str, str]:
            entries = await status.sidecars(self._etcd, self._keys)
            now = time.time()
            late = sorted(str(e.get("host", "?")) for e in entries
                          if not flushed(e) and now - since < int(e.get("delivery_timeout_ms", 60_000)) / 1000 + 1)
            return (None if late else f"switched: no sidecar has records in flight routed before revision {revision}",
                    f"switched: waiting for {', '.join(late[:5])} to deliver what they routed before revision "
                    f"{revision}",
                    f"switched: sidecar(s) {', '.join(late)} still have records in flight routed before revision "
                    f"{revision}; run the command again to go on waiting")

        await self._until(check)

    # -- the move -------------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _locked(self, topic: str) -> AsyncIterator[None]:
        """Hold the move's lock for the time of one command: a second command for the same topic (a move run
        twice at once, or an --abort while it runs) is refused, naming who holds it. Should the lock be lost (its
        lease not renewed in time: etcd unreachable, the process stalled), the command stops at once."""
        lease = await self._etcd.lease(LOCK_TTL_S)
        where = lock_key(self._keys, topic)
        taken, who = False, "it just ended"
        for _ in range(2):
            if await self._etcd.swap(where, _owner(os.getpid()).encode(), 0, lease=lease) is not None:
                taken = True
                break
            held = await self._etcd.get(where)
            if held is None:
                continue                                # ended meanwhile
            who = held[0].decode(errors="replace")
            # A holder of this very host and pid namespace whose process is gone (killed, and the command run
            # again at once) need not be waited out: its lock is taken over, unless someone changed it meanwhile.
            if not (_dead_here(who) and await self._etcd.delete_unchanged({where: held[1]}, 1)):
                break
        if not taken:
            await self._etcd.revoke(lease)
            raise MoveError(f"another `topic move` of {topic} is running ({who.split(' boot ')[0]}); wait for it, "
                            f"or stop it (its lock lapses {LOCK_TTL_S} s after it dies)")
        command = asyncio.current_task()
        lost: list[str] = []

        async def keep() -> None:
            renewed = time.monotonic()
            while True:
                await asyncio.sleep(1.0 if lost else LOCK_TTL_S / 3)
                try:
                    await self._etcd.refresh(lease)
                    renewed = time.monotonic()
                    lost.clear()
                except Exception as e:          # noqa: BLE001 (etcd errors of every kind: retried to the deadline)
                    lost[:] = [str(e)]
                    if time.monotonic() - renewed > LOCK_TTL_S - 2 and command is not None:
                        command.cancel()        # the lock may be someone else's by now: do nothing more
                        return

        keeper = asyncio.get_running_loop().create_task(keep())
        try:
            yield
        except asyncio.CancelledError:
            if keeper.done() and lost:
                raise MoveError(f"lost the lock of the move of {topic} ({lost[0]}): stopped; run the command "
                                "again once etcd answers") from None
            raise
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            with contextlib.suppress(Exception):        # it lapses by itself otherwise
                await self._etcd.revoke(lease)

    async def run(self, topic: str, target: str, source: str | None, force: bool) -> State:
        async with self._locked(topic):
            return await self._run(topic, target, source, force)

    async def _run(self, topic: str, target: str, source: str | None, force: bool) -> State:
        state, version = await self._read(topic)
        mapping = await load(self._etcd, self._keys)
        if state is None:
            state = self._plan(mapping, topic, target, source)
            version = await self._save(state, 0)
            self._say(f"moving topic {topic} from {state.source} to {state.target}")
        else:
            if (state.target, state.source) != (target, source or state.source):
                raise MoveError(f"topic {topic} is being moved from {state.source} to {state.target} (phase "
                                f"{state.phase or 'starting'}); finish that move, or --abort it, first")
            self._say(f"resuming the move of topic {topic} from {state.source} to {state.target} after phase "
                      f"{state.phase or '(none)'}")
        source_cluster = mapping.clusters[state.source]
        target_cluster = mapping.clusters[state.target]

        if _before(state, "created"):
            state.partitions, made = await asyncio.to_thread(_create_like, source_cluster, target_cluster, topic,
                                                             force)
            self._say(f"created: {topic} on {state.target} with {state.partitions} partitions, as on {state.source}"
                      if made else f"created: {topic} is on {state.target} already, with {state.partitions} "
                                   f"partitions as on {state.source}")
            version = await self._advance(state, "created", version)
        if _before(state, "reading"):
            rev = await self._edit("subscribers read both clusters", lambda m: _consumer_doc(
                m, topic, [state.source, state.target], state.consumer_before))
            await self._wait_applied(rev, "reading")
            state.revisions["reading"] = rev
            version = await self._advance(state, "reading", version)
        if _before(state, "switched"):
            if _before(state, "switching"):
                version = await self._advance(state, "switching", version)
            rev = await self._edit("producers write to the new cluster", lambda m: _producer_doc(m, state))
            seen = time.time()
            await self._wait_applied(rev, "switched")
            await self._wait_flushed(state.source, rev, seen)
            state.revisions["switched"] = rev
            version = await self._advance(state, "switched", version)
        if _before(state, "fenced"):
            state.fence = {str(p): o for p, o in (await self._fence(state, source_cluster)).items()}
            version = await self._advance(state, "fenced", version)
        if _before(state, "drained"):
            await self._drain(state, source_cluster)
            version = await self._advance(state, "drained", version)
        if _before(state, "done"):
            rev = await self._edit("subscribers read the new cluster only", lambda m: _consumer_doc(
                m, topic, None, _swap(state.consumer_before, state.source, state.target)))
            await self._wait_applied(rev, "done")
            state.revisions["done"] = rev
            version = await self._advance(state, "done", version)
            await self._etcd.delete_batched([key(self._keys, topic)], 1)
        self._say(f"done: {topic} is on {state.target}; its copy on {state.source} is left for you to delete")
        return state

    async def _advance(self, state: State, phase: str, version: int) -> int:
        state.phase = phase
        return await self._save(state, version)

    def _plan(self, mapping: Mapping, topic: str, target: str, source: str | None) -> State:
        if target not in mapping.clusters:
            raise UsageError(f"--to {target!r}: no such cluster (registered: {', '.join(sorted(mapping.clusters))})")
        route = mapping.route_of(topic)
        if route is not None and ProducerRoute.topics_of(route) != (topic,):
            raise UsageError(f"topic {topic} is routed by the list key {route!r}: give it a route of its own first")
        sinks = mapping.sinks_for(topic)
        if not sinks:
            raise UsageError(f"topic {topic} has no producer route (and there is no {DEFAULT_ROUTE}): nothing to move")
        if source is None:
            if len(sinks) != 1:
                raise UsageError(f"topic {topic} is written to {', '.join(sinks)}: say which one to move with --from")
            source = sinks[0]
        if source not in sinks:
            raise UsageError(f"--from {source}: topic {topic} is written to {', '.join(sinks)}, not {source}")
        if target in sinks:
            raise UsageError(f"topic {topic} is written to {target} already")
        consumer = mapping.consumer.get(topic)
        return State(topic, source, target, producer_key=route,
                     producer_before=({"where": [{"sink": s} for s in mapping.routes[route]]} if route else None),
                     consumer_before=[{"vip": v} for v in consumer] if consumer else None, started=time.time())

    async def _fence(self, state: State, cluster: Any) -> dict[int, int]:
        """C1's end offsets for the topic once they stayed still for QUIET_S (a write still arriving stalls here)."""
        last = await asyncio.to_thread(drain.offsets, cluster, state.topic)
        still_since = time.monotonic()
        while time.monotonic() - still_since < QUIET_S:
            await asyncio.sleep(POLL_S)
            now = await asyncio.to_thread(drain.offsets, cluster, state.topic)
            moved = {p: (last.end[p], o) for p, o in now.end.items() if o != last.end.get(p)}
            if moved:
                self._say("fence: records still arrive on " + state.source + " for " + state.topic + " (partition "
                          + ", ".join(f"{p}: {a} -> {b}" for p, (a, b) in sorted(moved.items())) + "); waiting for "
                          "them to stop (a sidecar cut off from etcd, or a producer outside the mesh?)")
                still_since = time.monotonic()
                last = now
            if self._timed_out():
                raise MoveError(f"fence: {state.source} still receives records for {state.topic}; the move stays "
                                "before the fence: find the writer, then run the command again")
        self._say(f"fenced: {state.source}'s end offsets for {state.topic} stayed still for {QUIET_S:g} s: "
                  + ", ".join(f"{p}:{o}" for p, o in sorted(last.end.items())))
        return last.end

    async def _drain(self, state: State, cluster: Any) -> None:
        """Until every consumer group with offsets for the topic on C1 committed the fence."""
        fence = {int(p): o for p, o in state.fence.items()}

        async def check() -> tuple[str | None, str, str]:
            low = (await asyncio.to_thread(drain.offsets, cluster, state.topic)).low
            groups = await asyncio.to_thread(drain.committed, cluster, state.topic)
            left = drain.lag(fence, low, groups)
            return (None if left else f"drained: {len(groups)} group(s) with offsets for {state.topic} on "
                                      f"{state.source} committed the fence",
                    "drain: " + "; ".join(f"group {g} has {sum(p.values())} record(s) left (" + ", ".join(
                        f"partition {k}: {v}" for k, v in sorted(p.items())) + ")" for g, p in sorted(left.items())),
                    f"drain: group(s) {', '.join(sorted(left))} have not read {state.topic} on {state.source} up to "
                    "the fence; run the command again to go on waiting")

        await self._until(check)

    async def abort(self, topic: str) -> State:
        async with self._locked(topic):
            return await self._abort(topic)

    async def _abort(self, topic: str) -> State:
        state, version = await self._read(topic)
        if state is None:
            raise UsageError(f"no move of topic {topic} is under way")
        if not _before(state, "switching"):
            raise MoveError(f"the move of {topic} is at or past the producer switch (phase {state.phase}): records "
                            f"may be on {state.target} now, so it cannot be undone; run the command without --abort "
                            "to finish it")
        rev = await self._edit("routes put back as they were", lambda m: {
            **_producer_doc(m, state, restore=True), **_consumer_doc(m, topic, None, state.consumer_before)})
        await self._wait_applied(rev, "aborted")
        await self._etcd.delete_unchanged({key(self._keys, topic): version}, 1)
        self._say(f"aborted: {topic} is routed as before the move; its copy on {state.target} is left as it is")
        return state


def _machine() -> str:
    """This boot of this machine, and this pid namespace: hosts (or containers) that share a host name but not
    their processes differ here."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return "unknown"
    return f"{boot}/{pidns}"


def _owner(pid: int) -> str:
    """A lock's owner as stored: "HOST pid N boot MACHINE" (messages show what comes before " boot ")."""
    return f"{socket.gethostname()} pid {pid} boot {_machine()}"


def _dead_here(owner: str) -> bool:
    """Whether a lock's owner (_owner) is a process of this boot of this host, in this pid namespace, that no
    longer runs; any doubt says no (the lock is then waited out)."""
    who, _, machine = owner.partition(" boot ")
    host, _, pid = who.rpartition(" pid ")
    if host != socket.gethostname() or machine != _machine() or machine == "unknown" or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False            # alive, another user's
    return False


def _before(state: State, phase: str) -> bool:
    return (PHASES.index(state.phase) if state.phase else -1) < PHASES.index(phase)


def _swap(consumer: Any, source: str, target: str) -> Any:
    if consumer is None:
        return None
    out: list[dict[str, str]] = []
    for entry in consumer:
        vip = target if entry["vip"] == source else entry["vip"]
        if {"vip": vip} not in out:
            out.append({"vip": vip})
    return out


def _consumer_doc(mapping: Mapping, topic: str, vips: list[str] | None, otherwise: Any) -> dict[str, Any]:
    section = mapping.to_document()["consumer"]
    value = [{"vip": v} for v in vips] if vips is not None else otherwise
    if value is None:
        section.pop(topic, None)
    else:
        section[topic] = value
    return {"consumer": section}


def _producer_doc(mapping: Mapping, state: State, restore: bool = False) -> dict[str, Any]:
    section = mapping.to_document()["producer"]
    if restore:
        if state.producer_key is None:
            section.pop(state.topic, None)
        else:
            section[state.producer_key] = state.producer_before
        return {"producer": section}
    sinks = mapping.sinks_for(state.topic) or ()
    moved = [state.target if s == state.source else s for s in sinks]
    section[state.producer_key or state.topic] = {"where": [{"sink": s} for s in dict.fromkeys(moved)]}
    return {"producer": section}


def _create_like(source: Any, target: Any, topic: str, force: bool) -> tuple[int, bool]:
    """The topic on target with source's partition count (created when absent); returns the count, and whether it
    was created."""
    have = drain.offsets(source, topic)
    count = len(have.end)
    try:
        there = len(drain.offsets(target, topic).end)
    except topics.TopicError:
        there = 0
    if there and there != count and not force:
        raise MoveError(f"topic {topic} is on {target.name} already with {there} partitions, on {source.name} with "
                        f"{count}: keys would land on other partitions; --force to move anyway")
    if not there:
        topics.create(target, topic, partitions=count, exact=True)
    return count, not there
