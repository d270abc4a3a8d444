"""Making marked files without a model, and damaging them the way an attacker or a careless tool would."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import c2pa
from PIL import Image

from bench.scenes import natural_scene
from diffusion_client.provenance.marking import ImageRecord, Marker, MarkingOptions

MIME_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp"}


def marked_file(
    out: Path,
    *,
    size: int = 256,
    prompt: str = "a lighthouse at dusk",
    references: tuple[Path, ...] = (),
    options: MarkingOptions | None = None,
) -> Path:
    """A natural scene marked by our `Marker` (the generator's own) and written to `out`."""
    marker = Marker.start(options or MarkingOptions(authority_folder=out.parent / "authority"))
    record = ImageRecord(
        model="FLUX.2-dev", parameters={"prompt": prompt, "seed": 3, "steps": 28}, prompt=prompt, references=references
    )
    out.write_bytes(marker.mark(natural_scene(size, seed=size), out, record).data)
    return out


def c2pa_store(path: Path, trust_anchor: Path | None = None) -> dict:
    """The manifest store as c2pa's own `Reader` reports it (with `trust_anchor` as a trusted root)."""
    import json

    settings = {"verify": {"remote_manifest_fetch": False}}
    if trust_anchor is not None:
        settings["trust"] = {"user_anchors": trust_anchor.read_text()}
    with c2pa.Reader(
        MIME_TYPES[path.suffix], io.BytesIO(path.read_bytes()), context=c2pa.Context.from_dict(settings)
    ) as reader:
        return json.loads(reader.json())


def flip_one_pixel_byte(path: Path) -> None:
    """Change one byte of the compressed pixel data, keeping the file well-formed (PNG: chunk CRC fixed)."""
    data = bytearray(path.read_bytes())
    if path.suffix == ".png":
        position = data.index(b"IDAT") - 4
        length = struct.unpack(">I", data[position : position + 4])[0]
        data[position + 8 + length // 2] ^= 0x01
        crc = zlib.crc32(bytes(data[position + 4 : position + 8 + length]))
        data[position + 8 + length : position + 12 + length] = struct.pack(">I", crc)
    elif path.suffix == ".jpg":
        scan = data.index(b"\xff\xda")
        header = struct.unpack(">H", data[scan + 2 : scan + 4])[0]
        position = scan + 2 + header + 100
        while data[position] in (0xFF, 0xFE):  # keep clear of markers and stuffing
            position += 1
        data[position] ^= 0x01
    else:
        raise ValueError(path.suffix)
    path.write_bytes(bytes(data))


def resave_with_pil(path: Path, out: Path) -> Path:
    """What an editor that knows nothing of C2PA does: decode, encode, metadata gone."""
    with Image.open(path) as image:
        image.convert("RGB").save(out)
    return out


def scene_file(path: Path, size: int = 128) -> Path:
    natural_scene(size, seed=7).save(path)
    return path
