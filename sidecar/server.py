"""Server assembly: the gRPC server with the Mesh service, health checking and reflection, on its listeners; the
mapping source; status registration; and an orderly stop on SIGTERM or SIGINT.

Everything runs on one asyncio event loop (grpc.aio, aetcd), except the native core's threads (librdkafka's, one
delivery-report thread per producer) and the produce-submit worker threads. librdkafka's log lines are drained
into logging by a task on the loop (sidecar/rdkafka_log.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import meshcore
from sidecar import local_socket, memory, rdkafka_log
from sidecar.api.kafkamesh.v1 import mesh_pb2 as _mesh_pb2
from sidecar.config import SidecarSettings
from sidecar.control.source import MappingSource
from sidecar.control.status import StatusReporter
from sidecar.errors import MeshError, UsageError
from sidecar.mapping.model import Mapping
from sidecar.metrics import ClientStatistics, Family, MetricsServer, TopicLabels
from sidecar.routing import RouteState
from sidecar.servicers.http import HttpProduce
from sidecar.servicers.produce import SERVICE, ProduceServicer
from sidecar.servicers.subscribe import SubscribeServicer
from sidecar.subscribe.session import StreamSettings
from sidecar.topic_rules import TopicRulesKeeper

log = logging.getLogger("kafka_mesh.server")

#: At a stop, how long the connections stay open after the last Produce stream ended (for its final status).
FINAL_STATUS_S = 0.2
#: When the shutdown grace ran out: how long the streams have to send the answers of the batches just failed.
ANSWER_AFTER_GRACE_S = 2.0


def _listen_address(spec: str, socket_mode: int) -> str:
    if spec.startswith("unix:"):
        path = spec[len("unix:"):]
        if not path:
            raise UsageError(f"invalid listen address {spec!r}: unix: needs a path")
        local_socket.prepare(path, socket_mode)
        return f"unix:{path}"
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"invalid listen address {spec!r}: expected unix:PATH or HOST:PORT")
    return spec


def code_name(code: int) -> str:
    """A kafkamesh.v1.ErrorCode number as metrics label it: NO_ROUTE, CLUSTER_UNAVAILABLE, ..."""
    try:
        return str(_mesh_pb2.ErrorCode.Name(code)).removeprefix("ERROR_CODE_")
    except ValueError:
        return str(code)


def _families(routes: RouteState, produce: ProduceServicer, subscribe: SubscribeServicer,
              source: MappingSource) -> list[Family]:
    """The sidecar's metrics (README, "Metrics"), read at each scrape from what the process keeps anyway."""
    loop = asyncio.get_running_loop()
    applied_at = [time.time()]
    routes.listeners.add(lambda _mapping: applied_at.__setitem__(0, time.time()))

    def per_cluster(key: str) -> list[tuple[tuple[str, ...], Any]]:
        return [((cluster,), stats[key]) for cluster, stats in sorted(routes.delivery_stats().items())]

    def failures() -> list[tuple[tuple[str, ...], float]]:
        return [((cluster, code_name(code)), n) for cluster, stats in sorted(routes.delivery_stats().items())
                for code, n in sorted(stats["codes"].items())]

    def on_loop(read: Callable[[], Any]) -> Any:
        """read() run on the event loop (the scrape runs on the metrics thread): the streams' state is the loop's."""
        async def call() -> Any:
            return read()
        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=5)

    def subscribe_lag() -> list[tuple[tuple[str, ...], float]]:
        samples: list[tuple[tuple[str, ...], float]] = on_loop(
            lambda: [sample for session in list(subscribe.sessions) for sample in session.lag()])
        return samples

    labels = routes.topic_labels
    assert labels is not None

    def received(index: int) -> list[tuple[tuple[str, ...], float]]:
        return [((labels.name(slot),), counts[index]) for slot, counts in sorted(meshcore.received_counts().items())]

    def per_topic(index: int) -> list[tuple[tuple[str, ...], float]]:
        return [((cluster, labels.name(slot)), counts[index]) for cluster, slots in sorted(routes.topic_stats().items())
                for slot, counts in sorted(slots.items())]

    def latency() -> list[tuple[tuple[str, ...], Any]]:
        return [((cluster,), (stats["latency"], stats["latency_sum_s"]))
                for cluster, stats in sorted(routes.delivery_stats().items())]

    return [
        Family("mapping_revision", "The mapping revision in force (0: from a file).", "gauge", (),
               lambda: [((), routes.revision)]),
        Family("mapping_applied_timestamp_seconds", "When the mapping in force was applied (Unix time).", "gauge",
               (), lambda: [((), applied_at[0])]),
        Family("etcd_connected", "1 while the mapping watch is connected to etcd (0 with a mapping file).", "gauge",
               (), lambda: [((), float(source.connected.is_set()))]),
        Family("status_lease_held", "1 while this sidecar's status lease holds (it may acknowledge records).",
               "gauge", (), lambda: [((), float(meshcore.guard_holds()))]),
        Family("produce_streams", "Produce streams open.", "gauge", (), lambda: [((), produce.streams)]),
        Family("subscribe_streams", "Subscribe streams open.", "gauge", (), lambda: [((), subscribe.streams)]),
        Family("subscribe_streams_out_of_credit", "Subscribe streams waiting for their application to grant credit.",
               "gauge", (), lambda: [((), on_loop(lambda: sum(s.out_of_credit() for s in list(subscribe.sessions))))]),
        Family("subscribe_lag", "Records of a partition a Subscribe stream reads not yet acked and committed (end "
               "offset as its consumer last fetched it, minus the committable offset), by group.", "gauge",
               ("group", "cluster", "topic", "partition"), subscribe_lag),
        Family("produce_inflight_bytes", "Bytes of Produce requests routed and not yet answered, every stream.",
               "gauge", (), lambda: [((), produce.inflight()[0])]),
        Family("produce_inflight_batches", "Produce requests (batches) routed and not yet answered, every stream.",
               "gauge", (), lambda: [((), produce.inflight()[1])]),
        Family("records_delivered", "Records acknowledged by a cluster (each cluster of a route counts its own).",
               "counter", ("cluster",), lambda: per_cluster("delivered")),
        Family("records_failed", "Records a cluster did not acknowledge (refused, or not delivered in time).",
               "counter", ("cluster",), lambda: per_cluster("failed")),
        Family("bytes_delivered", "Bytes of keys and values acknowledged by a cluster.", "counter", ("cluster",),
               lambda: per_cluster("bytes")),
        Family("delivery_failures", "Records a cluster did not acknowledge, by error code.", "counter",
               ("cluster", "code"), failures),
        Family("delivery_latency_seconds", "From a batch routed to each record's acknowledgement (or failure), by "
               "cluster.", "histogram", ("cluster",), latency, meshcore.LATENCY_BOUNDS_S),
        Family("produce_errors", "Records answered with an error, by code, whatever the cause (no route, an invalid "
               "record, a cluster's refusal, no status lease).", "counter", ("code",),
               lambda: [((code_name(c),), n) for c, n in sorted(meshcore.error_counts().items())]),
        Family("records_queued", "Records a cluster's producer holds, queued or in flight, not yet acknowledged.",
               "gauge", ("cluster",), lambda: [((c,), n) for c, n in routes.outstanding().items()]),
        Family("topic_records_received", "Records Produce requests carried, by topic (__default__: every topic "
               "without a label of its own).", "counter", ("topic",), lambda: received(0)),
        Family("topic_bytes_received", "Bytes of keys and values Produce requests carried, by topic.", "counter",
               ("topic",), lambda: received(1)),
        Family("topic_records_delivered", "Records acknowledged by a cluster, by topic.", "counter",
               ("cluster", "topic"), lambda: per_topic(0)),
        Family("topic_bytes_delivered", "Bytes of keys and values acknowledged by a cluster, by topic.", "counter",
               ("cluster", "topic"), lambda: per_topic(1)),
        Family("topic_records_failed", "Records a cluster's delivery reports failed, by topic (records refused "
               "before they were sent count in produce_errors only).", "counter",
               ("cluster", "topic"), lambda: per_topic(2)),
        *ClientStatistics(routes.producers).families(),
    ]


async def serve(settings: SidecarSettings) -> int:
    """Run the sidecar until SIGTERM/SIGINT; returns the process exit code."""
    loop = asyncio.get_running_loop()
    status = StatusReporter(settings)
    rules = TopicRulesKeeper() if settings.topic_checks else None
    metrics_on = bool(settings.metrics_listen)
    routes = RouteState(settings.delivery_timeout_ms, on_change=status.applied, topic_rules=rules,
                        topic_labels=TopicLabels(settings.metrics_topics) if metrics_on else None,
                        statistics_interval_ms=settings.statistics_interval_ms if metrics_on else 0)
    meshcore.set_max_timestamp_ahead_ms(settings.max_timestamp_ahead_ms)

    def secrets() -> list[str]:
        mapping = routes.mapping
        return [] if mapping is None else [v for c in mapping.clusters.values() for v in c.secrets()]

    librdkafka_log = loop.create_task(rdkafka_log.run(secrets))
    source = MappingSource(settings, routes.apply)
    await source.start()             # raises when there is no mapping at all to serve
    # Half the memory budget for Produce requests in flight (librdkafka holds a copy of each record until Kafka
    # acknowledges it); the rest for Subscribe streams, the process itself and the allocator's slack.
    produce = ProduceServicer(routes, settings.max_inflight_bytes, settings.memory_budget_bytes // 2,
                              routable=status.routable)
    subscribe = SubscribeServicer(routes, StreamSettings(settings.commit_interval_ms, settings.drain_timeout_s))
    status.streams = lambda: produce.streams + subscribe.streams
    status.in_flight = routes.outstanding
    status.catch_up = source.catch_up
    status.oldest_in_flight = produce.oldest_revision_in_flight

    def idle() -> bool:
        table = routes.table
        return produce.inflight_bytes == 0 and (table is None or table.max_queued() == 0)

    trimmer = loop.create_task(memory.trim_after_load(idle))
    rules_keeper = loop.create_task(rules.run() if rules is not None else asyncio.sleep(0))

    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        ("grpc.so_reuseport", 0),
        # Without it, gRPC grows each stream's receive window towards the link's bandwidth-delay product, megabytes
        # a stream: 50 Produce streams held 2.3 GB of requests in gRPC's buffers, before the sidecar's own bounds
        # (which apply as it reads a stream) could hold the app back. Each stream's window stays at 64 KiB.
        ("grpc.http2.bdp_probe", 0),
    ])
    # Without request deserializers or response serializers: the servicers take and give wire bytes.
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Produce": produce.method(), "Subscribe": subscribe.method()}),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (_mesh_pb2.DESCRIPTOR.services_by_name["Mesh"].full_name, health_pb2.DESCRIPTOR.services_by_name[
            "Health"].full_name, reflection.SERVICE_NAME), server)
    sockets = []
    addresses = [(spec, _listen_address(spec, settings.socket_mode)) for spec in settings.listen]
    with local_socket.created_with(settings.socket_mode):
        for spec, address in addresses:
            try:
                if address.startswith("unix:"):
                    server.add_insecure_port(address)
                    sockets.append(address[len("unix:"):])
                elif server.add_insecure_port(address) == 0:
                    raise UsageError(f"cannot listen on {spec}: the port is in use or the address is not local")
            except RuntimeError as e:
                raise UsageError(f"cannot listen on {spec}: {e}") from e
        await server.start()
    for path in sockets:
        local_socket.secure(path, settings.socket_mode)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_tasks: set[asyncio.Task[None]] = set()

    def mesh_health(mapping: Mapping | None) -> None:
        # The Mesh service serves once a mapping with a cluster is in force: before, every record would fail.
        status = (health_pb2.HealthCheckResponse.SERVING if mapping is not None and mapping.clusters
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        task = loop.create_task(health_servicer.set(SERVICE, status))
        health_tasks.add(task)
        task.add_done_callback(health_tasks.discard)

    mesh_health(routes.mapping)
    routes.listeners.add(mesh_health)
    await status.start(reachable=source.connected.is_set())
    metrics = None
    if settings.metrics_listen:
        metrics = MetricsServer(settings.metrics_listen, _families(routes, produce, subscribe, source))
        metrics.start()
    http = None
    if settings.http_listen:
        http = HttpProduce(settings.http_listen, routes, produce, settings.http_max_body_bytes)
        await http.start()
    # Everything allocated so far lives as long as the process: keep it out of the cyclic collector's full passes,
    # which would otherwise walk it (tens of ms) in the middle of the data path.
    gc.freeze()
    log.info("serving listen=%s namespace=%s revision=%d", ",".join(settings.listen), settings.namespace,
             routes.revision)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("stopping: no new streams; answering the batches in flight")
    if http is not None:
        await http.stop()           # no new requests; those in flight are answered first (aiohttp's own wait)
    await health_servicer.enter_graceful_shutdown()
    produce.shutdown()
    # Produce streams end by themselves once every batch they read is answered. Closing the connections only then,
    # and a moment later, lets each app read its last answers and the call's OK before the socket goes.
    lost = 0
    started = loop.time()
    if await produce.wait_idle(settings.shutdown_grace_s):
        await asyncio.sleep(FINAL_STATUS_S)
    else:
        # The grace ran out with records unacknowledged (a cluster down or slow). Closing the producers now fails
        # them (a submit waiting for room in a full queue gives up too), so that every batch read is still
        # answered, with CLUSTER_UNAVAILABLE for what a cluster did not take, before the connections close.
        log.warning("stopping: the shutdown grace (%gs) ran out; failing the records not yet acknowledged",
                    settings.shutdown_grace_s)
        lost = await routes.close(flush_timeout_ms=0)
        if await produce.wait_idle(ANSWER_AFTER_GRACE_S):
            await asyncio.sleep(FINAL_STATUS_S)
    await server.stop(grace=max(0.0, settings.shutdown_grace_s - (loop.time() - started)))
    # Every submit has returned before a producer is closed: a batch being enqueued is never cut short (unless the
    # grace ran out, above).
    await produce.close()
    await source.stop()
    await status.stop()
    lost += await routes.close(flush_timeout_ms=int(settings.shutdown_grace_s * 1000))
    if metrics is not None:
        await asyncio.to_thread(metrics.stop)      # a scrape in progress may be waiting for the loop
    librdkafka_log.cancel()
    trimmer.cancel()
    rules_keeper.cancel()
    await asyncio.gather(librdkafka_log, trimmer, rules_keeper, return_exceptions=True)
    if lost:
        log.warning("stopped with %d records undelivered", lost)
        return 1
    log.info("stopped")
    return 0


def run(settings: SidecarSettings) -> int:
    try:
        return asyncio.run(serve(settings))
    except MeshError:
        raise
