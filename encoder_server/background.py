"""A real encoder server on a background event-loop thread, for tests, benchmarks and notebooks.

with serve_in_thread(config) as server:
    RemoteTextEncoder(server.target).encode("a cat")
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from encoder_server.config import ServerConfig
from encoder_server.model.prompt_encoder import PromptEncoder
from encoder_server.server import EncoderServer, create_server
from encoder_server.serving.cache import CacheStats
from encoder_server.serving.engine import EncoderLoader

T = TypeVar("T")


@dataclass
class BackgroundServer:
    """A started server on its own loop thread; `target` is what clients dial."""

    handle: EncoderServer
    loop: asyncio.AbstractEventLoop

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.handle.port}"

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run `coroutine` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def wait_ready(self, timeout: float = 600) -> PromptEncoder:
        return self.run(self.handle.wait_ready(), timeout)

    def batch_counts(self, model: str | None = None) -> tuple[int, int]:
        """(forward passes, prompts) so far of the model named `model` (None: the first), read on the loop that
        updates them."""

        async def read() -> tuple[int, int]:
            stats = self.handle.engines.engine_for(model).stats
            return stats.batches, stats.prompts

        return self.run(read())

    def cache_stats(self, model: str | None = None) -> CacheStats | None:
        """The embedding cache's counters of the model named `model` (None: the first), read on the loop that
        updates them; None with the cache off."""

        async def read() -> CacheStats | None:
            return self.handle.engines.engine_for(model).cache_stats()

        return self.run(read())


@contextlib.contextmanager
def serve_in_thread(
    config: ServerConfig, load_encoder: EncoderLoader | None = None, *, wait: bool = True, load_timeout_s: float = 600
) -> Iterator[BackgroundServer]:
    """Start `create_server(config, load_encoder)` on a new loop thread, wait until it serves; stop it on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="encoder-server", daemon=True)
    thread.start()
    try:
        server = BackgroundServer(
            asyncio.run_coroutine_threadsafe(create_server(config, load_encoder), loop).result(60), loop
        )
        try:
            if wait:
                server.wait_ready(load_timeout_s)
            yield server
        finally:
            server.run(server.handle.stop(grace_s=1))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
