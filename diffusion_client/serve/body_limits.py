"""Request bodies bounded in size and in time, before any route reads them.

A body whose `Content-Length` is over the route's limit is refused (413) before a byte is read; one sent in
chunks is counted as it arrives and refused once past the limit; one that arrives slower than `deadline_s`
in all (a slow-body attack holding a connection and a worker) is refused with 408. JSON routes take
`json_bytes`, the multipart edit route `multipart_bytes`, anything else a few KiB.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from diffusion_client.serve.api_errors import ApiError, too_large

OTHER_BYTES = 16 * 1024  # GET routes and anything unknown: no real body


@dataclass(frozen=True)
class BodyLimits:
    json_bytes: int = 1 << 20
    multipart_bytes: int = 200 << 20
    deadline_s: float = 60.0

    def for_path(self, path: str) -> int:
        if path == "/v1/images/edits":
            return self.multipart_bytes
        if path == "/v1/images/generations":
            return self.json_bytes
        return OTHER_BYTES


class BodyLimitMiddleware:
    """ASGI middleware enforcing `BodyLimits`; the errors it raises reach the app's `ApiError` handler."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.for_path(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _answer(send, too_large(f"the body is {declared:,} bytes; this route takes at most {limit:,}"))
            return
        await self.app(scope, _bounded(receive, limit, self.limits.deadline_s), send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _bounded(receive: Receive, limit: int, deadline_s: float) -> Receive:
    received = 0
    deadline: float | None = None
    complete = False  # once the whole body is in, receiving waits for a disconnect, for as long as a reply takes

    async def bounded() -> Message:
        nonlocal received, deadline, complete
        if complete:
            return await receive()
        if deadline is None:
            deadline = time.monotonic() + deadline_s
        try:
            message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
        except TimeoutError:
            raise ApiError(408, f"the body did not arrive within {deadline_s:g} s", code="request_timeout") from None
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large(f"the body is over {limit:,} bytes, the most this route takes")
            complete = not message.get("more_body", False)
        else:
            complete = True
        return message

    return bounded


async def _answer(send: Send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *((name.lower().encode(), value.encode()) for name, value in error.response_headers().items()),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def limit_bodies(app: Any, limits: BodyLimits) -> None:
    app.add_middleware(BodyLimitMiddleware, limits=limits)
