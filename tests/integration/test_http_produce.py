"""HTTP produce against a real sidecar on real clusters: records posted land where the mapping says, with the same
per-record results as Produce; bad requests get a clear 4xx and write nothing; schemathesis fuzzes the endpoint from
its OpenAPI document (docs/http-api.yaml) and finds no failure."""

from __future__ import annotations

import base64
import json
import pathlib
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from sidecar.dev.sandbox import Sandbox
from tests.integration.kafka_helpers import create_topic, read_all
from tests.integration.sidecar_proc import apply, clusters_doc, new_namespace

pytestmark = pytest.mark.integration

OPENAPI = pathlib.Path(__file__).resolve().parents[2] / "docs" / "http-api.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(port: int, topic: str, body: bytes, content_type: str = "application/json",
         query: str = "") -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/topics/{topic}/records{query}", data=body,
                                 headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_records_posted_land_where_the_mapping_says(sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    c1, c2, c3 = sandbox.clusters
    for c in (c1, c2):
        create_topic(c.bootstrap, topic, partitions=2)
    ns = new_namespace()
    revision = apply(sandbox, ns, {"clusters": clusters_doc(sandbox),
                                   "producer": {topic: {"where": [{"sink": "c1"}, {"sink": "c2"}]}}})
    port = free_port()
    sidecar_factory(ns, "--http-listen", f"127.0.0.1:{port}")
    text = [{"key": f"k{i}", "value": f"text-{i}", "headers": {"h": f"v{i}", "empty": None}} for i in range(100)]
    status, answer = post(port, topic, json.dumps({"records": text}).encode())
    assert status == 200, answer
    assert (answer["mapping_revision"], answer["ok"], answer["failed"]) == (revision, 100, 0)
    assert answer["results"] == [{"clusters": ["c1", "c2"]}] * 100
    binary = [{"key": base64.b64encode(bytes([i, 255])).decode(), "value": base64.b64encode(b"\x00\xff" * i).decode(),
               "headers": [["b", base64.b64encode(b"\xfe").decode()], ["b", None]]} for i in range(10)]
    status, answer = post(port, topic, json.dumps({"records": binary}).encode(),
                          "application/vnd.kafka-mesh.base64+json")
    assert (status, answer["ok"]) == (200, 10), answer
    status, answer = post(port, topic, b"a raw body \x00\x01", "application/octet-stream", "?key=raw-key")
    assert (status, answer["ok"], answer["results"]) == (200, 1, [{"clusters": ["c1", "c2"]}]), answer
    for c in (c1, c2):
        got = read_all(c.bootstrap, topic, 111)
        assert len(got) == 111, c.name
        by_value = {m.value(): m for m in got}
        m = by_value[b"text-7"]
        assert m.key() == b"k7" and m.headers() == [("h", b"v7"), ("empty", None)]
        m = by_value[b"\x00\xff" * 3]
        assert m.key() == bytes([3, 255]) and m.headers() == [("b", b"\xfe"), ("b", None)]
        assert by_value[b"a raw body \x00\x01"].key() == b"raw-key"
    assert read_all(c3.bootstrap, topic, 1, timeout=3) == []          # nowhere else


def test_bad_requests_get_a_clear_4xx_and_unrouted_records_their_error(
        sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {topic: {"where": [{"sink": "c1"}]}}})
    port = free_port()
    sidecar_factory(ns, "--http-listen", f"127.0.0.1:{port}", "--http-max-body-bytes", "4096")
    cases = [
        (b"{not json", "application/json", 400, "the body is not valid JSON"),
        (b'{"records": []}', "application/json", 400, "records: at least one record"),
        (b'{"records": [{"value": "x", "colour": 1}]}', "application/json", 400,
         "records[0]: unknown field(s) colour"),
        (b'{"records": [{"value": "!!"}]}', "application/vnd.kafka-mesh.base64+json", 400,
         "records[0].value: not valid base64"),
        (b'{"records": [{"partition": -1}]}', "application/json", 400,
         "records[0].partition: must be an integer from 0 to 2147483647, got -1"),
        (b'{"records": [{"value": "\\ud800"}]}', "application/json", 400,
         "records[0].value: not valid Unicode text (a lone surrogate)"),
        (b"x" * 5000, "application/octet-stream", 413, "over the sidecar's limit of 4,096"),
    ]
    for body, ctype, code, message in cases:
        status, answer = post(port, topic, body, ctype)
        assert (status, message in answer.get("error", "")) == (code, True), (body[:40], status, answer)
    status, answer = post(port, "bad%20topic", b"x", "application/octet-stream")
    assert status == 400 and "invalid topic name 'bad topic'" in answer["error"]
    status, answer = post(port, f"{topic}-unrouted", b'{"records": [{"value": "x"}, {"value": "y"}]}')
    assert (status, answer["ok"], answer["failed"]) == (200, 0, 2)
    assert answer["results"][1]["error"]["code"] == "NO_ROUTE"
    assert f"topic '{topic}-unrouted': no producer route" in answer["results"][0]["error"]["message"]


def test_no_mapping_with_a_cluster_is_503(sandbox: Sandbox, sidecar_factory: Any, topic: str) -> None:
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": {}, "producer": {}})
    port = free_port()
    sidecar_factory(ns, "--http-listen", f":{port}")
    status, answer = post(port, topic, b"x", "text/plain")
    assert status == 503 and answer["error"] == "the sidecar has no mapping with a cluster in force yet"


def test_schemathesis_finds_no_failure(sandbox: Sandbox, sidecar_factory: Any, tmp_path: pathlib.Path) -> None:
    """Every generated request, valid or not, gets a documented answer: no 5xx, status codes, content types and
    bodies as the document says. The mapping routes no topic (every record answers NO_ROUTE): nothing is written."""
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {}})
    port = free_port()
    sidecar_factory(ns, "--http-listen", f"127.0.0.1:{port}", "--http-max-body-bytes", str(1 << 20))
    st = shutil.which("schemathesis") or shutil.which("st")
    argv = [st] if st else [sys.executable, "-m", "schemathesis.cli"]
    run = subprocess.run([*argv, "--config-file", str(pathlib.Path(__file__).with_name("schemathesis.toml")),
                          "run", str(OPENAPI), "--url", f"http://127.0.0.1:{port}", "--checks", "all",
                          "--max-examples", "60", "--seed", "1", "--workers", "2",
                          "--report", "junit", "--report-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
