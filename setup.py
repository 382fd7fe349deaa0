"""Builds the Cython data plane (csrc/meshcore) against the system librdkafka.

librdkafka is found with pkg-config. ``KAFKA_MESH_DEBUG=1`` at build time selects the debug build of the core:
it counts every C handle created and destroyed so that the tests can assert that nothing leaks.
``KAFKA_MESH_ASAN=1`` (with the debug build) also compiles the core with AddressSanitizer; a process that imports it
must have the sanitizer's runtime loaded first (``make test-asan`` sets LD_PRELOAD).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup

MIN_RDKAFKA = "2.0.0"
DEBIAN_HINT = "install the librdkafka headers first: `apt-get install librdkafka-dev pkg-config` (Debian/Ubuntu)"


def _pkg_config(*args: str) -> list[str]:
    out = subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True).stdout
    return out.split()


def _rdkafka_flags() -> dict[str, list[str]]:
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
    }


def _extensions() -> list[Extension]:
    from Cython.Build import cythonize

    debug = os.environ.get("KAFKA_MESH_DEBUG", "") not in ("", "0")
    asan = os.environ.get("KAFKA_MESH_ASAN", "") not in ("", "0")
    flags = _rdkafka_flags()
    macros = [("KM_DEBUG", "1")] if debug else []
    extra = ["-O0", "-g3"] if debug else ["-O2"]
    link = []
    if asan:
        # -O1 keeps the sanitizer's reports readable and the suite fast enough for CI.
        extra = ["-O1", "-g3", "-fsanitize=address", "-fno-omit-frame-pointer"]
        link = ["-fsanitize=address"]
    modules = ["conf", "wire", "producer", "consumer", "routes", "produce"]
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
