"""Generate the Python protobuf and gRPC modules into `shared/protocol/`.

The generated files are committed so a plain `pip install` works without grpcio-tools;
`tests/test_protocol.py` fails when they are stale. Run `make proto` after editing a .proto.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILE = "flux2/encoder/v1/encoder.proto"
DEFAULT_OUT = PROTO_ROOT.parent / "shared" / "protocol"
GENERATED = ("encoder_pb2.py", "encoder_pb2.pyi", "encoder_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules to `out_dir`, with package-relative imports."""
    with tempfile.TemporaryDirectory() as tmp:
        grpc_include = Path(protoc.__file__).parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{grpc_include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(PROTO_ROOT / PROTO_FILE),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed on " + PROTO_FILE)
        generated_dir = Path(tmp) / Path(PROTO_FILE).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            text = (generated_dir / name).read_text()
            # protoc writes absolute imports rooted at the proto path; ours live inside a package.
            text = re.sub(r"^from flux2\.encoder\.v1 import ", "from . import ", text, flags=re.MULTILINE)
            target = out_dir / name
            target.write_text(text)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(f"wrote {path}")
    init = args.out / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated protobuf and gRPC modules; edit proto/ and run `make proto`."""\n')
    return 0


if __name__ == "__main__":
    sys.exit(main())
