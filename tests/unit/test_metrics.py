"""The metrics listener's address and the families read at scrape time (no server)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.errors import UsageError
from sidecar.metrics import Family, MetricsServer, parse_listen, scrape

pytestmark = pytest.mark.unit


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen(":9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    assert parse_listen("0.0.0.0:9464") == ("0.0.0.0", 9464)       # told: any address
    assert parse_listen("localhost:9464") == ("localhost", 9464)
    for bad in ("9464", "host:", "127.0.0.1:0", "127.0.0.1:70000", "example.org:9464", "127.0.0.1:x"):
        with pytest.raises(UsageError, match="invalid --metrics-listen"):
            parse_listen(bad)


def test_families_are_read_at_each_scrape_and_one_failing_spares_the_others() -> None:
    count = [0]

    def broken() -> list[tuple[tuple[str, ...], float]]:
        raise RuntimeError("boom")

    server = MetricsServer("127.0.0.1:1", [
        Family("records_delivered", "Records acknowledged.", "counter", ("cluster",),
               lambda: [(("c1",), count[0]), (("c2",), 2.0)]),
        Family("broken", "Never there.", "gauge", (), broken),
        Family("streams", "Streams open.", "gauge", (), lambda: [((), 3)]),
    ])
    count[0] = 41
    text = scrape(server.registry).decode()
    samples = {(s.name, tuple(s.labels.values())): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("kafka_mesh_records_delivered_total", ("c1",))] == 41
    assert samples[("kafka_mesh_records_delivered_total", ("c2",))] == 2
    assert samples[("kafka_mesh_streams", ())] == 3
    assert not any(name.startswith("kafka_mesh_broken") for name, _ in samples)
    count[0] = 42
    assert b'kafka_mesh_records_delivered_total{cluster="c1"} 42.0' in scrape(server.registry)
