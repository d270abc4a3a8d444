"""`flux2-verify FILE...`: which provenance marks each image carries, one line per file (or `--json`).

Exit status: 0 when every file carries at least one mark, 1 when one carries none, 2 when one cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from shared.printable import OneLineParser

PROG = "flux2-verify"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Check images for provenance marks: the flux2-split (or BFL) invisible watermark, a C2PA "
        "manifest and whether it validates, and IPTC/EXIF metadata. The watermark and the IPTC/EXIF tags disclose "
        "that an image is AI-generated; anyone can add them to any image, so they do not say who made it. Only a C2PA "
        "signature from a signer you trust (--trust-anchors) attributes an image.",
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--json", action="store_true", help="print a JSON array, one object per file")
    parser.add_argument(
        "--trust-anchors",
        type=Path,
        metavar="PEM",
        help="root certificates whose C2PA signers count as trusted (e.g. a team's root.pem)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from diffusion_client.commands import report
    from diffusion_client.errors import MESSAGE_LIMIT, InputError, printable_line
    from diffusion_client.provenance.manifest import reading_context
    from diffusion_client.provenance.verify import UnreadableFileError, check_file

    anchors = None
    if args.trust_anchors is not None:
        try:
            anchors = args.trust_anchors.read_bytes()
        except OSError as error:
            raise InputError(f"cannot read --trust-anchors {args.trust_anchors}: {error.strerror or error}") from None
    try:
        context = reading_context(anchors)  # once, so bad anchors are one line, not a verdict on every file
    except InputError as error:
        raise InputError(f"--trust-anchors {args.trust_anchors}: {error}") from None
    results: list[dict[str, Any]] = []
    unreadable = unmarked = False
    for path in args.files:
        try:
            marks = check_file(path, context)
        except Exception as error:  # one file that cannot be checked is reported; the others still are
            message = str(error) if isinstance(error, UnreadableFileError) else f"{path}: cannot check it ({error})"
            unreadable = True
            report(message, PROG)
            results.append({"path": str(path), "error": printable_line(message, MESSAGE_LIMIT)})
            continue
        unmarked = unmarked or not marks.marked
        results.append(marks.as_dict())
        if not args.json:
            print(marks.describe(), flush=True)
    if args.json:
        print(json.dumps(results, indent=1))
    return 2 if unreadable else 1 if unmarked else 0


def main(argv: list[str] | None = None) -> int:
    from diffusion_client.commands import run_command

    return run_command(PROG, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
