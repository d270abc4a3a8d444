"""Running `flux2-batch` from tests: its command line, its manifest, its images, and the Ray workers it starts."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

PREFIX = "flux2-batch:"
# A fixed token per test process: Ray 2.60 turns token authentication on for a local cluster and, with none in the
# environment, writes one to ~/.ray/auth_token, which two clusters starting at once could both write.
RAY_ENV = {
    "HF_HUB_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_TOKEN": secrets.token_hex(16),
}


def batch_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "diffusion_client.batch.cli", *flags]


def batch_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **RAY_ENV, **extra}


def run_batch(
    *flags: str, cwd: Path | None = None, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`flux2-batch FLAGS` in a fresh process, which starts (and stops) its own local Ray; `env` adds variables."""
    return subprocess.run(
        batch_command(*flags), capture_output=True, text=True, timeout=timeout, env=batch_env(**(env or {})), cwd=cwd
    )


def workers_temp_folder(folder: Path) -> dict[str, str]:
    """`run_batch` variables giving the workers `folder` (made here) as their temporary folder, and Ray's own
    session files the temporary folder they had (a deep test path would pass the Unix socket path limit)."""
    folder.mkdir()
    return {"TMPDIR": str(folder), "RAY_TMPDIR": tempfile.gettempdir()}


def with_ctrl_c() -> None:
    """`preexec_fn` for a command a test interrupts with SIGINT: SIGINT as a terminal's Ctrl-C finds it. A test run
    started in the background by a shell without job control inherits SIGINT ignored, and Python keeps it so."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def write_jobs(path: Path, jobs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs), encoding="utf-8")
    return path


def read_manifest(out_dir: Path) -> list[dict[str, Any]]:
    lines = (out_dir / "results.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def images(out_dir: Path) -> list[str]:
    """The finished images in `out_dir` (temporary files of writes in flight are not images)."""
    return sorted(path.name for path in out_dir.glob("*.png") if not path.name.startswith("."))


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def error_lines(stderr: str) -> list[str]:
    """Our own error lines (Ray and libraries log lines of their own); never a traceback of ours."""
    assert "Traceback" not in stderr, stderr[-4000:]
    return [line for line in stderr.splitlines() if line.startswith(f"{PREFIX} error: ")]


def ray_workers(driver_pid: int) -> list[psutil.Process]:
    """The `flux2-batch` workers (Ray actors) under a driver process that have loaded their pipeline: a local Ray's
    processes are the driver's descendants, and Ray titles an actor's process
    `ray::MapWorker(MapBatches(BatchWorker))`, with `.__init__` after it while it starts."""
    ready = []
    for process in psutil.Process(driver_pid).children(recursive=True):
        try:
            title = " ".join(process.cmdline())
        except psutil.Error:  # gone meanwhile
            continue
        if title.startswith("ray::MapWorker(MapBatches(BatchWorker))") and "__init__" not in title:
            ready.append(process)
    return ready
