"""Encoder benchmark: prompts/s and latency of Encode through the real gRPC server, plus in-process baselines.

Client threads, each with its own `RemoteTextEncoder` and connection, send distinct prompts back to back; each
concurrency level is measured over a window after a warmup. Baselines in process: diffusers'
`Flux2Pipeline._get_mistral_3_small_prompt_embeds` (every layer) and `PromptEncoder.encode` (stops at layer 30).
`--quantize none,int8,nf4` serves each mode in turn; bf16 ("none") is the top level, the others' reference.

FLUX.2 [klein]'s Qwen3 is measured the same way under "klein" (against `Flux2KleinPipeline._get_qwen3_prompt_embeds`):
the tiny [klein] snapshot in tiny mode, random Qwen3-4B and Qwen3-8B (27 of 36 layers) at full size, or
`--klein-model SNAPSHOT`. Tiny mode also serves both models from one server ("two_models": prompts/s per model, half
the clients asking each).

    python -m bench.encoder --tiny        # tiny random snapshots on CPU, about a minute
    python -m bench.encoder --full-size   # random Mistral Small 3.1 and Qwen3 on CUDA, or --model SNAPSHOT
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import random
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bench import harness
from bench.random_models import (
    Qwen3Shape,
    random_prompt_encoder,
    random_qwen3,
    random_qwen3_encoder,
    random_text_encoder,
)
from diffusion_client.encoder_client.client import RemoteTextEncoder
from diffusion_client.errors import ClientError
from encoder_server.config import QUANTIZE_CHOICES, BatchingConfig, ModelConfig, RequestLimits, ServerConfig
from encoder_server.errors import ServerError
from encoder_server.model import loading
from encoder_server.model.loaded_models import load_encoder
from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS, DEFAULT_MAX_SEQUENCE_LENGTH
from shared.tiny_klein import build_qwen3_tokenizer, build_tiny_klein_snapshot
from shared.tiny_snapshot import build_tokenizer
from shared.wire import DTYPES

if TYPE_CHECKING:
    from encoder_server.background import BackgroundServer
    from encoder_server.model.prompt_encoder import PromptEncoder

log = logging.getLogger("bench.encoder")

TARGETS = {  # full size on one H100; throughput and overhead in bf16, what 30 layers may hold when quantised
    "prompts_per_s_at_concurrency_16_min": 40.0,
    "grpc_latency_vs_in_process_truncated_max": 1.15,
    "int8_weight_gib_max": 20.0,
    "nf4_weight_gib_max": 11.0,
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"device": "cpu", "warmup_s": 0.5, "duration_s": 2.0, "batch_wait_ms": 5.0, "warmup": 2, "repeats": 5},
    # A GPU pass is tens of ms: a shorter batching window costs little latency and still fills batches.
    "full-size": {"device": "cuda", "warmup_s": 3, "duration_s": 10, "batch_wait_ms": 2.0, "warmup": 3, "repeats": 10},
}
REQUEST_TIMEOUT_S = 300.0  # generous: a CPU run on a busy machine can queue for seconds


QWEN3_SHAPES = (  # FLUX.2-klein-4B's and FLUX.2-klein-9B's text encoders
    Qwen3Shape("random-qwen3-4b", hidden_size=2560, intermediate_size=9728, tie_word_embeddings=True),
    Qwen3Shape("random-qwen3-8b", hidden_size=4096, intermediate_size=12288, tie_word_embeddings=False),
)
PROMPT = harness.make_prompt(random.Random(-1))  # timed in process at batch 1
DRIFT_PROMPTS = [harness.make_prompt(random.Random(-2 - index)) for index in range(8)]


def client_calls(encoder: RemoteTextEncoder, seed: int, start: float, end: float) -> tuple[list[Any], str | None]:
    """`(sent, done)` of single-prompt requests sent back to back until `end` and one has landed after `start`."""
    rng, calls = random.Random(seed), list[tuple[float, float]]()
    try:
        while time.perf_counter() < end or not calls or calls[-1][1] < start:
            prompt = harness.make_prompt(rng)  # made before the clock starts
            sent = time.perf_counter()
            encoder.encode(prompt)  # received, checked and rebuilt: the wire cost is measured
            calls.append((sent, time.perf_counter()))
    except ClientError as error:
        return calls, str(error)
    return calls, None


def measure_clients(
    server: BackgroundServer, models: Sequence[str | None], warmup_s: float, duration_s: float
) -> dict[str | None, dict[str, Any]]:
    """Throughput and latency of one client per entry of `models` (each asking that model; None: the server's first),
    per model, over the completions inside one window, which opens `warmup_s` after all have connected and stretches
    until each has finished one request in it. Batching is counted over the whole run (a pass counts when it starts)."""
    names = list(dict.fromkeys(models))
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(len(models)) as pool:
        options: dict[str, Any] = {
            "timeout": REQUEST_TIMEOUT_S,
            "retries": 0,
            "channel_options": harness.OWN_CONNECTION,
        }
        encoders = [stack.enter_context(RemoteTextEncoder(server.target, model=m, **options)) for m in models]
        for encoder in encoders:
            encoder.info()  # connects and caches GetInfo, so each measured call is one Encode
        before = {name: server.batch_counts(name) for name in names}
        start = time.perf_counter() + warmup_s
        end = start + duration_s
        seeds = [len(models) * 1000 + index for index in range(len(models))]
        outcomes = list(pool.map(lambda encoder, seed: client_calls(encoder, seed, start, end), encoders, seeds))
        after = {name: server.batch_counts(name) for name in names}
    in_window = [[call for call in calls if call[1] >= start] for calls, _ in outcomes]
    end = max([end, *(calls[0][1] for calls in in_window if calls)])
    measured = {}
    for name in names:
        mine = [index for index, model in enumerate(models) if model == name]
        if errors := [error for index in mine if (error := outcomes[index][1])]:
            log.error("model %s, %d clients: %d failed, first: %s", name, len(mine), len(errors), errors[0])
        latencies = [(done - sent) * 1000 for index in mine for sent, done in in_window[index] if done <= end]
        passes, prompts = (after[name][field] - before[name][field] for field in (0, 1))
        measured[name] = {
            "clients": len(mine),
            "requests": len(latencies),
            "window_s": round(end - start, 3),
            "prompts_per_s": len(latencies) / (end - start),
            "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies else None,
            "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies else None,
            "forward_passes": passes,
            "mean_batch_size": prompts / passes if passes else None,
            "errors": len(errors),
        }
    return measured


def measure_level(server: BackgroundServer, concurrency: int, warmup_s: float, duration_s: float) -> dict[str, Any]:
    """`concurrency` clients of the server's first model (`measure_clients`)."""
    measured = measure_clients(server, [None] * concurrency, warmup_s, duration_s)[None]
    del measured["clients"]
    result = {"concurrency": concurrency, **measured}
    log.info("%s", result)
    return result


def time_diffusers(args: argparse.Namespace, snapshot: Path | None) -> float:
    """Seconds of diffusers' text encoding at batch 1 with the whole `Mistral3ForConditionalGeneration`, freed after."""
    from diffusers import Flux2Pipeline
    from transformers import Mistral3ForConditionalGeneration

    if snapshot is None:
        model, tokenizer = random_text_encoder(args.device), build_tokenizer()
    else:
        text_encoder_dir, tokenizer_dir = loading.resolve_snapshot(snapshot)
        dtype, device = DTYPES[args.dtype], args.device
        model = Mistral3ForConditionalGeneration.from_pretrained(text_encoder_dir, dtype=dtype, device_map=device)
        tokenizer = loading.load_tokenizer(tokenizer_dir)
    log.info("timing diffusers' in-process text encoding (full forward, output_hidden_states=True)")
    encode = Flux2Pipeline._get_mistral_3_small_prompt_embeds
    return harness.median_seconds(lambda: encode(model, tokenizer, PROMPT), args.device, args.warmup, args.repeats)


def time_klein_diffusers(args: argparse.Namespace, source: Path | Qwen3Shape) -> float:
    """Seconds of diffusers' [klein] text encoding at batch 1 with the whole `Qwen3ForCausalLM`, freed after."""
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen3ForCausalLM

    if isinstance(source, Qwen3Shape):
        model, tokenizer = random_qwen3(source, args.device, causal_lm=True), build_qwen3_tokenizer()
    else:
        text_encoder_dir, tokenizer_dir = loading.resolve_snapshot(source)
        dtype, device = DTYPES[args.dtype], args.device
        model = Qwen3ForCausalLM.from_pretrained(text_encoder_dir, dtype=dtype, device_map=device)
        tokenizer = loading.load_tokenizer(tokenizer_dir)
    log.info("timing diffusers' in-process [klein] text encoding (full forward, output_hidden_states=True)")
    encode = Flux2KleinPipeline._get_qwen3_prompt_embeds
    return harness.median_seconds(lambda: encode(model, tokenizer, [PROMPT]), args.device, args.warmup, args.repeats)


def measure_mode(
    args: argparse.Namespace, model: ModelConfig, load: Callable[[], PromptEncoder], diffusers_ms: float
) -> tuple[dict, Any]:
    """One mode: its serving encoder timed in process at batch 1, then at each level through a real server; the
    report, and its embeddings of `DRIFT_PROMPTS` (`[8, 512, 3 * H]`) for the drift."""
    from encoder_server.background import serve_in_thread

    log.info("%s, quantize %s: the serving encoder as the server loads it, timed", model.model_path, model.quantize)
    encoder = load()
    truncated_ms = 1000 * harness.median_seconds(lambda: encoder.encode(PROMPT), args.device, args.warmup, args.repeats)
    batching = BatchingConfig(max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms)
    limits = RequestLimits(max_prompts=args.max_batch_size)
    config = ServerConfig(model=model, host="127.0.0.1", port=0, batching=batching, limits=limits)
    with serve_in_thread(config, lambda: encoder) as server:  # handed `encoder`, it loads nothing
        results = [measure_level(server, level, args.warmup_s, args.duration_s) for level in args.concurrency]
    by_level = {result["concurrency"]: result for result in results}
    ratios = {"best_prompts_per_s_vs_diffusers": max(r["prompts_per_s"] for r in results) * diffusers_ms / 1000}
    if 16 in by_level:
        ratios["prompts_per_s_at_concurrency_16"] = by_level[16]["prompts_per_s"]
    if 1 in by_level and by_level[1]["latency_ms_p50"]:
        ratios["grpc_latency_vs_in_process_truncated"] = by_level[1]["latency_ms_p50"] / truncated_ms
    info = {
        **dataclasses.asdict(encoder.info),
        "family": encoder.info.family.name,
        "default_hidden_state_layers": list(encoder.info.family.default_layers),
        "weight_gib": round(encoder.info.weight_bytes / harness.GIB, 3),
    }
    report = {"model": info, "results": results, "in_process": {"truncated_forward_ms": truncated_ms}, "ratios": ratios}
    return report, encoder.encode(DRIFT_PROMPTS).cpu()


def drift(
    embeds: torch.Tensor, reference: torch.Tensor, layers: Sequence[int] = DEFAULT_HIDDEN_STATE_LAYERS
) -> list[dict[str, float]]:
    """Per stacked layer, over every token, in float32: the worst cosine similarity and `||q - ref|| / ||ref||`."""
    measured = []
    by_layer = [tensor.float().flatten(0, 1).chunk(len(layers), -1) for tensor in (embeds, reference)]  # [B * L, H]
    for layer, ours, theirs in zip(layers, *by_layer, strict=True):
        cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1).min()
        error = (ours - theirs).norm() / theirs.norm()
        measured.append({"layer": layer, "min_token_cosine": cosine.item(), "relative_error": error.item()})
    return measured


def measure_modes(
    args: argparse.Namespace,
    model_for: Callable[[str], ModelConfig],
    load_for: Callable[[str], Callable[[], PromptEncoder]],
    diffusers_ms: float,
) -> dict[str, Any]:
    """Every `--quantize` mode of one model, "none" first (the reference): bf16's report at the top level, each other
    mode's under "quantized", with its throughput against bf16 and its drift from bf16's embeddings."""
    modes: dict[str, Any] = {}
    for mode in args.quantize:  # "none" first: the reference
        modes[mode], embeds = measure_mode(args, model_for(mode), load_for(mode), diffusers_ms)
        harness.release_memory(args.device)  # the encoder is gone: the next one is measured on its own
        if mode == "none":
            reference, layers = embeds, modes[mode]["model"]["default_hidden_state_layers"]
            continue
        levels = zip(modes[mode]["results"], modes["none"]["results"], strict=True)
        vs_bf16 = {str(ours["concurrency"]): ours["prompts_per_s"] / bf16["prompts_per_s"] for ours, bf16 in levels}
        modes[mode]["ratios"]["prompts_per_s_vs_bf16"] = vs_bf16
        measured = drift(embeds, reference, layers)
        modes[mode]["drift"] = {"against": "none", "prompts": len(DRIFT_PROMPTS), "layers": measured}
    bf16 = modes.pop("none")
    bf16["in_process"].update(diffusers_full_forward_ms=diffusers_ms, diffusers_prompts_per_s=1000 / diffusers_ms)
    return {**bf16, **({"quantized": modes} if modes else {})}


def measure_dev(args: argparse.Namespace, snapshot: Path | None) -> dict[str, Any]:
    """FLUX.2-dev's Mistral: the snapshot's, or random Mistral Small 3.1 weights."""
    diffusers_ms = 1000 * time_diffusers(args, snapshot)
    harness.release_memory(args.device)

    def model_for(mode: str) -> ModelConfig:
        return ModelConfig(
            snapshot or Path("(random)"), args.device, args.dtype, max_layer=args.max_layer, quantize=mode
        )

    def load_for(mode: str) -> Callable[[], PromptEncoder]:

        if snapshot is None:
            return lambda: random_prompt_encoder(args.device, args.max_layer, mode)
        return lambda: load_encoder(model_for(mode))

    return measure_modes(args, model_for, load_for, diffusers_ms)


def measure_klein(args: argparse.Namespace, source: Path | Qwen3Shape) -> dict[str, Any]:
    """FLUX.2 [klein]'s Qwen3: a snapshot's (layers 1..27), or random weights at a released shape."""
    diffusers_ms = 1000 * time_klein_diffusers(args, source)
    harness.release_memory(args.device)
    path = Path(source.name) if isinstance(source, Qwen3Shape) else source

    def model_for(mode: str) -> ModelConfig:
        return ModelConfig(path, args.device, args.dtype, quantize=mode)

    def load_for(mode: str) -> Callable[[], PromptEncoder]:

        if isinstance(source, Qwen3Shape):
            return lambda: random_qwen3_encoder(source, args.device, mode)
        return lambda: load_encoder(model_for(mode))

    return measure_modes(args, model_for, load_for, diffusers_ms)


def measure_two_models(args: argparse.Namespace, dev: Path, klein: Path) -> dict[str, Any]:
    """One server loading both snapshots, half the clients (at least one) asking each model at the same time."""
    from encoder_server.background import serve_in_thread

    models = (
        ModelConfig(dev, args.device, args.dtype, name="dev"),
        ModelConfig(klein, args.device, args.dtype, name="klein"),
    )
    clients = max(max(args.concurrency) // 2, 1)
    batching = BatchingConfig(max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms)
    limits = RequestLimits(max_prompts=args.max_batch_size)
    config = ServerConfig(models=models, host="127.0.0.1", port=0, batching=batching, limits=limits)
    log.info("two models on one server: %d clients each", clients)
    with serve_in_thread(config) as server:
        names = server.handle.engines.names
        measured = measure_clients(
            server, [name for name in names for _ in range(clients)], args.warmup_s, args.duration_s
        )
    per_model = {str(name): result for name, result in measured.items()}
    log.info("%s", per_model)
    return {
        "models": names,
        "clients_per_model": clients,
        "per_model": per_model,
        "prompts_per_s_total": sum(result["prompts_per_s"] for result in per_model.values()),
    }


def benchmark(args: argparse.Namespace, scratch: Path, snapshot: Path | None) -> dict[str, Any]:
    """In-process baselines first (diffusers' whole model is freed before a serving one is built), then each mode;
    FLUX.2-dev's Mistral, then [klein]'s Qwen3, then (tiny) both from one server."""
    bf16 = measure_dev(args, snapshot)
    layers = list(DEFAULT_HIDDEN_STATE_LAYERS)
    reply_bytes = DEFAULT_MAX_SEQUENCE_LENGTH * len(layers) * bf16["model"]["hidden_size"] * DTYPES[args.dtype].itemsize
    klein_sources: list[Path | Qwen3Shape]
    if args.klein_model is not None:
        klein_sources = [args.klein_model]
    elif args.mode == "tiny":
        klein_sources = [build_tiny_klein_snapshot(scratch / "tiny-klein")]
    else:
        klein_sources = list(QWEN3_SHAPES)
    klein = [measure_klein(args, source) for source in klein_sources]
    report: dict[str, Any] = {
        "mode": args.mode,
        "device": harness.device_name(args.device),
        "dtype": args.dtype,
        "model": {"weights": "random" if snapshot is None else "snapshot", **bf16.pop("model")},
        "server": {"max_batch_size": args.max_batch_size, "batch_wait_ms": args.batch_wait_ms},
        "request": {
            "prompts_per_request": 1,
            "max_sequence_length": DEFAULT_MAX_SEQUENCE_LENGTH,
            "hidden_state_layers": layers,
            "response_bytes": reply_bytes,
        },
        "window": {"warmup_s": args.warmup_s, "duration_s": args.duration_s},
        **bf16,
        "klein": klein,
    }
    paths = [source for source in klein_sources if isinstance(source, Path)]
    if snapshot is not None and paths:
        report["two_models"] = measure_two_models(args, snapshot, paths[0])
    if args.mode == "full-size":
        modes = bf16.get("quantized", {})
        measured = {**bf16["ratios"], **{f"{mode}_weight_gib": modes[mode]["model"]["weight_gib"] for mode in modes}}
        report["targets"], report["meets_targets"] = TARGETS, harness.meets_targets(TARGETS, measured)
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = harness.mode_parser("bench.encoder", __doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32], help="default 1 4 16 32")
    parser.add_argument("--duration-s", type=float, help="measured window per level (tiny 2, full-size 10)")
    parser.add_argument("--warmup-s", type=float, help="unmeasured time per level first (tiny 0.5, full-size 3)")
    parser.add_argument("--max-batch-size", type=int, default=BatchingConfig.max_batch_size)
    parser.add_argument("--batch-wait-ms", type=float, help="batching window (tiny 5, full-size 2)")
    parser.add_argument("--max-layer", type=int, default=max(DEFAULT_HIDDEN_STATE_LAYERS), help="default 30")
    parser.add_argument(
        "--klein-model", type=Path, help="a FLUX.2 [klein] snapshot (default: tiny, or random Qwen3-4B and -8B)"
    )
    modes = "none,int8,nf4; none always runs, first (the reference), and with int8 or nf4 every mode is in bf16"
    parser.add_argument("--quantize", type=lambda text: text.split(","), default=["none"], help=modes)
    args = harness.parse_mode_args(parser, argv, DEFAULTS)
    if args.duration_s <= 0 or args.warmup_s < 0 or min(args.concurrency) < 1:
        parser.error("--duration-s and --concurrency must be positive and --warmup-s not negative")
    if not max(DEFAULT_HIDDEN_STATE_LAYERS) <= args.max_layer <= 40:
        parser.error("--max-layer must be between 30 (requests ask for layer 30) and 40 (Mistral Small 3.1's depth)")
    if unknown := set(args.quantize) - set(QUANTIZE_CHOICES):
        parser.error(f"--quantize takes {','.join(QUANTIZE_CHOICES)}, not {','.join(sorted(unknown))}")
    if args.klein_model is not None and not (args.klein_model / "model_index.json").is_file():
        parser.error(f"--klein-model {args.klein_model} is not a diffusers snapshot (no model_index.json)")
    args.quantize = list(dict.fromkeys(["none", *args.quantize]))
    # The server's default for the device, but bf16 as the reference for int8 and nf4, which compute in bf16.
    args.dtype = "bfloat16" if len(args.quantize) > 1 else ModelConfig(Path(), device=args.device).resolved_dtype
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return harness.run_main(parse_args(argv), benchmark, errors=(ServerError, ClientError))


if __name__ == "__main__":
    sys.exit(main())
