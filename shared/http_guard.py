"""Slow and idle HTTP connections cannot starve the server (slowloris): every connection is counted from the
moment it is accepted, TLS handshake included, and each request's headers have a deadline.

- `accept_connections` accepts on the listening socket itself, rather than leaving that to asyncio's
  `create_server`: a connection past the cap is closed at once (after a 503 in clear text; over TLS nothing can
  be said before the handshake), so its descriptor is freed before the next accept; the rest are handed to
  asyncio with a TLS handshake deadline. asyncio's own server would count a TLS connection only once its
  handshake ended (up to 60 s later), and frees refused sockets only on a later loop iteration.
- `guarded_protocol` is uvicorn's HTTP/1.1 protocol with a deadline for each request's line and headers,
  counted from the connection's start or from the previous reply (bytes trickled in do not extend it): past
  it the connection gets 408 (or, if it sent nothing, is closed as an idle keep-alive connection is). A reply
  has a deadline too: a client that takes none of it (its buffers full) for `write_timeout_s` has its
  connection aborted, so a reader that never reads cannot pin a reply's bytes or its connection's place.

`bind_listener` and `start_guarded_server` put an ASGI app behind both on uvicorn: `flux2-encoder`'s /predict and
`flux2-serve` use them. A request body's own deadline is the app's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("flux2-split.http")

RETRY_AFTER_S = 1  # what a connection refused past the cap is told
LISTEN_BACKLOG = 512  # connections the kernel queues before we accept them (they hold no descriptor of ours)
WRITE_TIMEOUT_S = 60.0  # a client that takes no byte of a reply for this long has stopped reading


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


def guarded_protocol(
    header_timeout_s: float, count: ConnectionCount, write_timeout_s: float = WRITE_TIMEOUT_S
) -> type[H11Protocol]:
    """An `H11Protocol` class (for `uvicorn.Config(http=...)`) with a header deadline and a write deadline,
    releasing its place in `count` when its connection closes."""
    too_slow = _raw_response(
        "408 Request Timeout", f"the request line and headers did not arrive within {header_timeout_s:g} s"
    )

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _write_timer: asyncio.TimerHandle | None = None
        _unsent = 0  # bytes of the reply waiting in the transport at the last write check
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

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._write_timer is None:
                self._unsent = self.transport.get_write_buffer_size()
                self._write_timer = self.loop.call_later(write_timeout_s, self._check_reader)

        def resume_writing(self) -> None:
            self._stop_write_timer()
            super().resume_writing()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timer()
            self._stop_write_timer()
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

        def _stop_write_timer(self) -> None:
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

        def _check_reader(self) -> None:
            """While writing is paused: a client that took some bytes since the last check gets another
            `write_timeout_s`; one that took none has its connection aborted."""
            unsent = self.transport.get_write_buffer_size()
            if unsent < self._unsent:
                self._unsent = unsent
                self._write_timer = self.loop.call_later(write_timeout_s, self._check_reader)
                return
            self._write_timer = None
            log.warning("a client took none of its reply for %g s; its connection was dropped", write_timeout_s)
            self.transport.abort()  # close() would wait, forever, to flush the buffer the client never reads

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self._received:
                self.transport.write(too_slow)
            self.transport.close()

    return GuardedH11Protocol


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening socket on `host` ("[::]" is dual-stack, as for gRPC), bound now so port 0 is known."""
    sock: socket.socket | None = None
    try:
        name = host.strip("[]") or None
        found = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = found[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
        return sock
    except OSError as error:
        if sock is not None:
            sock.close()
        raise OSError(f"could not listen for HTTP on {host}:{port}: {error.strerror or error}") from error


@dataclass
class GuardedServer:
    """A uvicorn server on our own accept loop, running as a task on the loop that started it."""

    port: int
    server: uvicorn.Server = field(repr=False)
    task: asyncio.Task[None] = field(repr=False)
    connections: ConnectionCount = field(repr=False)

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, let replies in flight finish within `grace_s`, then close."""
        self.server.config.timeout_graceful_shutdown = math.ceil(grace_s)
        self.server.should_exit = True
        await self.task


async def start_guarded_server(
    app: Any,
    sock: socket.socket,
    *,
    max_connections: int,
    header_timeout_s: float,
    grace_s: float,
    write_timeout_s: float = WRITE_TIMEOUT_S,
    tls: dict[str, Any] | None = None,
    lifespan: Literal["auto", "on", "off"] = "off",
) -> GuardedServer:
    """Serve `app` on the listening `sock` from the running loop, at most `max_connections` connections at once;
    a connection whose client takes none of a reply for `write_timeout_s` is aborted.

    What `uvicorn.Server.serve` does, less `capture_signals` (the caller owns the signals) and with
    `accept_connections` where `Server.startup` would call `create_server`.
    """
    count = ConnectionCount(max_connections)
    config = uvicorn.Config(
        app,
        http=guarded_protocol(header_timeout_s, count, write_timeout_s),
        lifespan=lifespan,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=math.ceil(grace_s),
        **(tls or {}),
    )
    server = uvicorn.Server(config)
    loop = asyncio.get_running_loop()
    config.load()
    server.lifespan = config.lifespan_class(config)
    server.servers = []  # no asyncio server: `shutdown` closes `sock` itself
    await server.lifespan.startup()  # a no-op for lifespan "off"

    def create_protocol() -> asyncio.Protocol:
        return config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=server.server_state, app_state=server.lifespan.state
        )

    accepting = loop.create_task(
        accept_connections(sock, create_protocol, count, config.ssl, header_timeout_s), name="http-accept"
    )

    async def run() -> None:
        await server.main_loop()
        accepting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await accepting
        await server.shutdown(sockets=[sock])

    task = loop.create_task(run(), name="http-server")
    return GuardedServer(sock.getsockname()[1], server, task, count)
