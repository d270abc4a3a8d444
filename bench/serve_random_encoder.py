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
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# `python bench/serve_random_encoder.py` puts bench/ on sys.path, not the repo root with the packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.full_size import MISTRAL_SMALL_3_1, RANDOM_ENCODER_NAME, random_prompt_encoder
from bench.harness import configure_logging
from encoder_server.config import SUPPORTED_DTYPES, ModelConfig, ServerConfig
from encoder_server.prompt_encoder import PromptEncoder
from encoder_server.server import EncoderLoader, create_server
from shared.defaults import DEFAULT_HIDDEN_STATE_LAYERS

log = logging.getLogger("bench.serve_random_encoder")


async def serve(config: ServerConfig, load_encoder: EncoderLoader) -> int:
    """Serve until SIGTERM or SIGINT; 1 if the model failed to build."""
    started = time.perf_counter()
    server = await create_server(config, load_encoder)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    log.info("listening on %s:%d, building %s", config.host, server.port, RANDOM_ENCODER_NAME)
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
    if not 1 <= args.max_layer <= MISTRAL_SMALL_3_1.num_layers:
        parser.error(f"--max-layer must be between 1 and {MISTRAL_SMALL_3_1.num_layers}")
    configure_logging()
    model = ModelConfig(Path(RANDOM_ENCODER_NAME), device=args.device, dtype=args.dtype, max_layer=args.max_layer)
    config = ServerConfig(model=model, host=args.host, port=args.port)

    def build() -> PromptEncoder:
        return random_prompt_encoder(MISTRAL_SMALL_3_1, args.device, args.dtype, args.max_layer, args.seed)

    return asyncio.run(serve(config, build))


if __name__ == "__main__":
    sys.exit(main())
