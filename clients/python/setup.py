"""The client-only distribution's build: of the package `sidecar`, only what the client needs (its __init__ and
errors modules; sidecar.client and sidecar.api whole), not the sidecar's own modules, which need the native core."""

from setuptools import setup
from setuptools.command.build_py import build_py

KEEP = {"sidecar": {"__init__", "errors"}}


class ClientOnly(build_py):  # type: ignore[misc]
    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules = super().find_package_modules(package, package_dir)
        keep = KEEP.get(package)
        return modules if keep is None else [m for m in modules if m[1] in keep]


setup(cmdclass={"build_py": ClientOnly})
