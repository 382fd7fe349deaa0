"""The Python client is a plain gRPC client: without the sidecar's native core (as where only the client is installed,
with no librdkafka) it imports, encodes with its pure-Python encoder and produces."""

from __future__ import annotations

import pathlib
from typing import Any

from tests.isolation import run_isolated

# Nothing of the client nor of the core is imported at the top: the child process of the first test imports this
# module, and must import the client without the core.


def _produce_without_the_core(folder: str) -> list[Any]:
    import sys

    sys.modules["meshcore"] = None  # type: ignore[assignment]    # `import meshcore` now raises ImportError
    from sidecar.client import Producer
    from sidecar.client import producer as module
    from tests.unit.test_client_producer import FakeSidecar

    fake = FakeSidecar(pathlib.Path(folder) / "fake.sock")
    try:
        p = Producer(fake.target)
        p.send_batch("t", [b"a", b"b"], keys=[b"k", None]).result(10)
        p.send("t", b"c").result(10)
        p.close()
    finally:
        fake.stop()
    return [module._native_encode is None, "meshcore" in sys.modules and sys.modules["meshcore"] is not None,
            sorted((r.value, r.key if r.HasField("key") else None) for req in fake.requests for r in req.records)]


def test_the_client_produces_without_the_native_core(tmp_path: pathlib.Path) -> None:
    assert run_isolated(_produce_without_the_core, str(tmp_path)) == [True, False, [(b"a", b"k"), (b"b", None),
                                                                             (b"c", None)]]


def test_the_clients_request_bound_is_the_cores() -> None:
    import meshcore
    from sidecar.client import producer

    assert producer.MAX_REQUEST_RECORDS == meshcore.REQUEST_RECORDS_LIMIT
