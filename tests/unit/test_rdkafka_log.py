"""librdkafka's log lines reach Python logging, by cluster and level, with the cluster's secrets hidden; none goes
to stderr. No broker: a refused connection is what librdkafka logs."""

from __future__ import annotations

import logging
import time

import pytest

import meshcore
from sidecar import rdkafka_log
from sidecar.mapping.model import Cluster, is_secret


def test_a_refused_connection_is_logged_under_the_cluster_with_secrets_hidden(
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    rdkafka_log.drain(lambda: [])             # what earlier tests left in the core's ring
    p = meshcore.create_producer("c-logs", {"bootstrap.servers": "127.0.0.1:9", "log_level": "4"})
    try:
        got: list[logging.LogRecord] = []
        deadline = time.monotonic() + 10
        with caplog.at_level(logging.DEBUG, logger="kafka_mesh.librdkafka"):
            while not got and time.monotonic() < deadline:
                time.sleep(0.1)
                rdkafka_log.drain(lambda: ["127.0.0.1:9"])       # as if the address were a secret
                got = [r for r in caplog.records if r.name == "kafka_mesh.librdkafka.c-logs"]
    finally:
        p.close(flush_timeout_ms=0)
    assert got, "librdkafka logged nothing for the unreachable cluster within 10 s"
    assert {r.levelno for r in got} <= {logging.ERROR, logging.WARNING}
    assert any("Connection refused" in r.getMessage() for r in got), [r.getMessage() for r in got]
    assert all("127.0.0.1:9" not in r.getMessage() and "***" in r.getMessage() for r in got)
    assert "%3|" not in capfd.readouterr().err       # librdkafka's own stderr format


def test_scrub_hides_every_secret_and_longer_ones_first() -> None:
    assert rdkafka_log.scrub("user=bob pass=hunter22 again hunter22", ["hunter22"]) == "user=bob pass=*** again ***"
    assert rdkafka_log.scrub("no secrets here", ["", "x-y-z"]) == "no secrets here"


def test_secret_properties_are_recognised() -> None:
    for key in ("sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret",
                "ssl.key.pem", "sasl.oauthbearer.config", "custom.secret"):
        assert is_secret(key), key
    for key in ("sasl.username", "ssl.key.location", "linger.ms", "bootstrap.servers"):
        assert not is_secret(key), key
    cluster = Cluster("c1", "127.0.0.1:9092", config={"sasl.password": "pw", "sasl.username": "me"})
    assert cluster.secrets() == ["pw"]
