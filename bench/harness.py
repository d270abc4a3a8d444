"""What every benchmark shares: timing and memory on CPU or CUDA, naming the device, and the script harness.

The harness gives each benchmark the same command line (`--tiny` or `--full-size`, each with its defaults) and
makes it a well-behaved script: logs on stderr, one JSON report alone on stdout, and a one-line error with exit
status 2 when it needs a GPU this machine lacks.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)

GIB = 1024**3
LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"

Defaults = TypeVar("Defaults")


class BenchError(Exception):
    """The benchmark cannot go on; the message is one line saying why."""


# --- device, memory, timing -----------------------------------------------------------------------


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so wall-clock times include it; nothing to wait for on CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def release_memory(device: str) -> None:
    """Free what the last model left behind, so the next one is measured on its own."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        log.info("GPU memory in use after freeing: %.1f GB", torch.cuda.memory_allocated(device) / 1e9)


def median_seconds(call: Callable[[], object], device: str, warmup: int, repeats: int) -> float:
    """Median wall time of `call`, synchronising so queued GPU work is counted."""
    for _ in range(warmup):
        call()
    synchronize(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets the process's peak RSS, which getrusage reports
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory(device: str) -> dict[str, Any]:
    """The peak since `reset_peak_memory`: allocated tensors on CUDA, the whole process's RSS on CPU."""
    if device.startswith("cuda"):
        allocated = torch.cuda.max_memory_allocated(device)
        return {
            "peak_memory_bytes": allocated,
            "peak_memory_gib": round(allocated / GIB, 3),
            "peak_memory_reserved_gib": round(torch.cuda.max_memory_reserved(device) / GIB, 3),
            "peak_memory_kind": "torch.cuda.max_memory_allocated (this process only)",
        }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {
        "peak_memory_bytes": rss,
        "peak_memory_gib": round(rss / GIB, 3),
        "peak_memory_kind": "process peak RSS (getrusage), which also holds libraries and any in-process server",
    }


def device_name(device: str) -> str:
    """What the report's "device" says: the GPU's model, or the CPU's cores and torch threads."""
    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


# --- the script harness ---------------------------------------------------------------------------


def mode_parser(description: str, tiny_help: str, full_size_help: str) -> argparse.ArgumentParser:
    """A parser with the required choice between `--tiny` and `--full-size`, stored as `args.mode`."""
    parser = argparse.ArgumentParser(description=description)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--tiny", dest="mode", action="store_const", const="tiny", help=tiny_help)
    mode.add_argument("--full-size", dest="mode", action="store_const", const="full-size", help=full_size_help)
    return parser


def parse_mode_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    mode_defaults: Mapping[str, Defaults],
    names: Iterable[str],
) -> tuple[argparse.Namespace, Defaults]:
    """Parse `argv`, then give each option in `names` left unset the chosen mode's default; also return those."""
    args = parser.parse_args(argv)
    defaults = mode_defaults[args.mode]
    for name in names:
        if getattr(args, name) is None:
            setattr(args, name, getattr(defaults, name))
    return args, defaults


def configure_logging() -> None:
    """INFO and up to stderr: stdout is kept for the report."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT)


def run_main(
    benchmark: Callable[[Path], dict[str, Any]],
    *,
    needs_cuda: str | None,
    scratch_prefix: str,
    errors: tuple[type[Exception], ...] = (),
) -> int:
    """Run `benchmark(scratch_dir)` and print its report as JSON on stdout; the exit status for `sys.exit`.

    `needs_cuda` names the option that asked for a GPU, if one did: without CUDA the run stops at once with
    status 2. `BenchError` and `errors` end it with status 1; either way stderr gets one line saying why.
    """
    configure_logging()
    if needs_cuda is not None and not torch.cuda.is_available():
        print(f"error: {needs_cuda} needs a CUDA GPU, but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    stdout = sys.stdout
    expected: tuple[type[Exception], ...] = (BenchError, *errors)
    try:
        # Libraries sometimes print; stdout must carry only the JSON report.
        with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory(prefix=scratch_prefix) as scratch:
            report = benchmark(Path(scratch))
    except expected as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2), file=stdout)
    return 0
