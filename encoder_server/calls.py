"""One record per call, for gRPC and HTTP alike: a log line and the request metrics, written when it ends.

flux2-encoder: call 1f3a9c0e2b7d Encode token=alice prompts=2 cached=1 batch=4 sent=31.5MB 412ms OK

Prompt text appears only with `--log-prompts`; tokens never do, only their names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from encoder_server.metrics import ServerMetrics

log = logging.getLogger("flux2-encoder.calls")

# With --log-prompts, a line holds at most this much text, whatever a refused request carried.
MAX_LOGGED_PROMPTS = 16
MAX_LOGGED_CHARS = 2000

# What JSON leaves raw but could break a log line or a terminal: DEL and C1 controls (NEL, 8-bit CSI), the Unicode
# line and paragraph separators, and bidi controls (which reorder the text shown around them).
_UNSAFE_IN_LOG = re.compile(r"[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


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
        metrics.requests.labels(call.rpc, call.status, call.caller).inc()
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
    """The prompts as JSON on one safe line: readable non-ASCII text, but every control character escaped."""
    shown = [prompt[:MAX_LOGGED_CHARS] for prompt in prompts[:MAX_LOGGED_PROMPTS]]
    if len(prompts) > MAX_LOGGED_PROMPTS:  # a request refused for its prompt count can carry a million
        shown.append(f"... {len(prompts) - MAX_LOGGED_PROMPTS} more")
    text = json.dumps(shown, ensure_ascii=False)
    return _UNSAFE_IN_LOG.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
