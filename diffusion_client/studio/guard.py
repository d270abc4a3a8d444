"""The guard: an ASGI middleware in front of every Gradio route, so what it enforces holds whichever route
(today's or a future Gradio's) would serve a request.

- With `--auth-file`, nothing but the login page, its assets and the login itself answers without a login:
  every other request gets Gradio's own refusal (401, `{"detail": {"error": "Not authenticated", ...}}`).
- Logins: wrong passwords are slowed per address and per user (`logins.py`), each failure logged with the
  caller's address, never the password; a caller still waiting gets 429 with `Retry-After`.
- Files: a shown image or an upload is served only to whoever made it (`shelf.py`); files named by URL are not
  fetched for anyone.
- Uploads: counted against the browser's and the page's quotas before a byte is stored (413 past them), and
  a browser's uploads are deleted when its last page closes (its heartbeat stream ends).
- Events: a file an event names must be one its caller uploaded; anything else (a server path, another
  visitor's upload, a URL) is refused with one line, in the answer and in the log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from diffusion_client.errors import printable_line
from diffusion_client.studio.logins import LoginThrottle, retry_after
from diffusion_client.studio.shelf import Shelf, mib
from diffusion_client.studio.visitors import VISITOR_COOKIE, Caller, caller_of, cookie_visitor, new_visitor

API = "/gradio_api"
# What a browser needs to show the login page and log in (checked in Chromium: the page, its scripts and styles,
# the theme, the login post); everything else waits for a login.
PUBLIC_PATHS = {("GET", "/"), ("HEAD", "/"), ("POST", "/login"), ("POST", "/login/"), ("GET", "/logout"),
                ("GET", "/theme.css"), ("GET", "/favicon.ico")}  # fmt: skip
PUBLIC_PREFIXES = ("/assets/", "/static/")  # Gradio's own built files, GET and HEAD only
NOT_AUTHENTICATED = {"detail": {"error": "Not authenticated", "auth_message": None}}  # as Gradio's login_check
MAX_EVENT_BODY = 16 * 2**20  # a JSON event: a 20,000-character prompt and a 500-row LoRA table are far below it
MAX_LOGIN_BODY = 64 * 1024


@dataclass(frozen=True)
class GuardPolicy:
    shelf: Shelf
    throttle: LoginThrottle | None  # None: no --auth-file
    max_upload_bytes: int  # what one upload request may carry when it does not say its length
    log: Callable[[str], None]


def route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return (path[len(root) :] or "/") if root and path.startswith(root) else path


def public(method: str, path: str, app: Any) -> bool:
    """What answers without a login: the login page and what it loads, and Gradio's own call to start its
    startup events, which `launch` makes once, without a login, before the page serves."""
    if (method, path) in PUBLIC_PATHS or (method in ("GET", "HEAD") and path.startswith(PUBLIC_PREFIXES)):
        return True
    return method == "GET" and path == f"{API}/startup-events" and not getattr(app, "startup_events_triggered", True)


async def answer(send: Send, status: int, content: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A complete JSON (or, for a str, plain-text) response."""
    text = content if isinstance(content, str) else json.dumps(content)
    kind = b"text/plain; charset=utf-8" if isinstance(content, str) else b"application/json"
    body = text.encode()
    start = [(b"content-type", kind), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None past `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands over `body` once, then waits on the client (for a disconnect) as before."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def file_paths(value: Any) -> list[str]:
    """Every file an event's data names, as Gradio recognises them (FileData: a `path` with its `meta`)."""
    if isinstance(value, dict):
        meta = value.get("meta")
        if isinstance(value.get("path"), str) and isinstance(meta, dict) and meta.get("_type") == "gradio.FileData":
            return [value["path"]]
        return [path for item in value.values() for path in file_paths(item)]
    if isinstance(value, list):
        return [path for item in value for path in file_paths(item)]
    return []


class Guard:
    def __init__(self, app: ASGIApp, policy: GuardPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        method, path = scope.get("method", "GET"), route_path(scope)
        caller = caller_of(connection)
        app = scope.get("app")
        if getattr(app, "auth", None) is not None and caller.user is None and not public(method, path, app):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await answer(send, 401, NOT_AUTHENTICATED)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
        elif method in ("GET", "HEAD") and path == "/" and cookie_visitor(connection) is None:
            await self.app(scope, receive, with_visitor_cookie(send))
        elif method == "POST" and path in ("/login", "/login/") and self.policy.throttle is not None:
            await self.login(scope, receive, send, caller, self.policy.throttle)
        elif method in ("GET", "HEAD") and path.startswith((f"{API}/file=", f"{API}/file/")):
            await self.file(scope, receive, send, caller, path[len(f"{API}/file=") :])  # the path, as Gradio reads it
        elif method == "POST" and path.rstrip("/") == f"{API}/upload":
            await self.upload(scope, receive, send, caller)
        elif method == "GET" and path.startswith(f"{API}/heartbeat/"):
            await self.heartbeat(scope, receive, send, caller, path.removeprefix(f"{API}/heartbeat/"))
        elif method == "POST" and path.startswith(f"{API}/"):
            await self.event(scope, receive, send, caller)
        else:
            await self.app(scope, receive, send)

    async def login(self, scope: Scope, receive: Receive, send: Send, caller: Caller, throttle: LoginThrottle) -> None:
        body = await read_body(receive, MAX_LOGIN_BODY)
        if body is None:
            await answer(send, 413, "a login is a user name and a password")
            return
        user = await form_user(scope, body)
        named = f"user {printable_line(user, 80)}" if user in throttle.users else "an unknown user"
        wait_s = throttle.wait_s(caller.address, user)
        if wait_s > 0:
            if throttle.first_refusal(caller.address, user):  # one line per wait, however fast the tries come
                left = retry_after(wait_s)
                self.policy.log(f"login refused for {named} from {caller.address}: too many failures, {left} s left")
            detail = f"too many failed logins; try again in {retry_after(wait_s)} s"
            await answer(send, 429, {"detail": detail}, [(b"retry-after", str(retry_after(wait_s)).encode())])
            return
        # Counted as failed until it succeeds, so tries sent all at once are counted before any is answered.
        failures, wait_s = throttle.failed(caller.address, user)
        status = await self.call(scope, replaying(body, receive), send)
        if status == 200:
            throttle.succeeded(caller.address, user)
        else:  # 400: Gradio's "Incorrect credentials."
            after = f"next try in {retry_after(wait_s)} s" if wait_s > 0 else "no wait yet"
            self.policy.log(f"login failed for {named} from {caller.address} ({failures} in a row; {after})")

    async def file(self, scope: Scope, receive: Receive, send: Send, caller: Caller, file: str) -> None:
        if file.startswith(("http://", "https://")) or self.policy.shelf.readable(file, caller) is False:
            await answer(send, 403, {"detail": "File not allowed."})  # Gradio's words for files it does not serve
            return
        await self.app(scope, receive, send)

    async def upload(self, scope: Scope, receive: Receive, send: Send, caller: Caller) -> None:
        shelf = self.policy.shelf
        declared = HTTPConnection(scope).headers.get("content-length", "")
        size = int(declared) if declared.isdigit() else self.policy.max_upload_bytes
        refusal = shelf.reserve(caller, size)
        if refusal is not None:
            self.policy.log(f"refused an upload of {mib(size)} from {caller.address}: {refusal}")
            await answer(send, 413, refusal)
            return
        received = 0
        over = False

        async def counted() -> Message:  # a body longer than it said (or than allowed) stops being read
            nonlocal received, over
            message = await receive()
            received += len(message.get("body", b""))
            if received > size:
                over = True
                return {"type": "http.disconnect"}
            return message

        chunks: list[bytes] = []

        async def kept(message: Message) -> None:
            if over:  # the refusal below answers instead
                return
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            try:
                status = await self.call(scope, counted, kept)
            except Exception:
                if not over:
                    raise
                status = 0  # Gradio gave up on the body cut short; the refusal below is the answer
            if over:
                await answer(send, 413, f"an upload of unstated length may carry {mib(size)} at most")
            elif status == 200:
                paths = json.loads(b"".join(chunks) or b"[]")
                shelf.uploaded(caller, [path for path in paths if isinstance(path, str)])
        finally:
            shelf.release(caller, size)

    async def heartbeat(self, scope: Scope, receive: Receive, send: Send, caller: Caller, session: str) -> None:
        """A page's heartbeat stream lasts as long as the page: when it ends, the page is closed."""
        self.policy.shelf.page_opened(caller.visitor, session)
        try:
            await self.app(scope, receive, send)
        finally:
            removed = self.policy.shelf.page_closed(caller.visitor, session)
            if removed:
                self.policy.log(f"deleted {removed} upload(s) of a browser whose last page closed")

    async def event(self, scope: Scope, receive: Receive, send: Send, caller: Caller) -> None:
        body = await read_body(receive, MAX_EVENT_BODY)
        if body is None:
            await answer(send, 413, {"detail": f"a call may carry {mib(MAX_EVENT_BODY)}; upload files instead"})
            return
        try:
            data = json.loads(body)
        except ValueError:
            data = None  # not JSON: Gradio answers it
        for path in file_paths(data):
            if not self.policy.shelf.owns_upload(path, caller):
                name = printable_line(path.rsplit("/", 1)[-1], 80)
                message = f"the call names a file ({name}) that was not uploaded by its caller; upload it first"
                self.policy.log(f"refused a call from {caller.address}: {message}")
                await answer(send, 400, {"detail": message})
                return
        await self.app(scope, replaying(body, receive), send)

    async def call(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Run the app, returning the status it answered with."""
        status = 0

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, watched)
        return status


def with_visitor_cookie(send: Send) -> Send:
    """`send` adding a new visitor cookie to the response (the page itself, so every browser gets one)."""
    cookie = f"{VISITOR_COOKIE}={new_visitor()}; Path=/; HttpOnly; SameSite=Lax".encode()

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
        await send(message)

    return sending


async def form_user(scope: Scope, body: bytes) -> str:
    """The user name a login form carries, trimmed as Gradio trims it ("" when there is none)."""

    async def once() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, once).form(max_files=0, max_fields=8)
    except Exception:  # a malformed form: Gradio refuses it itself
        return ""
    user = form.get("username")
    return user.strip() if isinstance(user, str) else ""
