"""Reading reference images (size capped before decoding) and writing PNGs atomically, with how they were made."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from diffusion_client.errors import InputError

# Flux2Pipeline scales references down to about 1024x1024 anyway; the cap only bounds what decoding may cost
# (8192x8192 RGB is 192 MiB). It is checked against the file's header, before any pixel is decoded.
MAX_REFERENCE_SIDE = 8192
MAX_REFERENCE_PIXELS = MAX_REFERENCE_SIDE * MAX_REFERENCE_SIDE


def _too_large(path: Path, size: str, what: str) -> InputError:
    return InputError(
        f"{what} {path} is {size}; the limit is {MAX_REFERENCE_SIDE}x{MAX_REFERENCE_SIDE} pixels, "
        "so scale it down first"
    )


def load_reference_image(path: Path, what: str = "reference image") -> Image.Image:
    """An RGB image, or a one-line error naming the file (as `what`) and what is wrong with it."""
    from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor

    try:
        with warnings.catch_warnings():
            # PIL warns (and past twice its limit, raises) on huge images; both become our one-line error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_REFERENCE_PIXELS:
                    raise _too_large(path, f"{width}x{height} pixels", what)
                image.load()
                rgb = image.convert("RGB")
        # Flux2Pipeline refuses these only after the weights have loaded; its own check, run first.
        Flux2ImageProcessor.check_image_input(rgb)
        return rgb
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        claimed = re.search(r"\((\d+) pixels\)", str(error))  # PIL: "Image size (400000000 pixels) exceeds ..."
        raise _too_large(path, f"{int(claimed[1]):,} pixels" if claimed else "too large", what) from error
    except FileNotFoundError as error:
        raise InputError(f"{what} {path} does not exist") from error
    except UnidentifiedImageError as error:
        raise InputError(f"cannot read {what} {path}: not a readable image file") from error
    except (OSError, ValueError, SyntaxError) as error:  # PIL: SyntaxError for some broken files
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise InputError(f"cannot read {what} {path}: {reason or 'not a readable image file'}") from error


def save_png(image: Image.Image, out: Path, metadata: Mapping[str, Any]) -> Path:
    """Write `image` with one tEXt chunk per field, plus all fields as JSON under `flux2-split`.

    The write is atomic: the PNG goes to a temporary file in the same folder, is flushed to disk, then
    renamed over `out`. On failure (a full disk) the temporary file is removed and an older `out` is intact.
    """
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    info.add_text("flux2-split", json.dumps(dict(metadata), sort_keys=True))
    temporary = out.with_name(f".{out.stem[:64]}.{secrets.token_hex(4)}.tmp")  # short: any valid `out` fits
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: never write through someone else's file; mode 0o666 lets the umask decide, as open() would.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(descriptor, "wb") as file:
                image.save(file, format="PNG", pnginfo=info)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, out)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _sync_folder(out.parent)
    except OSError as error:
        raise InputError(f"cannot write {out}: {error.strerror or error}") from error
    return out


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable; best effort, as not every filesystem lets a folder be fsynced."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
