"""Output formats chosen by the file's extension (PNG, JPEG, WebP), and encoding an image into one of them."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from diffusion_client.errors import InputError
from diffusion_client.provenance.iptc import PNG_XMP_KEY

QUALITY = 95  # JPEG and WebP; JPEG without chroma subsampling (4:4:4), so a first save loses little


@dataclass(frozen=True)
class OutputFormat:
    name: str  # PIL's format name
    mime_type: str


PNG = OutputFormat("PNG", "image/png")
JPEG = OutputFormat("JPEG", "image/jpeg")
WEBP = OutputFormat("WEBP", "image/webp")
BY_SUFFIX = {".png": PNG, ".jpg": JPEG, ".jpeg": JPEG, ".webp": WEBP}


def format_for(out: Path) -> OutputFormat:
    """The format `out`'s extension names (none means PNG), or a one-line error listing the ones we write."""
    if not out.suffix:
        return PNG
    try:
        return BY_SUFFIX[out.suffix.lower()]
    except KeyError:
        raise InputError(f"cannot write {out}: the extension must be one of {', '.join(BY_SUFFIX)}") from None


def encode_image(
    image: Image.Image,
    fmt: OutputFormat,
    *,
    text: Mapping[str, Any] | None = None,
    xmp: bytes | None = None,
    exif: bytes | None = None,
    quality: int | None = None,
) -> bytes:
    """The file's bytes: `image` in `fmt`, with PNG text chunks (`text`; other formats carry them in `xmp`);
    `quality` (0-100) for JPEG and WebP, else `QUALITY`.

    Raises `InputError` when the encoder refuses the image or its metadata (a job's own failure, not the run's).
    """
    try:
        return _encode(image, fmt, text, xmp, exif, QUALITY if quality is None else quality)
    except (ValueError, OSError) as error:
        raise InputError(f"cannot encode the image as {fmt.name}: {error}") from None


def sniff_mime_type(data: bytes) -> str | None:
    """What a file's first bytes say it is, among the formats we write and read marks from."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG.mime_type
    if data.startswith(b"\xff\xd8"):
        return JPEG.mime_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP.mime_type
    return None


def _encode(
    image: Image.Image,
    fmt: OutputFormat,
    text: Mapping[str, Any] | None,
    xmp: bytes | None,
    exif: bytes | None,
    quality: int,
) -> bytes:
    buffer = io.BytesIO()
    options: dict[str, Any] = {}
    if exif:
        options["exif"] = exif
    if fmt is PNG:
        info = PngImagePlugin.PngInfo()
        for key, value in (text or {}).items():
            info.add_text(key, value if isinstance(value, str) else json.dumps(value))
        if text:
            info.add_text("flux2-split", json.dumps(dict(text), sort_keys=True))
        if xmp:
            info.add_itxt(PNG_XMP_KEY, xmp.decode(), zip=False)
        image.save(buffer, format="PNG", pnginfo=info, **options)
    else:
        if xmp:
            options["xmp"] = xmp
        if fmt is JPEG:
            options.update(quality=quality, subsampling=0)
        else:
            options.update(quality=quality)
        image.save(buffer, format=fmt.name, **options)
    return buffer.getvalue()
