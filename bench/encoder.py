"""Encoder benchmark: prompts/s and latency of Encode through the real gRPC server, plus in-process baselines.

Client threads, each with its own `RemoteTextEncoder` and connection, send distinct prompts back to back; each
concurrency level is measured over a window after a warmup. Baselines in process: diffusers'
`Flux2Pipeline._get_mistral_3_small_prompt_embeds` (every layer) and `PromptEncoder.encode` (stops at layer 30).

    python -m bench.encoder --tiny        # tiny random snapshot on CPU, well under a minute
    python -m bench.encoder --full-size   # random Mistral Small 3.1 on CUDA, or --model SNAPSHOT
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import operator
import random
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench import harness
from diffusion_client.errors import ClientError
from diffusion_client.remote_encoder import RemoteTextEncoder
from encoder_server.config import BatchingConfig, ModelConfig, RequestLimits, ServerConfig
from encoder_server.errors import EncoderError
from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS, DEFAULT_MAX_SEQUENCE_LENGTH
from shared.quiet import quiet_library_loggers
from shared.wire import DTYPES

if TYPE_CHECKING:
    from encoder_server.background import BackgroundServer
    from encoder_server.prompt_encoder import PromptEncoder

log = logging.getLogger("bench.encoder")

TARGETS = {"prompts_per_s_at_concurrency_16": 40.0, "grpc_latency_vs_in_process_truncated": 1.15}
MEETS = {"prompts_per_s_at_concurrency_16": operator.ge, "grpc_latency_vs_in_process_truncated": operator.le}
DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"device": "cpu", "warmup_s": 0.5, "duration_s": 2.0, "batch_wait_ms": 5.0, "warmup": 2, "repeats": 5},
    # A GPU pass is tens of ms: a shorter batching window costs little latency and still fills batches.
    "full-size": {"device": "cuda", "warmup_s": 3, "duration_s": 10, "batch_wait_ms": 2.0, "warmup": 3, "repeats": 10},
}
REQUEST_TIMEOUT_S = 300.0  # generous: a CPU run on a busy machine can queue for seconds
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # a subchannel pool per client: its own connection
PHRASES = [
    "an elderly lighthouse keeper in a yellow raincoat on a windswept cliff at dawn,",
    "a red fox curled up on a mossy stone wall at the edge of a misty pine forest,",
    "soft volumetric light falls across the scene and dust motes drift through the air,",
    "the background is gently blurred with creamy bokeh and warm highlights,",
    "weathered textures, chipped paint and worn wood are visible in fine detail,",
    "a flock of birds wheels overhead against scattered clouds,",
    "long shadows stretch across the ground in the late afternoon,",
    "shot on 35mm film with natural grain, cinematic wide-angle photograph,",
    "a detailed oil painting with visible brush strokes, shallow depth of field,",
    "a crowded night market lit by paper lanterns on a rain-soaked street,",
]


def make_prompt(rng: random.Random) -> str:
    """A distinct image prompt of 40 to 80 words, like those users send to FLUX.2."""
    words = " ".join(rng.sample(PHRASES, len(PHRASES))).split()[: rng.randint(40, 80)]
    return " ".join(words).rstrip(",") + "."


@dataclasses.dataclass
class Window:
    """The measured window: from the end of warmup to `end`, opened once every client has connected."""

    warmup_s: float
    duration_s: float
    start: float = 0.0
    end: float = 0.0

    def open(self) -> None:
        self.start = time.perf_counter() + self.warmup_s
        self.end = self.start + self.duration_s


def run_client(
    target: str,
    seed: int,
    window: Window,
    barrier: threading.Barrier,
    calls: list[tuple[float, float]],
    errors: list[str],
) -> None:
    """Send single-prompt requests back to back until the window closes and one has landed in it."""
    rng = random.Random(seed)
    try:
        with RemoteTextEncoder(target, timeout=REQUEST_TIMEOUT_S, retries=0, channel_options=OWN_CONNECTION) as encoder:
            encoder.info()  # connects and caches GetInfo, so each measured call is one Encode
            barrier.wait()
            while time.perf_counter() < window.end or not calls or calls[-1][1] < window.start:
                sent = time.perf_counter()
                encoder.encode(make_prompt(rng))  # received, checked and rebuilt: the wire cost is measured
                calls.append((sent, time.perf_counter()))
    except threading.BrokenBarrierError:
        return  # another client could not connect
    except ClientError as error:
        errors.append(str(error))
        barrier.abort()  # when still connecting, the level cannot start


def measure_level(server: BackgroundServer, concurrency: int, warmup_s: float, duration_s: float) -> dict[str, Any]:
    """Throughput and latency of `concurrency` clients over the completions inside the window.

    On a slow machine the window stretches until every client has finished one request in it. Batching is
    counted over the whole level, warmup included: a pass is counted when it starts, so a window narrower than
    one pass (slow CPU runs) would otherwise see none.
    """
    window = Window(warmup_s, duration_s)
    barrier = threading.Barrier(concurrency + 1, action=window.open)
    calls: list[list[tuple[float, float]]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    threads = [
        threading.Thread(
            target=run_client, args=(server.target, concurrency * 1000 + i, window, barrier, calls[i], errors)
        )
        for i in range(concurrency)
    ]
    passes_before, prompts_before = server.batch_counts()
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(timeout=120)
    for thread in threads:
        thread.join()
    passes_after, prompts_after = server.batch_counts()
    if not window.start:
        raise harness.BenchError(f"concurrency {concurrency}: clients did not connect: {(errors or ['timeout'])[0]}")
    if errors:
        log.error("concurrency %d: %d clients failed, first: %s", concurrency, len(errors), errors[0])
    in_window = [[call for call in client if call[1] >= window.start] for client in calls]
    end = max([window.end, *(client[0][1] for client in in_window if client)])
    latencies = [(done - sent) * 1000 for client in in_window for sent, done in client if done <= end]
    passes, prompts = passes_after - passes_before, prompts_after - prompts_before
    result = {
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
    log.info("%s", result)
    return result


def time_diffusers(args: argparse.Namespace, snapshot: Path | None, prompt: str) -> float:
    """diffusers' text encoding at batch 1 with the whole `Mistral3ForConditionalGeneration`, in seconds.

    The model is freed when this returns, so the serving one fits after it.
    """
    from diffusers import Flux2Pipeline
    from transformers import Mistral3ForConditionalGeneration

    from bench.random_models import random_text_encoder
    from encoder_server import loading
    from shared.tiny_snapshot import build_tokenizer

    if snapshot is None:
        model, tokenizer = random_text_encoder(args.device), build_tokenizer()
    else:
        text_encoder_dir, tokenizer_dir = loading.resolve_snapshot(snapshot)
        dtype, device = DTYPES[args.dtype], args.device
        model = Mistral3ForConditionalGeneration.from_pretrained(text_encoder_dir, dtype=dtype, device_map=device)
        tokenizer = loading.load_tokenizer(tokenizer_dir)
    log.info("timing diffusers' in-process text encoding (full forward, output_hidden_states=True)")
    encode = Flux2Pipeline._get_mistral_3_small_prompt_embeds
    return harness.median_seconds(lambda: encode(model, tokenizer, prompt), args.device, args.warmup, args.repeats)


def serving_encoder(args: argparse.Namespace, snapshot: Path | None) -> PromptEncoder:
    if snapshot is None:
        from bench.random_models import random_prompt_encoder

        return random_prompt_encoder(args.device, args.max_layer)
    from encoder_server.prompt_encoder import PromptEncoder

    return PromptEncoder.load(ModelConfig(snapshot, device=args.device, dtype=args.dtype, max_layer=args.max_layer))


def benchmark(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """In-process baselines first (diffusers' whole model is freed before the serving one is built), then load."""
    from encoder_server.background import serve_in_thread

    snapshot = args.model
    if snapshot is None and args.mode == "tiny":
        from shared.tiny_snapshot import build_tiny_snapshot

        snapshot = build_tiny_snapshot(scratch / "tiny-flux2")
    prompt = make_prompt(random.Random(-1))
    diffusers_ms = 1000 * time_diffusers(args, snapshot, prompt)
    harness.release_memory(args.device)
    log.info("building the serving encoder")
    encoder = serving_encoder(args, snapshot)
    log.info("timing the in-process truncated forward (PromptEncoder.encode, batch 1)")
    truncated_ms = 1000 * harness.median_seconds(lambda: encoder.encode(prompt), args.device, args.warmup, args.repeats)

    model = ModelConfig(snapshot or Path("(in memory)"), device=args.device, dtype=args.dtype, max_layer=args.max_layer)
    batching = BatchingConfig(max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms)
    limits = RequestLimits(max_prompts=args.max_batch_size)
    config = ServerConfig(model=model, host="127.0.0.1", port=0, batching=batching, limits=limits)
    with serve_in_thread(config, lambda: encoder) as server:
        results = [measure_level(server, level, args.warmup_s, args.duration_s) for level in args.concurrency]

    by_level = {result["concurrency"]: result for result in results}
    ratios = {"best_prompts_per_s_vs_diffusers": max(r["prompts_per_s"] for r in results) * diffusers_ms / 1000}
    if 16 in by_level:
        ratios["prompts_per_s_at_concurrency_16"] = by_level[16]["prompts_per_s"]
    if 1 in by_level and by_level[1]["latency_ms_p50"]:
        ratios["grpc_latency_vs_in_process_truncated"] = by_level[1]["latency_ms_p50"] / truncated_ms
    info = encoder.info
    layers = list(DEFAULT_HIDDEN_STATE_LAYERS)
    reply_bytes = DEFAULT_MAX_SEQUENCE_LENGTH * len(layers) * info.hidden_size * DTYPES[info.dtype].itemsize
    report: dict[str, Any] = {
        "mode": args.mode,
        "device": harness.device_name(args.device),
        "dtype": info.dtype,
        "model": {"weights": "random" if snapshot is None else "snapshot", **dataclasses.asdict(info)},
        "server": {"max_batch_size": args.max_batch_size, "batch_wait_ms": args.batch_wait_ms},
        "request": {
            "prompts_per_request": 1,
            "max_sequence_length": DEFAULT_MAX_SEQUENCE_LENGTH,
            "hidden_state_layers": layers,
            "response_bytes": reply_bytes,
        },
        "window": {"warmup_s": args.warmup_s, "duration_s": args.duration_s},
        "results": results,
        "in_process": {
            "diffusers_full_forward_ms": diffusers_ms,
            "diffusers_prompts_per_s": 1000 / diffusers_ms,
            "truncated_forward_ms": truncated_ms,
        },
        "ratios": ratios,
    }
    if args.mode == "full-size":
        report["targets"] = TARGETS
        report["meets_targets"] = {
            name: meets(ratios[name], TARGETS[name]) for name, meets in MEETS.items() if name in ratios
        }
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = harness.mode_parser("bench.encoder", __doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32], help="default 1 4 16 32")
    parser.add_argument("--duration-s", type=float, help="measured window per level (tiny 2, full-size 10)")
    parser.add_argument("--warmup-s", type=float, help="unmeasured time per level first (tiny 0.5, full-size 3)")
    parser.add_argument("--max-batch-size", type=int, default=BatchingConfig.max_batch_size)
    parser.add_argument("--batch-wait-ms", type=float, help="batching window (tiny 5, full-size 2)")
    parser.add_argument("--max-layer", type=int, default=max(DEFAULT_HIDDEN_STATE_LAYERS), help="default 30")
    args = harness.parse_mode_args(parser, argv, DEFAULTS)
    if args.duration_s <= 0 or args.warmup_s < 0 or min(args.concurrency) < 1:
        parser.error("--duration-s and --concurrency must be positive and --warmup-s not negative")
    if not max(DEFAULT_HIDDEN_STATE_LAYERS) <= args.max_layer <= 40:
        parser.error("--max-layer must be between 30 (requests ask for layer 30) and 40 (Mistral Small 3.1's depth)")
    args.dtype = ModelConfig(Path(), device=args.device).resolved_dtype  # the server's default for the device
    return args


def main(argv: Sequence[str] | None = None) -> int:
    quiet_library_loggers()
    args = parse_args(argv)
    return harness.run_main(args, lambda scratch: benchmark(args, scratch), errors=(EncoderError, ClientError))


if __name__ == "__main__":
    sys.exit(main())
