"""Per-caller limits, so one token holder cannot take the server from the others: calls in flight and prompts
per second, each past its limit refused with RESOURCE_EXHAUSTED (clients back off and retry).

A caller's limits are its tokens-file line's, else the server's defaults (`ServerConfig.caller_limits`). Prompts
are charged to a token bucket that holds one second's worth and at least one full request, charged when a
request is parsed, whether or not it then passes validation: requests that fail are work too. A caller whose
bucket is empty is refused before its HTTP body is read. Everything here runs on the event loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from shared.caller_limits import CallerLimits


class OverQuotaError(Exception):
    """A caller over its limits (unless the owner of the quotas names its own error)."""


@dataclass
class _Usage:
    in_flight: int = 0
    tokens: float = 0.0  # prompts the bucket holds
    refilled: float = 0.0  # time.monotonic() of the last refill


class CallerQuotas:
    """Admission by caller name; `limits_of(name)` gives each caller's limits (defaults already applied)."""

    def __init__(
        self,
        limits_of: Callable[[str], CallerLimits],
        max_request_prompts: int,
        overloaded: Callable[[str], Exception] = OverQuotaError,
    ) -> None:
        self._overloaded = overloaded  # what a refusal raises: the server's own overload error, say
        self._limits_of = limits_of
        self._max_request_prompts = max_request_prompts
        self._usage: dict[str, _Usage] = {}

    def _bucket_size(self, rate: float) -> float:
        return max(rate, float(self._max_request_prompts))

    def _refill(self, caller: str, rate: float) -> _Usage:
        usage = self._usage.setdefault(caller, _Usage(tokens=self._bucket_size(rate), refilled=time.monotonic()))
        now = time.monotonic()
        usage.tokens = min(self._bucket_size(rate), usage.tokens + (now - usage.refilled) * rate)
        usage.refilled = now
        return usage

    @contextlib.contextmanager
    def admit(self, caller: str) -> Iterator[None]:
        """Hold one of the caller's in-flight places for the block; refuse an empty prompt bucket at once."""
        limits = self._limits_of(caller)
        if limits.prompts_per_s is not None:
            usage = self._refill(caller, limits.prompts_per_s)
            if usage.tokens < 1:
                raise self._over_rate(caller, limits.prompts_per_s, usage)
        else:
            usage = self._usage.setdefault(caller, _Usage(refilled=time.monotonic()))
        if limits.max_in_flight is not None and usage.in_flight >= limits.max_in_flight:
            raise self._overloaded(
                f"caller {caller} already has {usage.in_flight} calls in flight, its limit; "
                "wait for one to finish, or ask for a higher max_in_flight"
            )
        usage.in_flight += 1
        try:
            yield
        finally:
            usage.in_flight -= 1
            if usage.in_flight == 0 and limits.prompts_per_s is None:
                self._usage.pop(caller, None)  # nothing to remember: keeps the table to callers seen lately

    def charge(self, caller: str, prompts: int) -> None:
        """Take `prompts` (at least 1, at most a bucket) from the caller's bucket, or refuse the request."""
        rate = self._limits_of(caller).prompts_per_s
        if rate is None:
            return
        usage = self._refill(caller, rate)
        cost = min(max(prompts, 1), self._bucket_size(rate))
        if usage.tokens < cost:
            usage.tokens = max(usage.tokens - 1, 0.0)  # even a refused request costs something
            raise self._over_rate(caller, rate, usage, cost)
        usage.tokens -= cost

    def _over_rate(self, caller: str, rate: float, usage: _Usage, cost: float = 1.0) -> Exception:
        wait_s = (cost - usage.tokens) / rate
        return self._overloaded(
            f"caller {caller} is over its {rate:g} prompts/s; retry in {wait_s:.2g} s, or ask for a higher "
            "prompts_per_s"
        )
