"""Reading reference images and writing PNGs that record how they were made."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from diffusion_client.errors import GenerationInputError


def load_reference_image(path: Path) -> Image.Image:
    """An RGB image, or a one-line error naming the file and what is wrong with it."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError as error:
        raise GenerationInputError(f"reference image {path} does not exist") from error
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise GenerationInputError(f"cannot read reference image {path}: not a readable image file") from error


def save_png(image: Image.Image, out: Path, metadata: Mapping[str, Any]) -> Path:
    """Write `image` with one tEXt chunk per field, plus all fields as JSON under `flux2-split`."""
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    info.add_text("flux2-split", json.dumps(dict(metadata), sort_keys=True))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        image.save(out, format="PNG", pnginfo=info)
    except OSError as error:
        raise GenerationInputError(f"cannot write {out}: {error.strerror or error}") from error
    return out
