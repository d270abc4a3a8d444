"""`--log-prompts` lines: prompt text as JSON on one line, with nothing in it that can hide or reorder text."""

from __future__ import annotations

import json
import logging

import pytest

from encoder_server.observability.calls import CallLog
from encoder_server.observability.metrics import ServerMetrics

# One or more characters of each kind a terminal or log viewer may draw as nothing, or use to reorder text.
HIDING = {
    "bidi-marks": "\u200e\u200f\u061c",
    "bidi-overrides-and-isolates": "\u202a\u202e\u2066\u2069",
    "zero-width": "\u200b\u200c\u200d\u2060\u2061\u2064",
    "byte-order-mark": "\ufeff",
    "soft-hyphen": "\u00ad",
    "tag-characters": "\U000e0001\U000e0041\U000e007f",  # astral: JSON writes them as surrogate pairs
    "del-and-c1-controls": "\x7f\x85\x9b",
    "line-and-paragraph-separators": "\u2028\u2029",
    "lone-surrogate": "\ud800",
    "private-use": "\ue000\uf8ff\U000f0000",
    "unassigned": "\u0378\uffff",
}
READABLE = "café naïve Ærøskøbing 雪の中の狐 Привет 🦊 ❤️ 👍🏽 ½ — “quoted”"


def logged_text(prompts: list[str], caplog: pytest.LogCaptureFixture) -> str:
    """The ` text=` part of the call line a server with `--log-prompts` writes for a call carrying `prompts`."""
    calls = CallLog(ServerMetrics(), log_prompts=True)
    with caplog.at_level(logging.INFO, logger="flux2-encoder.calls"), calls.track("Encode", "alice") as call:
        call.prompts = prompts
    (line,) = [record.getMessage() for record in caplog.records if record.name == "flux2-encoder.calls"]
    return line.split(" text=", 1)[1]


@pytest.mark.parametrize("characters", HIDING.values(), ids=HIDING.keys())
def test_characters_that_can_hide_text_are_logged_escaped(characters, caplog):
    text = logged_text([f"a{characters}b"], caplog)
    assert text.isascii() and text.isprintable()
    assert "\\u" in text


def test_escaped_log_text_reads_back_as_the_exact_prompts(caplog):
    prompts = ["".join(HIDING.values()), READABLE, r"typed \u200b literally", "line\nbreak\ttab"]
    assert json.loads(logged_text(prompts, caplog)) == prompts


def test_ordinary_non_ascii_text_is_logged_as_it_reads(caplog):
    assert logged_text([READABLE], caplog) == json.dumps([READABLE], ensure_ascii=False)
