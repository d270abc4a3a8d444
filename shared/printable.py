"""Every failure as one printable line: text from elsewhere made safe for a terminal, and usage errors."""

from __future__ import annotations

import argparse
import math
import re
import unicodedata
from typing import NoReturn

SERVER_TEXT_LIMIT = 300  # characters kept of any text a server sends us
MESSAGE_LIMIT = 1000  # characters kept of a whole error message

# CSI (`ESC [ ... final`), OSC (`ESC ] ... BEL` or `ESC ] ... ESC \`) and the other two-byte escapes.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")


def printable_line(text: object, limit: int = SERVER_TEXT_LIMIT) -> str:
    """`text` as one printable line: ANSI escapes and control characters gone, whitespace collapsed, capped."""
    cleaned = _ANSI_ESCAPE.sub("", str(text))
    kept = []
    for char in cleaned:
        category = unicodedata.category(char)
        if category in ("Cc", "Zl", "Zp"):  # newlines, tabs, BEL, DEL, ..., U+2028/U+2029
            kept.append(" ")
        elif category not in ("Cf", "Cs", "Co", "Cn"):  # bidi overrides, lone surrogates, unassigned
            kept.append(char)
    line = " ".join("".join(kept).split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one `PROG: error: ...` line (no usage block), exit 2; `--help` is unchanged."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {printable_line(message, MESSAGE_LIMIT)}; see {self.prog} --help\n")


def finite_number(text: str) -> float:
    """An argparse type: a finite number (argparse reports the ValueError as 'invalid finite number value')."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


finite_number.__name__ = "finite number"
