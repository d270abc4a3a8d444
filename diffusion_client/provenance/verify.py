"""What marks a file carries: our watermark (or BFL's), a C2PA manifest and its validity, IPTC/EXIF metadata.

The metadata and the manifest are read from the file's bytes without decoding the picture; the watermark
needs the pixels, so an image past `MAX_CHECK_PIXELS` (one that claims 20000x20000, say) is not decoded and
its watermark is reported as not checked.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from diffusion_client.errors import MESSAGE_LIMIT, printable_line
from diffusion_client.provenance.formats import sniff_mime_type
from diffusion_client.provenance.iptc import EXIF_SOFTWARE, read_software, read_source_type, source_type_in
from diffusion_client.provenance.manifest import ManifestReading, read_manifest
from diffusion_client.provenance.watermark import WatermarkReading, detect_bfl_watermark, detect_watermark

MAX_FILE_BYTES = 512 << 20
MAX_CHECK_PIXELS = 8192 * 8192  # 192 MiB as RGB; the largest image whose watermark is checked


class UnreadableFileError(Exception):
    """The file cannot be checked at all: missing, unreadable, not an image, or too large."""


@dataclass(frozen=True)
class FileMarks:
    path: Path
    watermark: WatermarkReading | None  # ours; None when not checked
    bfl_watermark: WatermarkReading | None
    manifest: ManifestReading
    source_type: str | None  # IPTC DigitalSourceType from XMP
    software: str | None  # EXIF Software
    watermark_note: str | None = None  # why the watermark was not checked

    @property
    def marked(self) -> bool:
        """At least one mark says the image was made by AI (a manifest counts if it validates and says so)."""
        watermarks = (self.watermark, self.bfl_watermark)
        return (
            any(reading is not None and reading.found for reading in watermarks)
            or self.manifest.says_ai
            or self.source_type is not None
            and self.source_type.endswith("/trainedAlgorithmicMedia")
            or self.software == EXIF_SOFTWARE
        )

    def describe(self) -> str:
        """One line: each mark, found or not."""
        if self.bfl_watermark is not None and self.bfl_watermark.found:
            watermark = self.bfl_watermark.describe()
        elif self.watermark is not None:
            watermark = self.watermark.describe()
        else:
            watermark = f"watermark not checked ({self.watermark_note})"
        source = "no IPTC source type"
        if self.source_type:
            source = f"IPTC source type {self.source_type.rsplit('/', 1)[-1]}"
        software = f"; EXIF Software {self.software!r}" if self.software else ""
        verdict = "marked" if self.marked else "NO MARK"
        line = f"{self.path}: {verdict}: {watermark}; {self.manifest.describe()}; {source}{software}"
        return printable_line(line, MESSAGE_LIMIT)  # names in it come from the file: one line, whatever they hold

    def as_dict(self) -> dict[str, Any]:
        def reading(value: WatermarkReading | None) -> dict[str, Any] | None:
            if value is None:
                return None
            return {"found": value.found, "matched": value.matched, "bits": value.bits, "scale": value.scale}

        return {
            "path": str(self.path),
            "marked": self.marked,
            "watermark": reading(self.watermark),
            "bfl_watermark": reading(self.bfl_watermark),
            "watermark_note": self.watermark_note,
            "c2pa": self.manifest.as_dict(),
            "iptc_digital_source_type": self.source_type,
            "exif_software": self.software,
        }


def check_file(path: Path, context: Any = None) -> FileMarks:
    """Every mark `path` carries; raises `UnreadableFileError` when it cannot be checked at all."""
    data = _read(path)
    watermark = bfl = None
    mime_type: str | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower cap applies below
            with Image.open(io.BytesIO(data)) as image:
                mime_type = sniff_mime_type(data)  # the bytes, not PIL's name: a multi-frame JPEG is "MPO" there
                source_type, software = read_source_type(image), read_software(image)
                width, height = image.size
                note: str | None = None
                if width * height > MAX_CHECK_PIXELS:
                    note = f"{width}x{height} is past the {MAX_CHECK_PIXELS:,}-pixel limit for decoding"
                else:
                    try:
                        pixels = image.convert("RGB")
                    except (OSError, ValueError, SyntaxError) as error:  # damaged pixel data: the rest still counts
                        note = f"the pixels cannot be decoded: {error}"
                    else:
                        watermark, bfl = detect_watermark(pixels), detect_bfl_watermark(pixels)
                        if watermark is None:
                            note = f"{width}x{height} is too small to carry one"
    except Image.DecompressionBombError as error:  # opening alone refuses it: read what the bytes say
        mime_type = sniff_mime_type(data)
        source_type, software = source_type_in(data), None
        note = f"the image claims too many pixels to decode ({error})"
    except UnidentifiedImageError:
        raise UnreadableFileError(f"{path}: not an image file PIL can read") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise UnreadableFileError(f"{path}: not a readable image ({str(error) or type(error).__name__})") from None
    manifest = read_manifest(data, mime_type, context) if mime_type else ManifestReading("absent")
    return FileMarks(path, watermark, bfl, manifest, source_type, software, note)


def _read(path: Path) -> bytes:
    try:
        if not path.is_file():
            raise UnreadableFileError(f"{path}: {'no such file' if not path.exists() else 'not a regular file'}")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise UnreadableFileError(f"{path}: {size:,} bytes is past the {MAX_FILE_BYTES:,}-byte limit")
        return path.read_bytes()
    except OSError as error:
        raise UnreadableFileError(f"{path}: cannot read it ({error.strerror or error})") from None
