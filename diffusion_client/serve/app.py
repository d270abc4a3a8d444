"""The FastAPI app of `flux2-serve`: OpenAI's Images API over an `ImageService`.

Routes: `POST /v1/images/generations` (JSON), `POST /v1/images/edits` (multipart), `GET /v1/models`,
`GET /v1/images/files/{name}` (`url` replies), `GET /health`, `GET /metrics`. A request is refused in this order,
each check before the next costs anything: a query string or a missing token (nothing read), a body whose
`Content-Length` is too big, the caller's own limits, the body's fields (read within the size and time limits),
preflight (sizes, LoRAs, reference images), the queue. Every failure is OpenAI's error object (`api_errors`); a
caller that hangs up has its job withdrawn, between steps if it had started.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from diffusion_client.serve.api_errors import ApiError, bad_request, not_found, server_error, unauthorized, unavailable
from diffusion_client.serve.bodies import form_fields, json_fields, save_references
from diffusion_client.serve.body_limits import BodyLimitMiddleware, BodyLimits
from diffusion_client.serve.callers import Callers
from diffusion_client.serve.fields import ImageRequest, RequestLimits, parse_request
from diffusion_client.serve.image_files import ImageFiles
from diffusion_client.serve.metrics import CONTENT_TYPE, ServeMetrics
from diffusion_client.serve.replies import image_reply, sse, stream_event
from diffusion_client.serve.service import Completed, Event, Failed, Finished, ImageService
from diffusion_client.studio.loras import lora_names
from shared.printable import printable_line

DISCONNECT_POLL_S = 0.25  # how soon a caller that hung up is noticed while its image waits or denoises
KEEP_ALIVE_S = 1.0  # a streamed request that waits in the queue writes a comment this often
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp"}


@dataclass
class ServeState:
    """What the routes share; `service` is None until the pipeline has loaded (503 until then)."""

    model_id: str
    callers: Callers
    files: ImageFiles
    limits: RequestLimits
    size_multiple: int
    max_references: int = 8
    max_image_bytes: int = 20 << 20
    lora_dir: Path | None = None
    metrics_token: str | None = None
    public_url: str | None = None  # as callers reach the server (behind a proxy); None: as the request came
    body_deadline_s: float = 60.0
    service: ImageService | None = None
    load_error: str | None = None
    draining: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    metrics: ServeMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = ServeMetrics(lambda: len(self.service.queue) if self.service else 0)

    def ready(self) -> ImageService:
        if self.draining:
            raise unavailable("the server is shutting down; send the request again (to another replica)")
        if self.service is None:
            if self.load_error is not None:
                raise server_error(f"the model failed to load: {self.load_error}", code="model_failed")
            raise unavailable("the model is still loading; try again shortly", code="loading")
        return self.service

    def caller_of(self, request: Request) -> str:
        return self.callers.identify(request.headers.get("authorization"), request.url.query)


def create_app(state: ServeState) -> FastAPI:
    """The whole app over `state`; serving it is the caller's business (uvicorn, or Ray Serve's ingress)."""
    app = FastAPI(title="flux2-serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state
    _add_error_handlers(app)
    multipart_bytes = state.max_references * state.max_image_bytes + (1 << 20)
    limits = BodyLimits(json_bytes=1 << 20, multipart_bytes=multipart_bytes, deadline_s=state.body_deadline_s)
    app.add_middleware(BodyLimitMiddleware, limits=limits)

    @app.post("/v1/images/generations")
    async def generations(request: Request) -> Response:
        return await _endpoint(state, request, "generations")

    @app.post("/v1/images/edits")
    async def edits(request: Request) -> Response:
        return await _endpoint(state, request, "edits")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        state.caller_of(request)
        entry = {
            "id": state.model_id,
            "object": "model",
            "created": state.created,
            "owned_by": "flux2-split",
            "loras": lora_names(state.lora_dir),
        }
        return JSONResponse({"object": "list", "data": [entry]})

    @app.get("/v1/images/files/{name}")
    async def image_file(name: str, request: Request) -> Response:
        path = state.files.path_for(name, state.caller_of(request))
        if path is None:  # missing, expired and someone else's look alike: probing tells nothing
            raise not_found("no such image (it may have expired)", code="image_not_found")
        return FileResponse(path, media_type=MIME[path.suffix])

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.draining or state.service is None:
            status = "draining" if state.draining else ("failed" if state.load_error else "loading")
            return JSONResponse({"status": status}, status_code=503)
        return JSONResponse({"status": "ok", "queue": len(state.service.queue), "busy": state.service.busy})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        detailed = False
        if state.metrics_token is not None:
            detailed = request.headers.get("authorization", "").strip() == f"Bearer {state.metrics_token}"
            if not detailed:
                raise unauthorized("/metrics needs the bearer token of --metrics-token-file")
        return Response(state.metrics.exposition(detailed), media_type=CONTENT_TYPE)

    return app


async def _endpoint(state: ServeState, request: Request, endpoint: str) -> Response:
    """One image request from its headers to its reply, counted by caller and status."""
    caller = "unknown"
    admitted = contextlib.ExitStack()  # the caller's in-flight place, held until the reply (or stream) ends
    try:
        caller = state.caller_of(request)
        service = state.ready()
        admitted.enter_context(state.callers.admitted(caller))
        uploads: list[UploadFile] = []
        if endpoint == "edits":
            body: dict[str, Any]
            body, uploads = await form_fields(request, state.max_references)
        else:
            body = await json_fields(request)
        parsed = parse_request(body, multiple=state.size_multiple, limits=state.limits, from_form=endpoint == "edits")
        _check(state, parsed, endpoint, uploads)
        state.callers.charge(caller, parsed.n - 1)  # the first image was charged on admission
        response = await _generate(state, service, request, caller, parsed, uploads, endpoint, admitted)
    except ApiError as error:
        admitted.close()
        state.metrics.request(endpoint, error.status, caller)
        raise
    except BaseException:
        admitted.close()
        raise
    state.metrics.request(endpoint, 200, caller)
    return response


def _check(state: ServeState, parsed: ImageRequest, endpoint: str, uploads: list[UploadFile]) -> None:
    if parsed.model is not None and parsed.model != state.model_id:
        shown = printable_line(parsed.model, 80)
        raise not_found(
            f"The model '{shown}' does not exist here; this server serves '{state.model_id}' (GET /v1/models)",
            code="model_not_found",
            param="model",
        )
    if parsed.stream and parsed.response_format == "url":
        raise bad_request("streamed images arrive as b64_json; leave response_format out", "response_format")
    if endpoint == "edits" and not uploads:
        raise bad_request("an edit needs at least one `image` (or `image[]`) part", "image", code="missing")


async def _generate(
    state: ServeState,
    service: ImageService,
    request: Request,
    caller: str,
    parsed: ImageRequest,
    uploads: list[UploadFile],
    endpoint: str,
    admitted: contextlib.ExitStack,
) -> Response:
    folder = Path(tempfile.mkdtemp(prefix="flux2-serve-references-"))
    admitted.callback(shutil.rmtree, folder, ignore_errors=True)
    references = await save_references(uploads, folder, state.max_image_bytes)
    jobs = await asyncio.to_thread(service.prepare, parsed, references)
    events: asyncio.Queue[Event] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def notify(event: Event) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: the server is stopping
            loop.call_soon_threadsafe(events.put_nowait, event)

    ticket = service.submit(caller, parsed, jobs, notify)
    admitted.callback(service.withdraw, ticket)  # a no-op once finished; stops the job of a caller who left
    size = f"{jobs[0].job.width}x{jobs[0].job.height}"
    if parsed.stream:
        kind = "image_edit" if endpoint == "edits" else "image_generation"
        return EventStreamResponse(_event_stream(events, kind, parsed, size), admitted.pop_all())
    with admitted.pop_all():
        completed = await _wait(request, events)

    def store(data: bytes, suffix: str) -> str:
        base = state.public_url or str(request.base_url).rstrip("/")
        return f"{base}/v1/images/files/{state.files.store(data, suffix, caller)}"

    reply = await asyncio.to_thread(image_reply, parsed, size, completed, store)
    return JSONResponse(reply)


async def _wait(request: Request, events: asyncio.Queue[Event]) -> list[Completed]:
    """The request's images, in order; a caller that hangs up ends the wait (and, on exit, its job)."""
    completed: list[Completed] = []
    checked = time.monotonic()
    while True:
        event: Event | None = None
        with contextlib.suppress(TimeoutError):
            event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
        # checked on a clock, not only when no event came: steps faster than the poll would hide a hang-up
        if time.monotonic() - checked >= DISCONNECT_POLL_S:
            checked = time.monotonic()
            if await request.is_disconnected():
                raise ApiError(499, "the caller went away", code="cancelled")
        if isinstance(event, Completed):
            completed.append(event)
        elif isinstance(event, Failed):
            raise event.error
        elif isinstance(event, Finished):
            return completed


async def _event_stream(
    events: asyncio.Queue[Event], kind: str, parsed: ImageRequest, size: str
) -> AsyncIterator[bytes]:
    """Server-sent events until the request's last image or its failure. While nothing happens (the request
    waits in the queue), a comment line every `KEEP_ALIVE_S` shows whether the caller is still there."""
    while True:
        try:
            event = await asyncio.wait_for(events.get(), KEEP_ALIVE_S)
        except TimeoutError:
            yield b": waiting\n\n"  # SSE readers skip comments; writing one fails once the caller has gone
            continue
        payload = stream_event(event, kind, parsed, size)
        if payload is None:
            return
        yield sse(payload)
        if payload["type"] == "error":
            return


class EventStreamResponse(StreamingResponse):
    """A stream that releases what its request holds (queue place, job, uploads) however it ends."""

    def __init__(self, content: AsyncIterator[bytes], cleanup: contextlib.ExitStack) -> None:
        super().__init__(
            content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self.cleanup = cleanup

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        with self.cleanup:
            await super().__call__(scope, receive, send)


def _add_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, ApiError)
        return JSONResponse(error.body(), status_code=error.status, headers=error.response_headers())

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if error.status_code == 404:
            shown = printable_line(f"{request.method} {request.url.path}", 200)
            mapped = not_found(f"Unknown request URL: {shown}. See GET /v1/models.", code="unknown_url")
        elif error.status_code == 405:
            mapped = ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")
        else:
            mapped = ApiError(error.status_code, str(error.detail), code="http_error")
        return await api_error(request, mapped)

    async def invalid(request: Request, error: Exception) -> Response:
        return await api_error(request, bad_request(f"the request did not parse: {error}", code="invalid_request"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
