"""The sandbox's etcd: one member on loopback ports, data in the sandbox's folder."""

from __future__ import annotations

import pathlib
import shutil

from sidecar.config import DevSettings
from sidecar.dev.ports import HOST
from sidecar.errors import SandboxError


def command(settings: DevSettings, data_dir: pathlib.Path, client_port: int, peer_port: int) -> list[str]:
    binary = shutil.which(settings.etcd_bin)
    if binary is None:
        raise SandboxError(f"etcd was not found ({settings.etcd_bin!r}); install Debian's etcd-server "
                           "(apt-get install etcd-server) or set ETCD_BIN")
    client = f"http://{HOST}:{client_port}"
    peer = f"http://{HOST}:{peer_port}"
    return [
        binary, "--name", "sandbox", "--data-dir", str(data_dir),
        "--listen-client-urls", client, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"sandbox={peer}", "--initial-cluster-state", "new",
        "--logger", "zap", "--log-level", "warn",
    ]
