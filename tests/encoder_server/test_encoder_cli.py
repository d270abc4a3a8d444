"""`flux2-encoder serve` as an operator runs it: one ready line, clean stop on SIGTERM, one-line errors."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import grpc
import pytest

from encoder_server.cli import main as encoder_main
from shared.protocol import encoder_pb2, encoder_pb2_grpc
from tests.support.cli_runs import free_port, serve_encoder
from tests.support.helpers import TINY_EMBED_DIM, encode_via


def test_serve_logs_ready_line_answers_and_stops_cleanly_on_sigterm(tiny_snapshot):
    server = serve_encoder("--model", str(tiny_snapshot), "--host", "127.0.0.1", "--port", "0", "--device", "cpu")
    try:
        port = server.ready_port()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert encode_via(encoder_pb2_grpc.TextEncoderStub(channel), ["hello"]).shape == (1, 512, TINY_EMBED_DIM)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
    finally:
        server.stop()


def test_serve_with_missing_model_exits_with_one_line(tmp_path):
    server = serve_encoder("--model", str(tmp_path / "nowhere"), "--port", "0", "--device", "cpu")
    assert server.process.wait(60) == 2
    stderr = server.output()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "is not a directory" in lines[-1]
    assert "Traceback" not in stderr


def test_conflicting_options_are_rejected_at_start_up(tiny_snapshot):
    server = serve_encoder("--model", str(tiny_snapshot), "--max-batch-size", "64", "--max-queued-prompts", "8")
    assert server.process.wait(60) == 2
    stderr = server.output()
    assert "--max-queued-prompts (8) must be at least --max-batch-size (64)" in stderr


def test_second_server_on_a_busy_port_exits_with_one_line(encoder_server, tiny_snapshot):
    port = encoder_server.handle.port
    server = serve_encoder("--model", str(tiny_snapshot), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu")
    assert server.process.wait(60) == 2
    stderr = server.output()
    assert f"could not bind 127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--batch-wait-ms", "nan"], "argument --batch-wait-ms: invalid finite number value: 'nan'"),
        (["--batch-wait-ms", "inf"], "argument --batch-wait-ms: invalid finite number value: 'inf'"),
        (["--batch-wait-ms", "1e9"], "--batch-wait-ms must be between 0 and 10000"),
        (["--batch-wait-ms", "-1"], "--batch-wait-ms must be between 0 and 10000"),
        (["--shutdown-grace-s", "nan"], "argument --shutdown-grace-s: invalid finite number value"),
        (["--shutdown-grace-s", "-1"], "--shutdown-grace-s must be a number of seconds between 0"),
        (["--send-timeout-s", "0"], "--send-timeout-s must be a number of seconds between 0.001"),
        (["--max-reply-mib", "0"], "--max-reply-mib must be at least 1"),
        (["--max-hidden-state-layers", "0"], "--max-hidden-state-layers must be at least 1"),
        (
            ["--max-reply-mib", "512", "--max-pending-reply-mib", "256"],
            "--max-pending-reply-mib (256) must be at least",
        ),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, list) else None,
)
def test_bad_numbers_in_flags_are_refused_with_one_line(tiny_snapshot, capsys, flags, message):
    argv = ["serve", "--model", str(tiny_snapshot), "--device", "cpu", *flags]
    try:
        code = encoder_main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flux2-encoder")]
    assert len(lines) == 1 and message in lines[0], lines


def test_sigterm_lets_queued_requests_finish_within_the_grace_period(tiny_snapshot):
    """48 one-prompt passes take several seconds here; a fixed 5 s drain used to cancel most of them."""
    server = serve_encoder(
        *("--model", str(tiny_snapshot), "--host", "127.0.0.1", "--port", "0", "--device", "cpu"),
        *("--max-batch-size", "1", "--shutdown-grace-s", "120"),
    )
    try:
        port = server.ready_port()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = encoder_pb2_grpc.TextEncoderStub(channel)
            calls = [stub.Encode(encoder_pb2.EncodeRequest(prompts=[f"p{i}"]), timeout=300) for i in range(48)]
            first = next(calls[0])  # the server is busy: everything else is queued behind it
            assert first.WhichOneof("part") == "header"
            server.process.send_signal(signal.SIGTERM)
            delivered = [sum(len(reply.chunk) for reply in call) for call in calls[1:]]
        assert delivered == [512 * TINY_EMBED_DIM * 4] * 47
        assert server.process.wait(120) == 0
    finally:
        server.stop()
    assert "shutting down (grace 120 s)" in server.output()


def test_health_and_help_import_no_model_library():
    heavy = "{'torch', 'transformers', 'diffusers', 'bitsandbytes'}"
    probe = f"import sys, encoder_server.cli as c; c.build_parser(); print(sorted({heavy} & set(sys.modules)))"
    finished = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert finished.stdout.strip() == "[]", finished.stderr


def test_health_of_an_unreachable_server_answers_in_well_under_a_second_of_startup():
    port = free_port()
    started = time.perf_counter()
    finished = subprocess.run(
        [sys.executable, "-m", "encoder_server.cli", "health", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.perf_counter() - started
    assert finished.returncode == 1
    assert finished.stdout.strip() == f"127.0.0.1:{port}: UNREACHABLE (UNAVAILABLE)"
    assert elapsed < 4, f"took {elapsed:.1f} s"  # generous for a loaded CI machine; ~0.5 s when idle
