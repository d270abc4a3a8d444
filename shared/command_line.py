"""A command's whole life, the same for the server and the client commands: flags parsed (a bad one is one line,
exit 2), `run` called, and any failure one printable line on stderr with the exit code the command gives it."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from shared.library_logs import quiet_library_loggers


def run_command(
    prog: str,
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], int],
    argv: list[str] | None,
    *,
    exit_code: Callable[[BaseException], int],
    failure_line: Callable[[BaseException], str],
    log_format: str = "%(levelname)s %(name)s: %(message)s",
    log_level: int = logging.WARNING,
) -> int:
    """Parse `argv`, call `run`; `failure_line(error)` is what an exception prints after `PROG: error: `."""
    quiet_library_loggers()
    logging.basicConfig(level=log_level, format=log_format)
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, or a bad flag already reported in one line
        return stop.code if isinstance(stop.code, int) else 2
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug or an unforeseen failure still gets one line, not a traceback
        print(f"{prog}: error: {failure_line(error)}", file=sys.stderr, flush=True)
        return exit_code(error)
