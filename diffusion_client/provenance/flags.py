"""The marking flags every command that writes images shares, and the `MarkingOptions` they make."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # marking imports PIL and numpy; `--help` should not wait for them
    from diffusion_client.provenance.marking import MarkingOptions


def add_marking_arguments(parser: argparse.ArgumentParser) -> None:
    marks = parser.add_argument_group(
        "provenance marks (all on by default; see docs/design.md, Provenance, for what each costs and survives)",
        description="Without --c2pa-cert/--c2pa-key, C2PA manifests are signed by a local signing authority, made "
        "on first use in $XDG_CONFIG_HOME/flux2-split/c2pa (else ~/.config/flux2-split/c2pa; the run that makes it "
        "says so if it succeeds): verifiers show its signer as untrusted unless they trust its root.pem. The "
        "watermark and the IPTC/EXIF tags say an image is AI-generated, but anyone can add them to any image: only "
        "a trusted C2PA signature says who made it.",
    )
    marks.add_argument(
        "--no-watermark",
        dest="watermark",
        action="store_false",
        help="skip the invisible watermark (saves about 0.1 s of CPU per 512x512 image, 0.35 s at 1024x1024, "
        "overlapped with the next image's denoising); a copy with its metadata stripped then shows no sign of AI",
    )
    marks.add_argument(
        "--no-c2pa",
        dest="c2pa",
        action="store_false",
        help="skip the signed C2PA manifest (saves about 10 ms and 5 KB per image); nothing then proves "
        "who made the file or that it is unchanged",
    )
    marks.add_argument(
        "--no-iptc",
        dest="iptc",
        action="store_false",
        help="skip IPTC DigitalSourceType=trainedAlgorithmicMedia (XMP) and EXIF Software (saves about 1 KB "
        "per image); tools that read only metadata then do not see the image is AI-generated",
    )
    marks.add_argument("--c2pa-cert", type=Path, metavar="PEM", help="certificate chain signing C2PA manifests")
    marks.add_argument("--c2pa-key", type=Path, metavar="PEM", help="the private key of --c2pa-cert (unencrypted)")
    marks.add_argument(
        "--c2pa-include-prompt",
        action="store_true",
        help="put the prompt in the C2PA manifest (off: manifests are for everyone who gets the file)",
    )


def marking_from_args(args: argparse.Namespace) -> MarkingOptions:
    """Raises `InputError` for flags that contradict each other."""
    from diffusion_client.provenance.marking import MarkingOptions

    return MarkingOptions(
        watermark=args.watermark,
        c2pa=args.c2pa,
        iptc=args.iptc,
        include_prompt=args.c2pa_include_prompt,
        cert=args.c2pa_cert,
        key=args.c2pa_key,
    )
