"""`flux2-serve`'s life: flags refused in one line before anything loads, a warning for a wide listen without
tokens, 503 while the encoder is out of reach, and SIGTERM finishing the image in flight while refusing new ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import openai
import pytest

from tests.support.cli_runs import dead_port, wait_until
from tests.support.serve_runs import health, http, start_serve

PREFIX = "flux2-serve:"


def serve_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "diffusion_client.serve.cli", *args]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--port", "nan"], "--port: must be a port"),
        (["--max-n", "1e9"], "--max-n: must be a whole number from 1 to 64"),
        (["--url-ttl", "inf"], "--url-ttl: must be a number of seconds"),
        (["--replicas", "2"], "give --ray ADDRESS"),
        (["--max-queue", "2", "--max-queue-per-caller", "3"], "is over --max-queue 2"),
        (["--name", "bad\nname"], "--name must be 1 to 200 printable characters"),
    ],
)
def test_a_bad_flag_is_one_line_and_exit_2(tiny_snapshot, tmp_path, flags, fragment):
    finished = serve_cli("--model", str(tiny_snapshot), "--out-dir", str(tmp_path / "out"), *flags)
    assert finished.returncode == 2, finished.stderr
    assert finished.stderr.count("\n") == 1 and finished.stderr.startswith(f"{PREFIX} error:"), finished.stderr
    assert fragment in finished.stderr


def test_a_malformed_tokens_file_is_one_line(tiny_snapshot, tmp_path):
    (tmp_path / "tokens").write_text("alice\nbob bob-token-0123456789abcdef\n")
    finished = serve_cli("--model", str(tiny_snapshot), "--tokens-file", str(tmp_path / "tokens"), "--port", "0")
    assert finished.returncode == 2 and finished.stderr.count("\n") == 1, finished.stderr
    assert "--tokens-file" in finished.stderr and "line 1" in finished.stderr


def test_a_folder_that_is_not_a_snapshot_is_one_line(tmp_path):
    finished = serve_cli("--model", str(tmp_path))
    assert finished.returncode == 2 and finished.stderr.count("\n") == 1, finished.stderr


def test_with_the_encoder_out_of_reach_requests_get_503_and_the_server_keeps_serving(tiny_snapshot, tmp_path):
    dead = f"127.0.0.1:{dead_port()}"
    process = start_serve(tiny_snapshot, dead, "--out-dir", str(tmp_path / "out"), "--connect-timeout", "1")
    try:
        process.wait_serving()
        client = openai.OpenAI(base_url=process.base_url, api_key="x", max_retries=0, timeout=60)
        with pytest.raises(openai.InternalServerError) as raised:
            client.images.generate(prompt="a red fox", size="64x64")
        assert raised.value.status_code == 503
        assert raised.value.body["code"] == "encoder_unavailable"  # type: ignore[index]
        assert raised.value.response.headers.get("retry-after")
        assert health(process.port)[0] == 200
    finally:
        process.stop()


def test_a_wide_listen_without_tokens_warns_once(tiny_snapshot, encoder_server, tmp_path):
    process = start_serve(tiny_snapshot, encoder_server.target, "--host", "0.0.0.0", "--out-dir", str(tmp_path))
    try:
        process.wait_serving()
        warnings = [line for line in process.log if "without --tokens-file" in line]
        assert len(warnings) == 1 and warnings[0].startswith(f"{PREFIX} note:")
    finally:
        process.stop()


def test_sigterm_finishes_the_image_in_flight_and_refuses_new_requests(tiny_snapshot, encoder_server, tmp_path):
    process = start_serve(tiny_snapshot, encoder_server.target, "--out-dir", str(tmp_path / "out"))
    process.wait_serving()
    body = {"prompt": "a red fox", "size": "512x512", "seed": 1, "num_inference_steps": 40}
    outcome: list[tuple[int, bytes]] = []
    thread = threading.Thread(
        target=lambda: outcome.append(http(process.port, "/v1/images/generations", body)[::2])  # type: ignore[arg-type]
    )
    thread.start()
    wait_until(lambda: health(process.port)[1].get("busy") is True, 60)
    process.process.send_signal(signal.SIGTERM)
    wait_until(lambda: health(process.port)[0] == 503, 10)
    status, _, raw = http(process.port, "/v1/images/generations", {"prompt": "too late", "size": "64x64"})
    assert status == 503 and json.loads(raw)["error"]["code"] == "service_unavailable"
    thread.join(120)
    assert outcome and outcome[0][0] == 200, outcome
    assert json.loads(outcome[0][1])["data"][0]["b64_json"]
    assert process.process.wait(60) == 0
    assert "stopping" in process.output()


def test_help_names_every_endpoint_flag_group(tmp_path):
    finished = serve_cli("--help")
    assert finished.returncode == 0
    for text in ("--tokens-file", "--ray", "--max-queue-per-caller", "--url-ttl", "only a trusted C2PA"):
        assert text in " ".join(finished.stdout.split()), text


def test_the_console_script_is_installed():
    assert (Path(sys.executable).parent / "flux2-serve").exists()


def test_sighup_rereads_the_tokens_file(tiny_snapshot, encoder_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("alice alice-token-0123456789abcdef\n")
    process = start_serve(
        tiny_snapshot, encoder_server.target, "--tokens-file", str(tokens), "--out-dir", str(tmp_path)
    )
    try:
        process.wait_serving()
        bob = {"Authorization": "Bearer bob-token-0123456789abcdef"}
        assert http(process.port, "/v1/models", headers=bob)[0] == 401
        tokens.write_text("alice alice-token-0123456789abcdef\nbob bob-token-0123456789abcdef\n")
        process.process.send_signal(signal.SIGHUP)
        wait_until(lambda: http(process.port, "/v1/models", headers=bob)[0] == 200, 10)
        tokens.write_text("not a tokens file line\nx\n")  # a broken file keeps the old table
        process.process.send_signal(signal.SIGHUP)
        wait_until(lambda: any("did not reload" in line for line in process.log), 10)
        assert http(process.port, "/v1/models", headers=bob)[0] == 200
    finally:
        process.stop()
