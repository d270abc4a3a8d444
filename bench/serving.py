"""Run a real encoder server inside this process, on its own event-loop thread, for benchmarks to call."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from encoder_server.config import ServerConfig
from encoder_server.prompt_encoder import PromptEncoder
from encoder_server.server import EncoderLoader, EncoderServer, create_server
from encoder_server.servicer import ReadyEncoder


@dataclass
class BackgroundServer:
    """A started, loaded server; `target` is what clients dial."""

    handle: EncoderServer
    loop: asyncio.AbstractEventLoop
    ready: ReadyEncoder

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.handle.port}"

    @property
    def encoder(self) -> PromptEncoder:
        return self.ready.encoder

    def run(self, coroutine: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


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
