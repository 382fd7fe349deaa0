"""Local security of a sidecar on a shared host, with the real `kafka-mesh` process: who may connect to its socket,
that a second sidecar never takes a live one's socket, that cached cluster config is the user's alone, and that
`mapping show` does not print secrets unless asked."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import socket
import stat
import subprocess
import time
import uuid
from typing import Any

import pytest

from sidecar.control import mapstore
from sidecar.dev.sandbox import Sandbox
from tests.integration.sidecar_proc import SidecarProc, apply, batch, clusters_doc, new_namespace, produce


def _mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def ns(sandbox: Sandbox) -> str:
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox), "producer": {"__default__": {"where": [{"sink": "c1"}]}}})
    return ns


def _exits(proc: SidecarProc, timeout: float = 30) -> tuple[int, str]:
    assert proc.proc is not None
    rc = proc.proc.wait(timeout)
    return rc, proc.log.read_text()


def test_the_socket_is_the_users_alone_whatever_the_umask(sidecar_factory: Any, ns: str,
                                                          tmp_path: pathlib.Path) -> None:
    new_folder = tmp_path / "run" / "km"
    old = os.umask(0o002)                       # the sidecar inherits a umask that would leave its socket 0775
    try:
        proc = sidecar_factory(ns, "--listen", f"unix:{new_folder}/sidecar.sock")
    finally:
        os.umask(old)
    assert _mode(proc.socket) == 0o600
    assert _mode(new_folder / "sidecar.sock") == 0o600
    assert _mode(new_folder) == 0o700                                   # a folder it made: its owner's only
    topic = f"sec-{uuid.uuid4().hex[:8]}"
    got = produce(f"unix:{new_folder}/sidecar.sock", [batch(1, [(topic, "a")])])
    assert got[1].ok_count == 1


def test_a_group_mode_gives_the_group_the_socket(sidecar_factory: Any, ns: str, tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "grp"
    proc = sidecar_factory(ns, "--socket-mode", "660", "--listen", f"unix:{folder}/sidecar.sock")
    assert _mode(proc.socket) == 0o660 and _mode(folder / "sidecar.sock") == 0o660
    assert _mode(folder) == 0o750


@pytest.mark.parametrize("mode, why", [("666", "every user of the host"), ("400", "owner read and write"),
                                       ("rw", "octal permissions")])
def test_an_unsafe_or_invalid_socket_mode_is_refused(sidecar_factory: Any, ns: str, mode: str, why: str) -> None:
    proc = sidecar_factory(ns, "--socket-mode", mode, wait=False)
    rc, log = _exits(proc)
    assert rc == 2 and "socket-mode" in log and why in log, log


def test_a_second_sidecar_on_the_same_socket_exits_and_the_first_serves_on(sidecar_factory: Any, sandbox: Sandbox,
                                                                           ns: str) -> None:
    first = sidecar_factory(ns)
    second = SidecarProc(sandbox, first.workdir, ns)         # same socket path
    second.log = first.workdir / "second.log"
    second.start(wait=False)
    rc, log = _exits(second)
    assert rc == 2, log
    assert f"cannot listen on unix:{first.socket}: another process serves on it" in log
    assert stat.S_ISSOCK(os.lstat(first.socket).st_mode)
    topic = f"sec-{uuid.uuid4().hex[:8]}"
    got = produce(first.target, [batch(1, [(topic, "a"), (topic, "b")])])
    assert got[1].ok_count == 2 and first.alive()


def test_a_stale_socket_of_an_earlier_run_is_replaced(sidecar_factory: Any, sandbox: Sandbox, ns: str,
                                                       tmp_path: pathlib.Path) -> None:
    workdir = tmp_path / "stale"
    workdir.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:     # bound, never listening: what a crash leaves
        s.bind(str(workdir / "sidecar.sock"))
    proc = SidecarProc(sandbox, workdir, ns).start()
    try:
        assert produce(proc.target, [batch(1, [(f"sec-{uuid.uuid4().hex[:8]}", "a")])])[1].ok_count == 1
    finally:
        proc.stop()


def test_a_file_that_is_not_a_socket_is_left_alone(sandbox: Sandbox, ns: str, tmp_path: pathlib.Path) -> None:
    (tmp_path / "sidecar.sock").write_text("not a socket")
    proc = SidecarProc(sandbox, tmp_path, ns).start(wait=False)
    rc, log = _exits(proc)
    assert rc == 2 and "a file that is not a socket is there; not removing it" in log, log
    assert (tmp_path / "sidecar.sock").read_text() == "not a socket"


def test_a_folder_every_user_may_write_is_refused(sandbox: Sandbox, ns: str, tmp_path: pathlib.Path) -> None:
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    os.chmod(open_folder, 0o777)                 # no sticky bit: anyone could swap the socket
    proc = SidecarProc(sandbox, tmp_path, ns, "--listen", f"unix:{open_folder}/sidecar.sock").start(wait=False)
    rc, log = _exits(proc)
    assert rc == 2 and f"every user may write to its folder {open_folder} (mode 777)" in log, log
    assert not (open_folder / "sidecar.sock").exists()


def test_the_mapping_cache_is_the_users_alone(sidecar_factory: Any, sandbox: Sandbox, tmp_path: pathlib.Path) -> None:
    ns = new_namespace()
    apply(sandbox, ns, {"clusters": clusters_doc(sandbox, c1={"sasl.password": "hunter2-cache"}),
                        "producer": {"__default__": {"where": [{"sink": "c2"}]}}})
    old = os.umask(0o002)                       # without care, the cache would be 0664
    try:
        proc = sidecar_factory(ns)
    finally:
        os.umask(old)
    cache = proc.workdir / "cache" / f"mapping-{ns}.json"
    deadline = time.monotonic() + 10
    while not cache.exists() and time.monotonic() < deadline:      # written in the background once applied
        time.sleep(0.05)
    stored = json.loads(cache.read_text())
    doc = mapstore.join(stored["parts"], {i: base64.b64decode(b) for i, b in stored["blobs"].items()}, "cache")
    assert doc["clusters"]["c1"]["config"]["sasl.password"] == "hunter2-cache"
    assert _mode(cache) == 0o600 and _mode(cache.parent) == 0o700
    assert "hunter2-cache" not in proc.log.read_text()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kafka-mesh", *args], capture_output=True, text=True, timeout=60)


def test_mapping_show_redacts_secrets_unless_asked_and_apply_refuses_the_placeholder(
        sandbox: Sandbox, tmp_path: pathlib.Path) -> None:
    ns = new_namespace()
    secret_conf = {"sasl.password": "hunter2", "sasl.username": "app", "ssl.key.password": "k3y",
                   "sasl.oauthbearer.client.secret": "s3cret", "linger.ms": "5"}
    doc = {"clusters": clusters_doc(sandbox, c1=secret_conf), "producer": {"__default__": {"where": [{"sink": "c1"}]}},
           "consumer": {}}
    apply(sandbox, ns, doc)
    where = ("--etcd", sandbox.etcd_endpoint, "--namespace", ns)

    shown = _cli("mapping", "show", *where)
    assert shown.returncode == 0, shown.stderr
    config = json.loads(shown.stdout)["clusters"]["c1"]["config"]
    assert config == {"sasl.password": "***", "sasl.username": "app", "ssl.key.password": "***",
                      "sasl.oauthbearer.client.secret": "***", "linger.ms": "5"}
    for secret in ("hunter2", "k3y", "s3cret"):
        assert secret not in shown.stdout + shown.stderr
    as_json = _cli("mapping", "show", "--json", *where)
    assert "hunter2" not in as_json.stdout and "***" in as_json.stdout

    clear = _cli("mapping", "show", "--show-secrets", *where)
    assert json.loads(clear.stdout) == doc                    # apply-able as it is

    path = tmp_path / "redacted.json"
    path.write_text(shown.stdout)
    again = _cli("mapping", "apply", str(path), *where)
    assert again.returncode != 0
    assert ("clusters.c1.config: sasl.oauthbearer.client.secret, sasl.password, ssl.key.password hold(s) "
            "'***', the placeholder of a redacted printout" in again.stderr), again.stderr
    assert json.loads(_cli("mapping", "show", "--show-secrets", *where).stdout) == doc   # nothing was written
