"""Every failure as OpenAI's error object, `{"error": {"message", "type", "param", "code"}}`, with its status.

The `openai` SDK picks its exception class from the status alone (400 `BadRequestError`, 401
`AuthenticationError`, 404 `NotFoundError`, 413 `APIStatusError`, 429 `RateLimitError`, 5xx
`InternalServerError`), so the status is what a caller's code branches on; the message says what to fix. The
client's own exceptions become statuses here and nowhere else (`from_failure`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusion_client.errors import (
    BadReplyError,
    EncoderFailedError,
    EncoderRejectedError,
    InputError,
    ModelMismatchError,
    TransportError,
    failure_text,
)
from shared.printable import MESSAGE_LIMIT, printable_line

RETRY_AFTER_S = 5  # what a 429 or 503 asks a caller to wait: about one image on a busy GPU


@dataclass(eq=False)
class ApiError(Exception):
    """One failed request: its HTTP status and OpenAI's error fields."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)
        self.message = printable_line(self.message, MESSAGE_LIMIT)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response_headers(self) -> dict[str, str]:
        # The SDK retries 5xx and 429 by itself; a failure a retry cannot fix says so, so no GPU time is spent twice.
        retry = self.status in (429, 503) or self.status in (408, 409)
        return {**self.headers, "x-should-retry": "true" if retry else "false"}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def unknown_parameter(name: str) -> ApiError:
    """As OpenAI answers a field it does not know, so a typo never silently changes the image."""
    shown = printable_line(name, 80)
    return ApiError(400, f"Unknown parameter: '{shown}'.", code="unknown_parameter", param=shown)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def not_found(message: str, code: str = "not_found", param: str | None = None) -> ApiError:
    return ApiError(404, message, code=code, param=param)


def too_large(message: str) -> ApiError:
    return ApiError(413, message, code="request_too_large")


def queue_full(message: str) -> ApiError:
    return ApiError(
        429, message, type="requests", code="rate_limit_exceeded", headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def unavailable(message: str, code: str = "service_unavailable") -> ApiError:
    return ApiError(503, message, type="server_error", code=code, headers={"Retry-After": str(RETRY_AFTER_S)})


def server_error(message: str, code: str = "server_error") -> ApiError:
    return ApiError(500, message, type="server_error", code=code)


def from_failure(error: BaseException) -> ApiError:
    """The one mapping from what generating can raise to a status: the caller's fault is 4xx, ours 5xx."""
    if isinstance(error, ApiError):
        return error
    text = failure_text(error)
    if isinstance(error, InputError):
        return bad_request(text)
    if isinstance(error, EncoderRejectedError):
        if error.code.name in ("INVALID_ARGUMENT", "OUT_OF_RANGE"):
            return bad_request(text, param="prompt")  # the encoder refused the prompt: too long, say
        return server_error(text, code="encoder_refused")  # our token or set-up: a retry cannot fix it
    if isinstance(error, TransportError):
        return unavailable(text, code="encoder_unavailable")
    if isinstance(error, ModelMismatchError):
        return server_error(text, code="encoder_mismatch")
    if isinstance(error, EncoderFailedError | BadReplyError):
        return ApiError(502, text, type="server_error", code="encoder_failed")
    return server_error(f"the server failed ({text}); its log says more")
