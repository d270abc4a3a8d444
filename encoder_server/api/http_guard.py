"""Slow and idle HTTP connections cannot starve the server (slowloris): every connection is counted from the
moment it is accepted, TLS handshake included, and each request's headers have a deadline.

- `accept_connections` accepts on the listening socket itself, rather than leaving that to asyncio's
  `create_server`: a connection past the cap is closed at once (after a 503 in clear text; over TLS nothing can
  be said before the handshake), so its descriptor is freed before the next accept; the rest are handed to
  asyncio with a TLS handshake deadline. asyncio's own server would count a TLS connection only once its
  handshake ended (up to 60 s later), and frees refused sockets only on a later loop iteration.
- `guarded_protocol` is uvicorn's HTTP/1.1 protocol with a deadline for each request's line and headers,
  counted from the connection's start or from the previous reply (bytes trickled in do not extend it): past
  it the connection gets 408 (or, if it sent nothing, is closed as an idle keep-alive connection is).

The body has its own deadline in the /predict handler (`ServerConfig.send_timeout_s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from encoder_server.api.status import RETRY_AFTER_S

log = logging.getLogger("flux2-encoder.http")


def _raw_response(status: str, message: str, extra_headers: str = "") -> bytes:
    """A whole HTTP/1.1 response that closes the connection, written without h11 (no request was parsed)."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\n{extra_headers}\r\n"
    )
    return head.encode() + body


class ConnectionCount:
    """Connections accepted and not yet closed, TLS handshakes included."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.refused = 0

    def release(self) -> None:
        self.open -= 1


async def accept_connections(
    listener: socket.socket,
    protocol_factory: Callable[[], asyncio.Protocol],
    count: ConnectionCount,
    tls: ssl.SSLContext | None,
    handshake_timeout_s: float,
) -> None:
    """Accept until cancelled; a connection past `count.limit` is refused and closed at once."""
    loop = asyncio.get_running_loop()
    too_many = _raw_response(
        "503 Service Unavailable",
        f"the server holds its limit of {count.limit} HTTP connections; retry shortly",
        f"retry-after: {RETRY_AFTER_S}\r\n",
    )
    listener.setblocking(False)
    handshakes: set[asyncio.Task[None]] = set()
    while True:
        try:
            connection, _ = await loop.sock_accept(listener)
        except OSError as error:  # out of descriptors after all (other use of the process): wait, do not spin
            log.warning("HTTP accept failed: %s", error.strerror or error)
            await asyncio.sleep(0.1)
            continue
        if count.open >= count.limit:
            count.refused += 1
            if tls is None:
                with contextlib.suppress(OSError):
                    connection.send(too_many)  # a fresh socket's buffer takes it whole, without blocking
            connection.close()
            continue
        count.open += 1
        task = loop.create_task(_start(loop, connection, protocol_factory, count, tls, handshake_timeout_s))
        handshakes.add(task)
        task.add_done_callback(handshakes.discard)


async def _start(
    loop: asyncio.AbstractEventLoop,
    connection: socket.socket,
    protocol_factory: Callable[[], asyncio.Protocol],
    count: ConnectionCount,
    tls: ssl.SSLContext | None,
    handshake_timeout_s: float,
) -> None:
    """Hand the connection to the protocol (after the TLS handshake); the protocol releases its place when it
    closes, and a failed handshake releases it here."""
    kwargs: dict[str, Any] = {} if tls is None else {"ssl": tls, "ssl_handshake_timeout": handshake_timeout_s}
    try:
        await loop.connect_accepted_socket(protocol_factory, connection, **kwargs)
    except BaseException as error:  # a failed or timed-out handshake, or the server stopping
        connection.close()
        count.release()
        if not isinstance(error, Exception):
            raise


def guarded_protocol(header_timeout_s: float, count: ConnectionCount) -> type[H11Protocol]:
    """An `H11Protocol` class (for `uvicorn.Config(http=...)`) with a header deadline, releasing its place in
    `count` when its connection closes."""
    too_slow = _raw_response(
        "408 Request Timeout", f"the request line and headers did not arrive within {header_timeout_s:g} s"
    )

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _received = 0  # bytes of the request being awaited
        _counted = False

        def connection_made(self, transport: Any) -> None:
            self._counted = True
            super().connection_made(transport)
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
            if self._counted:
                self._counted = False
                count.release()
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
