"""Running `flux2-generate` from tests, and reading what it printed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

PREFIX = "flux2-generate:"


def free_port() -> int:
    """A port nothing listens on (bound, read, released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_cli(
    *args: str, timeout: float = 180, preexec_fn: Callable[[], Any] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m diffusion_client.cli ARGS` in a fresh process, offline."""
    command = [sys.executable, "-m", "diffusion_client.cli", *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        preexec_fn=preexec_fn,
    )


def error_lines(stderr: str) -> list[str]:
    """Our own error lines; library log lines around them are not ours to count. Never a traceback."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith(f"{PREFIX} error: ")]


def assert_one_line_error(stderr: str, *fragments: str) -> str:
    """Exactly one `flux2-generate:` line, an error holding every fragment; returns it."""
    ours = [line for line in stderr.splitlines() if line.startswith(PREFIX)]
    errors = error_lines(stderr)
    assert len(ours) == len(errors) == 1, stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]
