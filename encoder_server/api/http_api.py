"""The Hugging Face–compatible HTTP endpoint, served beside gRPC from the same process and event loop.

POST /predict  {"prompt": str | [str]}  + `Authorization: Bearer <token>` where tokens are configured
               → `torch.save(prompt_embeds)` bytes (application/octet-stream), as the hosted FLUX.2 text
               encoder replied, for `torch.load(io.BytesIO(body), weights_only=True)`; with
               `Accept: application/vnd.safetensors` or `?format=safetensors`, safetensors bytes holding
               "prompt_embeds" instead. Optional "max_sequence_length" and "hidden_state_layers" as in gRPC;
               `?model=NAME` picks one of the served models (as `EncodeRequest.model`; unset: the first).
GET  /health   → 200 {"status": "SERVING"} once every model is loaded; 503 while loading or stopping.
GET  /metrics  → the Prometheus text of the whole server, gRPC and HTTP calls together: without per-caller or
               cache detail, unless the server has a metrics token (`--metrics-token-file`), which it then requires.

Errors are JSON `{"error": "<what to fix>"}` with the status `encoder_server.api.status.http_status_for` gives
(a 503 carries Retry-After; a model the server does not serve is 404). /predict shares the engines (limits,
batching, cache, reply budget), the tokens
and the call log with gRPC: its reply stays reserved until it is sent, and a reader that stops reading for
`send_timeout_s` loses it; a body must arrive within the same time. Slow or idle connections are bounded by
`shared.http_guard` (a deadline for headers, a cap on connections). uvicorn installs no signal handlers
and configures no logging here: the gRPC serve loop owns SIGINT, SIGTERM and SIGHUP. With TLS configured the
port speaks HTTPS only.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import safetensors.torch
import torch
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from encoder_server.api.predict_body import parse_predict_body
from encoder_server.api.status import RETRY_AFTER_S, http_status_for
from encoder_server.config import ServerConfig
from encoder_server.errors import InvalidRequestError, ServerError
from encoder_server.model.request import EncodeRequest
from encoder_server.observability.calls import Call, CallLog
from encoder_server.observability.metrics import CONTENT_TYPE
from encoder_server.serving.engine import EncodeResult, send_within
from encoder_server.serving.models import ServedEngines
from shared.http_guard import ConnectionCount, GuardedServer, bind_listener, start_guarded_server
from shared.quotas import CallerQuotas
from shared.tokens import ANONYMOUS, HTTP_DENIED_MESSAGE, UNKNOWN, TokenRegistry

log = logging.getLogger("flux2-encoder.http")

TORCH_TYPE = "application/octet-stream"
SAFETENSORS_TYPE = "application/vnd.safetensors"
FORMATS = {"torch": TORCH_TYPE, "safetensors": SAFETENSORS_TYPE}
# A character the limits count as 4 UTF-8 bytes can take 12 in JSON (an escaped surrogate pair, \ud83d\ude00).
JSON_ESCAPE_FACTOR = 3
BODY_SLACK_BYTES = 4096  # braces, field names, the optional numbers, whitespace
# Each piece waits for the previous ones to drain, so a stalled reader is noticed; what uvicorn still holds for
# a reader that never reads again is at most about one piece.
REPLY_CHUNK_BYTES = 1024 * 1024
CLIENT_GONE = "499"  # nginx's status for a client that closed the connection before the reply


class _Refused(Exception):
    """A request refused before it is parsed (body too large or too slow); the connection is closed after."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str, close: bool = False, headers: dict[str, str] | None = None) -> Response:
    headers = dict(headers or {})
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if close:  # the body was not read: do not drain it for the next request on this connection
        headers["Connection"] = "close"
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _reply_format(request: Request) -> str:
    """ "torch" (the hosted endpoint's `torch.save`) unless the caller asks for safetensors."""
    asked = request.query_params.get("format")
    if asked is not None:
        if asked not in FORMATS:
            raise InvalidRequestError(f'format {json.dumps(asked[:40])} is not served; use "torch" or "safetensors"')
        return asked
    ranks = _accept_ranks(request.headers.get("accept", ""))
    safetensors = ranks.get(SAFETENSORS_TYPE, 0.0)
    torch_save = max(ranks.get(TORCH_TYPE, 0.0), ranks.get("application/*", 0.0), ranks.get("*/*", 0.0))
    return "safetensors" if safetensors > 0 and safetensors >= torch_save else "torch"


def _accept_ranks(accept: str) -> dict[str, float]:
    """`{media type: q}` of an Accept header; q=0 means "not this one", and a malformed q counts as 1."""
    ranks: dict[str, float] = {}
    for part in accept.split(","):
        media_type, *params = (item.strip().lower() for item in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                with contextlib.suppress(ValueError):
                    quality = float(value)
        ranks[media_type] = max(ranks.get(media_type, 0.0), quality)
    return ranks


def _serialize(result: EncodeResult, reply_format: str) -> bytes:
    """The reply body; off the event loop, as a full-size embedding takes ~16 ms to copy and save."""
    prompt_embeds = result.tensor()  # [B, max_sequence_length, width]
    if reply_format == "safetensors":
        return safetensors.torch.save({"prompt_embeds": prompt_embeds})
    buffer = io.BytesIO()
    torch.save(prompt_embeds, buffer)
    return buffer.getvalue()


class PredictEndpoint:
    """POST /predict as a plain ASGI app, so the reply is sent, chunk by chunk, while its bytes are reserved."""

    def __init__(self, config: ServerConfig, engines: ServedEngines, access: HttpAccess):
        self._engines = engines
        self._tokens = access.tokens
        self._calls = access.calls
        self._quotas = access.quotas
        self._timeout_s = config.send_timeout_s
        self.max_body_bytes = JSON_ESCAPE_FACTOR * config.limits.max_request_bytes + BODY_SLACK_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        caller = ANONYMOUS if self._tokens is None else self._tokens.identify(request.headers.get("authorization"))
        started = False  # once the 200 is on its way, an error can only cut the connection
        with self._calls.track("predict", caller or UNKNOWN) as call:
            try:
                if caller is None:
                    call.status = "401"
                    response = _error(401, HTTP_DENIED_MESSAGE, close=True, headers={"WWW-Authenticate": "Bearer"})
                    await response(scope, receive, send)
                    return
                with self._quotas.admit(caller):
                    encode_request, reply_format = await self._parse(request, caller)
                    call.prompts = encode_request.prompts
                    engine = self._engines.ready_engine_for(request.query_params.get("model"))
                    async with engine.encode(encode_request, caller) as result:
                        call.cached, call.batch = result.cached, result.batch
                        reply = await asyncio.to_thread(_serialize, result, reply_format)
                        call.status, started = "200", True
                        await self._send_reply(send, reply, FORMATS[reply_format], call)
            except _Refused as refused:
                call.status = str(refused.status)
                await _error(refused.status, str(refused), close=True)(scope, receive, send)
            except ClientDisconnect:
                call.status = CLIENT_GONE
            except ServerError as error:
                status = http_status_for(error)
                call.status = str(status)
                if started:
                    log.warning("predict %s: %s", call.id, error)  # uvicorn closes the connection
                else:
                    await _error(status, str(error))(scope, receive, send)
            except Exception:
                call.status = "500"
                log.exception("predict failed")
                if not started:
                    await _error(500, "the encoder failed on this request; see the server log")(scope, receive, send)

    async def _parse(self, request: Request, caller: str) -> tuple[EncodeRequest, str]:
        """The request and reply format, its prompts charged to the caller (one, if it does not parse)."""
        body = await self._read_body(request)
        try:
            reply_format = _reply_format(request)
            encode_request = await asyncio.to_thread(parse_predict_body, body)  # up to a few MB of JSON
        except InvalidRequestError:
            self._quotas.charge(caller, 1)
            raise
        self._quotas.charge(caller, len(encode_request.prompts))
        return encode_request, reply_format

    async def _read_body(self, request: Request) -> bytes:
        """The whole body, refused with 413 as soon as it is known to be too large, and 408 if it trickles in."""
        too_large = _Refused(
            413,
            f"the body is over {self.max_body_bytes} bytes, more than the request limits allow; send fewer or "
            "shorter prompts",
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and (len(declared) > 18 or int(declared) > self.max_body_bytes):
            raise too_large

        async def read() -> bytes:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > self.max_body_bytes:
                    raise too_large
            return bytes(body)

        try:
            return await asyncio.wait_for(read(), self._timeout_s)
        except TimeoutError:
            raise _Refused(408, f"the body did not arrive within {self._timeout_s:g} s; send it at once") from None

    async def _send_reply(self, send: Send, body: bytes, media_type: str, call: Call) -> None:
        headers = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for start in range(0, len(body), REPLY_CHUNK_BYTES):
            chunk = body[start : start + REPLY_CHUNK_BYTES]
            message = {"type": "http.response.body", "body": chunk, "more_body": start + len(chunk) < len(body)}
            await send_within(send(message), self._timeout_s)  # uvicorn parks it while its buffer is full
            call.sent_bytes += len(chunk)


@dataclass
class _Health:
    engines: ServedEngines
    stopping: bool = False

    def serving(self) -> bool:
        """Every model loaded, and not stopping."""
        return self.engines.serving() and not self.stopping


@dataclass(frozen=True)
class HttpAccess:
    """Who may call and how much: what the HTTP endpoint shares with gRPC."""

    tokens: TokenRegistry | None  # None: every caller is `anonymous`
    calls: CallLog
    quotas: CallerQuotas
    metrics_tokens: TokenRegistry | None = None  # None: /metrics is open, without caller or cache detail


def create_app(
    config: ServerConfig, engines: ServedEngines, access: HttpAccess, serving: Callable[[], bool]
) -> FastAPI:
    """The ASGI app; `serving()` says whether /health reports SERVING."""
    app = FastAPI(title="flux2-encoder", docs_url=None, redoc_url=None, openapi_url=None)
    app.router.routes.append(Route("/predict", PredictEndpoint(config, engines, access), methods=["POST"]))
    registry = engines.metrics

    @app.get("/health")
    async def health() -> Response:
        if serving():
            return JSONResponse({"status": "SERVING"})
        return JSONResponse({"status": "NOT_SERVING"}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if access.metrics_tokens is None:  # open like /health, for scrapers: nothing about callers or the cache
            return Response(registry.exposition(detailed=False), media_type=CONTENT_TYPE)
        if access.metrics_tokens.identify(request.headers.get("authorization")) is None:
            message = "/metrics needs the metrics token; send `Authorization: Bearer <token>` (--metrics-token-file)"
            return _error(401, message, headers={"WWW-Authenticate": "Bearer"})
        return Response(registry.exposition(detailed=True), media_type=CONTENT_TYPE)

    @app.exception_handler(HTTPException)
    async def not_served(request: Request, error: HTTPException) -> Response:
        message = f"{request.method} {request.url.path} is not served; use POST /predict, GET /health or GET /metrics"
        return _error(error.status_code, message, headers=dict(error.headers or {}))  # keeps a 405's Allow

    return app


@dataclass
class HttpServer:
    """The HTTP endpoint's uvicorn server, running as a task on the gRPC server's loop."""

    port: int
    guarded: GuardedServer = field(repr=False)
    health: _Health = field(repr=False)

    @property
    def connections(self) -> ConnectionCount:
        return self.guarded.connections

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, stop accepting, let replies in flight finish within `grace_s`, then close."""
        self.health.stopping = True
        await self.guarded.stop(grace_s)


async def start_http_server(
    config: ServerConfig, engines: ServedEngines, access: HttpAccess, max_connections: int
) -> HttpServer:
    """Bind `config.http_port` (0: any free port) on `config.host` and serve the app on the running loop, at most
    `max_connections` connections at once (`shared.http_guard`: our accept loop, header deadlines; the gRPC serve
    loop owns the signals)."""
    assert config.http_port is not None
    health = _Health(engines)
    app = create_app(config, engines, access, health.serving)
    tls: dict[str, Any] = {}
    if config.tls is not None:
        tls = dict(ssl_certfile=config.tls.cert, ssl_keyfile=config.tls.key)
        if config.tls.client_ca is not None:
            tls.update(ssl_ca_certs=config.tls.client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    sock = bind_listener(config.host, config.http_port)
    try:
        guarded = await start_guarded_server(
            app,
            sock,
            max_connections=max_connections,
            header_timeout_s=config.connections.http_header_timeout_s,
            grace_s=config.shutdown_grace_s,
            tls=tls,
        )
    except BaseException:
        sock.close()
        raise
    log.info("HTTP /predict on %s:%d (%s)", config.host, guarded.port, "HTTPS" if config.tls else "clear text")
    return HttpServer(guarded.port, guarded, health)
