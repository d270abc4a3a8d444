"""The server `bench.wire` measures, run in its own process: the real encoder server over a stub encoder.

The stub's forward pass returns slices of embeddings made once, so the server's CPU goes to the wire alone. Beside
it, a plain TCP sender answers with the same bytes: the kernel's share. Imported only by that process, since the
server's modules take seconds to import.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from bench import harness
from bench.wire_shapes import MAX_BATCH_SIZE, Embedding, process_usage
from encoder_server.background import serve_in_thread
from encoder_server.config import BatchingConfig, ModelConfig, RequestLimits, ServerConfig
from encoder_server.model.prompt_encoder import ModelInfo, PromptEncoder
from encoder_server.model.request import EncodeRequest
from shared.allocator import tune_allocator
from shared.wire import DTYPES


class StubEncoder(PromptEncoder):
    """A `PromptEncoder` whose pass returns slices of preallocated `[rows, L, width]` embeddings: no model."""

    def __init__(self, embedding: Embedding, embeds: torch.Tensor) -> None:  # nothing to load or wrap
        self.info = ModelInfo(
            model_name="stub-encoder",
            model_path="(preallocated embeddings)",
            hidden_size=embedding.hidden_size,
            num_layers=max(embedding.layers),
            max_layer=max(embedding.layers),
            dtype=embedding.dtype,
            device="cpu",
            fingerprint="stub",
        )
        self.limits = RequestLimits(max_prompts=MAX_BATCH_SIZE)
        self._embeds = embeds

    def encode_many(self, requests: Sequence[EncodeRequest]) -> list[torch.Tensor]:
        hidden = self.info.hidden_size
        return [
            self._embeds[
                : len(request.prompts), : request.max_sequence_length, : hidden * len(request.hidden_state_layers)
            ]
            for request in requests
        ]


def stub_embeddings(embedding: Embedding, rows: int) -> torch.Tensor:
    """Random `[rows, L, width]` embeddings: every reply is built from these bytes."""
    generator = torch.Generator().manual_seed(0)
    shape = (rows, embedding.max_sequence_length, embedding.width)
    return torch.randn(shape, generator=generator, dtype=DTYPES[embedding.dtype])


def serve_stub(conn: Connection, embedding: Embedding, batch_wait_ms: float, tune: bool) -> None:
    """Serve until told to stop: send the endpoints on `conn`, then answer each "usage" with `process_usage()`."""
    harness.setup_process()
    tuned = tune_allocator() if tune else False
    embeds = stub_embeddings(embedding, MAX_BATCH_SIZE)
    config = ServerConfig(
        ModelConfig(model_path=Path("stub-encoder"), device="cpu", dtype=embedding.dtype),
        host="127.0.0.1",
        port=0,
        batching=BatchingConfig(max_batch_size=MAX_BATCH_SIZE, batch_wait_ms=batch_wait_ms),
        limits=RequestLimits(max_prompts=MAX_BATCH_SIZE),
        cache_bytes=0,  # every request computed and sent afresh
        http_port=0,  # Hugging Face's /predict on the same server, for the HTTP baseline
    )
    with serve_in_thread(config, lambda: StubEncoder(embedding, embeds)) as server, raw_sender(embeds) as raw_port:
        endpoints = {"grpc": server.target, "http_port": server.handle.http_port, "raw_port": raw_port}
        conn.send({**endpoints, "allocator_tuned": tuned})
        while conn.recv() == "usage":
            conn.send(process_usage())


@contextlib.contextmanager
def raw_sender(embeds: torch.Tensor) -> Iterator[int]:
    """A TCP server answering each 4-byte little-endian prompt count with that many rows' bytes; yields its port."""
    rows = [embeds[index].reshape(-1).view(torch.uint8).numpy().data for index in range(len(embeds))]

    def answer(connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            while (count := connection.recv(4, socket.MSG_WAITALL)) and len(count) == 4:
                for index in range(int.from_bytes(count, "little")):
                    connection.sendall(rows[index])

    def accept(listener: socket.socket) -> None:
        with contextlib.suppress(OSError):  # closed on exit
            while True:
                connection, _ = listener.accept()
                threading.Thread(target=answer, args=(connection,), name="raw-sender", daemon=True).start()

    with socket.create_server(("127.0.0.1", 0)) as listener:
        threading.Thread(target=accept, args=(listener,), name="raw-listener", daemon=True).start()
        yield listener.getsockname()[1]
