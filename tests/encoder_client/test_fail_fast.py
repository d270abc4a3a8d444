"""A client that has never reached a server gives up after `connect_timeout`, saying why; one that has keeps trying.

Real sockets on loopback: a port nothing listens on, a listener that never speaks, HTTP servers, TLS servers the
client's settings do not fit. A server that is up but still loading, an overloaded one and a replica lost after
the first answer are retried until the call's deadline, as before.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch

from diffusion_client import RemoteTextEncoder
from diffusion_client.encoder_client.dialing import unreached_error
from diffusion_client.errors import EncoderUnavailableError
from diffusion_client.generation.cli import main as generate_main
from encoder_server.config import ModelConfig, TlsConfig
from encoder_server.model.loaded_models import load_encoder
from encoder_server.model.prompt_encoder import PromptEncoder
from tests.support.certs import Certificates, make_certificates
from tests.support.cli_runs import assert_one_line_error, dead_port, run_cli
from tests.support.fake_encoder import FakeEncoder, fake_server
from tests.support.helpers import RunningServer, start_server

CONNECT_S = 2.0  # the connect_timeout these tests give; the default is 5 s
DEADLINE_S = 60.0  # the call's own deadline, far beyond it
WITHIN_S = CONNECT_S + 3  # a never-reached target fails by then (the connect timeout plus slack for 2 shared cores)


@dataclass
class Failure:
    message: str
    seconds: float


def fails_fast(target: str, **settings: object) -> Failure:
    """Call `info()` with a 60 s deadline and the short connect timeout; the error and how long it took."""
    with RemoteTextEncoder(target, timeout=DEADLINE_S, connect_timeout=CONNECT_S, **settings) as encoder:  # type: ignore[arg-type]
        started = time.monotonic()
        with pytest.raises(EncoderUnavailableError) as error:
            encoder.info()
        seconds = time.monotonic() - started
    assert error.value.code == grpc.StatusCode.UNAVAILABLE and error.value.target == target
    assert "\n" not in str(error.value)
    print(f"{target}: {seconds:.2f} s: {error.value}")
    return Failure(str(error.value), seconds)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP listener that never accepts: the kernel completes each handshake, nothing ever speaks."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


@pytest.fixture
def http_port() -> Iterator[int]:
    """A plain HTTP/1.1 server (the standard library's) on a thread."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@contextlib.contextmanager
def loading_server(snapshot: Path, tls: TlsConfig | None = None) -> Iterator[RunningServer]:
    """A server whose model never finishes loading (it is stopped first), with its HTTP port open."""
    release = threading.Event()

    def never_loads() -> PromptEncoder:
        release.wait(120)
        raise RuntimeError("stopped before loading")

    try:
        with start_server(snapshot, load_encoder=never_loads, wait=False, http_port=0, tls=tls) as server:
            yield server
    finally:
        release.set()


@pytest.fixture(scope="module")
def loading_tls_server(tiny_snapshot: Path, certificates: Certificates) -> Iterator[RunningServer]:
    """Mutual TLS: a client certificate signed by the test CA is required."""
    with loading_server(
        tiny_snapshot, TlsConfig(certificates.server_cert, certificates.server_key, certificates.ca)
    ) as server:
        yield server


def test_refused_port_fails_after_the_connect_timeout_saying_nothing_listens():
    target = f"127.0.0.1:{dead_port()}"
    failure = fails_fast(target)
    assert CONNECT_S - 0.5 <= failure.seconds <= WITHIN_S, "a server starting within the connect timeout is found"
    assert f"cannot reach the encoder at {target}: nothing is listening there (connection refused)" in failure.message
    assert "flux2-encoder serve" in failure.message and "--connect-timeout" in failure.message


def test_two_refused_replicas_fail_fast_saying_nothing_listens():
    target = f"127.0.0.1:{dead_port()},127.0.0.1:{dead_port()}"
    failure = fails_fast(target)
    assert failure.seconds <= WITHIN_S
    assert f"cannot reach the encoder at {target}: nothing is listening there" in failure.message


def test_listener_that_never_speaks_fails_fast_saying_it_is_not_grpc(silent_port):
    failure = fails_fast(f"127.0.0.1:{silent_port}")
    assert failure.seconds <= WITHIN_S
    assert "accepts connections but did not answer as a gRPC server within 2 s" in failure.message
    assert "give the encoder's gRPC port" in failure.message


def test_plain_http_server_fails_fast_saying_it_is_not_grpc(http_port):
    failure = fails_fast(f"127.0.0.1:{http_port}")
    assert failure.seconds <= WITHIN_S
    assert "is not a gRPC server" in failure.message and "not its --http-port" in failure.message


def test_the_encoders_own_http_port_fails_fast_saying_it_is_not_grpc(tiny_snapshot):
    with loading_server(tiny_snapshot) as server:
        failure = fails_fast(f"127.0.0.1:{server.handle.http_port}")
    assert failure.seconds <= WITHIN_S
    assert "is not a gRPC server" in failure.message


def test_plaintext_client_to_a_tls_server_fails_fast_naming_tls_ca(loading_tls_server):
    failure = fails_fast(f"127.0.0.1:{loading_tls_server.handle.port}")
    assert failure.seconds <= WITHIN_S
    assert "closed the connection before speaking gRPC" in failure.message
    assert "if the server uses TLS, give --tls-ca (or --tls" in failure.message


def test_plaintext_client_dialling_localhost_at_a_tls_server_is_told_about_tls_not_refused(loading_tls_server):
    """localhost is ::1 (refused: the server binds 127.0.0.1) and 127.0.0.1; gRPC may name only the refusal."""
    failure = fails_fast(f"localhost:{loading_tls_server.handle.port}")
    assert failure.seconds <= WITHIN_S
    assert "nothing is listening" not in failure.message
    assert "if the server uses TLS, give --tls-ca (or --tls" in failure.message


def test_refusal_named_for_one_address_is_checked_against_the_names_other_addresses(silent_port):
    """gRPC reports only the last address tried; one of localhost's that accepts means something listens."""
    refused_v6 = (
        f"failed to connect to all addresses; last error: UNKNOWN: ipv6:%5B::1%5D:{silent_port}: Connection refused"
    )
    error = unreached_error(
        f"localhost:{silent_port}", (grpc.StatusCode.UNAVAILABLE, refused_v6), tls=False, waited_s=CONNECT_S
    )
    assert f"127.0.0.1:{silent_port} accepts connections but not this client's gRPC" in str(error)
    assert "if the server uses TLS, give --tls-ca" in str(error) and "nothing is listening" not in str(error)


def test_client_without_a_certificate_fails_fast_at_an_mtls_server_naming_the_flags(loading_tls_server, certificates):
    failure = fails_fast(f"127.0.0.1:{loading_tls_server.handle.port}", tls_ca=certificates.ca)
    assert failure.seconds <= WITHIN_S
    assert "closed the connection before speaking gRPC" in failure.message
    assert "give --tls-cert and --tls-key" in failure.message


def test_tls_client_to_a_plaintext_server_fails_at_once_naming_tls_ca(encoder_server, certificates):
    failure = fails_fast(f"localhost:{encoder_server.handle.port}", tls_ca=certificates.ca)
    assert failure.seconds < CONNECT_S, "TLS our settings cannot pass is not retried"
    assert "--tls-ca" in failure.message and "uses TLS" in failure.message


def gated_loader(snapshot: Path, release: threading.Event):  # type: ignore[no-untyped-def]
    def load() -> PromptEncoder:
        release.wait(120)
        return load_encoder(ModelConfig(model_path=snapshot, device="cpu"))

    return load


@pytest.mark.parametrize("replicas", [1, 2], ids=["one-server", "listed-replicas"])
def test_server_still_loading_is_waited_for_past_the_connect_timeout(tiny_snapshot, replicas):
    """Up but loading: it answers UNAVAILABLE itself (or NOT_SERVING to the replicas' health checks)."""
    release = threading.Event()
    with start_server(tiny_snapshot, load_encoder=gated_loader(tiny_snapshot, release), wait=False) as server:
        target = ",".join([server.target] * replicas)
        with RemoteTextEncoder(target, timeout=DEADLINE_S, connect_timeout=1) as encoder:
            threading.Timer(3, release.set).start()
            started = time.monotonic()
            embeds = encoder.encode("worth the wait")
            seconds = time.monotonic() - started
    assert embeds.dtype == torch.float32 and embeds.shape[:2] == (1, 512)
    assert seconds >= 2.5, seconds


def test_overloaded_server_is_still_retried_until_the_deadline():
    servicer = FakeEncoder(failures=[grpc.StatusCode.RESOURCE_EXHAUSTED] * 1000, details="queue full")
    with fake_server(servicer) as target, RemoteTextEncoder(target, timeout=4, connect_timeout=1) as encoder:
        encoder.info()
        started = time.monotonic()
        with pytest.raises(EncoderUnavailableError, match="stayed overloaded until the deadline"):
            encoder.encode("x")
    assert 3.5 <= time.monotonic() - started <= 6


def test_replica_lost_after_the_first_answer_is_retried_until_the_deadline():
    with fake_server(FakeEncoder()) as target:
        encoder = RemoteTextEncoder(target, timeout=4, connect_timeout=1)
        encoder.info()  # reached once; GetInfo is cached from here on
    with encoder:  # the server is gone: its port now refuses
        started = time.monotonic()
        with pytest.raises(EncoderUnavailableError) as error:
            encoder.encode("x")
    assert 3.5 <= time.monotonic() - started <= 6
    assert f"cannot reach the encoder at {target} (" in str(error.value)


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), 0, -1])
def test_connect_timeout_that_is_not_positive_and_finite_is_refused(seconds):
    with pytest.raises(ValueError, match="connect_timeout must be a positive finite number of seconds"):
        RemoteTextEncoder("127.0.0.1:1", connect_timeout=seconds)


def test_generate_against_a_refused_port_exits_3_within_seconds_in_one_line(tiny_snapshot, tmp_path):
    target = f"127.0.0.1:{dead_port()}"
    started = time.monotonic()
    finished = run_cli("a cat", "--encoder", target, "--model", str(tiny_snapshot), "--out", str(tmp_path / "x.png"))
    seconds = time.monotonic() - started
    print(f"flux2-generate against a refused port: exit {finished.returncode} after {seconds:.1f} s")
    assert finished.returncode == 3
    assert seconds < 30, "the default --timeout is 120 s; the default --connect-timeout is 5 s"
    assert_one_line_error(finished.stderr, f"cannot reach the encoder at {target}: nothing is listening there")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "soon"])
def test_connect_timeout_flag_that_is_not_a_positive_finite_number_exits_2_in_one_line(tiny_snapshot, capsys, value):
    code = generate_main(["a cat", "--model", str(tiny_snapshot), f"--connect-timeout={value}"])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "argument --connect-timeout: must be a positive number of seconds")
