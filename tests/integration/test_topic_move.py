"""`kafka-mesh topic move` against real clusters and two real sidecar processes: continuous produce through both and
one consumer group through each while the topic moves from c1 to c2; then the refusals."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from typing import Any

import grpc
from confluent_kafka import Consumer, Producer, TopicPartition

from sidecar.api.kafkamesh.v1 import mesh_pb2 as M
from sidecar.api.kafkamesh.v1 import mesh_pb2_grpc
from sidecar.control.etcd import Etcd, parse_endpoint
from sidecar.control.keys import Keys
from sidecar.dev.sandbox import Sandbox
from sidecar.manage.move import key as move_key
from tests.integration.cut_proxy import CutProxy
from tests.integration.kafka_helpers import create_topic, read_records
from tests.integration.sidecar_proc import apply, batch, clusters_doc, new_namespace, produce
from tests.integration.subscribe_stream import SubStream


def _cli(sandbox: Sandbox, ns: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kafka-mesh", *args, "--etcd", sandbox.etcd_endpoint, "--namespace", ns],
                          capture_output=True, text=True, env=dict(os.environ), timeout=timeout)


class _Move(threading.Thread):
    """`kafka-mesh topic move` running in the background, its output kept line by line as it comes."""

    def __init__(self, sandbox: Sandbox, ns: str, *args: str) -> None:
        super().__init__(daemon=True)
        self.proc = subprocess.Popen(["kafka-mesh", "topic", "move", *args, "--etcd", sandbox.etcd_endpoint,
                                      "--namespace", ns], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=dict(os.environ))
        self.lines: list[str] = []
        self.start()

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None or time.monotonic() < deadline and self.is_alive(), self.lines
            assert time.monotonic() < deadline, f"no {text!r} in {self.lines}"
            time.sleep(0.05)

    def finish(self, timeout: float) -> tuple[int, str, str]:
        rc = self.proc.wait(timeout)
        self.join(10)
        assert self.proc.stderr is not None
        return rc, "".join(self.lines), self.proc.stderr.read()


def _phase(sandbox: Sandbox, ns: str, topic: str) -> str:
    async def read() -> str:
        async with Etcd(sandbox.etcd_endpoint) as etcd:
            got = await etcd.get(move_key(Keys(ns), topic))
        return "" if got is None else str(json.loads(got[0])["phase"])
    return asyncio.run(read())


def _routed_to_c1(sandbox: Sandbox, prefix: str, partitions: int,
                  **config: dict[str, str]) -> tuple[str, str]:
    """A namespace whose mapping routes a new topic (on c1, with partitions) to c1: (namespace, topic). config: the
    clusters' librdkafka overrides, by cluster."""
    ns = new_namespace()
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    create_topic(sandbox.clusters[0].bootstrap, topic, partitions=partitions)
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox, **config), "producer": {topic: {"where": [{"sink": "c1"}]}}})
    return ns, topic


class _Producer(threading.Thread):
    """One app producing batches of 20 records of topic through one sidecar until stopped; keeps each acked id with
    the mapping revision its batch was routed by."""

    def __init__(self, target: str, topic: str, name: str, pause: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.target, self.topic, self.name, self.pause = target, topic, name, pause
        self.sent: dict[int, list[str]] = {}
        self.stop = threading.Event()
        self.acked: dict[str, int] = {}
        self.failed: list[Any] = []
        self.error: Exception | None = None

    def run(self) -> None:
        sent = self.sent

        def requests() -> Any:
            b = 0
            while not self.stop.is_set():
                sent[b] = [f"{self.name}-{b}-{i}" for i in range(20)]
                yield batch(b, [(self.topic, x) for x in sent[b]])
                b += 1
                time.sleep(self.pause)

        try:
            with grpc.insecure_channel(self.target) as ch:
                for r in mesh_pb2_grpc.MeshStub(ch).Produce(requests(), timeout=600):
                    if r.ok_count == len(sent[r.batch_id]):
                        self.acked.update((x, r.mapping_revision) for x in sent[r.batch_id])
                    else:
                        self.failed.append(r)
        except Exception as e:   # reported by the test
            self.error = e


def test_a_move_under_produce_and_two_groups_loses_nothing(sandbox: Sandbox, sidecar_factory: Any) -> None:
    ns, topic = _routed_to_c1(sandbox, "move", 3)
    a = sidecar_factory(ns, "--host-id", "move-a")
    b = sidecar_factory(ns, "--host-id", "move-b")
    g1, g2 = f"g1-{uuid.uuid4().hex[:6]}", f"g2-{uuid.uuid4().hex[:6]}"
    # g1 starts at "latest": where it first attaches to c2 (during the move), it still reads from c2's earliest
    # offset, so nothing written to c2 before its consumer there was assigned is missed.
    subs = [SubStream(a.target, g1, [topic], start=M.START_POSITION_LATEST), SubStream(b.target, g2, [topic])]
    # "latest" is where a partition's end is when the consumer first fetches it: a record read proves it did.
    deadline, warm = time.monotonic() + 60, 0
    while not all(any(v.startswith("warm-up") for v in sub.values()) for sub in subs):
        assert time.monotonic() < deadline, "the groups never read c1"
        produce(a.target, [batch(0, [(topic, f"warm-up-{warm}")])])
        warm += 1
        time.sleep(0.5)
    producers = [_Producer(a.target, topic, "a"), _Producer(b.target, topic, "b")]
    for p in producers:
        p.start()
    time.sleep(2)
    move = _cli(sandbox, ns, "topic", "move", topic, "--to", "c2", "--timeout", "240")
    assert move.returncode == 0, move.stdout + move.stderr
    time.sleep(1)
    for p in producers:
        p.stop.set()
    for p in producers:
        p.join(60)
    assert not [p.error for p in producers if p.error] and not [p.failed for p in producers if p.failed]
    acked = {x: rev for p in producers for x, rev in p.acked.items()}
    switch = int(re.search(r"producers write to the new cluster: mapping revision (\d+)", move.stdout).group(1))
    assert {rev < switch for rev in acked.values()} == {True, False}, move.stdout      # both sides of the switch
    for sub in subs:
        sub.wait(lambda s: set(acked) <= set(s.values()), 120, "every acked record")
    # Every acked record is where its revision routed it: before the switch in c1, from it on in c2, nowhere else.
    before = {x for x, rev in acked.items() if rev < switch}
    after = set(acked) - before
    assert {x for _, x in read_records(sandbox.clusters[0].bootstrap, [topic], len(before) + warm)} == before | {
        f"warm-up-{i}" for i in range(warm)}
    assert {x for _, x in read_records(sandbox.clusters[1].bootstrap, [topic], len(after))} == after
    # At the end nothing reads c1 for the topic: the route reads c2, and each stream was told so.
    described = json.loads(_cli(sandbox, ns, "topic", "describe", topic, "--json").stdout)
    assert described["routes"]["read_from"] == ["c2"] and described["routes"]["producer_sinks"] == ["c2"]
    # Nothing reached c1 after the fence, though both sidecars went on producing past the move's end: c1's end
    # offsets now are those the fence took.
    fenced = re.search(r"fenced: c1's end offsets for \S+ stayed still for \S+ s: (.*)", move.stdout).group(1)
    [c1_now] = [c for c in described["clusters"] if c["cluster"] == "c1"]
    assert {int(p): o for p, o in c1_now["end_offsets"].items()} == {
        int(p): int(o) for p, o in (x.split(":") for x in fenced.split(", "))}, move.stdout
    for sub in subs:
        sub.wait(lambda s: any(e.WhichOneof("kind") == "clusters_changed" and list(e.clusters_changed.clusters)
                               == ["c2"] for e in s.events), 30, "clusters_changed to c2")
        sub.close()
    phases = [line.split(" ", 1)[1].split(":")[0] for line in move.stdout.splitlines()]
    assert [p for p in ("created", "reading", "switched", "fenced", "drained", "done") if p in phases] == [
        "created", "reading", "switched", "fenced", "drained", "done"], move.stdout


def test_move_refusals_and_abort(sandbox: Sandbox, sidecar_factory: Any) -> None:
    ns = new_namespace()
    topic, listed = f"mv-{uuid.uuid4().hex[:8]}", f"mv-{uuid.uuid4().hex[:8]}"
    create_topic(sandbox.clusters[0].bootstrap, topic, partitions=2)
    create_topic(sandbox.clusters[1].bootstrap, topic, partitions=3)
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {
        topic: {"where": [{"sink": "c1"}]}, f"{listed}, other": {"where": [{"sink": "c1"}]}}})
    r = _cli(sandbox, ns, "topic", "move", listed, "--to", "c2")
    assert (r.returncode, r.stderr) == (2, f"kafka-mesh: error: topic {listed} is routed by the list key "
                                           f"'{listed}, other': give it a route of its own first\n")
    r = _cli(sandbox, ns, "topic", "move", topic, "--to", "c9")
    assert r.returncode == 2 and "--to 'c9': no such cluster" in r.stderr
    r = _cli(sandbox, ns, "topic", "move", topic, "--to", "c1")
    assert (r.returncode, r.stderr) == (2, f"kafka-mesh: error: topic {topic} is written to c1 already\n")
    # c2 has the topic with 3 partitions, c1 with 2: keys would change partition.
    r = _cli(sandbox, ns, "topic", "move", topic, "--to", "c2")
    assert r.returncode == 4 and "keys would land on other partitions; --force to move anyway" in r.stderr
    # The move stays recorded before its first phase: another target is refused, --abort puts it away.
    r = _cli(sandbox, ns, "topic", "move", topic, "--to", "c3")
    assert r.returncode == 4 and f"topic {topic} is being moved from c1 to c2" in r.stderr
    sidecar_factory(ns)
    r = _cli(sandbox, ns, "topic", "move", topic, "--to", "c2", "--abort")
    assert r.returncode == 0, r.stderr
    assert "aborted:" in r.stdout
    shown = json.loads(_cli(sandbox, ns, "mapping", "show", "--json").stdout)["mapping"]
    assert shown["producer"][topic] == {"where": [{"sink": "c1"}]} and topic not in shown["consumer"]
    r = _cli(sandbox, ns, "topic", "move", topic, "--to", "c2", "--abort")
    assert (r.returncode, r.stderr) == (2, f"kafka-mesh: error: no move of topic {topic} is under way\n")


def test_more_move_refusals_and_one_command_at_a_time(sandbox: Sandbox, sidecar_factory: Any) -> None:
    ns = new_namespace()
    topic, both = f"mv-{uuid.uuid4().hex[:8]}", f"mv-{uuid.uuid4().hex[:8]}"
    create_topic(sandbox.clusters[0].bootstrap, topic, partitions=2)
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {
        topic: {"where": [{"sink": "c1"}]}, both: {"where": [{"sink": "c1"}, {"sink": "c2"}]}}})
    refusals = {
        ("nowhere", "--to", "c2"): "topic nowhere has no producer route (and there is no __default__): nothing to "
                                   "move",
        (both, "--to", "c3"): f"topic {both} is written to c1, c2: say which one to move with --from",
        (both, "--to", "c3", "--from", "c3"): f"--from c3: topic {both} is written to c1, c2, not c3",
    }
    for args, message in refusals.items():
        r = _cli(sandbox, ns, "topic", "move", *args)
        assert (r.returncode, r.stderr) == (2, f"kafka-mesh: error: {message}\n"), args

    sidecar_factory(ns)
    # One command at a time: while a move runs (here, at its fence's quiet window), the same command again, and
    # --abort, are refused naming the holder; the first one finishes.
    first = _Move(sandbox, ns, topic, "--to", "c2", "--json")
    first.wait_for("no sidecar has records in flight", timeout=60)          # its fence's 5 s window begins
    for extra in ((), ("--abort",)):
        r = _cli(sandbox, ns, "topic", "move", topic, "--to", "c2", *extra)
        assert r.returncode == 4 and f"another `topic move` of {topic} is running (" in r.stderr, r.stderr
        assert f"pid {first.proc.pid})" in r.stderr
    code, out, err = first.finish(timeout=120)
    assert code == 0, err
    progress = [json.loads(line) for line in out.splitlines()]        # --json: an object a line
    phases = [p["phase"] for p in progress]
    assert {"created", "reading", "switched", "fenced", "drained", "done"} <= set(phases) and phases[-1] == "done"
    assert progress[-1]["message"].startswith(f"done: {topic} is on c2") and progress[-1]["time"] > 0

    # A move recorded at "switching" (its command died after deciding to switch, perhaps mid-write): --abort is
    # refused, since the producer route may name c2 already.
    from sidecar.manage.move import State

    async def record() -> None:
        async with Etcd(sandbox.etcd_endpoint) as etcd:
            await etcd.put(move_key(Keys(ns), both), State(both, "c1", "c3", phase="switching").encode())

    asyncio.run(record())
    r = _cli(sandbox, ns, "topic", "move", both, "--to", "c3", "--abort")
    assert r.returncode == 4 and f"the move of {both} is at or past the producer switch (phase switching)" in r.stderr


def test_a_writer_outside_the_mesh_stalls_the_fence_and_a_group_behind_holds_the_drain(
        sandbox: Sandbox, sidecar_factory: Any) -> None:
    """A producer writing to c1 directly keeps the move at the fence (exit 4, the partitions named); once it stops,
    the same command resumes. A consumer group that has not read c1 up to the fence holds the move at the drain,
    and the command run again once the group caught up finishes the move."""
    ns, topic = _routed_to_c1(sandbox, "fence", 2)
    c1 = sandbox.clusters[0].bootstrap
    sidecar_factory(ns)
    behind = f"behind-{uuid.uuid4().hex[:6]}"
    outside = Producer({"bootstrap.servers": c1})
    for i in range(10):
        outside.produce(topic, value=f"early-{i}".encode(), partition=i % 2)
    outside.flush(30)
    group = Consumer({"bootstrap.servers": c1, "group.id": behind, "enable.auto.commit": False})
    group.commit(offsets=[TopicPartition(topic, 0, 1), TopicPartition(topic, 1, 1)], asynchronous=False)

    stop = threading.Event()

    def write_outside() -> None:
        while not stop.is_set():
            outside.produce(topic, value=b"outside", partition=1)
            outside.poll(0)
            time.sleep(0.2)
        outside.flush(30)

    writer = threading.Thread(target=write_outside, daemon=True)
    writer.start()
    stalled = _cli(sandbox, ns, "topic", "move", topic, "--to", "c2", "--timeout", "15")
    stop.set()
    writer.join(30)
    assert stalled.returncode == 4, stalled.stdout + stalled.stderr
    assert f"kafka-mesh: error: fence: c1 still receives records for {topic}" in stalled.stderr
    assert f"fence: records still arrive on c1 for {topic} (partition 1: " in stalled.stdout

    held = _cli(sandbox, ns, "topic", "move", topic, "--to", "c2", "--timeout", "12")
    assert held.returncode == 4, held.stdout + held.stderr
    assert "resuming the move" in held.stdout and "fenced:" in held.stdout
    assert re.search(rf"drain: group {behind} has \d+ record\(s\) left \(partition 0: 4, partition 1: \d+\)",
                     held.stdout), held.stdout
    assert f"drain: group(s) {behind} have not read {topic} on c1 up to the fence" in held.stderr
    late = _cli(sandbox, ns, "topic", "move", topic, "--to", "c2", "--abort")
    assert (late.returncode, late.stderr) == (4, f"kafka-mesh: error: the move of {topic} is at or past the "
                                                 f"producer switch (phase fenced): records may be on c2 now, so it "
                                                 "cannot be undone; run the command without --abort to finish it\n")
    # The group catches up: it commits c1's end offsets. The move, run again, finishes.
    ends = json.loads(_cli(sandbox, ns, "topic", "describe", topic, "--json").stdout)["clusters"][0]["end_offsets"]
    group.commit(offsets=[TopicPartition(topic, int(p), o) for p, o in ends.items()], asynchronous=False)
    group.close()
    done = _cli(sandbox, ns, "topic", "move", topic, "--to", "c2", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"done: {topic} is on c2" in done.stdout and "created:" not in done.stdout


def test_a_move_there_and_back_resets_no_offset_and_loses_nothing(sandbox: Sandbox, sidecar_factory: Any) -> None:
    """c1 -> c2 -> c1 under produce with one group reading: every acked record is read, and the records read and
    committed before the first move are not read again when the group returns to c1 (its offsets there stay)."""
    ns, topic = _routed_to_c1(sandbox, "flap", 2)
    sc = sidecar_factory(ns)
    sub = SubStream(sc.target, f"flap-{uuid.uuid4().hex[:6]}", [topic])
    producer = _Producer(sc.target, topic, "p")
    producer.start()
    sub.wait(lambda s: len(s.values()) >= 200, 60, "the first records")
    time.sleep(2)                                     # committed (every second) before the first move
    early = set(sub.values())
    there = _cli(sandbox, ns, "topic", "move", topic, "--to", "c2", "--timeout", "120")
    assert there.returncode == 0, there.stdout + there.stderr
    back = _cli(sandbox, ns, "topic", "move", topic, "--to", "c1", "--timeout", "120")
    assert back.returncode == 0, back.stdout + back.stderr
    assert f"created: {topic} is on c1 already, with 2 partitions as on c2" in back.stdout
    time.sleep(1)
    producer.stop.set()
    producer.join(60)
    assert producer.error is None and not producer.failed
    sub.wait(lambda s: set(producer.acked) <= set(s.values()), 120, "every acked record")
    seen = sub.values()
    assert not [x for x in early if seen.count(x) > 1], "records committed before the moves were read again"
    assert {cluster for cluster, *_ in sub.records} == {"c1", "c2"}
    sub.close()


def test_the_cli_killed_during_the_drain_resumes_there(sandbox: Sandbox, sidecar_factory: Any) -> None:
    ns, topic = _routed_to_c1(sandbox, "kill", 1)
    c1 = sandbox.clusters[0].bootstrap
    sidecar_factory(ns)
    outside = Producer({"bootstrap.servers": c1})
    for i in range(5):
        outside.produce(topic, value=f"r{i}".encode())
    outside.flush(30)
    group = f"slow-{uuid.uuid4().hex[:6]}"
    slow = Consumer({"bootstrap.servers": c1, "group.id": group, "enable.auto.commit": False})
    slow.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)       # 3 records behind
    proc = subprocess.Popen(["kafka-mesh", "topic", "move", topic, "--to", "c2", "--etcd", sandbox.etcd_endpoint,
                             "--namespace", ns], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "drain: group" in line:
            break
    proc.kill()                                       # SIGKILL while it waits for the group
    proc.wait(30)
    assert f"drain: group {group} has 3 record(s) left (partition 0: 3)" in lines[-1], lines
    slow.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
    slow.close()
    again = _cli(sandbox, ns, "topic", "move", topic, "--to", "c2", "--timeout", "60")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "after phase fenced" in again.stdout and f"done: {topic} is on c2" in again.stdout


def test_a_sidecar_slowed_holds_the_move_until_it_applied(sandbox: Sandbox, sidecar_factory: Any) -> None:
    """Two sidecars apply revisions at different moments: one is stopped (SIGSTOP, for less than its status lease)
    as the move begins. The move waits for it, named, before it goes on (it never switches producers or drops c1
    while a live sidecar has not applied the step before); once it runs again, it catches up and the move finishes
    with every acked record read."""
    ns, topic = _routed_to_c1(sandbox, "slow", 2)
    a = sidecar_factory(ns, "--host-id", "slow-a", "--status-ttl-s", "30")
    b = sidecar_factory(ns, "--host-id", "slow-b", "--status-ttl-s", "30")
    sub = SubStream(a.target, f"slow-{uuid.uuid4().hex[:6]}", [topic])
    producers = [_Producer(a.target, topic, "a"), _Producer(b.target, topic, "b")]
    for p in producers:
        p.start()
    time.sleep(1)
    os.kill(b.proc.pid, signal.SIGSTOP)
    try:
        move = _Move(sandbox, ns, topic, "--to", "c2", "--timeout", "120")
        move.wait_for("reading: waiting for 1 of 2 sidecar(s) to apply revision", 30)
        time.sleep(3)       # the lease is 30 s: slow-b still counts, and the move waits for it
        assert _phase(sandbox, ns, topic) == "created"
        assert move.lines[-1].rstrip().endswith(": slow-b"), move.lines
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
    rc, out, err = move.finish(120)
    assert rc == 0, out + err
    assert "all 2 live sidecar(s) applied" in out
    for p in producers:
        p.stop.set()
    for p in producers:
        p.join(60)
    assert not [p.error for p in producers if p.error] and not [p.failed for p in producers if p.failed]
    acked = {x for p in producers for x in p.acked}
    sub.wait(lambda s: acked <= set(s.values()), 120, "every acked record")
    sub.close()


def test_a_sidecar_paused_past_its_lease_acknowledges_nothing_it_routed_before(
        sandbox: Sandbox, sidecar_factory: Any) -> None:
    """A sidecar stopped (SIGSTOP) for longer than its status lease while a topic moves drops out of the move's
    count, and the move finishes without it. When it runs again, what it had handed to Kafka for c1 before the
    stop may still reach c1, where no one reads any more: none of it is acknowledged (the app is told to send it
    again), nothing more is written by the old route, and once it has read the mapping anew its records go to c2.
    Every acked record is read by the group."""
    # c1's producers linger 50 ms: at any moment pause-b holds the last ~50 ms of its batches in librdkafka, so the
    # stop finds some in flight (with the default 5 ms, a batch is answered before the next is sent, and the stop
    # could land between two).
    ns, topic = _routed_to_c1(sandbox, "pause", 2, c1={"linger.ms": "50"})
    a = sidecar_factory(ns, "--host-id", "pause-a", "--status-ttl-s", "3")
    b = sidecar_factory(ns, "--host-id", "pause-b", "--status-ttl-s", "3")
    sub = SubStream(a.target, f"pause-{uuid.uuid4().hex[:6]}", [topic])
    pa = _Producer(a.target, topic, "a")
    pb = _Producer(b.target, topic, "b", pause=0.002)     # keeps a batch in flight nearly all the time
    for p in (pa, pb):
        p.start()
    time.sleep(1)
    move = _Move(sandbox, ns, topic, "--to", "c2", "--timeout", "120")
    move.wait_for("reading:", 60)
    os.kill(b.proc.pid, signal.SIGSTOP)
    stopped_at = len(pb.sent)
    try:
        rc, out, err = move.finish(120)       # goes on once pause-b's lease expired
        assert rc == 0, out + err
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 60
    while not any(rev > 0 and x.startswith("b-") and int(x.split("-")[1]) > stopped_at + 10
                  for x, rev in list(pb.acked.items())):
        assert time.monotonic() < deadline and pb.error is None, (pb.error, pb.failed[-3:])
        time.sleep(0.2)
    for p in (pa, pb):
        p.stop.set()
    for p in (pa, pb):
        p.join(60)
    assert pa.error is None and pb.error is None and not pa.failed
    lapsed = [e.message for r in pb.failed for e in r.errors if "status lease" in e.message]
    assert lapsed, [e.message for r in pb.failed for e in r.errors][:5]
    assert {m.split(":")[0] for m in lapsed} == {"cluster 'c1'"}, lapsed[:5]
    acked = {x for p in (pa, pb) for x in p.acked}
    sub.wait(lambda s: acked <= set(s.values()), 120, "every acked record")
    sub.close()
    # What c1 holds that no one acknowledged came from pause-b's batches that failed: nothing else reached c1.
    ends = json.loads(_cli(sandbox, ns, "topic", "describe", topic, "--json").stdout)["clusters"][0]["end_offsets"]
    in_c1 = {x for _, x in read_records(sandbox.clusters[0].bootstrap, [topic], sum(ends.values()))}
    assert len(in_c1) == sum(ends.values())
    assert in_c1 - acked <= {x for r in pb.failed for x in pb.sent[r.batch_id]}


def test_a_sidecar_cut_off_from_etcd_that_keeps_writing_c1_stalls_the_fence(
        sandbox: Sandbox, sidecar_factory: Any) -> None:
    """cut-b reaches etcd through a proxy that the test cuts before the move. Its lease expires and the move goes on
    without it; cut-b, a second without a lease, routes by the mapping it has and keeps writing c1, so the fence
    stalls (exit 4, the partitions named) and c1 is not dropped. Healed, cut-b renews its lease, reads the mapping
    and writes c2; the move run again finishes. Every acked record is read by the group."""
    ns, topic = _routed_to_c1(sandbox, "cut", 2)
    proxy = CutProxy(parse_endpoint(sandbox.etcd_endpoint))
    try:
        a = sidecar_factory(ns, "--host-id", "cut-a", "--status-ttl-s", "3")
        b = sidecar_factory(ns, "--host-id", "cut-b", "--status-ttl-s", "3", "--etcd-timeout-s", "1",
                            etcd=proxy.endpoint)
        sub = SubStream(a.target, f"cut-{uuid.uuid4().hex[:6]}", [topic])
        pa, pb = _Producer(a.target, topic, "a"), _Producer(b.target, topic, "b")
        for p in (pa, pb):
            p.start()
        time.sleep(1)
        proxy.cut()
        stalled = _cli(sandbox, ns, "topic", "move", topic, "--to", "c2", "--timeout", "20")
        assert stalled.returncode == 4, stalled.stdout + stalled.stderr
        assert f"kafka-mesh: error: fence: c1 still receives records for {topic}" in stalled.stderr
        assert re.search(rf"fence: records still arrive on c1 for {topic} \(partition \d", stalled.stdout)
        assert "cut-b" not in stalled.stdout.split("producers write to the new cluster")[1]     # not counted
        switch = int(re.search(r"producers write to the new cluster: mapping revision (\d+)",
                               stalled.stdout).group(1))
        proxy.heal()
        deadline = time.monotonic() + 60
        while not any(rev >= switch for rev in list(pb.acked.values())):
            assert time.monotonic() < deadline and pb.error is None, (pb.error, pb.failed[-3:])
            time.sleep(0.2)
        done = _cli(sandbox, ns, "topic", "move", topic, "--to", "c2", "--timeout", "60")
        assert done.returncode == 0, done.stdout + done.stderr
        for p in (pa, pb):
            p.stop.set()
        for p in (pa, pb):
            p.join(60)
        assert pa.error is None and pb.error is None and not pa.failed
        # What cut-b did not acknowledge, it says why: its lease lapsed while the batch was in flight.
        assert all("status lease" in e.message for r in pb.failed for e in r.errors), pb.failed[:3]
        assert "routing by the mapping in force" in b.log.read_text()
        acked = {x for p in (pa, pb) for x in p.acked}
        assert any(x.startswith("b-") and rev < switch for x, rev in pb.acked.items())     # written to c1 cut off
        sub.wait(lambda s: acked <= set(s.values()), 120, "every acked record")
        sub.close()
    finally:
        proxy.close()
