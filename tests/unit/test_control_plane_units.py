"""Pure control-plane logic: settings, etcd key layout and endpoints, the cluster model, port allocation."""

from __future__ import annotations

import json
import pathlib
import socket

import pytest

from sidecar.config import DevSettings
from sidecar.control.etcd import parse_endpoint
from sidecar.control.keys import Keys
from sidecar.dev import ports
from sidecar.errors import MappingError, UsageError
from sidecar.mapping.model import Cluster, check_name


def test_settings_come_from_the_environment_with_xdg_defaults() -> None:
    s = DevSettings.from_env({"HOME": "/home/u"})
    assert s.state_dir == pathlib.Path("/home/u/.local/state/kafka-mesh/sandbox")
    assert s.cache_dir == pathlib.Path("/home/u/.cache/kafka-mesh")
    assert s.kafka_home is None and s.broker_heap_mb == 384
    s = DevSettings.from_env({"HOME": "/h", "KAFKA_MESH_STATE_DIR": "/s", "KAFKA_HOME": "/k", "ETCD_BIN": "/e",
                              "KAFKA_MESH_BROKER_HEAP_MB": "256"})
    assert (s.state_dir, s.kafka_home, s.etcd_bin, s.broker_heap_mb) == (
        pathlib.Path("/s"), pathlib.Path("/k"), "/e", 256)


@pytest.mark.parametrize("heap", ["64", "lots", "-1"])
def test_bad_heap_setting_is_refused(heap: str) -> None:
    with pytest.raises(ValueError, match="KAFKA_MESH_BROKER_HEAP_MB"):
        DevSettings.from_env({"HOME": "/h", "KAFKA_MESH_BROKER_HEAP_MB": heap})


def test_key_layout() -> None:
    k = Keys("default")
    assert (k.pointer, k.blob("ab" * 32), k.status) == (
        "/kafka-mesh/default/mapping", "/kafka-mesh/default/blobs/" + "ab" * 32, "/kafka-mesh/default/status/")
    with pytest.raises(UsageError, match="invalid namespace name 'a/b'"):
        Keys("a/b")
    with pytest.raises(UsageError, match="invalid cluster name ''"):
        check_name("cluster", "")


@pytest.mark.parametrize("url, expected", [
    ("http://127.0.0.1:2379", ("127.0.0.1", 2379)), ("127.0.0.1:40000", ("127.0.0.1", 40000)),
    ("http://localhost", ("localhost", 2379)),
])
def test_etcd_endpoints(url: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(url) == expected


@pytest.mark.parametrize("url", ["https://x:1/", "http://:80", "http://x:99999", "http://x:1/path"])
def test_bad_etcd_endpoints_are_refused(url: str) -> None:
    with pytest.raises(UsageError, match="invalid etcd endpoint"):
        parse_endpoint(url)


def test_cluster_round_trips_through_its_etcd_value() -> None:
    c = Cluster("c1", "127.0.0.1:19092,127.0.0.1:19093", "consumer", {"linger.ms": "5"})
    assert Cluster.decode("c1", c.encode()) == c
    assert json.loads(c.encode()) == {"bootstrap": "127.0.0.1:19092,127.0.0.1:19093", "role": "consumer",
                                      "config": {"linger.ms": "5"}}


@pytest.mark.parametrize("value, message", [
    ([], "clusters.c1: must be an object"),
    ({}, "clusters.c1.bootstrap: required"),
    ({"bootstrap": "nohost"}, "clusters.c1.bootstrap: 'nohost' is not HOST:PORT"),
    ({"bootstrap": "h:1", "role": "leader"}, "clusters.c1.role: must be one of fronting, consumer"),
    ({"bootstrap": "h:1", "config": {"linger.ms": 5}}, "clusters.c1.config: must map"),
    ({"bootstrap": "h:1", "color": "red"}, "clusters.c1: unknown field(s) color"),
])
def test_invalid_cluster_is_refused_naming_key_and_reason(value: object, message: str) -> None:
    with pytest.raises(MappingError) as e:
        Cluster.parse("c1", value)
    assert str(e.value).startswith(message)


def test_undecodable_cluster_value_names_the_cluster() -> None:
    with pytest.raises(MappingError, match="clusters.c9: not valid JSON"):
        Cluster.decode("c9", b"{nope")


def test_allocated_ports_are_distinct_and_free() -> None:
    got = ports.allocate(10)
    assert len(set(got)) == 10 and all(ports.port_free(p) for p in got)


def test_port_base_in_use_is_named() -> None:
    with socket.socket() as s:
        s.bind((ports.HOST, 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(UsageError, match=f"port {busy} on 127.0.0.1 is in use"):
            ports.allocate(2, base=busy)
    with pytest.raises(UsageError, match="--port-base must be between"):
        ports.allocate(4, base=80)


def test_cluster_ids_never_start_with_a_dash() -> None:
    from sidecar.dev.kafka_node import new_cluster_id

    ids = [new_cluster_id() for _ in range(5000)]   # about 1 in 64 raw ids starts with '-'
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_a_move_lock_is_taken_over_only_from_a_dead_process_of_this_host() -> None:
    import os
    import socket
    import subprocess

    from sidecar.manage.move import _dead_here, _owner

    here = socket.gethostname()
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert _dead_here(_owner(gone.pid))
    assert not _dead_here(_owner(os.getpid()))                         # alive
    dead = _owner(gone.pid)
    assert not _dead_here(dead.replace(here, here + "-elsewhere", 1))  # another host's: cannot tell
    assert not _dead_here(dead.split(" boot ")[0] + " boot other-boot/1")  # another boot or pid namespace
    assert not _dead_here(f"{here} pid {gone.pid}")                    # no machine identity: wait it out
    assert not _dead_here("garbage") and not _dead_here(f"{here} pid x")
