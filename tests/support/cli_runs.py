"""Running `flux2-generate` and `flux2-encoder serve` from tests, and reading what they printed."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.rlimits import limited

PREFIX = "flux2-generate:"


def free_port() -> int:
    """A free port to listen on next (bound, read, released): another process may take it meanwhile."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


_HELD: list[socket.socket] = []  # bound, never listening, kept for the test process's life


def dead_port() -> int:
    """A port where nothing listens, and nothing will while the tests run: this process keeps it bound without
    listening, so connections to it are refused and no other test's server can take it (a released port
    could be taken by the server of a test running beside, which then answers in its stead)."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    _HELD.append(held)
    return int(held.getsockname()[1])


def run_cli(
    *args: str, timeout: float = 180, limits: dict[str, int] | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m diffusion_client.generation.cli ARGS` in a fresh process, offline; `limits` as `tests.support.rlimits`
    takes them, `env` adds to the environment."""
    command = limited([sys.executable, "-m", "diffusion_client.generation.cli", *args], **(limits or {}))
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)


def error_lines(stderr: str) -> list[str]:
    """Our own error lines; library log lines around them are not ours to count. Never a traceback."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith(f"{PREFIX} error: ")]


def assert_one_line_error(stderr: str, *fragments: str) -> str:
    """stderr is exactly one line, a `flux2-generate: error:` holding every fragment (no note before it); returns
    it."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines == error_lines(stderr), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


READY = re.compile(r"ready on .*:(\d+) ")


@dataclass
class EncoderProcess:
    """A `flux2-encoder serve` child process; its stderr is read on a thread into `log`, line by line."""

    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)
    reader: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        assert self.process.stderr is not None
        stderr = self.process.stderr
        self.reader = threading.Thread(target=lambda: self.log.extend(stderr), daemon=True)
        self.reader.start()

    def ready_port(self, timeout_s: float = 120) -> int:
        """The port its ready line names, once it has logged it."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in list(self.log):
                if match := READY.search(line):
                    return int(match.group(1))
            assert self.process.poll() is None, f"the server exited before it was ready: {self.output()}"
            assert time.monotonic() < deadline, "no ready line within the timeout"
            time.sleep(0.05)

    def wait_for_log(self, text: str, timeout_s: float = 30) -> None:
        wait_until(lambda: any(text in line for line in list(self.log)), timeout_s)

    def output(self) -> str:
        """Everything it logged; waits for the rest once the process has exited."""
        if self.process.poll() is not None:
            self.reader.join(10)
        return "".join(self.log)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)


def serve_encoder(
    *flags: str, limits: dict[str, int] | None = None, env: dict[str, str] | None = None
) -> EncoderProcess:
    """`python -m encoder_server.cli serve FLAGS` in a fresh process, offline; `env` adds to the environment."""
    command = limited([sys.executable, "-m", "encoder_server.cli", "serve", *flags], **(limits or {}))
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=environment)
    return EncoderProcess(process)


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll `condition` until it holds; fail the test if it does not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_bench(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m bench.MODULE ARGS` from the repository root, offline."""
    command = [sys.executable, "-m", f"bench.{module}", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=BENCH_ENV, capture_output=True, text=True, timeout=timeout)


def bench_report(module: str, *args: str, timeout: float = 300) -> dict[str, Any]:
    """The JSON report a benchmark prints alone on stdout, after it exits 0."""
    completed = run_bench(module, *args, timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report: dict[str, Any] = json.loads(completed.stdout)
    return report
