"""Builds the Cython data plane (csrc/meshcore).

librdkafka: by default the core links the librdkafka that the pinned confluent-kafka wheel ships
(`confluent_kafka.libs/librdkafka-<hash>.so.1`), by path, so that the process holds one librdkafka, the current one,
for the core and for confluent-kafka's admin calls alike. rdkafka.h comes from the system's librdkafka headers
(found with pkg-config): the C API the core uses is stable across these versions. ``KAFKA_MESH_RDKAFKA=system``
links the system librdkafka instead.

The wheel's file is found in the environment the build runs in; build without build isolation (``pip install
--no-build-isolation -e .``, as ``make build`` does) so that it is the one the core will run with. The path and the
version are recorded in ``meshcore/_linked.py``, which meshcore checks at import.

``KAFKA_MESH_DEBUG=1`` at build time selects the debug build of the core: it counts every C handle created and
destroyed so that the tests can assert that nothing leaks. ``KAFKA_MESH_ASAN=1`` (with the debug build) also compiles
the core with AddressSanitizer; a process that imports it must have the sanitizer's runtime loaded first
(``make test-asan`` sets LD_PRELOAD).
"""

from __future__ import annotations

import glob
import os
import pathlib
import shutil
import subprocess
import sys

from setuptools import Extension, setup

MIN_RDKAFKA = "2.0.0"
DEBIAN_HINT = "install the librdkafka headers first: `apt-get install librdkafka-dev pkg-config` (Debian/Ubuntu)"
LINKED = pathlib.Path(__file__).resolve().parent / "csrc" / "meshcore" / "_linked.py"


def _pkg_config(*args: str) -> list[str]:
    out = subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True).stdout
    return out.split()


def _system_rdkafka() -> dict[str, list[str]]:
    if shutil.which("pkg-config") is None:
        sys.exit(f"kafka-mesh: pkg-config was not found; {DEBIAN_HINT}")
    try:
        _pkg_config("--atleast-version", MIN_RDKAFKA, "rdkafka")
    except subprocess.CalledProcessError:
        sys.exit(f"kafka-mesh: librdkafka >= {MIN_RDKAFKA} was not found by pkg-config; {DEBIAN_HINT}")
    cflags = _pkg_config("--cflags", "rdkafka")
    libs = _pkg_config("--libs", "rdkafka")
    return {
        "include_dirs": [f[2:] for f in cflags if f.startswith("-I")],
        "library_dirs": [f[2:] for f in libs if f.startswith("-L")],
        "libraries": [f[2:] for f in libs if f.startswith("-l")],
        "extra_link_args": [],
    }


def _wheel_rdkafka() -> tuple[dict[str, list[str]], str, str]:
    """Compile and link flags for the confluent-kafka wheel's librdkafka; its path and confluent-kafka's version."""
    try:
        import confluent_kafka
    except ImportError:
        sys.exit("kafka-mesh: confluent-kafka is not installed in the build environment; install it first "
                 "(`pip install -r` the pinned version in pyproject.toml) and build with --no-build-isolation, or "
                 "set KAFKA_MESH_RDKAFKA=system to link the system librdkafka")
    site = pathlib.Path(confluent_kafka.__file__).resolve().parent.parent
    found = sorted(glob.glob(str(site / "confluent_kafka.libs" / "librdkafka-*.so*")))
    if len(found) != 1:
        sys.exit(f"kafka-mesh: expected one librdkafka in {site / 'confluent_kafka.libs'}, found {found or 'none'}; "
                 "a confluent-kafka built from source has none: set KAFKA_MESH_RDKAFKA=system")
    lib = pathlib.Path(found[0])
    flags = _system_rdkafka()    # for rdkafka.h only
    # $ORIGIN first: a non-editable install puts meshcore beside confluent_kafka.libs in site-packages. The
    # absolute directory serves the editable install, whose extension stays in the source tree.
    flags["extra_link_args"] = [str(lib), "-Wl,-rpath,$ORIGIN/../confluent_kafka.libs", f"-Wl,-rpath,{lib.parent}"]
    flags["library_dirs"], flags["libraries"] = [], []
    return flags, str(lib), confluent_kafka.__version__


def _extensions() -> list[Extension]:
    from Cython.Build import cythonize

    debug = os.environ.get("KAFKA_MESH_DEBUG", "") not in ("", "0")
    asan = os.environ.get("KAFKA_MESH_ASAN", "") not in ("", "0")
    which = os.environ.get("KAFKA_MESH_RDKAFKA", "wheel")
    if which == "system":
        flags, lib, ck_version = _system_rdkafka(), "", ""
    elif which == "wheel":
        flags, lib, ck_version = _wheel_rdkafka()
    else:
        sys.exit(f"kafka-mesh: KAFKA_MESH_RDKAFKA must be 'wheel' (the default) or 'system', not {which!r}")
    LINKED.write_text(
        '"""Written by setup.py at build time: the librdkafka this build of the core links."""\n\n'
        f"SOURCE = {which!r}\nLIBRARY = {lib!r}\nCONFLUENT_KAFKA = {ck_version!r}\n")
    macros = [("KM_DEBUG", "1")] if debug else []
    extra = ["-O0", "-g3"] if debug else ["-O2"]
    link = list(flags["extra_link_args"])
    if asan:
        # -O1 keeps the sanitizer's reports readable and the suite fast enough for CI.
        extra = ["-O1", "-g3", "-fsanitize=address", "-fno-omit-frame-pointer"]
        link.append("-fsanitize=address")
    modules = ["conf", "wire", "producer", "consumer", "subscribe_wire", "routes", "topicrules", "produce", "router"]
    exts = [
        Extension(
            f"meshcore.{name}",
            [f"csrc/meshcore/{name}.pyx"],
            define_macros=macros,
            extra_compile_args=extra + ["-Wall", "-Wno-unused-function"],
            extra_link_args=link,
            include_dirs=["csrc/meshcore", *flags["include_dirs"]],
            library_dirs=flags["library_dirs"],
            libraries=flags["libraries"],
        )
        for name in modules
    ]
    return cythonize(
        exts,
        include_path=["csrc"],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "embedsignature": True},
        # The debug and release builds must never share generated C: the macro changes the code.
        force=True,
        quiet=True,
    )


setup(ext_modules=_extensions())
