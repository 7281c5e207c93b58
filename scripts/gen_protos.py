"""Generate the Python gRPC stubs in `lipsync_cli/rpc/proto_gen/` from `proto/*.proto`.

    python scripts/gen_protos.py            # regenerate the committed stubs
    python scripts/gen_protos.py --out DIR  # generate into DIR (the tests compare it to the committed ones)

Every `.proto` in `proto/` gives `NAME_pb2.py`, `NAME_pb2.pyi` and `NAME_pb2_grpc.py`. protoc writes
`import NAME_pb2` as if the stubs sat at the top level; here they live in a package, so those
imports of our own modules become `from . import NAME_pb2`. The generated files are never edited by
hand: change the `.proto` and run this again. Needs grpcio-tools (a test dependency).
"""

from __future__ import annotations

import argparse
import importlib.resources
import re
import sys
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_DIR / "proto"
OUT_DIR = REPO_DIR / "lipsync_cli" / "rpc" / "proto_gen"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
INIT_TEXT = '"""Stubs generated from proto/*.proto by scripts/gen_protos.py. Do not edit."""\n'


def _relative_imports(text: str, modules: set[str]) -> str:
    """Turn `import NAME_pb2 as X` of our own generated modules into `from . import NAME_pb2 as X`."""

    def fix(match: re.Match) -> str:
        module = match.group(2)
        return f"{match.group(1)}from . import {module}" if module in modules else match.group(0)

    return re.sub(r"^(\s*)import (\w+)(?= as )", fix, text, flags=re.MULTILINE)


def generate(out_dir: Path = OUT_DIR, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Generate the stubs of every `.proto` in `proto_dir` into `out_dir`; return the files written."""
    from grpc_tools import protoc

    protos = sorted(proto_dir.glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files in {proto_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # protoc needs the well-known types (google/protobuf/*.proto) that grpcio-tools ships
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = ["grpc_tools.protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", *(str(p) for p in protos)]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed (see the messages above)")

    modules = {f"{p.stem}_pb2" for p in protos}  # what one generated file imports of another
    written = []
    for proto in protos:
        for suffix in GENERATED_SUFFIXES:
            path = out_dir / f"{proto.stem}{suffix}"
            path.write_text(_relative_imports(path.read_text(), modules))
            written.append(path)
    init = out_dir / "__init__.py"
    init.write_text(INIT_TEXT)
    return [init, *written]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="where to write the stubs")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
