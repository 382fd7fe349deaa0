"""Loopback port allocation for the sandbox."""

from __future__ import annotations

import socket

from sidecar.errors import UsageError

HOST = "127.0.0.1"


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def allocate(count: int, base: int | None = None) -> list[int]:
    """count ports on 127.0.0.1: free ones chosen by the kernel, or base, base+1, ... which must all be free."""
    if base is not None:
        if not 1024 <= base <= 65535 - count:
            raise UsageError(f"--port-base must be between 1024 and {65535 - count}, got {base}")
        ports = list(range(base, base + count))
        for port in ports:
            if not port_free(port):
                raise UsageError(f"port {port} on {HOST} is in use (the sandbox needs {base}..{base + count - 1})")
        return ports
    # Hold every socket until all are chosen so that the kernel does not hand out one port twice.
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
