"""How late the event loop runs: a 10 ms ticker whose delays are the loop's lag.

Everything the controller does for NADs and pods runs on one asyncio loop, and so does the
renewal of its leader Lease: work that holds the loop for long delays the renewal (and every
other event). The ticker sleeps `interval` seconds and measures how much later than that it
woke up. Exported (`metrics`): `ovnk_secondary_event_loop_lag_seconds`, a histogram of each
tick's lag, and `ovnk_secondary_event_loop_lag_worst_seconds`, the worst lag over the last
`window` seconds (at least one whole window), for scrapes a few seconds apart.

Wall-clock lag also counts time the loop thread waited for a CPU or for the GIL (another
process, or the NB connection thread, running): `ovnk_secondary_event_loop_busy_worst_seconds`
is the loop thread's own CPU time between two ticks (worst over the same window), i.e. how long
work on the loop held it.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from ovnk_secondary.controller import metrics


class LoopLag:
    def __init__(self, *, interval: float = 0.01, window: float = 5.0) -> None:
        self.interval = interval
        self.window = window
        self.worst_ever = 0.0
        self._current = 0.0  # worst in the window under way
        self._previous = 0.0  # worst in the window before it
        self._busy = (0.0, 0.0)  # the same for the loop thread's CPU time between ticks

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set (and time the garbage collector meanwhile)."""
        gc.callbacks.append(_gc_timer)
        try:
            await self._tick(stop)
        finally:
            gc.callbacks.remove(_gc_timer)

    async def _tick(self, stop: asyncio.Event) -> None:
        started = time.monotonic()
        while not stop.is_set():
            due = time.monotonic() + self.interval
            cpu = time.thread_time()
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self.record(max(0.0, now - due), busy=time.thread_time() - cpu)
            if now - started >= self.window:
                started = now
                self._previous, self._current = self._current, 0.0
                self._busy = (0.0, self._busy[0])

    def record(self, lag: float, *, busy: float = 0.0) -> None:
        metrics.LOOP_LAG.observe(lag)
        self.worst_ever = max(self.worst_ever, lag)
        self._current = max(self._current, lag)
        metrics.LOOP_LAG_WORST.set(max(self._current, self._previous))
        self._busy = (max(self._busy[0], busy), self._busy[1])
        metrics.LOOP_BUSY_WORST.set(max(self._busy))


_gc_started = 0.0


def _gc_timer(phase: str, info: dict[str, Any]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    else:
        metrics.GC_PAUSE.labels(generation=str(info.get("generation"))).observe(
            time.perf_counter() - _gc_started)
