"""The toolkit every client command shares: a command's life (`run_command`: flags, run, one line per failure
with its exit code), notes and failure lines on stderr, the flags that load a DiT (`--quantize`, `--cache-mib`)
and the pipeline config they describe. Imports nothing heavy, so `--help` answers at once."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from diffusion_client.errors import (
    MESSAGE_LIMIT,
    BadReplyError,
    EncoderFailedError,
    EncoderRejectedError,
    InputError,
    ModelMismatchError,
    PipelineMismatchError,
    TransportError,
    failure_text,
    printable_line,
)
from shared.command_line import run_command as shared_run_command

if TYPE_CHECKING:
    from diffusion_client.generation.pipeline import PipelineConfig

PROG = "flux2-generate"

DEFAULT_CACHE_MIB = 256  # about 16 FLUX.2-dev prompts in bf16: a prompts file that repeats one fetches it once


# The one place failures become exit codes: the first matching class wins; anything else exits 1.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (InputError, 2),
    (PipelineMismatchError, 2),  # a klein snapshot with a dev-only server, or the reverse: the pairing given is wrong
    (EncoderRejectedError, 2),
    (TransportError, 3),
    (EncoderFailedError, 3),
    (BadReplyError, 3),
    (ModelMismatchError, 4),
)


def exit_code(error: BaseException) -> int:
    return next((code for kind, code in EXIT_CODES if isinstance(error, kind)), 1)


def note(text: str, prog: str = PROG) -> None:
    """Something the user should know that is not a failure, as one line on stderr."""
    print(f"{prog}: note: {printable_line(text, MESSAGE_LIMIT)}", file=sys.stderr, flush=True)


def report(failure: object, prog: str = PROG) -> None:
    """One failure, as exactly one printable line on stderr; ours say what to fix, others say what they are."""
    print(f"{prog}: error: {printable_line(failure_text(failure), MESSAGE_LIMIT)}", file=sys.stderr, flush=True)


def cache_mib(text: str) -> int:
    """`--cache-mib`: a whole number of MiB, 0 or more."""
    try:
        mib = int(text)
    except ValueError:
        mib = -1
    if mib < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of MiB, 0 (off) or more, not {text!r}")
    return mib


def one_line(text: str) -> str:
    """Text a server sent, made one printable line, but not shortened."""
    return printable_line(text, max(len(text), 1))


MODEL_HELP = "local FLUX.2 snapshot (transformer/, vae/)"
CACHE_HELP = "memory for embeddings already fetched, so a prompt asked again is not fetched again; 0 turns it off"


def add_quantize_argument(parser: argparse.ArgumentParser) -> None:
    """`--quantize`, as every command that loads the DiT takes it."""
    parser.add_argument(
        "--quantize",
        choices=("auto", "nf4", "none"),
        default="auto",
        help="transformer weights: nf4 (4-bit, CUDA only) or none; auto = nf4 on CUDA",
    )


def add_model_arguments(parser: argparse.ArgumentParser, *, cache: str | None = CACHE_HELP) -> None:
    """`--model`, `--quantize`, `--device` and (unless `cache` is None) `--cache-mib`, as the commands that load the
    DiT on this machine take them."""
    parser.add_argument("--model", required=True, type=Path, help=MODEL_HELP)
    add_quantize_argument(parser)
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    if cache is not None:
        add_cache_argument(parser, cache)


def add_cache_argument(parser: argparse.ArgumentParser, help_text: str = CACHE_HELP) -> None:
    parser.add_argument(
        "--cache-mib", type=cache_mib, default=DEFAULT_CACHE_MIB, help=f"{help_text} (default %(default)s)"
    )


def default_device(device: str | None) -> str:
    """`--device` as given, else cuda when a GPU is visible, else cpu."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    from diffusion_client.generation.pipeline import PipelineConfig, resolve_quantize

    device = default_device(args.device)
    return PipelineConfig(model_path=args.model, device=device, quantize=resolve_quantize(args.quantize, device))


def run_command(
    prog: str, parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int], argv: list[str] | None
) -> int:
    """A client command's whole life (`shared.command_line.run_command`) with the client's exit codes."""
    return shared_run_command(
        prog,
        parser,
        run,
        argv,
        exit_code=exit_code,
        failure_line=lambda error: printable_line(failure_text(error), MESSAGE_LIMIT),
    )


def whole_number(low: int, high: int | None = None, unit: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high` (no upper bound: None); the one validator the commands'
    counts, sizes and limits share."""
    wanted = (
        f"a whole number{unit} from {low} to {high}" if high is not None else f"a whole number{unit}, {low} or more"
    )

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            number = low - 1
        if number < low or (high is not None and number > high):
            raise argparse.ArgumentTypeError(f"must be {wanted}, not {text!r}")
        return number

    return parse


def seconds_between(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds from `low` to `high` (NaN and infinity refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be a number of seconds from {low:g} to {high:g}, not {text!r}")
        return value

    return parse
