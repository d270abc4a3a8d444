"""A request body checked into an `ImageRequest`, or one `ApiError` naming the field to fix.

Both endpoints take the same fields: `/v1/images/generations` as JSON values, `/v1/images/edits` as multipart
form strings (`"2"`, `"true"`, `loras` as a JSON text), which the `from_form` readers convert. A field nobody
knows is refused by name, as OpenAI's API refuses it, so a typo never silently changes the image; OpenAI's
fields that do not change the image (`user`, `moderation`) are taken; the ones this server cannot honour
(`mask`, `background: transparent`, a `quality` or `style` other than `auto`) are refused saying so.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from diffusion_client.lora.specs import MAX_LORA_SCALE
from diffusion_client.serve.api_errors import ApiError, bad_request, unknown_parameter

MAX_SEED = 2**63 - 1  # torch.Generator takes a signed 64-bit seed
SIZE = re.compile(r"^(\d{1,6})x(\d{1,6})$")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
RESPONSE_FORMATS = ("b64_json", "url")
MAX_LORAS = 8  # each LoRA adds its layers to every step
MAX_GUIDANCE = 100.0

# OpenAI's fields that change nothing in the image: taken and ignored.
IGNORED = frozenset({"user", "moderation", "safety_identifier"})
# OpenAI's fields this server cannot honour with meaning, and the values it can: anything else is refused.
ONLY_VALUES: dict[str, tuple[str, ...]] = {
    "quality": ("auto",),
    "style": ("auto",),
    "background": ("auto", "opaque"),
}
NOT_HONOURED = {
    "mask": "masks are not supported: FLUX.2 edits the whole image from its reference images; send the prompt only",
    "input_fidelity": "input_fidelity is not supported: FLUX.2 conditions on every reference image in full",
}


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for; each is a flag of `flux2-serve`."""

    max_images: int = 8  # `n`
    max_steps: int = 100  # one shared GPU: 1000 steps would hold every caller's queue for minutes
    max_prompt_chars: int = 32_000  # OpenAI's own limit for GPT image models
    max_side: int = 4096
    max_partial_images: int = 3  # as OpenAI's API allows


@dataclass(frozen=True)
class LoraChoice:
    name: str  # as `GET /v1/models` lists it: a file under --lora-dir, by its relative name
    scale: float = 1.0


@dataclass(frozen=True)
class ImageRequest:
    """What a caller asked for; None means the model's own default."""

    prompt: str
    model: str | None = None
    n: int = 1
    width: int | None = None  # None with height None: `size` "auto", the model's default size
    height: int | None = None
    response_format: str = "b64_json"  # as OpenAI's GPT image models answer
    output_format: str = "png"
    output_compression: int | None = None  # JPEG/WebP quality 0..100; None: the CLI's 95
    stream: bool = False
    partial_images: int = 0
    seed: int | None = None  # None: a random seed, reported in the reply
    steps: int | None = None
    guidance: float | None = None
    negative_prompt: str | None = None
    loras: tuple[LoraChoice, ...] = ()
    upsample: bool = False

    @property
    def size(self) -> str | None:
        return None if self.width is None else f"{self.width}x{self.height}"


def _type_error(name: str, wanted: str, value: Any) -> ApiError:
    shown = json.dumps(value)[:60] if not isinstance(value, str) else repr(value[:60])
    return bad_request(f"'{name}' must be {wanted}, not {shown}", param=name, code="invalid_type")


def whole(name: str, value: Any, low: int, high: int, from_form: bool) -> int:
    """A whole number in [low, high]: a JSON integer (or integral float), or its decimal text from a form."""
    if from_form and isinstance(value, str) and re.fullmatch(r"-?\d{1,20}", value.strip()):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(name, f"a whole number from {low} to {high}", value)
    if not (math.isfinite(value) and float(value).is_integer()):
        raise _type_error(name, f"a whole number from {low} to {high}", value)
    if not low <= int(value) <= high:
        raise bad_request(f"'{name}' must be from {low} to {high}, not {int(value)}", param=name)
    return int(value)


def number(name: str, value: Any, low: float, high: float, from_form: bool) -> float:
    """A finite number in [low, high]."""
    if from_form and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _type_error(name, "a number", value) from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _type_error(name, "a finite number", value)
    if not low <= value <= high:
        raise bad_request(f"'{name}' must be from {low:g} to {high:g}, not {value:g}", param=name)
    return float(value)


def boolean(name: str, value: Any, from_form: bool) -> bool:
    if from_form and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise _type_error(name, "true or false", value)
    return value


def text(name: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise _type_error(name, "a string", value)
    if len(value) > limit:
        raise bad_request(f"'{name}' is {len(value):,} characters; the limit is {limit:,}", param=name)
    return value


def choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        shown = repr(value[:40]) if isinstance(value, str) else json.dumps(value)[:40]
        raise bad_request(f"'{name}' must be one of {', '.join(allowed)}, not {shown}", param=name)
    return value


def size(value: Any, multiple: int, limits: RequestLimits) -> tuple[int | None, int | None]:
    """`"auto"` (the model's default) or `"WxH"`, each side a multiple of `multiple` up to `max_side`."""
    if value == "auto":
        return None, None
    match = SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise bad_request(f'\'size\' must be "WIDTHxHEIGHT" (e.g. "1024x1024") or "auto", not {value!r:.40}', "size")
    width, height = int(match[1]), int(match[2])
    for side_name, side in (("width", width), ("height", height)):
        if not multiple <= side <= limits.max_side:
            raise bad_request(
                f"'size' {width}x{height}: the {side_name} must be from {multiple} to {limits.max_side}", "size"
            )
        if side % multiple:
            lower = side // multiple * multiple
            raise bad_request(
                f"'size' {width}x{height}: the {side_name} must be a multiple of {multiple}; "
                f"use {max(lower, multiple)} or {lower + multiple}",
                "size",
            )
    return width, height


def loras(value: Any, from_form: bool) -> tuple[LoraChoice, ...]:
    """`[{"name": "style.safetensors", "scale": 0.8}, ...]`; on a form, the same list as JSON text."""
    if from_form and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _type_error("loras", 'a JSON list of {"name": ..., "scale": ...}', value) from None
    if not isinstance(value, list) or len(value) > MAX_LORAS:
        raise bad_request(f"'loras' must be a list of at most {MAX_LORAS} {{name, scale}} objects", "loras")
    chosen = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or set(item) - {"name", "scale"}:
            raise bad_request('each of \'loras\' is {"name": "file.safetensors", "scale": 1.0}', "loras")
        scale = number("loras.scale", item.get("scale", 1.0), -MAX_LORA_SCALE, MAX_LORA_SCALE, False)
        chosen.append(LoraChoice(text("loras.name", item["name"], 500), scale))
    return tuple(chosen)


def parse_request(
    body: Mapping[str, Any], *, multiple: int, limits: RequestLimits, from_form: bool = False
) -> ImageRequest:
    """The fields of one request body; `multiple`: what the model's sizes must be a multiple of."""
    for name in body:
        if name not in READERS and name not in IGNORED and name not in ONLY_VALUES and name not in NOT_HONOURED:
            raise unknown_parameter(name)
    for name, message in NOT_HONOURED.items():
        if body.get(name) not in (None, ""):
            raise bad_request(message, param=name, code="unsupported_parameter")
    for name, allowed in ONLY_VALUES.items():
        value = body.get(name)
        if value is not None and value not in allowed:
            raise bad_request(
                f"'{name}' {str(value)[:40]!r} cannot be honoured; flux2-serve takes {' or '.join(allowed)}",
                param=name,
                code="unsupported_value",
            )
    if body.get("prompt") is None:
        raise bad_request("'prompt' is required: describe the image to make", param="prompt", code="missing")
    values: dict[str, Any] = {}
    for name, read in READERS.items():
        if body.get(name) is not None:  # JSON null, like an absent field, means the default
            values.update(read(body[name], multiple, limits, from_form))
    if not values["prompt"].strip():
        raise bad_request("'prompt' is empty: describe the image to make", param="prompt", code="missing")
    return ImageRequest(**values)


Reader = Callable[[Any, int, RequestLimits, bool], dict[str, Any]]

READERS: dict[str, Reader] = {
    "prompt": lambda v, m, lim, f: {"prompt": text("prompt", v, lim.max_prompt_chars)},
    "model": lambda v, m, lim, f: {"model": text("model", v, 200)},
    "n": lambda v, m, lim, f: {"n": whole("n", v, 1, lim.max_images, f)},
    "size": lambda v, m, lim, f: dict(zip(("width", "height"), size(v, m, lim), strict=True)),
    "response_format": lambda v, m, lim, f: {"response_format": choice("response_format", v, RESPONSE_FORMATS)},
    "output_format": lambda v, m, lim, f: {"output_format": choice("output_format", v, OUTPUT_FORMATS)},
    "output_compression": lambda v, m, lim, f: {"output_compression": whole("output_compression", v, 0, 100, f)},
    "stream": lambda v, m, lim, f: {"stream": boolean("stream", v, f)},
    "partial_images": lambda v, m, lim, f: {"partial_images": whole("partial_images", v, 0, lim.max_partial_images, f)},
    "seed": lambda v, m, lim, f: {"seed": whole("seed", v, 0, MAX_SEED, f)},
    "num_inference_steps": lambda v, m, lim, f: {"steps": whole("num_inference_steps", v, 1, lim.max_steps, f)},
    "guidance_scale": lambda v, m, lim, f: {"guidance": number("guidance_scale", v, 0.0, MAX_GUIDANCE, f)},
    "negative_prompt": lambda v, m, lim, f: {"negative_prompt": text("negative_prompt", v, lim.max_prompt_chars)},
    "loras": lambda v, m, lim, f: {"loras": loras(v, f)},
    "upsample": lambda v, m, lim, f: {"upsample": boolean("upsample", v, f)},
}
