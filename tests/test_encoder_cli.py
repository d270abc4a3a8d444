"""`flux2-encoder serve` as an operator runs it: one ready line, clean stop on SIGTERM, one-line errors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import grpc

from tests.helpers import encode_via

READY = re.compile(r"ready on .*:(\d+) ")


def _serve(*args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "encoder_server.cli", "serve", *args]
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_serve_logs_ready_line_answers_and_stops_cleanly_on_sigterm(tiny_snapshot):
    process = _serve("--model", str(tiny_snapshot), "--host", "127.0.0.1", "--port", "0", "--device", "cpu")
    try:
        deadline = time.monotonic() + 120
        port = None
        assert process.stderr is not None
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            assert line, "server exited before it was ready"
            match = READY.search(line)
            port = int(match.group(1)) if match else None
        assert port
        from shared.protocol import encoder_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert encode_via(encoder_pb2_grpc.TextEncoderStub(channel), ["hello"]).shape == (1, 512, 96)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        process.kill()


def test_serve_with_missing_model_exits_with_one_line(tmp_path):
    process = _serve("--model", str(tmp_path / "nowhere"), "--port", "0", "--device", "cpu")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "is not a directory" in lines[-1]
    assert "Traceback" not in stderr


def test_conflicting_options_are_rejected_at_start_up(tiny_snapshot):
    process = _serve("--model", str(tiny_snapshot), "--max-batch-size", "64", "--max-queued-prompts", "8")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "--max-queued-prompts (8) must be at least --max-batch-size (64)" in stderr


def test_second_server_on_a_busy_port_exits_with_one_line(encoder_server, tiny_snapshot):
    port = encoder_server.handle.port
    process = _serve("--model", str(tiny_snapshot), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert f"could not bind 127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr
