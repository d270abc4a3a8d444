"""Who is asking: a `Caller` for every request the page serves, the same for Gradio's events and for the
guard in front of them.

A browser gets a random visitor cookie with the page, and every later request of that browser (events, uploads,
the images it shows) carries it. A script that never loaded the page has no cookie and is known by its address.
With `--auth-file`, the logged-in user counts too: a user's files are theirs from any browser.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection

VISITOR_COOKIE = "flux2-studio-visitor"
VISITOR_PATTERN = re.compile(r"[A-Za-z0-9_-]{22,64}")  # what `new_visitor` makes; anything else is no cookie


@dataclass(frozen=True)
class Caller:
    """One browser (by its cookie) or one cookie-less script (by its address), and its login, if any."""

    visitor: str  # "cookie <value>" or "address <host>"
    address: str  # the client's address (uvicorn takes X-Forwarded-For from a proxy on 127.0.0.1)
    user: str | None = None  # the logged-in user with --auth-file

    @property
    def account(self) -> str:
        """Whose share of the queue a job counts against: the logged-in user, else the address."""
        return f"user {self.user}" if self.user is not None else f"address {self.address}"

    def owns(self, visitor: str, user: str | None) -> bool:
        """Whether this caller is the browser or script that made something, or the same logged-in user."""
        return visitor == self.visitor or (user is not None and user == self.user)


def new_visitor() -> str:
    return secrets.token_urlsafe(24)  # 192 bits


def cookie_visitor(connection: HTTPConnection) -> str | None:
    value = connection.cookies.get(VISITOR_COOKIE)
    return value if value is not None and VISITOR_PATTERN.fullmatch(value) else None


def logged_in_user(connection: HTTPConnection) -> str | None:
    """The user Gradio's login cookie names, if it is one Gradio issued (its `App.tokens`)."""
    app: Any = connection.scope.get("app")
    tokens = getattr(app, "tokens", None)
    cookie_id = getattr(app, "cookie_id", None)
    if not tokens or cookie_id is None:
        return None
    token = connection.cookies.get(f"access-token-{cookie_id}") or connection.cookies.get(
        f"access-token-unsecure-{cookie_id}"
    )
    user = tokens.get(token) if token else None
    return user if isinstance(user, str) else None


def caller_of(connection: HTTPConnection, user: str | None = None) -> Caller:
    """The caller of a request; `user` when the caller already knows it (Gradio's events carry it)."""
    address = connection.client.host if connection.client else "unknown"
    cookie = cookie_visitor(connection)
    visitor = f"cookie {cookie}" if cookie else f"address {address}"
    return Caller(visitor, address, user if user is not None else logged_in_user(connection))


def caller_of_event(request: Any) -> Caller:
    """The caller of a Gradio event, from its `gr.Request` (which wraps the request that queued it)."""
    inner = getattr(request, "request", None)
    user = getattr(request, "username", None)
    if isinstance(inner, HTTPConnection):
        return caller_of(inner, user if isinstance(user, str) else None)
    return Caller("address unknown", "unknown", user if isinstance(user, str) else None)
