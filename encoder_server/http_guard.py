"""uvicorn's HTTP/1.1 protocol with two guards against slow and idle connections (slowloris).

- A deadline for each request's line and headers, counted from the connection's start or the previous reply
  (bytes trickled in do not extend it): past it the connection gets 408 (or, if it sent nothing, is simply
  closed, as an idle keep-alive connection is).
- A cap on open connections: one past it gets 503 and is closed at once, so idle connections can never use up
  the file descriptors gRPC needs (see `encoder_server.descriptors`).

The body has its own deadline in the /predict handler (`ServerConfig.send_timeout_s`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from encoder_server.status import RETRY_AFTER_S


def _raw_response(status: str, message: str, extra_headers: str = "") -> bytes:
    """A whole HTTP/1.1 response that closes the connection, written without h11 (no request was parsed)."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\n{extra_headers}\r\n"
    )
    return head.encode() + body


def guarded_protocol(max_connections: int, header_timeout_s: float) -> type[H11Protocol]:
    """An `H11Protocol` class (for `uvicorn.Config(http=...)`) enforcing these two limits."""
    too_many = _raw_response(
        "503 Service Unavailable",
        f"the server holds its limit of {max_connections} HTTP connections; retry shortly",
        f"retry-after: {RETRY_AFTER_S}\r\n",
    )
    too_slow = _raw_response(
        "408 Request Timeout", f"the request line and headers did not arrive within {header_timeout_s:g} s"
    )

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _received = 0  # bytes of the request being awaited

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(too_many)
                transport.close()
                return
            self._await_headers()

        def data_received(self, data: bytes) -> None:
            self._received += len(data)
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the request's headers are in
                self._stop_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._await_headers()  # the next request on this keep-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timer()
            super().connection_lost(exc)

        def _await_headers(self) -> None:
            self._stop_timer()
            self._received = 0
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _stop_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self._received:
                self.transport.write(too_slow)
            self.transport.close()

    return GuardedH11Protocol
