"""Marking an image before it is written: the invisible watermark, IPTC/XMP metadata, then a signed C2PA manifest.

    marker = Marker.start(MarkingOptions())         # credentials checked (and a local authority made) up front
    marked = marker.mark(image, out, record)        # the file's final bytes, and notes (e.g. too small to mark)
    write_bytes(out, marked.data)
    marker.success_notes()                          # once the run has succeeded: e.g. a local authority was made

The order matters: pixels first (the watermark), then the file with its metadata, then the manifest, which
hashes the final bytes, so nothing may change the file after it is signed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from diffusion_client.errors import InputError
from diffusion_client.provenance.authority import ROOT_CERT, load_credentials, local_authority
from diffusion_client.provenance.formats import PNG, encode_image, format_for, sniff_mime_type
from diffusion_client.provenance.iptc import exif_software, xmp_packet
from diffusion_client.provenance.manifest import (
    GENERATOR,
    Ingredient,
    ManifestContent,
    ManifestSigner,
    generator_version,
)
from diffusion_client.provenance.watermark import ImageTooSmallError, embed_watermark

MAX_INGREDIENT_BYTES = 64 << 20  # a reference image file larger than this is recorded from its decoded pixels
INGREDIENT_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})  # others are recorded as decoded pixels


@dataclass(frozen=True)
class MarkingOptions:
    """Which marks to write; all on by default. `cert`/`key` sign manifests; without them, the local authority."""

    watermark: bool = True
    c2pa: bool = True
    iptc: bool = True
    include_prompt: bool = False  # put the prompt, and file names, in the C2PA manifest
    cert: Path | None = None
    key: Path | None = None
    authority_folder: Path | None = None  # where the local authority lives; None: the user's config folder

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise InputError("give --c2pa-cert and --c2pa-key together")
        if self.cert is not None and not self.c2pa:
            raise InputError("--c2pa-cert and --c2pa-key sign C2PA manifests, which --no-c2pa turns off")
        if self.include_prompt and not self.c2pa:
            raise InputError("--c2pa-include-prompt puts the prompt in C2PA manifests, which --no-c2pa turns off")


NO_MARKS = MarkingOptions(watermark=False, c2pa=False, iptc=False)


@dataclass(frozen=True)
class ImageRecord:
    """What the marks say about one image."""

    model: str
    parameters: Mapping[str, Any]  # how it was made, as the file's metadata records it (prompt included)
    prompt: str
    references: tuple[Path, ...] = ()
    decoded_references: tuple[Image.Image, ...] = ()  # what the model saw, if a reference file is gone


@dataclass(frozen=True)
class MarkedImage:
    data: bytes  # the whole file
    notes: tuple[str, ...] = field(default_factory=tuple)  # what could not be marked, and why


class Marker:
    """Turns images into marked files; cheap to call from a writer thread while the next image denoises."""

    def __init__(self, options: MarkingOptions, signer: ManifestSigner | None) -> None:
        self.options = options
        self.signer = signer

    @classmethod
    def start(cls, options: MarkingOptions) -> Marker:
        """Load (or make) the signing credentials and sign a test image, so a bad certificate fails now."""
        signer = None
        if options.c2pa:
            if options.cert is not None and options.key is not None:
                credentials = load_credentials(options.cert, options.key)
            else:
                credentials = local_authority(options.authority_folder)
            signer = ManifestSigner(credentials)
            signer.check()
        return cls(options, signer)

    def success_notes(self) -> list[str]:
        """One-line notes for the end of a run that succeeded, never before an error: that this run made the local
        signing authority (said once, on the run that made it), or that the signing key is open to others."""
        if self.signer is None:
            return []
        credentials = self.signer.credentials
        notes = list(credentials.notes)
        if credentials.created and credentials.local_authority is not None:
            notes.append(authority_note(credentials.local_authority))
        return notes

    def mark(self, image: Image.Image, out: Path, record: ImageRecord, *, quality: int | None = None) -> MarkedImage:
        fmt = format_for(out)
        notes: list[str] = []
        if self.options.watermark:
            try:
                image = embed_watermark(image)
            except ImageTooSmallError as error:
                notes.append(str(error))
        text = record.parameters if fmt is PNG else None
        xmp = exif = None
        if self.options.iptc:
            tool = f"{GENERATOR} {generator_version()}"
            xmp = xmp_packet(creator_tool=tool, model=record.model, parameters=record.parameters)
            exif = exif_software()
        data = encode_image(image, fmt, text=text, xmp=xmp, exif=exif, quality=quality)
        if self.signer is not None:
            private = not self.options.include_prompt  # file names are often prompts, or people's names
            content = ManifestContent(
                title=f"image{out.suffix.lower()}" if private else out.name,
                model=record.model,
                settings={key: value for key, value in record.parameters.items() if key in MANIFEST_SETTINGS},
                prompt=record.prompt if self.options.include_prompt else None,
                ingredients=tuple(
                    _ingredient(path, decoded, f"reference-{index}" if private else None)
                    for index, (path, decoded) in enumerate(_pairs(record))
                ),
            )
            data = self.signer.sign(data, fmt.mime_type, content)
        return MarkedImage(data, tuple(notes))


def authority_note(folder: Path) -> str:
    """What a user should know once about the local signing authority just made in `folder`."""
    return (
        f"made a local C2PA signing authority in {folder} to sign manifests; verifiers show its signer as untrusted "
        f"unless they trust {folder / ROOT_CERT}; --c2pa-cert/--c2pa-key sign as you"
    )


# What a manifest records of the settings by default: nothing a user typed (prompts, file paths).
MANIFEST_SETTINGS = frozenset({"seed", "steps", "guidance", "size", "encoder_quantization"})


def _pairs(record: ImageRecord) -> list[tuple[Path, Image.Image | None]]:
    decoded = list(record.decoded_references) + [None] * (len(record.references) - len(record.decoded_references))
    return list(zip(record.references, decoded, strict=True))


def _ingredient(path: Path, decoded: Image.Image | None, title: str | None) -> Ingredient:
    """A reference image as its file (its type read from its bytes, not its name); if the file has gone since it
    was read, or is of a type c2pa does not take, as the pixels the model saw. `title`: None, the file's name."""
    data = None
    try:
        if path.stat().st_size <= MAX_INGREDIENT_BYTES:
            data = path.read_bytes()
    except OSError:
        pass
    mime_type = sniff_mime_type(data) if data is not None else None
    if data is not None and mime_type in INGREDIENT_TYPES:
        return Ingredient(f"{title}{_SUFFIXES[mime_type]}" if title else path.name, mime_type, data)
    if decoded is None:
        raise InputError(f"reference image {path} can no longer be read to record it as a C2PA ingredient")
    return Ingredient(f"{title}.png" if title else path.name, PNG.mime_type, encode_image(decoded, PNG))


_SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}
