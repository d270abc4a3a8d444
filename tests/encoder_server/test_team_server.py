"""`flux2-encoder serve` as a team runs it: TLS only, a named tokens file reloaded on SIGHUP, names in the log."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from encoder_server.cli import main as encoder_main
from shared.protocol import encoder_pb2, encoder_pb2_grpc
from shared.wire import TensorSpec, responses_to_tensor
from tests.support.certs import Certificates, make_certificates
from tests.support.cli_runs import EncoderProcess, serve_encoder
from tests.support.helpers import TINY_EMBED_DIM

ALICE = "alice-0123456789abcdef"
BOB = "bob-0123456789abcdef0"
CAROL = "carol-0123456789abcdef"


@dataclass
class TeamServer:
    encoder: EncoderProcess
    port: int
    certs: Certificates
    tokens_file: Path

    @property
    def process(self) -> subprocess.Popen[str]:
        return self.encoder.process

    @property
    def log(self) -> list[str]:
        return self.encoder.log

    def channel(self) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(self.certs.ca.read_bytes())
        return grpc.secure_channel(f"localhost:{self.port}", credentials)

    def wait_for_log(self, text: str) -> None:
        self.encoder.wait_for_log(text)


@pytest.fixture(scope="module")
def team_server(tiny_snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamServer]:
    directory = tmp_path_factory.mktemp("team")
    certs = make_certificates(directory)
    tokens_file = directory / "tokens"
    tokens_file.write_text(f"alice {ALICE}\nbob {BOB}\n")
    encoder = serve_encoder(
        *("--model", str(tiny_snapshot), "--device", "cpu", "--host", "127.0.0.1", "--port", "0"),
        *("--tokens-file", str(tokens_file), "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)),
    )
    try:
        yield TeamServer(encoder, encoder.ready_port(), certs, tokens_file)
    finally:
        encoder.stop()


def _encode(channel: grpc.Channel, token: str) -> Iterator[encoder_pb2.EncodeResponse]:
    stub = encoder_pb2_grpc.TextEncoderStub(channel)
    metadata = (("authorization", f"Bearer {token}"),)
    return stub.Encode(encoder_pb2.EncodeRequest(prompts=["a lighthouse"]), metadata=metadata, timeout=60)


def _code(call: Iterator[encoder_pb2.EncodeResponse]) -> grpc.StatusCode:
    try:
        list(call)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


def test_health_command_checks_a_tls_server_with_its_ca(team_server):
    target = f"localhost:{team_server.port}"
    assert encoder_main(["health", target, "--tls-ca", str(team_server.certs.ca)]) == 0
    assert encoder_main(["health", target, "--tls-ca", str(team_server.certs.other_ca)]) == 1


def test_log_line_names_the_caller_and_never_holds_the_token_or_the_prompt(team_server):
    with team_server.channel() as channel:
        assert _code(_encode(channel, BOB)) == grpc.StatusCode.OK
    team_server.wait_for_log("Encode token=bob prompts=1")
    text = "".join(team_server.log)
    assert BOB not in text and ALICE not in text and "a lighthouse" not in text


def test_sighup_swaps_the_tokens_and_a_call_in_flight_completes(team_server):
    spec = TensorSpec("float32", (1, 512, TINY_EMBED_DIM))
    with team_server.channel() as channel:
        in_flight = _encode(channel, ALICE)
        header = next(in_flight)  # the call is admitted and streaming; the rest is unread
        team_server.tokens_file.write_text(f"bob {BOB}\ncarol {CAROL}\n")
        team_server.process.send_signal(signal.SIGHUP)
        team_server.wait_for_log("tokens reloaded: 2 names (bob, carol)")
        assert responses_to_tensor([header, *in_flight], spec).shape == spec.shape
        assert _code(_encode(channel, ALICE)) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(_encode(channel, CAROL)) == grpc.StatusCode.OK


def test_tokens_file_that_no_longer_parses_keeps_the_previous_tokens(team_server):
    previous = team_server.tokens_file.read_text()
    team_server.tokens_file.write_text("bob\nthis line is broken\n")
    try:
        team_server.process.send_signal(signal.SIGHUP)
        team_server.wait_for_log("kept the previous tokens")
        with team_server.channel() as channel:
            assert _code(_encode(channel, BOB)) == grpc.StatusCode.OK
    finally:
        team_server.tokens_file.write_text(previous)


def test_plain_text_client_cannot_reach_a_tls_server(team_server):
    with grpc.insecure_channel(f"127.0.0.1:{team_server.port}") as channel:
        assert _code(_encode(channel, BOB)) == grpc.StatusCode.UNAVAILABLE
