"""Requests waiting for the GPU, taken round robin between callers, so one caller's pile never starves another.

Each caller has its own first-in-first-out line; `take` serves the caller at the head of the rotation and sends
it to the back. Caller A with 20 waiting requests and caller B with one: B's comes next, before A's second. Caps
per caller and overall turn a flood into fast refusals (`QueueFullError`) instead of hours of waiting.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueFullError(Exception):
    """No room: `str()` says whose limit was reached."""


class QueueClosedError(Exception):
    """The server is shutting down and takes nothing new."""


class FairQueue(Generic[T]):
    """Thread-safe; `put` from request handlers, `take` from the GPU worker."""

    def __init__(self, *, max_total: int, max_per_caller: int) -> None:
        self.max_total = max_total
        self.max_per_caller = max_per_caller
        self._lines: OrderedDict[str, deque[T]] = OrderedDict()  # the rotation: the next caller served is first
        self._size = 0
        self._closed = False
        self._changed = threading.Condition()

    def put(self, caller: str, item: T, caller_limit: int | None = None) -> int:
        """Queue `item` for `caller`; returns how many of all callers' requests wait before it could start."""
        limit = self.max_per_caller if caller_limit is None else caller_limit
        with self._changed:
            if self._closed:
                raise QueueClosedError("the server is shutting down")
            line = self._lines.get(caller)
            waiting = len(line) if line else 0
            if waiting >= limit:
                raise QueueFullError(f"{waiting} of your requests are already waiting (your limit is {limit})")
            if self._size >= self.max_total:
                raise QueueFullError(f"the queue is full ({self._size} requests waiting, all callers)")
            if line is None:
                line = self._lines[caller] = deque()
            line.append(item)
            self._size += 1
            self._changed.notify()
            return self._size - 1

    def take(self, timeout: float | None = None) -> T | None:
        """The next item in the rotation; None once closed and empty, or after `timeout` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._size > 0 or self._closed, timeout):
                return None
            if self._size == 0:
                return None
            caller, line = next(iter(self._lines.items()))
            item = line.popleft()
            self._size -= 1
            if line:
                self._lines.move_to_end(caller)  # served once: to the back of the rotation
            else:
                del self._lines[caller]
            return item

    def remove(self, caller: str, item: T) -> bool:
        """Take back a waiting item (its caller left); False if it already started or is gone."""
        with self._changed:
            line = self._lines.get(caller)
            if line is None or item not in line:
                return False
            line.remove(item)
            self._size -= 1
            if not line:
                del self._lines[caller]
            return True

    def close(self) -> list[T]:
        """Take nothing new; returns what was still waiting, which will never start."""
        with self._changed:
            self._closed = True
            left = [item for line in self._lines.values() for item in line]
            self._lines.clear()
            self._size = 0
            self._changed.notify_all()
            return left

    def __len__(self) -> int:
        with self._changed:
            return self._size

    def waiting(self, caller: str) -> int:
        with self._changed:
            line = self._lines.get(caller)
            return len(line) if line else 0
