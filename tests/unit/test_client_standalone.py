"""The Python client is a plain gRPC client: without the sidecar's native core (as where only the client is installed,
with no librdkafka) it imports, encodes with its pure-Python encoder and produces."""

from __future__ import annotations

import pathlib
from typing import Any

from tests.isolation import run_isolated

# Nothing of the client nor of the core is imported at the top: the child process of the first test imports this
# module, and must import the client without the core.


def _produce_without_the_core(folder: str) -> list[Any]:
    import concurrent.futures as cf
    import sys
    from collections.abc import Iterator

    sys.modules["meshcore"] = None  # type: ignore[assignment]    # `import meshcore` now raises ImportError
    import grpc

    from sidecar.api.kafkamesh.v1 import mesh_pb2
    from sidecar.client import Producer
    from sidecar.client import producer as module

    got: list[mesh_pb2.ProduceRequest] = []

    def produce(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for raw in requests:
            got.append(mesh_pb2.ProduceRequest.FromString(raw))
            yield mesh_pb2.ProduceResponse(batch_id=got[-1].batch_id, ok_count=len(got[-1].records)).SerializeToString()

    server = grpc.server(cf.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("kafkamesh.v1.Mesh", {
        "Produce": grpc.stream_stream_rpc_method_handler(produce)}),))
    target = f"unix:{folder}/fake.sock"
    server.add_insecure_port(target)
    server.start()
    try:
        p = Producer(target)
        p.send_batch("t", [b"a", b"b"], keys=[b"k", None]).result(10)
        p.send("t", b"c").result(10)
        p.close()
    finally:
        server.stop(0)
    return [module._native_encode is None,
            sorted((r.value, r.key if r.HasField("key") else None) for req in got for r in req.records)]


def test_the_client_produces_without_the_native_core(tmp_path: pathlib.Path) -> None:
    assert run_isolated(_produce_without_the_core, str(tmp_path)) == [True, [(b"a", b"k"), (b"b", None),
                                                                             (b"c", None)]]


def test_the_clients_request_bound_is_the_cores() -> None:
    import meshcore
    from sidecar.client import producer

    assert producer.MAX_REQUEST_RECORDS == meshcore.REQUEST_RECORDS_LIMIT
