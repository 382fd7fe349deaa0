"""Regenerate the Python stubs under sidecar/api/ from proto/ (the one source of truth of the API).

    python scripts/gen_proto.py           # write the stubs
    python scripts/gen_proto.py --check   # exit 1 if the committed stubs differ from what proto/ generates

Committed stubs (rather than generation at build time) keep grpcio-tools out of the install and let a review see
an API change. tests/unit/test_generated_stubs.py runs the --check.
"""

from __future__ import annotations

import argparse
import difflib
import pathlib
import re
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
OUT = ROOT / "sidecar" / "api"
PACKAGE = "sidecar.api"


def generate(dest: pathlib.Path) -> list[pathlib.Path]:
    """Run protoc (from grpcio-tools) on every .proto under proto/ into dest; return the files written."""
    import importlib.resources

    from grpc_tools import protoc  # a test/dev dependency only

    protos = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    args = ["protoc", f"-I{PROTO}", f"-I{include}", f"--python_out={dest}", f"--pyi_out={dest}",
            f"--grpc_python_out={dest}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted(p for p in dest.rglob("*") if p.suffix in (".py", ".pyi"))
    for path in written:
        # protoc writes absolute imports of the proto package ("from kafkamesh.v1 import ..."); the stubs live
        # under sidecar.api, so the imports are rewritten to match.
        text = path.read_text()
        text = re.sub(r"^from kafkamesh\.", f"from {PACKAGE}.kafkamesh.", text, flags=re.M)
        path.write_text(text)
    for d in {p.parent for p in written}:
        while d != dest:
            (d / "__init__.py").touch()
            d = d.parent
    return sorted(p for p in dest.rglob("*") if p.suffix in (".py", ".pyi"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.relative_to(tmp): p.read_text() for p in generate(pathlib.Path(tmp))}
        current = {p.relative_to(OUT): p.read_text() for p in OUT.rglob("*") if p.suffix in (".py", ".pyi")}
        current.pop(pathlib.Path("__init__.py"), None)
        if args.check:
            stale = False
            for rel in sorted(set(fresh) | set(current)):
                if fresh.get(rel) != current.get(rel):
                    stale = True
                    diff = difflib.unified_diff((current.get(rel) or "").splitlines(),
                                                (fresh.get(rel) or "").splitlines(),
                                                f"committed/{rel}", f"generated/{rel}", lineterm="", n=1)
                    print("\n".join(list(diff)[:40]))
            if stale:
                print("stubs under sidecar/api are stale: run `python scripts/gen_proto.py`", file=sys.stderr)
                return 1
            return 0
        for rel, text in fresh.items():
            target = OUT / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        for rel in set(current) - set(fresh):
            (OUT / rel).unlink()
    print(f"wrote {len(fresh)} files under {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
