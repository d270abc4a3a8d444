"""LoRA training benchmark: seconds per step, peak memory, and how fast the caption cache answers.

`--tiny` runs `flux2-train-lora`'s own `train()` on the tiny snapshot on the CPU, with a real encoder server in a
thread and four 64x64 images (gradient checkpointing on, to keep that path exercised). `--full-size` builds
FLUX.2-dev's DiT with random weights on CUDA in NF4 (QLoRA), adds rank-16 adapters on diffusers' default
targets, turns on gradient checkpointing and bitsandbytes' 8-bit AdamW, and times the training objective
(`diffusion_client.training.objective`) plus the optimizer step at 512² and 1024², batch 1: the target is
≤ 22 GiB at 1024², to fit a 24 GB card.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.harness import (
    device_name,
    meets_targets,
    mode_parser,
    parse_mode_args,
    peak_memory,
    release_memory,
    reset_peak_memory,
    run_main,
    synchronize,
)

DEFAULTS = {
    "tiny": {"device": "cpu", "steps": 20, "resolutions": [64]},
    "full-size": {"device": "cuda", "steps": 3, "resolutions": [512, 1024]},
}
TARGETS = {"peak_memory_gib_at_1024_max": 22.0}
RANK = 16


def tiny(args: argparse.Namespace, scratch: Path, snapshot: Path) -> dict[str, Any]:
    from PIL import Image

    from diffusion_client.encoder_client.client import RemoteTextEncoder
    from diffusion_client.training.captions import caption_embeddings
    from diffusion_client.training.config import TrainConfig
    from diffusion_client.training.data import find_examples
    from diffusion_client.training.trainer import train
    from encoder_server.background import serve_in_thread
    from encoder_server.config import BatchingConfig, ModelConfig, RequestLimits, ServerConfig

    data = scratch / "data"
    data.mkdir()
    for index, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]):
        Image.new("RGB", (64, 64), colour).save(data / f"image{index}.png")
        (data / f"image{index}.txt").write_text(f"a flat sks square, colour {index}")
    config = ServerConfig(
        ModelConfig(snapshot), host="127.0.0.1", port=0, batching=BatchingConfig(max_batch_size=4),
        limits=RequestLimits(max_prompts=4),
    )  # fmt: skip
    with serve_in_thread(config) as server, RemoteTextEncoder(server.target, timeout=600) as encoder:
        examples = find_examples(data, None)
        captions = [example.caption for example in examples]
        cache = scratch / "cache"
        started = time.perf_counter()
        caption_embeddings(encoder, captions, cache)
        fetch_s = time.perf_counter() - started
        started = time.perf_counter()
        _, stats = caption_embeddings(encoder, captions, cache)
        hit_s = time.perf_counter() - started
        reset_peak_memory("cpu")
        training = TrainConfig(
            data=data, model=snapshot, out=scratch / "out", rank=4, steps=args.steps,
            resolution=64, gradient_checkpointing=True, cache_dir=cache, progress=False,
        )  # fmt: skip
        result = train(training, examples, encoder)
    return {
        "seconds_per_step": result.seconds_per_step,
        "steps": result.steps,
        "first_loss": result.losses[0],
        "last_loss": result.losses[-1],
        "caption_fetch_ms": fetch_s * 1000,
        "caption_cache_hit_ms": hit_s * 1000,
        "captions_from_disk": stats.from_disk,
        **peak_memory("cpu"),
    }


def full_size_step(device: str, resolution: int, steps: int) -> dict[str, Any]:
    import bitsandbytes as bnb
    from diffusers import Flux2Transformer2DModel
    from peft import LoraConfig

    from bench.random_models import quantize_linears
    from diffusion_client.training.config import TARGET_PRESETS, expand_targets
    from diffusion_client.training.objective import Batch, Objective
    from shared.tiny_snapshot import built_on

    torch.manual_seed(0)
    with built_on(device):
        transformer = Flux2Transformer2DModel().to(torch.bfloat16)  # its defaults are FLUX.2-dev's
    quantize_linears(transformer, device, "nf4")
    transformer.requires_grad_(False)
    transformer.enable_gradient_checkpointing()
    targets = expand_targets(TARGET_PRESETS["attention"], transformer.config.num_single_layers)
    transformer.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=targets))
    parameters = [parameter for parameter in transformer.parameters() if parameter.requires_grad]
    for parameter in parameters:
        parameter.data = parameter.data.float()
    optimizer = bnb.optim.AdamW8bit(parameters, lr=1e-4)
    channels = transformer.config.in_channels
    side = resolution // 16
    batch = Batch(
        latents=torch.randn(1, channels, side, side, device=device, dtype=torch.bfloat16),
        prompt_embeds=torch.randn(1, 512, transformer.config.joint_attention_dim, device=device, dtype=torch.bfloat16),
    )
    timesteps = torch.linspace(1000, 1, 1000)
    objective = Objective(timesteps, timesteps / 1000)
    reset_peak_memory(device)
    times = []
    for step in range(steps + 1):  # the first is warm-up
        started = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = objective.loss(transformer, batch, torch.Generator().manual_seed(step))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step:
            times.append(time.perf_counter() - started)
    report = {"resolution": resolution, "seconds_per_step": statistics.median(times), **peak_memory(device)}
    del transformer, optimizer, parameters
    release_memory(device)
    return report


def benchmark(args: argparse.Namespace, scratch: Path, snapshot: Path | None) -> dict[str, Any]:
    report: dict[str, Any] = {"benchmark": "train", "mode": args.mode, "device": device_name(args.device)}
    if args.mode == "tiny":
        assert snapshot is not None
        return {**report, "model": "tiny snapshot, float32, rank 4", **tiny(args, scratch, snapshot)}
    runs = [full_size_step(args.device, resolution, args.steps) for resolution in args.resolutions]
    measured = {f"peak_memory_gib_at_{run['resolution']}": run["peak_memory_gib"] for run in runs}
    return {
        **report,
        "model": f"random FLUX.2-dev DiT, NF4, rank {RANK}, batch 1, gradient checkpointing, AdamW8bit",
        "runs": runs,
        "targets": TARGETS,
        "meets_targets": meets_targets(TARGETS, measured),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = mode_parser("bench.train", __doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="steps timed (tiny 20, full-size 3 after one warm-up)")
    parser.add_argument("--resolutions", type=int, nargs="+", help="full-size: square sides (default 512 1024)")
    args = parse_mode_args(parser, argv, DEFAULTS)
    return run_main(args, benchmark)


if __name__ == "__main__":
    sys.exit(main())
