"""Slow and idle connections cannot starve the server: HTTP headers have a deadline, connections have caps, gRPC
connections that never finish their handshake are closed, and descriptors are kept for gRPC."""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Iterator

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from encoder_server.config import ConfigError, ConnectionLimits
from encoder_server.file_descriptors import RESERVED_DESCRIPTORS, plan_descriptors
from shared.defaults import SERVICE_NAME
from tests.support.certs import make_certificates
from tests.support.cli_runs import EncoderProcess, serve_encoder, wait_until
from tests.support.helpers import RunningServer, start_server


@pytest.fixture(scope="module")
def guarded_server(tiny_snapshot) -> Iterator[RunningServer]:
    limits = ConnectionLimits(max_http_connections=4, http_header_timeout_s=0.5, grpc_handshake_timeout_s=0.5)
    with start_server(tiny_snapshot, http_port=0, connections=limits) as server:
        yield server


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends before it closes the connection (fails if it keeps it open 10 s)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _health(port: int, credentials: grpc.ChannelCredentials | None = None) -> int:
    target = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials)
    with channel:
        request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


def test_half_sent_request_headers_get_408_and_the_connection_closed(guarded_server):
    with _connect(guarded_server.handle.http_port) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        reply = _read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert b"did not arrive within 0.5 s" in reply


def test_connection_that_sends_nothing_is_closed_after_the_header_deadline(guarded_server):
    with _connect(guarded_server.handle.http_port) as sock:
        started = time.monotonic()
        assert _read_until_closed(sock) == b""
    assert time.monotonic() - started < 5


def test_headers_trickled_a_byte_at_a_time_do_not_extend_the_deadline(guarded_server):
    with _connect(guarded_server.handle.http_port) as sock:
        started = time.monotonic()
        with contextlib.suppress(OSError):  # the server may close between two bytes
            for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n":
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        reply = _read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 2.5  # 33 bytes at 0.1 s would have taken 3.3 s


def test_keep_alive_connection_gets_a_new_header_deadline_for_each_request(guarded_server):
    port = guarded_server.handle.http_port
    with requests.Session() as session:
        assert session.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        assert session.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200


def test_connection_past_the_cap_gets_503_and_is_closed_and_the_cap_frees_up(guarded_server):
    port = guarded_server.handle.http_port
    with contextlib.ExitStack() as stack:
        idle = [stack.enter_context(_connect(port)) for _ in range(4)]
        with _connect(port) as extra:
            reply = _read_until_closed(extra)
        assert reply.startswith(b"HTTP/1.1 503 ") and b"retry-after" in reply.lower()
        assert b"limit of 4 HTTP connections" in reply
        assert len(idle) == 4
    wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200)


def test_grpc_connection_that_never_sends_its_preface_is_closed(guarded_server):
    with _connect(guarded_server.handle.port) as sock:
        started = time.monotonic()
        _read_until_closed(sock)  # the server's SETTINGS, then the close
    assert time.monotonic() - started < 5
    assert _health(guarded_server.handle.port) == health_pb2.HealthCheckResponse.SERVING


def test_descriptor_limit_is_raised_where_the_hard_limit_allows():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits = ConnectionLimits(max_http_connections=8, max_grpc_connections=8)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        budget = plan_descriptors(limits, serve_http=True)
        assert (budget.raised_from, budget.soft_limit) == (64, RESERVED_DESCRIPTORS + 16)
        assert not budget.lowered and "raised from 64" in budget.describe()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("limits", [dict(max_http_connections=0), dict(http_header_timeout_s=float("nan"))])
def test_bad_connection_limits_are_refused_at_start(limits):
    with pytest.raises(ConfigError, match="must be"):
        ConnectionLimits(**limits)


LOW_DESCRIPTOR_LIMIT = {"NOFILE": 256}  # the hard limit too: nothing to raise


@pytest.fixture
def server_with_few_descriptors(tiny_snapshot) -> Iterator[tuple[EncoderProcess, int]]:
    server = serve_encoder(
        "--model", str(tiny_snapshot), "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
        "--http-header-timeout-s", "30", "--max-batch-size", "2",
        limits=LOW_DESCRIPTOR_LIMIT,
    )  # fmt: skip
    try:
        grpc_port = server.ready_port()
        yield server, grpc_port
    finally:
        server.stop()


def test_slowloris_flood_past_the_descriptor_limit_leaves_grpc_and_http_health_serving(server_with_few_descriptors):
    server, grpc_port = server_with_few_descriptors
    ready = next(line for line in server.log if "ready on" in line)
    assert "256 file descriptors, caps lowered to fit" in ready
    http_port = int(ready.split("HTTP /predict on port ")[1].split(",")[0])
    with contextlib.ExitStack() as stack:
        flood = []
        for _ in range(400):  # more than the process has descriptors; each sends half a request line
            sock = stack.enter_context(_connect(http_port))
            with contextlib.suppress(OSError):
                sock.sendall(b"POST /pre")
            flood.append(sock)
        assert _health(grpc_port) == health_pb2.HealthCheckResponse.SERVING
        response = requests.get(f"http://127.0.0.1:{http_port}/health", timeout=10)
        assert response.status_code == 503 and "HTTP connections" in response.json()["error"]
    wait_until(lambda: requests.get(f"http://127.0.0.1:{http_port}/health", timeout=10).status_code == 200)
    assert "out of system resource" not in server.output() and "Too many open files" not in server.output()


def test_tls_handshakes_that_never_start_count_against_the_cap_and_time_out(tiny_snapshot, tmp_path):
    """asyncio's own server counted a TLS connection only after its handshake, and waited 60 s for one."""
    certs = make_certificates(tmp_path)
    server = serve_encoder(
        "--model", str(tiny_snapshot), "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
        "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
        "--http-header-timeout-s", "1", "--max-batch-size", "2",
        limits=LOW_DESCRIPTOR_LIMIT,
    )  # fmt: skip
    try:
        grpc_port = server.ready_port()
        ready = next(line for line in server.log if "ready on" in line)
        http_port = int(ready.split("HTTP /predict on port ")[1].split(",")[0])
        credentials = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
        with contextlib.ExitStack() as stack:
            silent = [stack.enter_context(_connect(http_port)) for _ in range(400)]  # no ClientHello, ever
            assert _health(grpc_port, credentials) == health_pb2.HealthCheckResponse.SERVING
            assert all(_read_until_closed(sock) == b"" for sock in silent[:5])  # closed at the deadline
        url = f"https://127.0.0.1:{http_port}/health"
        wait_until(lambda: requests.get(url, verify=str(certs.ca), timeout=10).status_code == 200)
        assert "out of system resource" not in server.output() and "Too many open files" not in server.output()
    finally:
        server.stop()
