"""Reading reference images: their size capped before any pixel is decoded, every failure one line naming the file."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

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
