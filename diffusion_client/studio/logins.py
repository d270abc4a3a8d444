"""How fast wrong passwords may come: after a few failures in a row, an address and a user name each wait
longer before their next try (1 s, 2 s, 4 s, ... up to a minute), so guessing drops from about a thousand
passwords a second to about one a minute. A right password clears both.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

FREE_FAILURES = 3  # typos cost nothing; the fourth failure in a row starts the wait
FIRST_WAIT_S = 1.0
LONGEST_WAIT_S = 60.0
FORGET_AFTER_S = 15 * 60.0  # a quarter of an hour without failures starts the count again
MAX_TRACKED = 10_000  # addresses remembered at once; the quietest are forgotten first


@dataclass
class Failures:
    count: int
    last: float  # time.monotonic() of the latest
    refusals_told: float = -math.inf  # the `last` whose wait a refusal was logged for: one line per wait

    def wait_until(self) -> float:
        if self.count < FREE_FAILURES:
            return 0.0
        return self.last + min(FIRST_WAIT_S * 2 ** (self.count - FREE_FAILURES), LONGEST_WAIT_S)


class LoginThrottle:
    """Failures by address and by user name (only names in the auth file: others can never log in anyway)."""

    def __init__(self, users: set[str]) -> None:
        self.users = users
        self._failures: OrderedDict[str, Failures] = OrderedDict()
        self._lock = threading.Lock()

    def keys(self, address: str, user: str) -> list[str]:
        return [f"address {address}", *([f"user {user}"] if user in self.users else [])]

    def wait_s(self, address: str, user: str) -> float:
        """Seconds before this address may try this user again (0: now)."""
        now = time.monotonic()
        with self._lock:
            waits = [self._current(key, now).wait_until() - now for key in self.keys(address, user)]
        return max([0.0, *waits])

    def failed(self, address: str, user: str) -> tuple[int, float]:
        """Count a wrong password; returns the failures in a row (the larger of address and user) and the wait."""
        now = time.monotonic()
        with self._lock:
            counts = []
            for key in self.keys(address, user):
                failures = self._current(key, now)
                failures.count += 1
                failures.last = now
                self._failures[key] = failures
                self._failures.move_to_end(key)
                counts.append(failures.count)
            while len(self._failures) > MAX_TRACKED:
                self._failures.popitem(last=False)
        return max(counts), self.wait_s(address, user)

    def first_refusal(self, address: str, user: str) -> bool:
        """Whether a try refused during the current wait is the first such (the one worth a log line)."""
        now = time.monotonic()
        first = False
        with self._lock:
            for key in self.keys(address, user):
                failures = self._failures.get(key)
                if failures is not None and failures.wait_until() > now and failures.refusals_told != failures.last:
                    failures.refusals_told = failures.last
                    first = True
        return first

    def succeeded(self, address: str, user: str) -> None:
        with self._lock:
            for key in self.keys(address, user):
                self._failures.pop(key, None)

    def _current(self, key: str, now: float) -> Failures:
        failures = self._failures.get(key)
        if failures is None or now - failures.last > FORGET_AFTER_S:
            return Failures(0, -math.inf)
        return failures


def retry_after(wait_s: float) -> int:
    """A `Retry-After` header's whole seconds, never 0 for a wait still running."""
    return max(1, math.ceil(wait_s))
