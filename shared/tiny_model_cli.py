"""`flux2-tiny-model`: write a tiny FLUX.2-shaped snapshot (random weights, the real tokenizers) for tests and
demos: FLUX.2-dev's layout (`shared.tiny_snapshot`) or, with `--klein`, FLUX.2 [klein]'s (`shared.tiny_klein`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.library_logs import quiet_model_libraries
from shared.tiny_klein import build_tiny_klein_snapshot
from shared.tiny_snapshot import build_tiny_snapshot, snapshot_digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flux2-tiny-model",
        description="Write a tiny FLUX.2-shaped snapshot (random weights, real tokenizer) for tests and demos.",
    )
    parser.add_argument("out_dir", help="directory to write the snapshot into (replaced if it exists)")
    parser.add_argument(
        "--klein",
        choices=("distilled", "base"),
        help="write a FLUX.2 [klein] snapshot (Qwen3 text encoder) instead of a FLUX.2-dev one",
    )
    args = parser.parse_args(argv)
    quiet_model_libraries()  # before diffusers imports bitsandbytes, whose import may warn; no progress bars
    if args.klein:
        path = build_tiny_klein_snapshot(Path(args.out_dir), distilled=args.klein == "distilled")
        print(f"tiny FLUX.2 [klein] {args.klein} snapshot written to {path} (sha256 {snapshot_digest(path)[:16]})")
        return 0
    path = build_tiny_snapshot(args.out_dir)
    print(f"tiny FLUX.2 snapshot written to {path} (sha256 {snapshot_digest(path)[:16]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
