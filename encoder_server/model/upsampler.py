"""Prompt upsampling: the same Mistral model rewrites prompts, exactly as diffusers' `Flux2Pipeline.upsample_prompt`.

diffusers' own system messages, `format_input`, image validation (several images side by side, area capped at
768²) and image processor are reused; the chat-template call and the generation settings are the ones
`upsample_prompt` hard-codes. Generation runs on its own thread beside encoding; nothing here imports grpc.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor
from diffusers.pipelines.flux2.pipeline_flux2 import (
    UPSAMPLING_MAX_IMAGE_SIZE,
    _validate_and_process_images,
    format_input,
)
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE_UPSAMPLING_I2I, SYSTEM_MESSAGE_UPSAMPLING_T2I
from PIL import Image

from encoder_server.config import RequestLimits, UpsampleLimits
from encoder_server.errors import InvalidRequestError
from shared.defaults import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_UPSAMPLE_TEMPERATURE,
    MAX_UPSAMPLE_IMAGE_ASPECT,
    MAX_UPSAMPLE_TEMPERATURE,
    MIN_UPSAMPLE_IMAGE_SIDE,
    MIN_UPSAMPLE_TEMPERATURE,
    UPSAMPLE_IMAGE_FORMATS,
)

# What `Flux2Pipeline.upsample_prompt` pads its chat template to (its token count is in `shared.defaults`).
UPSAMPLING_MAX_LENGTH = 2048
# Temperature travels as a float32, in which 0.01 is 0.0099999998: the least one is compared as the wire holds it.
WIRE_MIN_TEMPERATURE = float(np.float32(MIN_UPSAMPLE_TEMPERATURE))


@dataclass(frozen=True)
class UpsampleRequest:
    prompts: tuple[str, ...]
    images: tuple[tuple[bytes, ...], ...]  # per prompt: reference image file bytes; all empty for text-to-image
    temperature: float = DEFAULT_UPSAMPLE_TEMPERATURE
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    seed: int | None = None


def validate_upsample_request(request: UpsampleRequest, limits: UpsampleLimits, prompt_limits: RequestLimits) -> None:
    """Raise `InvalidRequestError` naming what to fix; image headers are read, pixels are not decoded."""
    count = len(request.prompts)
    if not 1 <= count <= limits.max_prompts:
        raise InvalidRequestError(f"{count} prompts given; send 1 to {limits.max_prompts} prompts per Upsample request")
    for index, prompt in enumerate(request.prompts):
        if len(prompt) > prompt_limits.max_prompt_chars:
            raise InvalidRequestError(
                f"prompt {index} has {len(prompt)} characters; the limit is {prompt_limits.max_prompt_chars}"
            )
    if not WIRE_MIN_TEMPERATURE <= request.temperature <= MAX_UPSAMPLE_TEMPERATURE:  # NaN fails both
        raise InvalidRequestError(
            f"temperature {request.temperature:.6g} is out of range; use a number between {MIN_UPSAMPLE_TEMPERATURE:g} "
            f"and {MAX_UPSAMPLE_TEMPERATURE:g} ({DEFAULT_UPSAMPLE_TEMPERATURE} is recommended)"
        )
    if not 1 <= request.max_new_tokens <= limits.max_new_tokens:
        raise InvalidRequestError(
            f"max_new_tokens {request.max_new_tokens} is out of range; use 1 to {limits.max_new_tokens}"
        )
    with_images = [bool(images) for images in request.images]
    if any(with_images) and not all(with_images):
        raise InvalidRequestError(
            "some prompts have reference images and some do not; send those in separate Upsample requests"
        )
    total = sum(len(images) for images in request.images)
    if total > limits.max_images:
        raise InvalidRequestError(f"{total} reference images in one request; the limit is {limits.max_images}")
    for prompt_index, images in enumerate(request.images):
        for image_index, data in enumerate(images):
            _image_header(data, f"image {image_index} of prompt {prompt_index}", limits)


def _image_header(data: bytes, name: str, limits: UpsampleLimits) -> Image.Image:
    """The opened (not yet decoded) image, once its byte size, format, claimed pixels and shape are within limits."""
    if len(data) > limits.max_image_bytes:
        raise InvalidRequestError(
            f"{name} is {len(data):,} bytes; the limit is {limits.max_image_bytes:,} bytes per image"
        )
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise InvalidRequestError(
            f"{name} claims over {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels; the limit is "
            f"{limits.max_image_pixels:,} pixels per image"
        ) from None
    except Exception:  # PIL raises several types for bytes that are no image
        raise InvalidRequestError(f"{name} is not a PNG, JPEG or WebP image") from None
    if image.format not in UPSAMPLE_IMAGE_FORMATS:
        raise InvalidRequestError(f"{name} is {image.format}; send PNG, JPEG or WebP")
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise InvalidRequestError(
            f"{name} claims {width}x{height} pixels; the limit is {limits.max_image_pixels:,} pixels per image"
        )
    short, long = sorted((width, height))
    if short < MIN_UPSAMPLE_IMAGE_SIDE or long > MAX_UPSAMPLE_IMAGE_ASPECT * short:  # else Pixtral's processing fails
        raise InvalidRequestError(
            f"{name} is {width}x{height} pixels; send images of at least {MIN_UPSAMPLE_IMAGE_SIDE} px a side and "
            f"an aspect ratio of at most {MAX_UPSAMPLE_IMAGE_ASPECT}:1"
        )
    return image


def decode_reference_image(data: bytes, name: str, limits: UpsampleLimits) -> Image.Image:
    """An RGB image from file bytes, or `InvalidRequestError` saying what is wrong with them."""
    image = _image_header(data, name, limits)
    try:
        image.load()
    except Exception:  # truncated or corrupt pixel data
        raise InvalidRequestError(f"{name} could not be decoded; the file is damaged or truncated") from None
    return image.convert("RGB")


class _StopWhen:
    """A transformers stopping criterion: the caller went away, so the remaining tokens are not worth making."""

    def __init__(self, cancelled: Callable[[], bool]) -> None:
        self._cancelled = cancelled

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self._cancelled(), dtype=torch.bool, device=input_ids.device)


class PromptUpsampler:
    """Rewrites prompts with a whole `Mistral3ForConditionalGeneration` and its `PixtralProcessor`."""

    def __init__(self, model: Any, processor: Any, limits: UpsampleLimits) -> None:
        self._model = model
        self._processor = processor  # its own tokenizer: padding settings are per call, and encoding runs beside
        self._image_processor = Flux2ImageProcessor()
        self.limits = limits

    @property
    def tokenizer(self) -> Any:
        return self._processor.tokenizer

    def upsample(self, request: UpsampleRequest, cancelled: Callable[[], bool] = lambda: False) -> list[str]:
        """The rewritten prompts; one generation at a time (the seed is torch's global one, as in diffusers)."""
        from transformers import StoppingCriteriaList

        images: list[list[Image.Image]] | None = None
        if any(request.images):
            images = [
                [decode_reference_image(data, f"image {i} of prompt {p}", self.limits) for i, data in enumerate(datas)]
                for p, datas in enumerate(request.images)
            ]
            images = _validate_and_process_images(images, self._image_processor, UPSAMPLING_MAX_IMAGE_SIZE)
        system_message = SYSTEM_MESSAGE_UPSAMPLING_I2I if images else SYSTEM_MESSAGE_UPSAMPLING_T2I
        inputs = self._processor.apply_chat_template(
            format_input(prompts=list(request.prompts), system_message=system_message, images=images),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            padding="max_length",
            truncation=True,
            max_length=UPSAMPLING_MAX_LENGTH,
        )
        device = self._model.device
        inputs["input_ids"] = inputs["input_ids"].to(device)
        inputs["attention_mask"] = inputs["attention_mask"].to(device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(device, self._model.dtype)
        if request.seed is not None:
            torch.manual_seed(request.seed)
        generated = self._model.generate(
            **inputs,
            max_new_tokens=request.max_new_tokens,
            do_sample=True,
            temperature=request.temperature,
            use_cache=True,
            stopping_criteria=StoppingCriteriaList([_StopWhen(cancelled)]),
        )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        texts: Sequence[str] = self.tokenizer.batch_decode(
            new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=True
        )
        return list(texts)
