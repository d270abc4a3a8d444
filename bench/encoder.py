"""Encoder benchmark: prompts/s and latency of Encode through the real gRPC server, plus in-process baselines.

`--tiny` runs the tiny random snapshot on CPU in well under a minute (a smoke test of the whole path).
`--full-size` needs CUDA: it builds Mistral Small 3.1's real shapes with random bf16 weights straight on
the GPU (no download, nothing written to disk) and compares the server against diffusers' in-process
text encoding. One JSON object goes to stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

# `python bench/encoder.py` puts bench/ on sys.path, not the repo root holding the project's packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.full_size import (
    MISTRAL_SMALL_3_1,
    RANDOM_ENCODER_NAME,
    TextShape,
    random_prompt_encoder,
    random_text_encoder,
)
from bench.harness import device_name, median_seconds, mode_parser, parse_mode_args, release_memory, run_main
from bench.load_generator import make_prompt, measure_level
from bench.serving import serve_in_background
from encoder_server import loading
from encoder_server.config import BatchingConfig, ConfigError, ModelConfig, RequestLimits, ServerConfig
from encoder_server.prompt_encoder import PromptEncoder
from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS, DEFAULT_MAX_SEQUENCE_LENGTH
from shared.tiny_snapshot import build_tiny_snapshot, build_tokenizer
from shared.wire import DTYPES

log = logging.getLogger("bench.encoder")

TARGETS = {"prompts_per_s_at_concurrency_16": 40.0, "grpc_latency_vs_in_process_truncated": 1.15}


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


# --- models ---------------------------------------------------------------------------------------


class ModelSource(Protocol):
    """Where the benchmark gets its models: a snapshot on disk, or random weights built in memory."""

    def describe(self) -> dict[str, Any]: ...

    def diffusers_model(self) -> tuple[Any, Any]: ...

    def prompt_encoder(self) -> PromptEncoder: ...

    def model_config(self) -> ModelConfig: ...


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
        return {"weights": "random", "name": RANDOM_ENCODER_NAME, **vars(self.shape), "max_layer": self.max_layer}

    def diffusers_model(self) -> tuple[Any, Any]:
        return random_text_encoder(self.shape, self.device, DTYPES[self.dtype], self.seed), self.tokenizer

    def prompt_encoder(self) -> PromptEncoder:
        return random_prompt_encoder(self.shape, self.device, self.dtype, self.max_layer, self.seed, self.tokenizer)

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


# --- in-process baselines -------------------------------------------------------------------------


def median_ms(call: Callable[[], object], device: str, warmup: int, repeats: int) -> float:
    """Median wall time of `call` in ms, without autograd, as inference runs."""
    with torch.inference_mode():
        return 1000 * median_seconds(call, device, warmup, repeats)


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


# --- the run --------------------------------------------------------------------------------------


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
    with serve_in_background(config, lambda: encoder) as server:
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
    parser = mode_parser(__doc__.splitlines()[0], "tiny random model on CPU", "Mistral Small 3.1 shapes on CUDA")
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
    args, defaults = parse_mode_args(parser, argv, MODE_DEFAULTS, ("device", "warmup_s", "duration_s", "batch_wait_ms"))
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
    return run_main(
        lambda scratch: benchmark(args, make_source(args, scratch), defaults),
        needs_cuda="--full-size" if args.mode == "full-size" else None,
        scratch_prefix="bench-encoder-",
    )


if __name__ == "__main__":
    sys.exit(main())
