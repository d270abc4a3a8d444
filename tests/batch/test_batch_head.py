"""`flux2-batch --ray HOST:PORT` where no Ray head answers: one line saying what is there, within `--connect-timeout`
(`ray.init` alone waits minutes, saying nothing), and Ctrl-C or SIGTERM while it connects stops the command at once.

Real sockets on loopback: a port nothing listens on, a listener that never speaks, a plain HTTP server, and the
session's encoder (a gRPC server that is not Ray). The commands are real `flux2-batch` processes against that encoder.
"""

from __future__ import annotations

import http.server
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from diffusion_client.batch.head import HeadUnreachableError, probe_head
from tests.support.batch_runs import (
    PREFIX,
    batch_command,
    batch_env,
    read_manifest,
    run_batch,
    with_ctrl_c,
    write_jobs,
)
from tests.support.cli_runs import dead_port

CONNECT_S = 2.0
JOB = {"prompt": "a lighthouse", "height": 64, "width": 64, "steps": 2}


class SilentListener:
    """A TCP listener that accepts connections and never says a word; `connected` is set at the first one."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen()
        self.socket.settimeout(0.1)
        self.port = int(self.socket.getsockname()[1])
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            self._held.append(connection)
            self.connected.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for connection in self._held:
            connection.close()
        self.socket.close()


@pytest.fixture
def silent() -> Iterator[SilentListener]:
    listener = SilentListener()
    yield listener
    listener.close()


@pytest.fixture
def http_port() -> Iterator[int]:
    """A plain HTTP/1 server (the standard library's) on a thread."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join(5)


def port_of(kind: str, request: pytest.FixtureRequest) -> int:
    if kind == "nothing":
        return dead_port()
    if kind == "silent":
        return int(request.getfixturevalue("silent").port)
    if kind == "http":
        return int(request.getfixturevalue("http_port"))
    return int(request.getfixturevalue("encoder_server").target.rsplit(":", 1)[1])


WHAT_ANSWERS = {
    "nothing": "nothing is listening there (connection refused)",
    "silent": f"it accepts connections but said nothing within {CONNECT_S:g} s: not a Ray head",
    "http": "it answered but is not a Ray head (it speaks HTTP/1",
    "grpc": "it speaks gRPC but is not a Ray head",
}


@pytest.mark.parametrize("kind", list(WHAT_ANSWERS))
def test_the_probe_says_what_answers_instead_of_a_ray_head_within_the_connect_timeout(kind, request):
    address = f"127.0.0.1:{port_of(kind, request)}"
    started = time.monotonic()
    with pytest.raises(HeadUnreachableError) as error:
        probe_head(address, CONNECT_S)
    seconds = time.monotonic() - started
    assert str(error.value).startswith(f"cannot reach the Ray head at {address}: {WHAT_ANSWERS[kind]}")
    assert str(error.value).endswith("give the port `ray start --head` printed (6379 by default), or local")
    assert seconds < CONNECT_S + 1.5, seconds


@pytest.mark.parametrize("kind", ["nothing", "silent", "http"])
def test_a_ray_address_that_is_no_ray_head_fails_the_run_in_one_line_exit_3(
    kind, request, encoder_server, tiny_snapshot, tmp_path
):
    address = f"127.0.0.1:{port_of(kind, request)}"
    prompts = write_jobs(tmp_path / "prompts.jsonl", [JOB])
    flags = ["--prompts", str(prompts), "--encoder", encoder_server.target, "--model", str(tiny_snapshot)]
    flags += ["--out-dir", str(tmp_path / "out"), "--ray", address, "--connect-timeout", str(CONNECT_S), "--quiet"]

    finished = run_batch(*flags, timeout=120)

    assert finished.returncode == 3, finished.stderr
    [line] = finished.stderr.splitlines()  # as flux2-generate's code for an encoder out of reach
    assert line.startswith(f"{PREFIX} error: cannot reach the Ray head at {address}: {WHAT_ANSWERS[kind]}")
    # The summary times the run from the checks' end: the probe's bound, not Ray's minutes.
    seconds = float(re.search(r" in ([0-9.]+) s \(", finished.stdout).group(1))  # type: ignore[union-attr]
    assert seconds < CONNECT_S + 3, finished.stdout
    assert [row["error"] for row in read_manifest(tmp_path / "out")] == ["not run: the run stopped first"]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_connecting_to_the_head_stops_the_command_at_once(
    stop, silent, encoder_server, tiny_snapshot, tmp_path
):
    prompts = write_jobs(tmp_path / "prompts.jsonl", [JOB])
    flags = ["--prompts", str(prompts), "--encoder", encoder_server.target, "--model", str(tiny_snapshot)]
    flags += ["--out-dir", str(tmp_path / "out"), "--ray", f"127.0.0.1:{silent.port}", "--connect-timeout", "60"]
    driver = subprocess.Popen(
        batch_command(*flags),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=batch_env(),
        preexec_fn=with_ctrl_c,
    )
    try:
        assert silent.connected.wait(120), "the command never reached the probe"
        time.sleep(0.2)
        sent = time.monotonic()
        driver.send_signal(stop)
        _, stderr = driver.communicate(timeout=30)
        seconds = time.monotonic() - sent
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, stderr
    assert stderr.splitlines() == [f"{PREFIX} interrupted"]
    assert seconds < 2.5, seconds
    assert [row["status"] for row in read_manifest(tmp_path / "out")] == ["failed"]
