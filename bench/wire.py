"""Wire benchmark: CPU per prompt on each side of Encode with the model stubbed, against torch.save over HTTP.

The server runs in its own process on the real server path (`create_server`: batcher, finisher, servicer, gRPC)
over a stub encoder that hands back preallocated embeddings, with the cache off, so each request is built and sent
afresh and what is measured is the wire: building the reply, gRPC, the kernel. Client threads in this process send
single-prompt requests back to back and rebuild each tensor (`parse_frame` + `responses_to_tensor`, every row's
CRC-32C checked). CPU is each process's `getrusage` over the measured window, divided by the prompts served.
Baselines: the Hugging Face-style `POST /predict` returning `torch.save` bytes (when the server has it), and the
same bytes over a plain TCP socket (the kernel's share).

    python -m bench.wire --tiny        # [512, 96] float32 per prompt: seconds on CPU (CI runs it)
    python -m bench.wire --full-size   # [512, 15360] bfloat16, 15.7 MB per prompt, as FLUX.2-dev's encoder returns
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import itertools
import json
import logging
import math
import multiprocessing
import os
import random
import socket
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import grpc
import numpy as np
import torch

from bench import harness
from bench.wire_shapes import MAX_BATCH_SIZE, Embedding, process_usage
from shared.allocator import tune_allocator
from shared.protocol import encoder_pb2
from shared.wire import DTYPES, MAX_CHUNK_BYTES, WIRE_ENCODE_METHOD, parse_frame, responses_to_tensor

log = logging.getLogger("bench.wire")

TARGETS = {  # full size, one client process on loopback
    "server_cpu_ms_per_prompt_max": 6.0,
    "client_cpu_ms_per_prompt_max": 6.0,
    "grpc_vs_http_at_concurrency_1_min": 1.5,
    "grpc_vs_http_at_concurrency_16_min": 1.5,
}


REQUEST_TIMEOUT_S = 120.0

MODES: dict[str, dict[str, Any]] = {
    "tiny": {"embedding": Embedding("float32", 32), "warmup_s": 0.3, "duration_s": 0.7},
    "full-size": {"embedding": Embedding("bfloat16", 5120), "warmup_s": 2.0, "duration_s": 6.0},
}
PROMPTS_PER_CLIENT = 64  # cycled: the stub ignores the text and the cache is off


# The clients, one connection each; each call sends one prompt and returns its `[1, L, width]` tensor.


class Client(Protocol):
    def __call__(self, prompt: str) -> torch.Tensor: ...

    def close(self) -> None: ...


class GrpcClient:
    """Encode as any client can call it: the generated request, `parse_frame` as deserializer, `responses_to_tensor`."""

    def __init__(self, target: str, embedding: Embedding) -> None:
        self._channel = grpc.insecure_channel(target, options=harness.OWN_CONNECTION)
        self._encode = self._channel.unary_stream(
            WIRE_ENCODE_METHOD,
            request_serializer=encoder_pb2.EncodeRequest.SerializeToString,
            response_deserializer=parse_frame,
        )
        self._spec = embedding.spec(1)

    def __call__(self, prompt: str) -> torch.Tensor:
        replies = self._encode(encoder_pb2.EncodeRequest(prompts=[prompt]), timeout=REQUEST_TIMEOUT_S)
        return responses_to_tensor(replies, self._spec)

    def close(self) -> None:
        self._channel.close()


class HttpClient:
    """Hugging Face's remote text encoder protocol: JSON prompts in, `torch.save` bytes out, on a kept-alive
    connection."""

    def __init__(self, port: int) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)

    def __call__(self, prompt: str) -> torch.Tensor:
        body = json.dumps({"prompt": [prompt]}).encode()
        self._connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
        response = self._connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise harness.BenchError(f"POST /predict answered {response.status}: {data[:200]!r}")
        return torch.load(io.BytesIO(data), weights_only=True)

    def close(self) -> None:
        self._connection.close()


class RawClient:
    """Receives the same bytes over a plain TCP socket straight into a fresh tensor."""

    def __init__(self, port: int, embedding: Embedding) -> None:
        self._socket = socket.create_connection(("127.0.0.1", port))
        self._spec = embedding.spec(1)

    def __call__(self, prompt: str) -> torch.Tensor:  # the prompt is not sent: the bytes are the same
        self._socket.sendall((1).to_bytes(4, "little"))
        tensor = torch.empty(self._spec.shape, dtype=DTYPES[self._spec.dtype])
        target = tensor.reshape(-1).view(torch.uint8).numpy().data
        received = 0
        while received < target.nbytes:
            count = self._socket.recv_into(target[received:])
            if not count:
                raise harness.BenchError("the raw sender closed the connection")
            received += count
        return tensor

    def close(self) -> None:
        self._socket.close()


# Measuring.


class ServerProcess:
    """The stub server (`bench.stub_server`) in a child process, and its CPU time on request."""

    def __init__(self, embedding: Embedding, batch_wait_ms: float, tune: bool) -> None:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no threads or heap shared with us
        self._conn, child = context.Pipe()
        args = (child, embedding, batch_wait_ms, tune)
        self.process = context.Process(target=_serve, args=args, name="wire-server", daemon=True)
        self.process.start()
        if not self._conn.poll(300):
            self.close()
            raise harness.BenchError("the stub server did not start within 300 s")
        self.endpoints: dict[str, Any] = self._conn.recv()

    def usage(self) -> tuple[float, int]:
        """The server process's `process_usage()`."""
        self._conn.send("usage")
        cpu_seconds, faults = self._conn.recv()
        return float(cpu_seconds), int(faults)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()


def _serve(*args: Any) -> None:
    """The child's entry point; the server's modules are imported there only."""
    from bench.stub_server import serve_stub

    serve_stub(*args)


def run_clients(pool: ThreadPoolExecutor, clients: Sequence[Client], seconds: float, seed: int) -> list[float]:
    """Each client sends prompts back to back for `seconds`; the latency of every request, in ms."""
    end = time.perf_counter() + seconds

    def loop(client: Client, prompts: list[str]) -> list[float]:
        latencies: list[float] = []
        for prompt in itertools.cycle(prompts):  # made before the window: its CPU counts only the wire
            if time.perf_counter() >= end:
                return latencies
            started = time.perf_counter()
            client(prompt)
            latencies.append((time.perf_counter() - started) * 1000)
        raise AssertionError("unreachable: cycle never ends")

    rngs = [random.Random(seed + index) for index in range(len(clients))]
    prompts = [[harness.make_prompt(rng) for _ in range(PROMPTS_PER_CLIENT)] for rng in rngs]
    return [latency for latencies in pool.map(loop, clients, prompts) for latency in latencies]


def measure_level(
    server: ServerProcess, make_client: Callable[[], Client], concurrency: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """Throughput, latency and CPU per prompt on both sides, over a window after a warmup; all requests in the
    window start and end inside it, so every CPU second counted belongs to a counted prompt."""
    clients = [make_client() for _ in range(concurrency)]
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            run_clients(pool, clients, warmup_s, seed=-concurrency)
            server_before, client_before, started = server.usage(), process_usage(), time.perf_counter()
            latencies = run_clients(pool, clients, duration_s, seed=concurrency)
            window_s = time.perf_counter() - started
            server_after, client_after = server.usage(), process_usage()
    finally:
        for client in clients:
            client.close()
    prompts = len(latencies)
    result = {
        "concurrency": concurrency,
        "prompts": prompts,
        "window_s": round(window_s, 3),
        "prompts_per_s": prompts / window_s,
        "latency_ms_p50": float(np.percentile(latencies, 50)),
        "latency_ms_p99": float(np.percentile(latencies, 99)),
        "server_cpu_ms_per_prompt": 1000 * (server_after[0] - server_before[0]) / prompts,
        "client_cpu_ms_per_prompt": 1000 * (client_after[0] - client_before[0]) / prompts,
        "server_page_faults_per_prompt": (server_after[1] - server_before[1]) / prompts,
        "client_page_faults_per_prompt": (client_after[1] - client_before[1]) / prompts,
    }
    log.info("%s", result)
    return result


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    embedding: Embedding = args.embedding
    client_tuned = tune_allocator() if args.tune_allocator else False
    server = ServerProcess(embedding, args.batch_wait_ms, args.tune_allocator)
    try:
        endpoints = server.endpoints
        window = (args.warmup_s, args.duration_s)
        grpc_levels = [
            measure_level(server, lambda: GrpcClient(endpoints["grpc"], embedding), level, *window)
            for level in args.concurrency
        ]
        raw = measure_level(server, lambda: RawClient(endpoints["raw_port"], embedding), 1, *window)
        http_levels = [
            measure_level(server, lambda: HttpClient(endpoints["http_port"]), level, *window)
            for level in args.concurrency
        ]
    finally:
        server.close()
    ratios = {
        f"grpc_vs_http_at_concurrency_{ours['concurrency']}": ours["prompts_per_s"] / theirs["prompts_per_s"]
        for ours, theirs in zip(grpc_levels, http_levels, strict=True)
    }
    report: dict[str, Any] = {
        "mode": args.mode,
        "device": f"cpu ({os.cpu_count()} cores), server and client on loopback",
        "embedding": {
            "dtype": embedding.dtype,
            "shape_per_prompt": [embedding.max_sequence_length, embedding.width],
            "bytes_per_prompt": embedding.bytes_per_prompt,
            "grpc_messages_per_prompt": 1 + math.ceil(embedding.bytes_per_prompt / MAX_CHUNK_BYTES),
        },
        "server": {
            "process": "separate (real server path, stub encoder, cache off)",
            "max_batch_size": MAX_BATCH_SIZE,
            "batch_wait_ms": args.batch_wait_ms,
        },
        "allocator_tuned": {"server": endpoints["allocator_tuned"], "client": client_tuned},
        "window": {"warmup_s": args.warmup_s, "duration_s": args.duration_s, "prompts_per_request": 1},
        "grpc": grpc_levels,
        "http": http_levels,
        "raw_socket": raw,
        "ratios": ratios,
    }
    if args.mode == "full-size":
        at_1 = next((level for level in grpc_levels if level["concurrency"] == 1), grpc_levels[0])
        measured = {**ratios, **{key: at_1[key] for key in ("server_cpu_ms_per_prompt", "client_cpu_ms_per_prompt")}}
        report["targets"], report["meets_targets"] = TARGETS, harness.meets_targets(TARGETS, measured)
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.wire", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--tiny", dest="mode", action="store_const", const="tiny", help="[512, 96] float32 per prompt")
    mode.add_argument(
        "--full-size", dest="mode", action="store_const", const="full-size", help="[512, 15360] bfloat16 per prompt"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="client threads (default 1 16)")
    parser.add_argument("--duration-s", type=float, help="measured window per level (tiny 0.7, full-size 6)")
    parser.add_argument("--warmup-s", type=float, help="unmeasured time per level first (tiny 0.3, full-size 2)")
    parser.add_argument("--batch-wait-ms", type=float, default=1.0, help="the server's batching window (default 1)")
    parser.add_argument(
        "--no-tune-allocator", dest="tune_allocator", action="store_false", help="leave glibc's malloc as it is"
    )
    args = harness.apply_mode_defaults(parser.parse_args(argv), MODES)
    if args.duration_s <= 0 or args.warmup_s < 0 or min(args.concurrency) < 1:
        parser.error("--duration-s and --concurrency must be positive and --warmup-s not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    harness.setup_process()
    stdout = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            report = benchmark(args)
    except harness.BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2), file=stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
