"""What a caller gets back, in OpenAI's shapes: the JSON reply, and the server-sent events of a streamed request.

Besides OpenAI's fields, a reply carries what SGLang's and vLLM-Omni's callers read (`inference_time_s`) and
each image's `seed`, so any image can be made again; the `openai` SDK keeps such fields (`model_extra`). A
streamed request gets a `<kind>.step` event after each denoising step (the SDK yields it with its `type`), the
`<kind>.partial_image` previews asked for, and one `<kind>.completed` per image; `kind` is `image_generation` or
`image_edit`.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

from diffusion_client.serve.api_errors import ApiError
from diffusion_client.serve.fields import ImageRequest
from diffusion_client.serve.service import Completed, Event, Failed, Partial, Step

# OpenAI's shape; flux2-serve counts no tokens.
USAGE = {
    "input_tokens": 0,
    "output_tokens": 0,
    "total_tokens": 0,
    "input_tokens_details": {"text_tokens": 0, "image_tokens": 0},
}
SUFFIXES = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_reply(
    request: ImageRequest, size: str, completed: list[Completed], store: Callable[[bytes, str], str]
) -> dict[str, Any]:
    """`{"created", "data": [...], ...}`; for `response_format: url`, `store(data, suffix)` gives each URL."""
    data = []
    for image in completed:
        item: dict[str, Any] = {"revised_prompt": image.revised_prompt, "seed": image.seed}
        if request.response_format == "url":
            item["url"] = store(image.data, SUFFIXES[request.output_format])
        else:
            item["b64_json"] = b64(image.data)
        data.append(item)
    return {
        "created": int(time.time()),
        "data": data,
        "background": "opaque",
        "output_format": request.output_format,
        "quality": "auto",
        "size": size,
        "usage": USAGE,
        "inference_time_s": round(sum(image.seconds for image in completed), 3),
    }


def stream_event(event: Event, kind: str, request: ImageRequest, size: str) -> dict[str, Any] | None:
    """One event's payload (its `type` names it), or None for the end of the stream."""
    now = int(time.time())
    common = {"background": "opaque", "output_format": request.output_format, "quality": "auto", "size": size}
    if isinstance(event, Step):
        return {
            "type": f"{kind}.step",
            "created_at": now,
            "image_index": event.image,
            "step": event.done,
            "total_steps": event.total,
        }
    if isinstance(event, Partial):
        return {
            "type": f"{kind}.partial_image",
            "created_at": now,
            **common,
            "b64_json": b64(event.data),
            "partial_image_index": event.index,
            "image_index": event.image,
        }
    if isinstance(event, Completed):
        return {
            "type": f"{kind}.completed",
            "created_at": now,
            **common,
            "b64_json": b64(event.data),
            "usage": USAGE,
            "image_index": event.image,
            "seed": event.seed,
            "revised_prompt": event.revised_prompt,
        }
    if isinstance(event, Failed):
        return error_event(event.error)
    return None


def error_event(error: ApiError) -> dict[str, Any]:
    """A failure after the stream began; the SDK raises `APIError` from it."""
    return {"type": "error", **error.body()}


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event: `event: <type>` and its JSON data."""
    return f"event: {payload['type']}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
