"""Upsample benchmark: prompt-rewrite latency and tokens/s, and Encode p50 alone and beside a running upsample.

`--tiny` serves the tiny snapshot on CPU with `--enable-upsampling` (random weights: a rewrite runs to
`--max-new-tokens`, diffusers' 512 unless given). `--full-size` builds Mistral Small 3.1 with random weights on
CUDA, whole (vision tower and LM head too, ≈ 48 GB in bf16), or loads `--model`. Everything goes through the real
server and `RemoteTextEncoder`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import device_name, make_prompt, mode_parser, parse_mode_args, run_main
from diffusion_client.encoder_client.upsampling import DEFAULT_MAX_NEW_TOKENS

DEFAULTS = {"tiny": {"device": "cpu", "repeats": 5}, "full-size": {"device": "cuda", "repeats": 10}}


def random_models(device: str) -> Any:
    """Whole random Mistral Small 3.1: it encodes through its language model and rewrites with the Tekken processor."""
    from bench.random_models import RANDOM_ENCODER_NAME, random_text_encoder
    from encoder_server.config import RequestLimits, UpsampleLimits
    from encoder_server.model.loaded_models import LoadedModels
    from encoder_server.model.prompt_encoder import ModelInfo, PromptEncoder
    from encoder_server.model.upsampler import PromptUpsampler
    from shared.tiny_snapshot import build_processor

    model = random_text_encoder(device)
    language_model = model.model.language_model
    config = language_model.config
    info = ModelInfo(
        model_name=RANDOM_ENCODER_NAME,
        model_path="(random weights, in memory)",
        hidden_size=int(config.hidden_size),
        num_layers=int(config.num_hidden_layers),
        max_layer=int(config.num_hidden_layers),
        dtype="bfloat16",
        device=str(language_model.device),
        fingerprint="random-seed-0",
        weight_bytes=int(model.get_memory_footprint()),
    )
    processor = build_processor()
    encoder = PromptEncoder(language_model, processor.tokenizer, info, RequestLimits())
    return LoadedModels(encoder, PromptUpsampler(model, processor, UpsampleLimits()))


def benchmark(args: argparse.Namespace, scratch: Path, snapshot: Path | None) -> dict[str, Any]:
    from diffusion_client import RemoteTextEncoder
    from encoder_server.background import serve_in_thread
    from encoder_server.config import ModelConfig, ServerConfig

    model = ModelConfig(snapshot or Path("(random)"), device=args.device, enable_upsampling=True)
    loader = None if snapshot is not None else (lambda: random_models(args.device))
    rng = random.Random(0)
    prompts = [make_prompt(rng)[:60] for _ in range(2)]
    with serve_in_thread(ServerConfig(model=model, host="127.0.0.1", port=0), loader) as server:
        with RemoteTextEncoder(server.target, timeout=1800) as encoder:
            count_tokens = server.handle.engine.upsampler.tokenizer  # type: ignore[union-attr]

            def encode_ms() -> float:
                started = time.perf_counter()
                encoder.encode(prompts[0])
                return (time.perf_counter() - started) * 1000

            encoder.encode(prompts[0])  # warm-up
            idle = [encode_ms() for _ in range(args.repeats)]
            started = time.perf_counter()
            rewritten = encoder.upsample(prompts, seed=0, max_new_tokens=args.max_new_tokens)
            upsample_s = time.perf_counter() - started
            tokens = sum(len(count_tokens(text, add_special_tokens=False)["input_ids"]) for text in rewritten)
            done = threading.Event()

            def rewrite_beside() -> None:
                encoder.upsample(prompts, seed=1, max_new_tokens=args.max_new_tokens)
                done.set()

            worker = threading.Thread(target=rewrite_beside)
            worker.start()
            beside = [encode_ms() for _ in range(args.repeats)]
            overlapped = not done.is_set()
            worker.join()
    return {
        "benchmark": "upsample",
        "mode": args.mode,
        "device": device_name(args.device),
        "model": str(snapshot) if snapshot else "random Mistral Small 3.1 (whole), bf16",
        "prompts_per_request": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "upsample": {"latency_s": upsample_s, "new_tokens": tokens, "tokens_per_s": tokens / upsample_s},
        "encode_ms_p50_idle": statistics.median(idle),
        "encode_ms_p50_beside_upsample": statistics.median(beside),
        "encode_beside_over_idle": statistics.median(beside) / statistics.median(idle),
        "measured_while_upsampling": overlapped,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = mode_parser("bench.upsample", __doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, help="encodes timed alone and beside an upsample (tiny 5, full 10)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="tokens per rewrite (default %(default)s)"
    )
    args = parse_mode_args(parser, argv, DEFAULTS)
    return run_main(args, benchmark)


if __name__ == "__main__":
    sys.exit(main())
