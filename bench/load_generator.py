"""Closed-loop load on an encoder server: distinct realistic prompts from client threads sending back to back.

Each level of concurrency is a fresh set of clients, each with its own connection, like separate diffusion
clients; throughput and latency are taken over a measured window after a warmup.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import torch

from bench.serving import BackgroundServer
from shared.protocol import encoder_pb2, encoder_pb2_grpc
from shared.wire import TensorMeta, decode_tensor

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 300.0  # generous: a CPU run on a busy machine can queue for seconds


# --- prompts --------------------------------------------------------------------------------------

SUBJECTS = [
    "an elderly lighthouse keeper in a yellow raincoat",
    "a red fox curled up on a mossy stone wall",
    "a vintage racing car with peeling blue paint",
    "two children flying a patchwork kite",
    "a glass greenhouse full of tropical orchids",
    "a street musician playing a battered cello",
    "a sleepy orange cat on a stack of old books",
    "a futuristic tram gliding above a canal",
    "a baker dusting flour over fresh sourdough loaves",
    "a snow leopard crossing a narrow mountain ridge",
]
SETTINGS = [
    "on a windswept cliff at dawn",
    "in a crowded night market lit by paper lanterns",
    "inside a quiet library with tall arched windows",
    "beside a frozen lake under a pale winter sky",
    "in a sunlit courtyard overgrown with ivy",
    "on a rain-soaked city street reflecting neon signs",
    "in a desert canyon with layered red rock",
    "at the edge of a misty pine forest",
]
DETAILS = [
    "soft volumetric light falls across the scene and dust motes drift through the air",
    "the background is gently blurred with creamy bokeh and warm highlights",
    "tiny reflections glint on wet surfaces while steam rises in the cold air",
    "weathered textures, chipped paint and worn wood are visible in fine detail",
    "a flock of birds wheels overhead against scattered clouds",
    "the colour palette is muted teal and amber with deep shadows",
    "handwritten signs and small everyday objects fill the foreground",
    "long shadows stretch across the ground in the late afternoon",
]
STYLES = [
    "shot on 35mm film with natural grain",
    "a detailed oil painting with visible brush strokes",
    "cinematic wide-angle photograph, shallow depth of field",
    "studio photograph with a softbox key light",
    "watercolour illustration on textured paper",
    "hyperrealistic digital render, 8k, sharp focus",
]


def make_prompt(rng: random.Random) -> str:
    """A distinct image prompt of 40 to 80 words, like those users send to FLUX.2."""
    target = rng.randint(40, 80)
    words = f"{rng.choice(SUBJECTS)} {rng.choice(SETTINGS)}, {rng.choice(STYLES)}.".split()
    while len(words) < target:
        words += f"{rng.choice(DETAILS).capitalize()}, {rng.choice(STYLES)}.".split()
    return " ".join(words[:target]).rstrip(",.") + "."


# --- clients --------------------------------------------------------------------------------------


def encode_once(stub: encoder_pb2_grpc.TextEncoderStub, prompt: str) -> torch.Tensor:
    """One single-prompt Encode, received and rebuilt in full so the wire cost is measured."""
    replies = stub.Encode(encoder_pb2.EncodeRequest(prompts=[prompt]), timeout=REQUEST_TIMEOUT_S)
    header = next(replies).header
    meta = TensorMeta(header.dtype, tuple(header.shape), header.byte_length, header.crc32)
    return decode_tensor(meta, (reply.chunk for reply in replies))


@dataclass
class Window:
    """The measured window: from the end of warmup to `end`, set when all clients are connected."""

    warmup_s: float
    duration_s: float
    start: float = 0.0
    end: float = 0.0

    def open(self) -> None:
        now = time.perf_counter()
        self.start = now + self.warmup_s
        self.end = self.start + self.duration_s


@dataclass
class ClientRecord:
    calls: list[tuple[float, float]] = field(default_factory=list)  # (sent, fully decoded), perf_counter
    error: str | None = None

    def measured(self, window: Window) -> int:
        return sum(1 for _, done in self.calls if done >= window.start)


def run_client(target: str, seed: int, window: Window, barrier: threading.Barrier, record: ClientRecord) -> None:
    """Send single-prompt requests back to back until the window closes (and at least one landed in it)."""
    rng = random.Random(seed)
    # A subchannel pool per channel gives each client its own connection, like separate diffusion clients.
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = encoder_pb2_grpc.TextEncoderStub(channel)
        barrier.wait()
        while time.perf_counter() < window.end or record.measured(window) == 0:
            prompt = make_prompt(rng)
            sent = time.perf_counter()
            try:
                encode_once(stub, prompt)
            except grpc.RpcError as error:
                record.error = f"{error.code().name}: {error.details()}"
                return
            record.calls.append((sent, time.perf_counter()))


def summarize_level(
    concurrency: int, records: Sequence[ClientRecord], window: Window, passes: int, prompts: int
) -> dict[str, Any]:
    """Throughput and latency over completions inside the window; `passes`/`prompts` span the whole level.

    On a slow machine the window stretches until every client has finished one request in it.
    """
    firsts = [min(done for _, done in r.calls if done >= window.start) for r in records if r.measured(window)]
    end = max([window.end, *firsts])
    latencies = [(done - sent) * 1000 for r in records for sent, done in r.calls if window.start <= done <= end]
    errors = [r.error for r in records if r.error]
    for error in errors[:1]:
        log.error("concurrency %d: %d clients failed, first: %s", concurrency, len(errors), error)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "window_s": round(end - window.start, 3),
        "prompts_per_s": len(latencies) / (end - window.start),
        "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies else None,
        "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies else None,
        "forward_passes": passes,
        "mean_batch_size": prompts / passes if passes else None,
        "errors": len(errors),
    }


def measure_level(server: BackgroundServer, concurrency: int, warmup_s: float, duration_s: float) -> dict[str, Any]:
    """`concurrency` client threads, each with its own channel, sending back to back."""
    window = Window(warmup_s, duration_s)
    barrier = threading.Barrier(concurrency + 1, action=window.open)
    records = [ClientRecord() for _ in range(concurrency)]
    threads = [
        threading.Thread(
            target=run_client,
            args=(server.target, concurrency * 1000 + i, window, barrier, records[i]),
            name=f"bench-client-{i}",
            daemon=True,
        )
        for i in range(concurrency)
    ]
    # Batching is counted over the whole level, warmup included: a pass is counted when it starts, so a
    # window narrower than one pass (slow CPU runs) would otherwise see none.
    passes_before, prompts_before = server.batch_counts()
    for thread in threads:
        thread.start()
    barrier.wait(timeout=60)
    for thread in threads:
        thread.join()
    passes_after, prompts_after = server.batch_counts()
    result = summarize_level(concurrency, records, window, passes_after - passes_before, prompts_after - prompts_before)
    log.info("%s", json.dumps(result))
    return result
