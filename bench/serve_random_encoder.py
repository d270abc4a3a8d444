"""Serve random embeddings in FLUX.2-dev's shapes through the real encoder server, until SIGTERM or SIGINT.

The language model is `MistralModel` in Mistral Small 3.1's text shapes (hidden 5120, 32 heads, 8 KV
heads, head_dim 128, intermediate 32768, vocabulary 131072, rope theta 1e9, no sliding window), with
only the first `--max-layer` (default 30) of its 40 decoder layers, as `flux2-encoder serve --max-layer
30` loads them. Weights are random and made on the device; the tokenizer is the real Tekken one.
`bench/client.py --full-size` runs this as a subprocess so its GPU memory stays out of the client's stats.

    python bench/serve_random_encoder.py --port 50051 --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# `python bench/serve_random_encoder.py` puts bench/ on sys.path, not the repo root with the packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from encoder_server.config import SUPPORTED_DTYPES, ModelConfig, RequestLimits, ServerConfig  # noqa: E402
from encoder_server.prompt_encoder import EncoderInfo, PromptEncoder  # noqa: E402
from encoder_server.server import EncoderLoader, create_server  # noqa: E402
from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS  # noqa: E402
from shared.tiny_snapshot import build_tokenizer  # noqa: E402
from shared.wire import DTYPES  # noqa: E402

log = logging.getLogger("bench.serve_random_encoder")

MODEL_NAME = "random-mistral-small-3.1"
MISTRAL_SMALL_3_1_NUM_LAYERS = 40
# Mistral-Small-3.1-24B's text config, the FLUX.2-dev text encoder; `num_hidden_layers` is set per call.
MISTRAL_SMALL_3_1_TEXT = {
    "hidden_size": 5120,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 32768,
    "vocab_size": 131072,
    "rope_theta": 1_000_000_000.0,
    "sliding_window": None,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 131072,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 11,
}


def random_prompt_encoder(
    device: str = "cuda", dtype: str = "bfloat16", max_layer: int = max(DEFAULT_HIDDEN_STATE_LAYERS), seed: int = 0
) -> PromptEncoder:
    """A `PromptEncoder` over a random `MistralModel` with layers 1..`max_layer`, built straight on `device`."""
    from transformers import MistralConfig, MistralModel

    config = MistralConfig(**MISTRAL_SMALL_3_1_TEXT, num_hidden_layers=max_layer)
    torch.manual_seed(seed)
    with torch.device(device):  # transformers' init draws normal(0, 0.02) in place, on the device
        model = MistralModel._from_config(config, dtype=DTYPES[dtype], attn_implementation="sdpa")
    model.eval().requires_grad_(False)
    info = EncoderInfo(
        model_name=MODEL_NAME,
        model_path="(random weights, in memory)",
        hidden_size=int(config.hidden_size),
        num_layers=MISTRAL_SMALL_3_1_NUM_LAYERS,
        max_layer=max_layer,
        dtype=dtype,
        device=str(model.device),
        fingerprint=f"random-seed-{seed}",
    )
    return PromptEncoder(model, build_tokenizer(), info, RequestLimits())


async def serve(config: ServerConfig, load_encoder: EncoderLoader) -> int:
    """Serve until SIGTERM or SIGINT; 1 if the model failed to build."""
    started = time.perf_counter()
    server = await create_server(config, load_encoder)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    log.info("listening on %s:%d, building %s", config.host, server.port, MODEL_NAME)
    waiter = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({server.loading, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if server.loading in done:
        try:
            await server.wait_ready()
        except Exception:
            log.exception("building the random encoder failed")
            await server.stop(grace_s=0)
            return 1
        log.info("ready on %s:%d in %.1f s", config.host, server.port, time.perf_counter() - started)
        await waiter
    log.info("shutting down")
    await server.stop(grace_s=1)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port to bind (0 picks one; the log says which)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=SUPPORTED_DTYPES, default="bfloat16")
    parser.add_argument("--max-layer", type=int, default=max(DEFAULT_HIDDEN_STATE_LAYERS), help="default 30")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 1 <= args.max_layer <= MISTRAL_SMALL_3_1_NUM_LAYERS:
        parser.error(f"--max-layer must be between 1 and {MISTRAL_SMALL_3_1_NUM_LAYERS}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    model = ModelConfig(Path(MODEL_NAME), device=args.device, dtype=args.dtype, max_layer=args.max_layer)
    config = ServerConfig(model=model, host=args.host, port=args.port)
    return asyncio.run(serve(config, lambda: random_prompt_encoder(args.device, args.dtype, args.max_layer, args.seed)))


if __name__ == "__main__":
    sys.exit(main())
