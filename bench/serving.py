"""Real encoder servers for the benchmarks to call: in this process on a background thread, or in a subprocess.

In process, client threads can read the server's batching counters; in a subprocess, the server's memory stays
out of the client's peak-memory numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import BenchError
from encoder_server.config import ServerConfig
from encoder_server.server import EncoderLoader, EncoderServer, create_server
from encoder_server.servicer import ReadyEncoder
from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- in process -----------------------------------------------------------------------------------


@dataclass
class BackgroundServer:
    """A started, loaded server on its own event-loop thread; `target` is what clients dial."""

    handle: EncoderServer
    loop: asyncio.AbstractEventLoop
    ready: ReadyEncoder

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.handle.port}"

    def run(self, coroutine: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def batch_counts(self) -> tuple[int, int]:
        """(forward passes, prompts) so far, read on the loop that updates them."""

        async def read() -> tuple[int, int]:
            stats = self.ready.batcher.stats
            return stats.batches, stats.prompts

        return self.run(read())


@contextlib.contextmanager
def serve_in_background(
    config: ServerConfig, load_encoder: EncoderLoader | None = None, load_timeout_s: float = 600
) -> Iterator[BackgroundServer]:
    """Start `create_server(config, load_encoder)`, wait until it serves, and stop it on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="bench-encoder-server", daemon=True)
    thread.start()
    try:
        handle = asyncio.run_coroutine_threadsafe(create_server(config, load_encoder), loop).result(60)
        try:
            ready = asyncio.run_coroutine_threadsafe(handle.wait_ready(), loop).result(load_timeout_s)
            yield BackgroundServer(handle, loop, ready)
        finally:
            asyncio.run_coroutine_threadsafe(handle.stop(grace_s=1), loop).result(60)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# --- in a subprocess ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class EncoderProcess:
    """An encoder server running in its own process."""

    process: subprocess.Popen[bytes]
    target: str

    def wait_until_serving(self, timeout_s: float) -> None:
        """Poll `flux2-encoder health` until SERVING; fail at once if the server process dies."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise BenchError(f"the encoder server exited with status {self.process.returncode} before serving")
            health = subprocess.run(
                [sys.executable, "-m", "encoder_server.cli", "health", self.target, "--wait", "10"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
            )
            if health.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"the encoder server at {self.target} was not SERVING after {timeout_s:.0f} s")


@contextlib.contextmanager
def encoder_subprocess(model: Path | None, device: str) -> Iterator[EncoderProcess]:
    """Start an encoder server in a subprocess on `device` (it loads while we do); stop it with SIGTERM.

    Without `model` it serves random weights in Mistral Small 3.1's shapes (`serve_random_encoder.py`).
    """
    port = free_port()
    if model is None:
        command = [sys.executable, str(REPO_ROOT / "bench" / "serve_random_encoder.py"), "--port", str(port)]
    else:
        command = [sys.executable, "-m", "encoder_server.cli", "serve", "--model", str(model), "--host", "127.0.0.1"]
        command += ["--port", str(port), "--max-layer", str(max(DEFAULT_HIDDEN_STATE_LAYERS))]
    command += ["--device", device]
    log.info("starting the encoder server: %s", " ".join(command))
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=sys.stderr.fileno(), stderr=sys.stderr.fileno())
    try:
        yield EncoderProcess(process, f"127.0.0.1:{port}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
