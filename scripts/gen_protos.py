"""Regenerate libsgde/wire/proto/ from protos/ (run after editing a .proto; a test fails when they are stale).

python scripts/gen_protos.py [--out DIR]
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
DEFAULT_OUT = ROOT / "libsgde" / "wire" / "proto"


def generate(out: Path) -> None:
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Generated code imports "sgde.v1.x_pb2"; make it relative to libsgde.wire.proto so the package is self-contained.
    for path in (out / "sgde").rglob("*.py*"):
        text = path.read_text()
        fixed = re.sub(r"^from sgde\.v1 import", "from libsgde.wire.proto.sgde.v1 import", text, flags=re.M)
        path.write_text(fixed)
    for pkg in (out / "sgde", out / "sgde" / "v1"):
        (pkg / "__init__.py").touch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    generate(args.out)
    print(f"wrote stubs under {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
