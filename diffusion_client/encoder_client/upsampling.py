"""Prompt upsampling on the server: the client's rules for a request, its reference files and the reply.

One place for each check `RemoteTextEncoder.upsample` and the generation preflight share: what the server's
`GetInfo` allows (prompts, reference images, bytes and pixels per image, new tokens), the temperature
range, and the bounds on what comes back. Reference images travel as their file bytes, never re-encoded,
so the server decodes exactly the file the user named. This module imports nothing heavy at module level
(PIL only when a header is read), so the CLI can use its constants for `--help` and flag errors.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from diffusion_client.errors import BadReplyError, InputError
from shared.defaults import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_UPSAMPLE_TEMPERATURE,
    MAX_UPSAMPLE_IMAGE_ASPECT,
    MAX_UPSAMPLE_TEMPERATURE,
    MIN_UPSAMPLE_IMAGE_SIDE,
    MIN_UPSAMPLE_TEMPERATURE,
    UPSAMPLE_IMAGE_FORMATS,
)

if TYPE_CHECKING:
    from shared.server_info import ServerInfo

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "DEFAULT_UPSAMPLE_TEMPERATURE"]  # re-exported for the client's users

# The temperatures the server samples with, as `--help` and the errors say them.
TEMPERATURE_RANGE = f"between {MIN_UPSAMPLE_TEMPERATURE:g} and {MAX_UPSAMPLE_TEMPERATURE:g}"

MAX_CHARS_PER_TOKEN = 64  # a reply prompt longer than this many characters per generated token is not text
MAX_SEED = 2**64 - 1  # UpsampleRequest.seed is a uint64
MIB = 1024 * 1024

# A reference image as the caller gives it: a file path, or the file's bytes.
ReferenceImage = str | os.PathLike[str] | bytes


@dataclass(frozen=True)
class ReferenceFile:
    """A reference image's file bytes, sent as they are, and the name messages use for it."""

    name: str  # how messages name it: "reference image ref.png", or "reference image 1 of prompt 0" for bytes
    data: bytes


def check_temperature(temperature: object) -> float:
    """`temperature` as a float if it is from 0.01 to 2 (the server's range); else a one-line `InputError`."""
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        value = float(temperature)
        if MIN_UPSAMPLE_TEMPERATURE <= value <= MAX_UPSAMPLE_TEMPERATURE:  # NaN fails both
            return value
    raise InputError(
        f"upsample temperature must be a number {TEMPERATURE_RANGE} ({DEFAULT_UPSAMPLE_TEMPERATURE} is recommended), "
        f"not {temperature!r}"
    )


def max_new_tokens_for(info: ServerInfo) -> int:
    """What `flux2-generate --upsample` asks for: diffusers' 512 tokens, or fewer if the server allows fewer."""
    return min(DEFAULT_MAX_NEW_TOKENS, info.max_new_tokens)


def read_reference_file(image: ReferenceImage, name: str, max_bytes: int | None = None) -> ReferenceFile:
    """The file bytes of `image` (a path is read, bytes are taken as they are); refuses a file over `max_bytes`.

    `name` names bytes given directly; a path names itself. Its size is checked before it is read, so a huge
    file is never loaded only to be refused.
    """
    if isinstance(image, bytes | bytearray):
        return ReferenceFile(name, bytes(image))
    if not isinstance(image, str | os.PathLike):
        raise InputError(f"{name} is a {type(image).__name__}; give a file path or the file's bytes")
    path = os.fspath(image)
    try:
        size = os.stat(path).st_size
        if max_bytes is not None and size > max_bytes:
            raise InputError(_too_many_bytes(f"reference image {path}", size, max_bytes))
        with open(path, "rb") as file:
            return ReferenceFile(f"reference image {path}", file.read())
    except FileNotFoundError as error:
        raise InputError(f"reference image {path} does not exist") from error
    except OSError as error:
        raise InputError(f"cannot read reference image {path}: {error.strerror or error}") from error


def read_reference_files(
    prompt_count: int, images: Sequence[Sequence[ReferenceImage]] | None, max_bytes: int | None = None
) -> list[tuple[ReferenceFile, ...]]:
    """One tuple of reference files per prompt (all empty for text-to-image)."""
    if images is None:
        return [() for _ in range(prompt_count)]
    if isinstance(images, str | bytes | os.PathLike) or len(images) != prompt_count:
        raise InputError(
            f"images must hold one list of reference images per prompt ({prompt_count}), "
            "e.g. images=[['ref.png']] for one prompt"
        )
    files = []
    for prompt_index, references in enumerate(images):
        if isinstance(references, str | bytes | bytearray | os.PathLike):
            raise InputError(
                f"images[{prompt_index}] must be a list of reference images for prompt {prompt_index}, "
                f"not a single {type(references).__name__}"
            )
        files.append(
            tuple(
                read_reference_file(image, f"reference image {index} of prompt {prompt_index}", max_bytes)
                for index, image in enumerate(references)
            )
        )
    return files


def check_upsample_request(
    info: ServerInfo,
    prompts: Sequence[str],
    files: Sequence[Sequence[ReferenceFile]],
    *,
    temperature: float,
    max_new_tokens: int,
    seed: int | None,
) -> None:
    """Raise `InputError` (one line, what to fix) unless the server's `GetInfo` limits allow this request.

    A server without upsampling reports every limit as 0; then only the checks that need no limit run, and
    the server's own FAILED_PRECONDITION says how to turn it on.
    """
    check_temperature(temperature)
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED):
        raise InputError(f"seed must be None or a whole number from 0 to {MAX_SEED}, not {seed!r}")
    if not prompts:
        raise InputError("give at least one prompt to upsample")
    with_images = [bool(references) for references in files]
    if any(with_images) and not all(with_images):
        raise InputError("either every prompt has reference images or none does; upsample those apart")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a whole number of at least 1, not {max_new_tokens!r}")
    if not info.upsampling_available:
        return
    if len(prompts) > info.max_upsample_prompts:
        raise InputError(
            f"{len(prompts)} prompts to upsample; the encoder takes at most {info.max_upsample_prompts} per request"
        )
    for index, prompt in enumerate(prompts):
        if len(prompt) > info.max_prompt_chars:
            raise InputError(f"prompt {index} has {len(prompt)} characters; the limit is {info.max_prompt_chars}")
    if max_new_tokens > info.max_new_tokens:
        raise InputError(
            f"max_new_tokens {max_new_tokens} is more than the encoder allows; use 1 to {info.max_new_tokens}"
        )
    total = sum(len(references) for references in files)
    if total > info.max_upsample_images:
        raise InputError(
            f"{total} reference images to upsample with; the encoder takes at most {info.max_upsample_images}"
        )
    for references in files:
        for reference in references:
            check_reference_file(reference, info)


def check_reference_file(reference: ReferenceFile, info: ServerInfo) -> None:
    """Byte size, format, claimed pixel count and shape (from the header; no pixel is decoded) within the limits."""
    from PIL import Image

    if len(reference.data) > info.max_upsample_image_bytes:
        raise InputError(_too_many_bytes(reference.name, len(reference.data), info.max_upsample_image_bytes))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below is ours
            with Image.open(io.BytesIO(reference.data)) as image:
                kind, (width, height) = image.format, image.size
    except Image.DecompressionBombError as error:
        raise InputError(_too_many_pixels(reference.name, "more", info)) from error
    except Exception as error:  # PIL raises several types for bytes that are no image
        raise InputError(f"{reference.name} is not a PNG, JPEG or WebP image") from error
    if kind not in UPSAMPLE_IMAGE_FORMATS:
        raise InputError(f"{reference.name} is {kind}; upsampling takes PNG, JPEG or WebP files")
    if width * height > info.max_upsample_image_pixels:
        raise InputError(_too_many_pixels(reference.name, f"{width}x{height}", info))
    short, long = sorted((width, height))
    if short < MIN_UPSAMPLE_IMAGE_SIDE or long > MAX_UPSAMPLE_IMAGE_ASPECT * short:  # the server's processing fails
        raise InputError(
            f"{reference.name} is {width}x{height} pixels; upsampling takes images of at least "
            f"{MIN_UPSAMPLE_IMAGE_SIDE} px a side and an aspect ratio of at most {MAX_UPSAMPLE_IMAGE_ASPECT}:1, "
            "so pad or crop it first"
        )


def check_upsampled(prompts: Sequence[object], sent: int, max_new_tokens: int, target: str) -> list[str]:
    """The reply's prompts if there is one string per prompt sent, each of a length tokens can make."""
    if len(prompts) != sent:
        raise BadReplyError(
            f"bad reply from the encoder at {target}: {len(prompts)} upsampled prompts for {sent} sent",
            target=target,
        )
    limit = MAX_CHARS_PER_TOKEN * max_new_tokens
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise BadReplyError(
                f"bad reply from the encoder at {target}: upsampled prompt {index} is not text", target=target
            )
        if len(prompt) > limit:
            raise BadReplyError(
                f"bad reply from the encoder at {target}: upsampled prompt {index} has {len(prompt)} characters, "
                f"more than {max_new_tokens} tokens can make",
                target=target,
            )
    return [str(prompt) for prompt in prompts]


def _too_many_bytes(name: str, size: int, limit: int) -> str:
    in_mib = f"{size / MIB:.1f} MiB", f"{limit / MIB:.1f} MiB"
    said, allowed = in_mib if limit >= MIB and in_mib[0] != in_mib[1] else (f"{size:,} bytes", f"{limit:,} bytes")
    return f"{name} is {said}; the encoder takes at most {allowed} per image for upsampling"


def _too_many_pixels(name: str, size: str, info: ServerInfo) -> str:
    return (
        f"{name} claims {size} pixels; the encoder takes at most "
        f"{info.max_upsample_image_pixels:,} pixels per image for upsampling, so scale it down first"
    )
