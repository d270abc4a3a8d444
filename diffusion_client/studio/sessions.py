"""Idle sessions go. Gradio keeps every session's state (for this page about 89 KiB: its own copy of each
component's config) until 10,000 sessions exist, and every API call without a session makes a new one, so a
script could hold close to a gigabyte. Gradio 6.31 offers `gr.State(time_to_live=...)`, which frees a state's
value but not the session around it, and `state_session_capacity`, a cap on sessions kept (least recently used
go first); the page sets that cap and drops sessions idle for longer than `--session-idle-s` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Callable
from typing import Any

MAX_SESSIONS = 2_000  # Gradio's state_session_capacity: about 180 MiB of sessions at most
SWEEP_EVERY_S = 30.0


def expire_idle_sessions(state_holder: Any, idle_s: float) -> int:
    """Drop every session not used for `idle_s` seconds (its states' delete callbacks run); how many went."""
    now = datetime.datetime.now()
    with state_holder.lock:
        idle = [
            session
            for session, last_used in state_holder.time_last_used.items()
            if (now - last_used).total_seconds() > idle_s
        ]
    for session in idle:
        state_holder.delete_state(session)
        with state_holder.lock:
            state_holder.session_data.pop(session, None)
            state_holder.time_last_used.pop(session, None)
    return len(idle)


def expiring_sessions(idle_s: float) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A lifespan for Gradio's app (`app_kwargs["lifespan"]`) that sweeps idle sessions while it serves."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async def sweep() -> None:
            # On the server's event loop, where Gradio itself reads and writes sessions.
            while True:
                await asyncio.sleep(min(SWEEP_EVERY_S, idle_s / 2))
                expire_idle_sessions(app.state_holder, idle_s)

        task = asyncio.create_task(sweep())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return lifespan
