"""One record per call, for gRPC and HTTP alike: a log line and the request metrics, written when it ends.

flux2-encoder: call 1f3a9c0e2b7d Encode token=alice prompts=2 cached=1 batch=4 sent=31.5MB 412ms OK

Prompt text appears only with `--log-prompts`; tokens never do, only their names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from encoder_server.observability.metrics import ServerMetrics

log = logging.getLogger("flux2-encoder.calls")

# With --log-prompts, a line holds at most this much text, whatever a refused request carried.
MAX_LOGGED_PROMPTS = 16
MAX_LOGGED_CHARS = 2000

# What JSON leaves raw but could break a log line or hide text in it, by Unicode category: controls (Cc; JSON
# escapes C0, not DEL or C1 such as NEL and 8-bit CSI), format characters (Cf: bidi marks, overrides and isolates,
# zero-width characters, the BOM, tag characters), line and paragraph separators (Zl, Zp), surrogates (Cs: a lone
# one cannot even be written out as UTF-8), private-use and unassigned code points (Co, Cn: no agreed glyph).
_UNSAFE_IN_LOG = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


@dataclass
class Call:
    """What one call did; handlers fill it in as they go, and set `status` when they map an error."""

    rpc: str
    caller: str
    id: str = field(default_factory=lambda: secrets.token_hex(6))
    prompts: Sequence[str] = ()
    cached: int = 0  # prompts answered from the cache or by an identical computation in flight
    batch: int = 0  # the largest forward pass this call's prompts ran in; 0 when nothing was computed
    sent_bytes: int = 0
    status: str = "OK"


class CallLog:
    """Counts, times and logs every call; `track` wraps one."""

    def __init__(self, metrics: ServerMetrics, log_prompts: bool = False) -> None:
        self.metrics = metrics
        self.log_prompts = log_prompts

    @contextlib.contextmanager
    def track(self, rpc: str, caller: str) -> Iterator[Call]:
        call = Call(rpc, caller)
        started = time.perf_counter()
        in_flight = self.metrics.in_flight.labels(rpc)
        in_flight.inc()
        try:
            yield call
        except BaseException:
            if call.status == "OK":  # not mapped by the handler: the caller went away, or a bug
                call.status = "CANCELLED"
            raise
        finally:
            in_flight.dec()
            self._record(call, time.perf_counter() - started)

    def _record(self, call: Call, seconds: float) -> None:
        metrics = self.metrics
        metrics.call_finished(call.rpc, call.status, call.caller)
        metrics.latency.labels(call.rpc).observe(seconds)
        if call.prompts:
            metrics.prompts.labels(call.caller).inc(len(call.prompts))
        if call.sent_bytes:
            metrics.sent_bytes.labels(call.rpc).inc(call.sent_bytes)
        text = f" text={_log_json(call.prompts)}" if self.log_prompts else ""
        log.info(
            "call %s %s token=%s prompts=%d cached=%d batch=%d sent=%.1fMB %.0fms %s%s",
            call.id,
            call.rpc,
            call.caller,
            len(call.prompts),
            call.cached,
            call.batch,
            call.sent_bytes / 1e6,
            seconds * 1000,
            call.status,
            text,
        )


def _log_json(prompts: Sequence[str]) -> str:
    """The prompts as JSON on one safe line: non-ASCII text readable, anything that could hide text escaped."""
    shown = [prompt[:MAX_LOGGED_CHARS] for prompt in prompts[:MAX_LOGGED_PROMPTS]]
    if len(prompts) > MAX_LOGGED_PROMPTS:  # a request refused for its prompt count can carry a million
        shown.append(f"... {len(prompts) - MAX_LOGGED_PROMPTS} more")
    text = json.dumps(shown, ensure_ascii=False)
    # JSON has escaped C0 controls, so ASCII below DEL is safe. A loop, not a regex: a class of every unassigned
    # code point matches slowly, and a callback per non-ASCII character costs ten times this.
    return "".join(
        char if char < "\x7f" or unicodedata.category(char) not in _UNSAFE_IN_LOG else _json_escape(char)
        for char in text
    )


def _json_escape(char: str) -> str:
    """`char` escaped as JSON escapes it (a surrogate pair beyond U+FFFF), so `json.loads` reads the prompts back."""
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 | code >> 10:04x}\\u{0xDC00 | code & 0x3FF:04x}"
