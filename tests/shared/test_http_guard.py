"""The HTTP guard under uvicorn, in process: a client that stops reading a reply has its connection aborted at the
write deadline, its place freed, and the server answers the next client meanwhile."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from shared.http_guard import GuardedServer, bind_listener, start_guarded_server

REPLY_BYTES = 32 * 1024 * 1024  # far past what the kernel's and asyncio's buffers hold together
WRITE_TIMEOUT_S = 1.0


async def big_or_small(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """`/big` answers REPLY_BYTES in 1 MiB pieces; anything else a few bytes."""
    size = REPLY_BYTES if scope["path"] == "/big" else 2
    headers = [(b"content-length", str(size).encode()), (b"content-type", b"application/octet-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    piece = 1024 * 1024
    for start in range(0, size, piece):
        body = b"x" * min(piece, size - start)
        await send({"type": "http.response.body", "body": body, "more_body": start + len(body) < size})


@pytest.fixture
def server() -> Iterator[GuardedServer]:
    """`big_or_small` behind the guard, on a loop thread of its own (as `serve_in_thread` runs the encoder)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="guarded-http", daemon=True)
    thread.start()

    async def start() -> GuardedServer:
        sock = bind_listener("127.0.0.1", 0)
        return await start_guarded_server(
            big_or_small, sock, max_connections=8, header_timeout_s=5, grace_s=1, write_timeout_s=WRITE_TIMEOUT_S
        )

    guarded = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield guarded
    finally:
        asyncio.run_coroutine_threadsafe(guarded.stop(1), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def never_reading_client(port: int, path: str) -> socket.socket:
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    connection.connect(("127.0.0.1", port))
    connection.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return connection


def received_until_closed(connection: socket.socket, timeout_s: float) -> tuple[int, bool]:
    """Bytes read until the server closed or reset the connection, and whether it did within `timeout_s`."""
    connection.settimeout(timeout_s)
    received = 0
    try:
        while chunk := connection.recv(1024 * 1024):
            received += len(chunk)
    except ConnectionResetError:
        return received, True
    except TimeoutError:
        return received, False
    return received, True


def test_a_client_that_never_reads_its_reply_has_the_connection_aborted_at_the_write_deadline(server):
    connection = never_reading_client(server.port, "/big")
    try:
        time.sleep(WRITE_TIMEOUT_S + 2)  # never reading, while the deadline passes
        received, closed = received_until_closed(connection, timeout_s=10)
    finally:
        connection.close()
    assert closed, "the server kept the stalled connection open"
    assert received < REPLY_BYTES  # dropped, not delivered in the end
    deadline = time.monotonic() + 10
    while server.connections.open:
        assert time.monotonic() < deadline, "the aborted connection still holds its place"
        time.sleep(0.05)


def test_the_next_client_is_answered_while_another_never_reads(server):
    stalled = never_reading_client(server.port, "/big")
    try:
        reply = requests.get(f"http://127.0.0.1:{server.port}/small", timeout=10)
        assert reply.status_code == 200 and reply.content == b"xx"
    finally:
        stalled.close()


def test_a_client_that_reads_slowly_but_steadily_keeps_its_connection_past_the_deadline(server):
    """Any byte taken counts as progress: a whole piece of a reply may wait in the buffer far longer than the
    deadline while a slow client reads it."""
    connection = never_reading_client(server.port, "/big")
    received = 0
    reading_until = time.monotonic() + 4 * WRITE_TIMEOUT_S
    try:
        connection.settimeout(10)
        while time.monotonic() < reading_until:
            chunk = connection.recv(4096)
            assert chunk, "the server closed a connection that was being read"
            received += len(chunk)
            time.sleep(0.02)
    finally:
        connection.close()
    assert 0 < received < REPLY_BYTES  # slow indeed: the reply was still on its way
