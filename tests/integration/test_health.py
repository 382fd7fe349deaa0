"""Health as a load balancer or a supervisor sees it: the process serves at once, the Mesh service only once a
mapping with a cluster is in force, and again not once the mapping has none."""

from __future__ import annotations

import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.dev.sandbox import Sandbox
from tests.integration.sidecar_proc import apply, clusters_doc, new_namespace


def _status(target: str, service: str) -> str:
    with grpc.insecure_channel(target) as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))


def _until(target: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (got := _status(target, "kafkamesh.v1.Mesh")) != status:
        assert time.monotonic() < deadline, f"kafkamesh.v1.Mesh stayed {got}, expected {status}"
        time.sleep(0.1)


def test_the_mesh_service_serves_only_with_a_cluster_in_the_mapping(sandbox: Sandbox, sidecar_factory: Any) -> None:
    ns = new_namespace()
    sc = sidecar_factory(ns)                          # no mapping in etcd for this namespace yet
    assert _status(sc.target, "") == "SERVING"
    assert _status(sc.target, "kafkamesh.v1.Mesh") == "NOT_SERVING"
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {"__default__": {"where": [{"sink": "c1"}]}}})
    _until(sc.target, "SERVING")
    apply(sandbox, ns, {"clusters": {}, "producer": {}, "consumer": {}})
    _until(sc.target, "NOT_SERVING")
