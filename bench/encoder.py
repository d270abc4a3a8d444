"""Encoder benchmark: prompts/s and latency of Encode through the real gRPC server, plus in-process baselines.

`--tiny` runs the tiny random snapshot on CPU in well under a minute (a smoke test of the whole path).
`--full-size` needs CUDA: it builds Mistral Small 3.1's real shapes with random bf16 weights straight on
the GPU (no download, nothing written to disk) and compares the server against diffusers' in-process
text encoding. One JSON object goes to stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import gc
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

# `python bench/encoder.py` puts bench/ on sys.path, not the repo root holding the project's packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import grpc
import numpy as np
import torch

from encoder_server import loading
from encoder_server.config import BatchingConfig, ConfigError, ModelConfig, RequestLimits, ServerConfig
from encoder_server.prompt_encoder import EncoderInfo, PromptEncoder
from encoder_server.server import EncoderServer, create_server
from encoder_server.servicer import ReadyEncoder
from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS, DEFAULT_MAX_SEQUENCE_LENGTH
from shared.protocol import encoder_pb2, encoder_pb2_grpc
from shared.tiny_snapshot import build_tiny_snapshot, build_tokenizer
from shared.wire import DTYPES, TensorMeta, decode_tensor

log = logging.getLogger("bench.encoder")

TARGETS = {"prompts_per_s_at_concurrency_16": 40.0, "grpc_latency_vs_in_process_truncated": 1.15}
REQUEST_TIMEOUT_S = 300.0  # generous: a CPU run on a busy machine can queue for seconds


@dataclass(frozen=True)
class TextShape:
    """The language model's sizes; everything else about the architecture is Mistral3's."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int = 131072
    rope_theta: float = 1e9
    rms_norm_eps: float = 1e-5


# FLUX.2-dev's text encoder, Mistral-Small-3.1-24B (its text config; sliding_window is None).
MISTRAL_SMALL_3_1 = TextShape(
    hidden_size=5120, num_layers=40, num_heads=32, num_kv_heads=8, head_dim=128, intermediate_size=32768
)


@dataclass(frozen=True)
class ModeDefaults:
    device: str
    warmup_s: float
    duration_s: float
    batch_wait_ms: float
    in_process_warmup: int
    in_process_repeats: int


MODE_DEFAULTS = {
    "tiny": ModeDefaults(
        "cpu", warmup_s=0.5, duration_s=2.0, batch_wait_ms=5.0, in_process_warmup=2, in_process_repeats=5
    ),
    # A GPU pass is tens of ms, so a shorter window costs little latency and still fills batches under load.
    "full-size": ModeDefaults(
        "cuda", warmup_s=3.0, duration_s=10.0, batch_wait_ms=2.0, in_process_warmup=3, in_process_repeats=10
    ),
}


# --- prompts -------------------------------------------------------------------------------------

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


# --- models --------------------------------------------------------------------------------------


class ModelSource(Protocol):
    """Where the benchmark gets its models: a snapshot on disk, or random weights built in memory."""

    def describe(self) -> dict[str, Any]: ...

    def diffusers_model(self) -> tuple[Any, Any]: ...

    def prompt_encoder(self) -> PromptEncoder: ...

    def model_config(self) -> ModelConfig: ...


def mistral3_config(shape: TextShape) -> Any:
    """Mistral3's config with `shape` for the language model and a tiny vision tower text prompts never use."""
    from transformers import Mistral3Config

    config = Mistral3Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": shape.vocab_size,
            "hidden_size": shape.hidden_size,
            "intermediate_size": shape.intermediate_size,
            "num_hidden_layers": shape.num_layers,
            "num_attention_heads": shape.num_heads,
            "num_key_value_heads": shape.num_kv_heads,
            "head_dim": shape.head_dim,
            "max_position_embeddings": 131072,
            "rms_norm_eps": shape.rms_norm_eps,
            "rope_theta": shape.rope_theta,
            "sliding_window": None,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 11,
        },
        vision_config={
            "model_type": "pixtral",
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "head_dim": 8,
            "intermediate_size": 32,
            "image_size": 56,
            "patch_size": 14,
            "num_channels": 3,
        },
        image_token_index=10,
        spatial_merge_size=2,
        vision_feature_layer=-1,
    )
    # Mistral Small 3.1 has its own LM head; transformers reads the flag from the top-level config.
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = False
    return config


def build_random(model_class: Any, config: Any, device: str, dtype: torch.dtype, seed: int) -> Any:
    """Instantiate straight on `device` in `dtype`: a 24B model never exists on the host or in float32.

    transformers' init draws every weight from normal(0, 0.02) in place, on the device.
    """
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval().requires_grad_(False)


@dataclass
class RandomSource:
    """Random weights in Mistral Small 3.1's shapes (or any `shape`), with the real tokenizer."""

    shape: TextShape
    device: str
    dtype: str
    max_layer: int
    seed: int = 0

    @cached_property
    def tokenizer(self) -> Any:
        return build_tokenizer()

    def describe(self) -> dict[str, Any]:
        return {
            "weights": "random",
            "name": "random-mistral-small-3.1",
            **vars(self.shape),
            "max_layer": self.max_layer,
        }

    def diffusers_model(self) -> tuple[Any, Any]:
        from transformers import Mistral3ForConditionalGeneration

        config = mistral3_config(self.shape)
        model = build_random(Mistral3ForConditionalGeneration, config, self.device, DTYPES[self.dtype], self.seed)
        return model, self.tokenizer

    def prompt_encoder(self) -> PromptEncoder:
        from transformers import MistralModel

        # Only layers 1..max_layer exist, as when the server loads a snapshot with --max-layer.
        text_config = copy.deepcopy(mistral3_config(self.shape).text_config)
        text_config.num_hidden_layers = self.max_layer
        model = build_random(MistralModel, text_config, self.device, DTYPES[self.dtype], self.seed)
        info = EncoderInfo(
            model_name="random-mistral-small-3.1",
            model_path="(in memory)",
            hidden_size=self.shape.hidden_size,
            num_layers=self.shape.num_layers,
            max_layer=self.max_layer,
            dtype=self.dtype,
            device=str(model.device),
            fingerprint=f"random-seed-{self.seed}",
        )
        return PromptEncoder(model, self.tokenizer, info, RequestLimits())

    def model_config(self) -> ModelConfig:
        return ModelConfig(Path("(in memory)"), device=self.device, dtype=self.dtype, max_layer=self.max_layer)


@dataclass
class SnapshotSource:
    """A diffusers snapshot on disk, loaded the way the server and diffusers load it."""

    path: Path
    device: str
    dtype: str
    max_layer: int

    def describe(self) -> dict[str, Any]:
        from transformers import AutoConfig

        text_encoder_dir, _ = loading.resolve_snapshot(self.path)
        text = AutoConfig.from_pretrained(text_encoder_dir).get_text_config()
        keys = ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size")
        return {
            "weights": "snapshot",
            "name": loading.model_display_name(self.path),
            "path": str(self.path),
            **{key: getattr(text, key, None) for key in keys},
            "num_layers": text.num_hidden_layers,
            "vocab_size": text.vocab_size,
            "max_layer": self.max_layer,
        }

    def diffusers_model(self) -> tuple[Any, Any]:
        from transformers import Mistral3ForConditionalGeneration

        text_encoder_dir, tokenizer_dir = loading.resolve_snapshot(self.path)
        model = Mistral3ForConditionalGeneration.from_pretrained(
            text_encoder_dir, dtype=DTYPES[self.dtype], device_map=self.device
        )
        return model.eval(), loading.load_tokenizer(tokenizer_dir)

    def prompt_encoder(self) -> PromptEncoder:
        return PromptEncoder.load(self.model_config(), RequestLimits())

    def model_config(self) -> ModelConfig:
        return ModelConfig(self.path, device=self.device, dtype=self.dtype, max_layer=self.max_layer)


# --- in-process baselines ------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def release_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        log.info("GPU memory in use after freeing: %.1f GB", torch.cuda.memory_allocated(device) / 1e9)


def median_ms(call: Callable[[], object], device: str, warmup: int, repeats: int) -> float:
    """Median wall time of `call` in ms, synchronising so queued GPU work is counted."""
    with torch.inference_mode():
        for _ in range(warmup):
            call()
        synchronize(device)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            synchronize(device)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _time_diffusers(source: ModelSource, device: str, prompt: str, warmup: int, repeats: int) -> float:
    from diffusers import Flux2Pipeline

    model, tokenizer = source.diffusers_model()
    log.info("timing diffusers' in-process encode_prompt path (full forward, output_hidden_states=True)")
    return median_ms(
        lambda: Flux2Pipeline._get_mistral_3_small_prompt_embeds(model, tokenizer, prompt), device, warmup, repeats
    )


def measure_diffusers(source: ModelSource, device: str, prompt: str, warmup: int, repeats: int) -> dict[str, Any]:
    """diffusers' way at batch 1; the model is freed before returning so the serving model fits after it."""
    result: dict[str, Any]
    try:
        ms = _time_diffusers(source, device, prompt, warmup, repeats)
        result = {"diffusers_full_forward_ms": ms, "diffusers_prompts_per_s": 1000 / ms}
    except torch.OutOfMemoryError as error:
        # Keep only the message: the exception's traceback would keep the 48 GB model alive.
        log.warning("diffusers baseline ran out of memory; skipping it")
        result = {"diffusers_error": str(error).splitlines()[0]}
    release_memory(device)
    return result


# --- the server and its clients ------------------------------------------------------------------


@dataclass
class BackgroundServer:
    """The real server on 127.0.0.1:0, on its own event-loop thread, so client threads can call it."""

    handle: EncoderServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
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
def serve(config: ServerConfig, encoder: PromptEncoder) -> Iterator[BackgroundServer]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="bench-encoder-server", daemon=True)
    thread.start()
    handle = asyncio.run_coroutine_threadsafe(create_server(config, lambda: encoder), loop).result(60)
    try:
        ready = asyncio.run_coroutine_threadsafe(handle.wait_ready(), loop).result(60)
        yield BackgroundServer(handle, loop, thread, ready)
    finally:
        asyncio.run_coroutine_threadsafe(handle.stop(grace_s=1), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


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


# --- the run -------------------------------------------------------------------------------------


def compare(results: list[dict[str, Any]], in_process: dict[str, Any]) -> dict[str, Any]:
    """The targets' quantities: throughput at concurrency 16, and gRPC p50 at concurrency 1 over in-process."""
    by_level = {r["concurrency"]: r for r in results}
    ratios: dict[str, Any] = {}
    if 16 in by_level:
        ratios["prompts_per_s_at_concurrency_16"] = by_level[16]["prompts_per_s"]
    if 1 in by_level and by_level[1]["latency_ms_p50"] and in_process.get("truncated_forward_ms"):
        ratios["grpc_latency_vs_in_process_truncated"] = (
            by_level[1]["latency_ms_p50"] / in_process["truncated_forward_ms"]
        )
    if in_process.get("diffusers_prompts_per_s"):
        best = max(r["prompts_per_s"] for r in results)
        ratios["best_prompts_per_s_vs_diffusers"] = best / in_process["diffusers_prompts_per_s"]
    return ratios


def meets_targets(ratios: dict[str, Any]) -> dict[str, bool]:
    met = {}
    if "prompts_per_s_at_concurrency_16" in ratios:
        met["prompts_per_s_at_concurrency_16"] = (
            ratios["prompts_per_s_at_concurrency_16"] >= TARGETS["prompts_per_s_at_concurrency_16"]
        )
    if "grpc_latency_vs_in_process_truncated" in ratios:
        met["grpc_latency_vs_in_process_truncated"] = (
            ratios["grpc_latency_vs_in_process_truncated"] <= TARGETS["grpc_latency_vs_in_process_truncated"]
        )
    return met


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def benchmark(args: argparse.Namespace, source: ModelSource, defaults: ModeDefaults) -> dict[str, Any]:
    """In-process baselines first (diffusers' full model is freed before the serving model is built)."""
    prompt = make_prompt(random.Random(-1))
    warmup, repeats = defaults.in_process_warmup, defaults.in_process_repeats
    in_process = measure_diffusers(source, args.device, prompt, warmup, repeats)
    log.info("building the serving encoder")
    encoder = source.prompt_encoder()
    log.info("timing the in-process truncated forward (PromptEncoder.encode, batch 1)")
    in_process["truncated_forward_ms"] = median_ms(lambda: encoder.encode(prompt), args.device, warmup, repeats)
    batching = BatchingConfig(max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms)
    config = ServerConfig(model=source.model_config(), host="127.0.0.1", port=0, batching=batching)
    with serve(config, encoder) as server:
        results = [measure_level(server, c, args.warmup_s, args.duration_s) for c in args.concurrency]
    info = encoder.info
    report: dict[str, Any] = {
        "mode": args.mode,
        "device": device_name(args.device),
        "dtype": info.dtype,
        "model": {**source.describe(), "num_layers_reported": info.num_layers},
        "server": {"max_batch_size": args.max_batch_size, "batch_wait_ms": args.batch_wait_ms},
        "request": {
            "prompts_per_request": 1,
            "max_sequence_length": DEFAULT_MAX_SEQUENCE_LENGTH,
            "hidden_state_layers": list(DEFAULT_HIDDEN_STATE_LAYERS),
            "response_bytes": DEFAULT_MAX_SEQUENCE_LENGTH
            * len(DEFAULT_HIDDEN_STATE_LAYERS)
            * info.hidden_size
            * DTYPES[info.dtype].itemsize,
        },
        "window": {"warmup_s": args.warmup_s, "duration_s": args.duration_s},
        "results": results,
        "in_process": in_process,
        "ratios": compare(results, in_process),
    }
    if args.mode == "full-size":
        report["targets"] = TARGETS
        report["meets_targets"] = meets_targets(report["ratios"])
    return report


def concurrency_list(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,4,16, not {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"concurrency levels must be positive integers, not {text!r}")
    return levels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--tiny", dest="mode", action="store_const", const="tiny", help="tiny random model on CPU")
    mode.add_argument(
        "--full-size", dest="mode", action="store_const", const="full-size", help="Mistral Small 3.1 shapes on CUDA"
    )
    parser.add_argument("--model", type=Path, help="use this diffusers snapshot instead of building one")
    parser.add_argument("--concurrency", type=concurrency_list, default=[1, 4, 16, 32], help="default 1,4,16,32")
    parser.add_argument("--duration-s", type=float, help="measured window per level (tiny 2, full-size 10)")
    parser.add_argument("--warmup-s", type=float, help="unmeasured time per level first (tiny 0.5, full-size 3)")
    parser.add_argument("--max-batch-size", type=int, default=BatchingConfig.max_batch_size)
    parser.add_argument("--batch-wait-ms", type=float, help="batching window (tiny 5, full-size 2)")
    parser.add_argument("--max-layer", type=int, default=max(DEFAULT_HIDDEN_STATE_LAYERS), help="default 30")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (tiny: cpu, full-size: cuda)")
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, ModeDefaults]:
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = MODE_DEFAULTS[args.mode]
    for name in ("device", "warmup_s", "duration_s", "batch_wait_ms"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(defaults, name))
    if args.duration_s <= 0 or args.warmup_s < 0:
        parser.error("--duration-s must be positive and --warmup-s not negative")
    try:  # the server's own device check, and its default dtype for that device
        args.dtype = ModelConfig(Path(), device=args.device).resolved_dtype
    except ConfigError as error:
        parser.error(str(error))
    if args.max_layer < max(DEFAULT_HIDDEN_STATE_LAYERS):
        parser.error(f"--max-layer must be at least {max(DEFAULT_HIDDEN_STATE_LAYERS)}: requests ask for layer 30")
    if args.mode == "full-size" and not args.device.startswith("cuda"):
        parser.error("--full-size runs on CUDA; use --tiny for CPU")
    if args.mode == "full-size" and args.model is None and args.max_layer > MISTRAL_SMALL_3_1.num_layers:
        parser.error(f"--max-layer must be at most {MISTRAL_SMALL_3_1.num_layers}, Mistral Small 3.1's depth")
    return args, defaults


def make_source(args: argparse.Namespace, scratch: Path) -> ModelSource:
    if args.model is not None:
        return SnapshotSource(args.model, args.device, args.dtype, args.max_layer)
    if args.mode == "full-size":
        return RandomSource(MISTRAL_SMALL_3_1, args.device, args.dtype, args.max_layer)
    log.info("building the tiny snapshot in %s", scratch)
    return SnapshotSource(build_tiny_snapshot(scratch / "tiny-flux2"), args.device, args.dtype, args.max_layer)


def main(argv: Sequence[str] | None = None) -> int:
    args, defaults = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    if args.mode == "full-size" and not torch.cuda.is_available():
        print("error: --full-size needs a CUDA GPU, but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    stdout = sys.stdout
    # Libraries sometimes print; stdout must carry only the JSON report.
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory(prefix="bench-encoder-") as scratch:
        report = benchmark(args, make_source(args, Path(scratch)), defaults)
    print(json.dumps(report, indent=2), file=stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
