"""Team-service benchmark: a mixed workload (half the requests repeat a popular prompt) through real servers.

Each run starts fresh servers (a cold cache) and sends the same workload: `--clients` threads, each sending
`--requests` single-prompt requests back to back; every other request is a fresh prompt, the rest are drawn
from a small pool that every client shares ("ten people trying the same idea"). Runs: gRPC with the cache on
and off, two replicas behind one balanced client, Hugging Face's `POST /predict` over HTTP, and gRPC over TLS.

    python -m bench.team --tiny        # the tiny snapshot on CPU, seconds
    python -m bench.team --full-size   # random Mistral Small 3.1 (30 layers, bf16) on CUDA, or --model SNAPSHOT
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch

from bench import harness
from bench.random_models import random_prompt_encoder
from diffusion_client.encoder_client.client import RemoteTextEncoder
from diffusion_client.errors import ClientError
from encoder_server.background import BackgroundServer, serve_in_thread
from encoder_server.config import BatchingConfig, ModelConfig, ServerConfig, TlsConfig
from encoder_server.errors import ServerError

log = logging.getLogger("bench.team")

DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"device": "cpu", "clients": 4, "requests": 8, "batch_wait_ms": 5.0},
    "full-size": {"device": "cuda", "clients": 16, "requests": 32, "batch_wait_ms": 2.0},
}
REQUEST_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Run:
    """One configuration of servers and client."""

    name: str
    cache: bool = True
    replicas: int = 1
    protocol: str = "grpc"  # or "http"
    tls: bool = False


RUNS = (
    Run("grpc_cache_on"),
    Run("grpc_cache_off", cache=False),
    Run("grpc_two_replicas", replicas=2),
    Run("http_predict", protocol="http"),
    Run("grpc_tls", tls=True),
)


def workload(clients: int, per_client: int, seed: int = 0) -> list[list[str]]:
    """Each client's prompts: even requests fresh, odd ones from a pool shared by all clients."""
    rng = random.Random(seed)
    pool = [harness.make_prompt(rng) for _ in range(max(1, clients * per_client // 8))]
    return [
        [harness.make_prompt(rng) if index % 2 == 0 else rng.choice(pool) for index in range(per_client)]
        for _ in range(clients)
    ]


@contextlib.contextmanager
def servers(args: argparse.Namespace, run: Run, tls: TlsConfig | None, load: Callable[[], Any]) -> Iterator[list[Any]]:
    """`run.replicas` fresh servers sharing one loaded encoder (a cold cache each), HTTP on for the HTTP run."""
    batching = BatchingConfig(batch_wait_ms=args.batch_wait_ms)
    model = ModelConfig(args.model or Path("(random)"), args.device)
    config = ServerConfig(
        model=model,
        host="127.0.0.1",
        port=0,
        batching=batching,
        cache_bytes=ServerConfig.cache_bytes if run.cache else 0,
        tls=tls if run.tls else None,
        http_port=0 if run.protocol == "http" else None,
    )
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve_in_thread(config, load)) for _ in range(run.replicas)]


def grpc_client(run: Run, started: list[BackgroundServer], ca: Path) -> Callable[[], Callable[[str], Any]]:
    host = "localhost" if run.tls else "127.0.0.1"  # the bench's certificate names localhost
    targets = [f"{host}:{server.handle.port}" for server in started]
    options: dict[str, Any] = {"timeout": REQUEST_TIMEOUT_S, "channel_options": harness.OWN_CONNECTION}
    if run.tls:
        options["tls_ca"] = ca

    def connect() -> Callable[[str], Any]:
        encoder = RemoteTextEncoder(targets if len(targets) > 1 else targets[0], **options)
        encoder.info()
        return encoder.encode

    return connect


def http_client(started: list[BackgroundServer]) -> Callable[[], Callable[[str], Any]]:
    url = f"http://127.0.0.1:{started[0].handle.http_port}/predict"

    def connect() -> Callable[[str], Any]:
        session = requests.Session()

        def predict(prompt: str) -> torch.Tensor:  # as BFL's README snippet does, on a kept-alive connection
            response = session.post(url, json={"prompt": prompt}, timeout=REQUEST_TIMEOUT_S)
            response.raise_for_status()
            return torch.load(io.BytesIO(response.content), weights_only=True)

        return predict

    return connect


def measure(connect: Callable[[], Callable[[str], Any]], prompts: list[list[str]]) -> dict[str, Any]:
    """Every client sends its prompts back to back; throughput over the whole run, latency per request."""
    calls = [connect() for _ in prompts]

    def client(call: Callable[[str], Any], mine: list[str]) -> list[float]:
        latencies = []
        for prompt in mine:
            sent = time.perf_counter()
            call(prompt)
            latencies.append((time.perf_counter() - sent) * 1000)
        return latencies

    started = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        latencies = [ms for done in pool.map(client, calls, prompts) for ms in done]
    seconds = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "prompts_per_s": len(latencies) / seconds,
        "latency_ms_p50": float(np.percentile(latencies, 50)),
        "latency_ms_p99": float(np.percentile(latencies, 99)),
    }


def served(started: list[BackgroundServer]) -> dict[str, Any]:
    """Forward passes and prompts computed, and cache hits, over every replica."""
    passes = prompts = hits = 0
    for server in started:
        batch_passes, batch_prompts = server.batch_counts()
        stats = server.cache_stats()
        passes, prompts = passes + batch_passes, prompts + batch_prompts
        hits += 0 if stats is None else stats.hits + stats.coalesced
    return {"forward_passes": passes, "prompts_computed": prompts, "cache_hits": hits}


def benchmark(args: argparse.Namespace, scratch: Path, snapshot: Path | None) -> dict[str, Any]:
    from encoder_server.model.loaded_models import load_encoder
    from tests.support.certs import make_certificates  # test-time certificates: the bench needs a CA it controls

    args.model = snapshot
    if snapshot is None:
        encoder = random_prompt_encoder(args.device, 30)
    else:
        encoder = load_encoder(ModelConfig(snapshot, args.device))
    certs = make_certificates(scratch / "certs")
    tls = TlsConfig(certs.server_cert, certs.server_key)
    prompts = workload(args.clients, args.requests)
    results: dict[str, Any] = {}
    for run in RUNS:
        log.info("run %s", run.name)
        with servers(args, run, tls, lambda: encoder) as started:
            connect = http_client(started) if run.protocol == "http" else grpc_client(run, started, certs.ca)
            results[run.name] = {**measure(connect, prompts), **served(started)}
        log.info("%s: %s", run.name, results[run.name])
    base = results["grpc_cache_on"]["prompts_per_s"]
    return {
        "mode": args.mode,
        "device": harness.device_name(args.device),
        "model": {"weights": "random" if snapshot is None else "snapshot", **encoder.info.as_dict()},
        "workload": {
            "clients": args.clients,
            "requests_per_client": args.requests,
            "repeated_fraction": 0.5,
            "prompts_per_request": 1,
        },
        "runs": results,
        "ratios": {
            "cache_on_vs_off": base / results["grpc_cache_off"]["prompts_per_s"],
            "two_replicas_vs_one": results["grpc_two_replicas"]["prompts_per_s"] / base,
            "grpc_vs_http_predict": base / results["http_predict"]["prompts_per_s"],
            "tls_vs_plain": results["grpc_tls"]["prompts_per_s"] / base,
        },
        "note": "replicas share this machine's device; on separate boxes two replicas add a device each",
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = harness.mode_parser("bench.team", __doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, help="client threads (tiny 4, full-size 16)")
    parser.add_argument("--requests", type=int, help="requests per client (tiny 8, full-size 32)")
    parser.add_argument("--batch-wait-ms", type=float, help="batching window (tiny 5, full-size 2)")
    args = harness.parse_mode_args(parser, argv, DEFAULTS)
    if args.clients < 1 or args.requests < 2:
        parser.error("--clients must be at least 1 and --requests at least 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return harness.run_main(parse_args(argv), benchmark, errors=(ServerError, ClientError))


if __name__ == "__main__":
    sys.exit(main())
