"""A small asyncio etcd v3 client for kafka-mesh, over aetcd.

aetcd is chosen because the sidecar's control plane runs on one asyncio loop (grpc.aio), and aetcd speaks etcd's
gRPC API on that same loop; it imports with current protobuf, which the `etcd3` package does not. Everything else
in kafka-mesh talks to etcd through this module, which turns aetcd's errors into EtcdError naming the endpoint.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aetcd

from sidecar.errors import EtcdError, UsageError

#: The largest etcd response this client takes.
MAX_RESPONSE_BYTES = 256 << 20


@dataclass(frozen=True)
class Event:
    """One change seen by a watch: PUT or DELETE of key at revision."""

    kind: str
    key: str
    value: bytes
    revision: int


def parse_endpoint(url: str) -> tuple[str, int]:
    """'http://127.0.0.1:2379' or '127.0.0.1:2379' -> (host, port)."""
    parsed = urllib.parse.urlsplit(url if "//" in url else f"http://{url}")
    if parsed.scheme not in ("http", "") or not parsed.hostname or parsed.path not in ("", "/"):
        raise UsageError(f"invalid etcd endpoint {url!r}: expected http://HOST:PORT")
    try:
        port = parsed.port or 2379
    except ValueError:
        raise UsageError(f"invalid etcd endpoint {url!r}: bad port") from None
    return parsed.hostname, port


class Etcd:
    """An open connection to one etcd endpoint. Use as an async context manager."""

    def __init__(self, endpoint: str, timeout: float = 5.0) -> None:
        self.endpoint = endpoint
        host, port = parse_endpoint(endpoint)
        # A mapping of a million routes reads back as tens of megabytes: past gRPC's default 4 MiB per response.
        self._client = aetcd.Client(host=host, port=port, timeout=timeout, connect_wait_timeout=int(max(1, timeout)),
                                    options={"grpc.max_receive_message_length": MAX_RESPONSE_BYTES})

    async def __aenter__(self) -> Etcd:
        try:
            await self._client.connect()
        except Exception as e:
            raise EtcdError(f"cannot reach etcd at {self.endpoint}: {e}") from e
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._client.close()

    def _error(self, what: str, e: Exception) -> EtcdError:
        return EtcdError(f"etcd at {self.endpoint}: {what} failed: {type(e).__name__}: {e}")

    async def put(self, key: str, value: bytes, lease: Any = None) -> int:
        """Put one key (attached to lease, when given); returns the new revision."""
        try:
            r = await self._client.put(key.encode(), value, lease=lease)
        except Exception as e:
            raise self._error(f"put {key}", e) from e
        return int(r.header.revision)

    async def lease(self, ttl: int) -> Any:
        """A new lease of ttl seconds; keys put with it vanish when it is not refreshed in time."""
        try:
            return await self._client.lease(ttl)
        except Exception as e:
            raise self._error("lease grant", e) from e

    async def refresh(self, lease: Any) -> None:
        """Keep lease alive for its TTL from now; raises EtcdError when it has expired already."""
        try:
            reply = await lease.refresh()
        except Exception as e:
            raise self._error("lease refresh", e) from e
        if reply is None or reply.TTL <= 0:
            raise EtcdError(f"etcd at {self.endpoint}: lease {lease.id} has expired")

    async def revoke(self, lease: Any) -> None:
        try:
            await lease.revoke()
        except Exception as e:
            raise self._error("lease revoke", e) from e

    async def get(self, key: str) -> tuple[bytes, int] | None:
        """(value, mod_revision) of key, or None when absent."""
        try:
            r = await self._client.get(key.encode())
        except Exception as e:
            raise self._error(f"get {key}", e) from e
        return None if r is None else (bytes(r.value), int(r.mod_revision))

    async def get_prefix(self, prefix: str) -> tuple[dict[str, bytes], int]:
        """Every key under prefix with its value, and the store revision they were read at (one consistent read)."""
        try:
            r = await self._client.get_prefix(prefix.encode())
        except Exception as e:
            raise self._error(f"get prefix {prefix}", e) from e
        items = {bytes(kv.key).decode(): bytes(kv.value) for kv in r}
        return items, int(r.header.revision)

    async def get_prefix_revisions(self, prefix: str) -> tuple[dict[str, tuple[bytes, int]], int]:
        """Like get_prefix, with each key's mod_revision: {key: (value, mod_revision)}, read revision."""
        try:
            r = await self._client.get_prefix(prefix.encode())
        except Exception as e:
            raise self._error(f"get prefix {prefix}", e) from e
        items = {bytes(kv.key).decode(): (bytes(kv.value), int(kv.mod_revision)) for kv in r}
        return items, int(r.header.revision)

    async def keys_under(self, prefix: str) -> dict[str, int]:
        """The keys under prefix with their mod_revision (no values)."""
        try:
            r = await self._client.get_prefix(prefix.encode(), keys_only=True)
        except Exception as e:
            raise self._error(f"get keys {prefix}", e) from e
        return {bytes(kv.key).decode(): int(kv.mod_revision) for kv in r}

    async def put_batched(self, items: Mapping[str, bytes], max_ops: int, max_bytes: int) -> None:
        """Put items in as many transactions as etcd's request limits need (at most max_ops operations and about
        max_bytes of keys and values each): the items are not written at one revision."""
        batch: list[Any] = []
        size = 0
        tx = self._client.transactions
        for key, value in items.items():
            if batch and (len(batch) >= max_ops or size + len(key) + len(value) > max_bytes):
                await self._commit(batch)
                batch, size = [], 0
            batch.append(tx.put(key.encode(), value))
            size += len(key) + len(value)
        if batch:
            await self._commit(batch)

    async def delete_batched(self, keys: list[str], max_ops: int) -> None:
        tx = self._client.transactions
        for start in range(0, len(keys), max_ops):
            await self._commit([tx.delete(k.encode()) for k in keys[start:start + max_ops]])

    async def delete_unchanged(self, keys: Mapping[str, int], max_ops: int) -> int:
        """Delete each key whose mod_revision is still the one given (a key written since stays); returns how many
        were deleted. In transactions of max_ops keys; one whose compares fail is retried key by key."""
        tx = self._client.transactions
        items = sorted(keys.items())
        deleted = 0
        for start in range(0, len(items), max_ops):
            batch = items[start:start + max_ops]
            if await self._guarded_delete(tx, batch):
                deleted += len(batch)
                continue
            for one in batch:
                deleted += await self._guarded_delete(tx, [one])
        return deleted

    async def _guarded_delete(self, tx: Any, batch: list[tuple[str, int]]) -> bool:
        try:
            ok, _ = await self._client.transaction(compare=[tx.mod(k.encode()) == rev for k, rev in batch],
                                                   success=[tx.delete(k.encode()) for k, _ in batch], failure=[])
        except Exception as e:
            raise self._error("transaction", e) from e
        return bool(ok)

    async def _commit(self, ops: list[Any]) -> None:
        try:
            await self._client.transaction(compare=[], success=ops, failure=[])
        except Exception as e:
            raise self._error("transaction", e) from e

    async def swap(self, key: str, value: bytes, expect_mod_revision: int, lease: Any = None) -> int | None:
        """Put key (attached to lease, when given) only if its mod_revision is still expect_mod_revision (0: the key
        does not exist): returns the new revision, or None when someone changed the key first."""
        tx = self._client.transactions
        try:
            ok, responses = await self._client.transaction(
                compare=[tx.mod(key.encode()) == expect_mod_revision],
                success=[tx.put(key.encode(), value, lease=lease)], failure=[])
        except Exception as e:
            raise self._error(f"swap {key}", e) from e
        if not ok:
            return None
        last = responses[-1]
        return int(getattr(last, last.WhichOneof("response")).header.revision)

    async def watch_prefix(self, prefix: str, start_revision: int | None = None) -> AsyncIterator[Event]:
        """Every change under prefix from start_revision on (default: changes after now), in revision order."""
        try:
            watch = await self._client.watch_prefix(prefix.encode(), start_revision=start_revision)
        except Exception as e:
            raise self._error(f"watch {prefix}", e) from e
        try:
            async for ev in watch:
                # aetcd gives the kind as an EventKind or as its plain string value.
                kind = getattr(ev.kind, "value", ev.kind)
                yield Event(kind=str(kind), key=bytes(ev.kv.key).decode(), value=bytes(ev.kv.value),
                            revision=int(ev.kv.mod_revision))
        except aetcd.ClientError as e:
            raise self._error(f"watch {prefix}", e) from e
        finally:
            await watch.cancel()
