"""What every benchmark shares: prompts, timing and peak memory on CPU or CUDA, and the script harness.

Each benchmark takes `--tiny` or `--full-size` (each with its own defaults), logs on stderr, prints one JSON report
alone on stdout, and stops with one `error:` line, status 2, when it needs a GPU this machine lacks."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from shared.library_logs import quiet_model_libraries
from shared.tiny_snapshot import build_tiny_snapshot

GIB = 1024**3
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # gRPC channel option: each client its own connection
T = TypeVar("T")
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


class BenchError(Exception):
    """The benchmark cannot go on; the message is one line saying why."""


def make_prompt(rng: random.Random) -> str:
    """A distinct image prompt of 40 to 80 words, like those users send to FLUX.2."""
    words = " ".join(rng.sample(PHRASES, len(PHRASES))).split()[: rng.randint(40, 80)]
    return " ".join(words).rstrip(",") + "."


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so wall-clock times include it; nothing to wait for on CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(call: Callable[[], T], device: str) -> tuple[T, float]:
    """`call()` and its wall time, counting the GPU work it queued."""
    started = time.perf_counter()
    result = call()
    synchronize(device)
    return result, time.perf_counter() - started


def median_seconds(call: Callable[[], object], device: str, warmup: int, repeats: int) -> float:
    """Median wall time of `call` without autograd, after `warmup` calls."""
    with torch.inference_mode():
        for _ in range(warmup):
            call()
        return statistics.median(timed(call, device)[1] for _ in range(repeats))


def release_memory(device: str) -> None:
    """Free what the last model left behind, so the next one is measured on its own."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets the process's peak RSS, which getrusage reports
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory(device: str) -> dict[str, Any]:
    """The peak since `reset_peak_memory`: allocated tensors on CUDA, the whole process's RSS on CPU."""
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated(device)
        kind = "torch.cuda.max_memory_allocated (this process only)"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        kind = "process peak RSS (getrusage), libraries and any in-process server included"
    return {"peak_memory_bytes": peak, "peak_memory_gib": round(peak / GIB, 3), "peak_memory_kind": kind}


def device_name(device: str) -> str:
    """The GPU's model, or the CPU's cores and torch threads."""
    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def meets_targets(targets: Mapping[str, Any], measured: Mapping[str, float]) -> dict[str, bool]:
    """Whether each measured figure meets its target: `FIGURE_min` is a floor, `FIGURE_max` a ceiling."""
    meets = {}
    for name, bound in targets.items():
        figure, _, kind = name.rpartition("_")
        if kind in ("min", "max") and figure in measured:
            meets[figure] = measured[figure] >= bound if kind == "min" else measured[figure] <= bound
    return meets


def mode_parser(module: str, description: str) -> argparse.ArgumentParser:
    """A parser with the required choice of `--tiny` or `--full-size` (`args.mode`), `--model` and `--device`."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--tiny", dest="mode", action="store_const", const="tiny", help="tiny random model on CPU")
    mode.add_argument("--full-size", dest="mode", action="store_const", const="full-size", help="FLUX.2-dev, CUDA")
    parser.add_argument("--model", type=Path, help="a diffusers FLUX.2 snapshot to use instead of random weights")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (tiny: cpu, full-size: cuda)")
    return parser


def apply_mode_defaults(args: argparse.Namespace, defaults: dict) -> argparse.Namespace:
    """Give every setting left unset (or without an option) the chosen mode's default."""
    for name, value in defaults[args.mode].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


def parse_mode_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None, defaults: dict) -> argparse.Namespace:
    """Parse `argv`, then give every setting left unset (or without an option) the chosen mode's default."""
    args = apply_mode_defaults(parser.parse_args(argv), defaults)
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        parser.error(f"--device must be cpu, cuda or cuda:N, not {args.device!r}")
    if args.mode == "full-size" and not args.device.startswith("cuda"):
        parser.error("--full-size runs on CUDA; use --tiny for CPU")
    if args.model is not None and not (args.model / "model_index.json").is_file():
        parser.error(f"--model {args.model} is not a diffusers snapshot (no model_index.json)")
    return args


def setup_process() -> None:
    """Hugging Face offline (before huggingface_hub is imported: it reads the variable then), INFO logs on stderr."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    quiet_model_libraries()


def run_main(args: argparse.Namespace, benchmark: Callable[..., dict], errors: tuple[type[Exception], ...] = ()) -> int:
    """Print `benchmark(args, scratch_dir, snapshot)` as JSON on stdout; the exit status, 2 lacking CUDA, 1 on errors.
    `snapshot` is `--model`, else for `--tiny` the tiny snapshot built in `scratch_dir`, else None (random weights)."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        asked = "--full-size" if args.mode == "full-size" else f"--device {args.device}"
        print(f"error: {asked} needs a CUDA GPU, but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    setup_process()
    stdout = sys.stdout
    expected: tuple[type[Exception], ...] = (BenchError, *errors)
    try:  # libraries sometimes print; stdout must carry only the JSON report
        with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory(prefix="flux2-bench-") as scratch:
            snapshot = args.model
            if snapshot is None and args.mode == "tiny":
                snapshot = build_tiny_snapshot(Path(scratch) / "tiny-flux2")
            report = benchmark(args, Path(scratch), snapshot)
    except expected as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2), file=stdout)
    return 0
