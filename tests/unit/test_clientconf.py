"""The librdkafka settings every sidecar client starts from, and glibc's arena cap."""

from __future__ import annotations

import subprocess
import sys

import pytest

import meshcore
from sidecar.clientconf import PRODUCER_DEFAULTS, at_least, client_defaults
from sidecar.memory import ARENA_MAX, limit_arenas


def test_version_comparison_reads_major_and_minor_as_numbers() -> None:
    assert at_least("2.16.0", 2, 4) and at_least("2.4.0", 2, 4) and at_least("3.0.0", 2, 12)
    assert not at_least("2.3.9", 2, 4) and not at_least("2.0.2", 2, 12) and not at_least("1.99.0", 2, 0)


def test_metrics_push_is_off_where_librdkafka_has_it() -> None:
    assert client_defaults("2.16.0") == {"log_level": "4", "enable.metrics.push": "false"}
    assert client_defaults("2.0.2") == {"log_level": "4"}     # no such property before 2.4: it would be an error


def test_the_defaults_are_accepted_by_the_linked_librdkafka() -> None:
    # A property librdkafka does not know fails create_consumer/create_producer: build one of each, unconnected.
    defaults = client_defaults()
    assert ("enable.metrics.push" in defaults) == at_least(meshcore.librdkafka_version(), 2, 4)
    assert PRODUCER_DEFAULTS["enable.metrics.push" if "enable.metrics.push" in defaults else "log_level"]
    c = meshcore.create_consumer("unit", {**defaults, "bootstrap.servers": "127.0.0.1:9", "group.id": "g"})
    c.close()
    p = meshcore.create_producer("unit", {**PRODUCER_DEFAULTS, "bootstrap.servers": "127.0.0.1:9"})
    p.close()


@pytest.mark.parametrize("env", [{"MALLOC_ARENA_MAX": "8"}, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}])
def test_an_arena_cap_the_environment_sets_is_left_alone(env: dict[str, str]) -> None:
    assert limit_arenas(env) is False


@pytest.mark.parametrize("cap", [True, False])
def test_the_arena_cap_holds_in_a_fresh_process(cap: bool) -> None:
    # 8 threads alive at once, each allocating from malloc (100 KB: past Python's small-object allocator): glibc
    # gives each new thread an arena of its own while there are fewer than its cap (malloc_info lists one <heap>
    # per arena): 9 uncapped, ARENA_MAX capped.
    code = f"""
import ctypes, threading
from sidecar.memory import limit_arenas
CAP = {cap}
assert CAP is False or limit_arenas({{}})
gate = threading.Barrier(8)
def work():
    buf = bytearray(100_000)
    gate.wait()
ts = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
libc = ctypes.CDLL("libc.so.6")
libc.open_memstream.restype = ctypes.c_void_p
buf, size = ctypes.c_char_p(), ctypes.c_size_t()
f = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
libc.malloc_info(0, ctypes.c_void_p(f)); libc.fclose(ctypes.c_void_p(f))
print(buf.value.decode().count("<heap nr="))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin"})
    arenas = int(out.stdout)
    assert arenas <= ARENA_MAX if cap else arenas > ARENA_MAX
