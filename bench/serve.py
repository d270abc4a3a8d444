"""Service benchmark: what `flux2-serve` adds over the CLI for the same image, and images/s and latency at 1, 4
and 16 concurrent callers, through real HTTP with the `openai` SDK against the same loaded pipeline.

    python -m bench.serve --tiny        # tiny random snapshot on CPU, about a minute
    python -m bench.serve --full-size   # random FLUX.2-dev NF4 DiT on CUDA (or --model SNAPSHOT), 1024x1024

One replica here; with N GPUs, `flux2-serve --ray ... --replicas N` runs N of these behind Ray Serve, each against
the one encoder (goal: at least 0.9 N times one replica's images/s until the encoder saturates).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import harness
from bench.random_models import encoder_server, generator_pipeline
from bench.studio import cli_seconds  # flux2-generate's time per image, measured as the page's benchmark does
from diffusion_client.encoder_client.client import RemoteTextEncoder
from diffusion_client.errors import ClientError
from diffusion_client.generation.generator import ImageGenerator
from diffusion_client.generation.pipeline import ModelKind

GUIDANCE = 4.0
DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"device": "cpu", "size": 128, "steps": 4, "repeats": 3, "concurrency": "1,4,16"},
    "full-size": {"device": "cuda", "size": 1024, "steps": 28, "repeats": 3, "concurrency": "1,4,16"},
}


class Server:
    """The app over `generator`, on uvicorn behind the guard, on a loop of its own thread."""

    def __init__(self, generator: ImageGenerator, kind: ModelKind, scratch: Path) -> None:
        from diffusion_client.serve.app import ServeState, create_app
        from diffusion_client.serve.callers import Callers
        from diffusion_client.serve.fields import RequestLimits
        from diffusion_client.serve.image_files import ImageFiles
        from diffusion_client.serve.service import ImageService, ServiceLimits
        from shared.http_guard import bind_listener, start_guarded_server

        self.state = ServeState("bench", Callers(None), ImageFiles(scratch, 60), RequestLimits(), 16)
        limits = ServiceLimits(max_queue=256, max_queue_per_caller=256)
        self.state.service = ImageService(generator, kind, out_dir=scratch, limits=limits)
        self.loop = asyncio.new_event_loop()
        sock = bind_listener("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        ready = threading.Event()

        async def start() -> None:
            self.server = await start_guarded_server(
                create_app(self.state), sock, max_connections=256, header_timeout_s=10, grace_s=5
            )
            ready.set()

        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(start(), self.loop)
        ready.wait(60)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(5), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


def served(port: int, args: argparse.Namespace, concurrency: int, requests: int) -> dict[str, Any]:
    """`requests` images from `concurrency` SDK callers at once: latency of each, images/s over all."""
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=3600)

    def one(seed: int) -> float:
        started = time.perf_counter()
        client.images.generate(
            prompt="a lighthouse",
            size=f"{args.size}x{args.size}",
            extra_body={"seed": seed, "num_inference_steps": args.steps, "guidance_scale": GUIDANCE},
        )
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        latencies = sorted(pool.map(one, range(requests)))
    wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": requests,
        "images_per_s": requests / wall,
        "latency_p50_s": statistics.median(latencies),
        "latency_p95_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
    }


def benchmark(args: argparse.Namespace, scratch: Path, snapshot: Path | None) -> dict[str, Any]:
    started = time.perf_counter()
    pipeline, kind = generator_pipeline(snapshot, args.device)
    harness.release_memory(args.device)
    report: dict[str, Any] = {
        "benchmark": "serve",
        "mode": args.mode,
        "device": harness.device_name(args.device),
        "settings": {"size": args.size, "steps": args.steps, "guidance": GUIDANCE, "repeats": args.repeats},
        "model": str(snapshot) if snapshot else "random FLUX.2-dev (32.2B) NF4 and VAE",
        "replicas": 1,
    }
    levels = [int(level) for level in args.concurrency.split(",")]
    with encoder_server(snapshot, args.device) as (target, where), RemoteTextEncoder(target, timeout=600) as encoder:
        report["encoder"] = {"target": target, "where": where}
        generator = ImageGenerator(pipeline, encoder, model_name="bench", progress=False)
        cli = cli_seconds(generator, args, scratch)
        server = Server(generator, kind, scratch)
        try:
            served(server.port, args, 1, 1)  # warm-up
            single = served(server.port, args, 1, args.repeats)
            runs = [served(server.port, args, level, max(level, args.repeats) * 2) for level in levels]
        finally:
            server.close()
    report["cli_image_s"] = statistics.median(cli)
    report["served_image_s"] = single["latency_p50_s"]
    report["request_overhead_s"] = single["latency_p50_s"] - report["cli_image_s"]
    report["concurrency"] = runs
    report["wall_s"] = time.perf_counter() - started
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = harness.mode_parser("bench.serve", __doc__.splitlines()[0])
    parser.add_argument("--size", type=int, help="image side (tiny 128, full-size 1024)")
    parser.add_argument("--steps", type=int, help="denoising steps (tiny 4, full-size 28)")
    parser.add_argument("--repeats", type=int, help="timed images for the overhead, after one warm-up (default 3)")
    parser.add_argument("--concurrency", help="concurrent callers to measure, comma-separated (default 1,4,16)")
    args = harness.parse_mode_args(parser, argv, DEFAULTS)
    if args.repeats < 1 or args.steps < 1 or args.size % 16:
        parser.error("--repeats and --steps must be at least 1, --size a multiple of 16")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return harness.run_main(parse_args(argv), benchmark, errors=(ClientError,))


if __name__ == "__main__":
    sys.exit(main())
