"""Work queues: keys of objects to reconcile, each queued once, worked on by a few workers.

A handler that awaited the reconciliation itself per watch event kept, for every pod waiting
for its turn (thousands during a burst of creations, or while a full sync ran), a task with
its whole coroutine stack and the event's body: ~30 kB per pod, most of the controller's peak
memory at 10,000 pods (measured with kopf's per-object workers). Instead, the handler
records the object in the reconciler's model and `add`s its key here: a waiting pod then
costs one key, whatever its number of events, and the workers read the latest state of the
object when its turn comes (the pattern of client-go's workqueue).

Guarantees: a key is queued at most once; a key is never worked on by two workers at once
(added again while being worked on, it is queued again once that work ends); keys are
taken in the order they were first added; an exception from `process` is logged and ends
only that key's work.

Keys share the event loop fairly: a key whose work never suspends (the echo of our own
annotation patch: nothing to write) used to be followed at once by the next one in the same
step of the same worker (`Queue.get` does not suspend while keys wait), and a backlog of such
keys held the loop for 150-300 ms at a time during a burst of 10,000 pods (network_bench); a
burst's batch of NB writes completing resumes hundreds of workers in one turn of the loop
too. So the workers start keys for at most `turn` seconds per turn of the loop, all workers
together; the others wait for the next turn, after the loop's timers and I/O (the Lease's
renewal among them).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from ovnk_secondary import errors

logger = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)
# Seconds of the loop's time the workers of a queue may start keys in, per turn of the loop
# (with 5 ms, controller_bench's pods/s measured 5-25% lower than without a limit: a pod is
# two keys, its creation and our annotation's echo, and a loaded turn's I/O takes 10-30 ms)
TURN = 0.02


class WorkQueue(Generic[K]):
    def __init__(self, *, process: Callable[[K], Awaitable[None]], workers: int,
                 turn: float = TURN) -> None:
        if workers < 1:
            raise ValueError(f"workers={workers}: a work queue needs at least one worker")
        self._process = process
        self._workers = workers
        self._turn = turn
        self._turn_started: float | None = None  # when this turn's first key started
        self._started = 0  # keys started in this turn
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._ready: asyncio.Queue[K] = asyncio.Queue()  # queued and not being worked on
        self._queued: set[K] = set()  # queued (in `_ready`, or waiting for its active work)
        self._active: set[K] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def __len__(self) -> int:
        """How many keys wait (for logs and tests)."""
        return len(self._queued)

    def add(self, key: K) -> None:
        """Queue `key`, unless it already waits."""
        if key in self._queued:
            return
        self._queued.add(key)
        if key not in self._active:  # else queued again when its current work ends
            self._ready.put_nowait(key)

    def start(self) -> None:
        """Start the workers on the running loop."""
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._work(), name=f"work queue worker {i}")
                           for i in range(self._workers)]

    async def close(self) -> None:
        """Stop the workers (work in progress is cancelled); waiting keys are dropped."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._ready = asyncio.Queue()
        self._queued.clear()
        self._active.clear()
        self._waiting.clear()
        self._turn_started, self._started = None, 0

    def _end_turn(self) -> None:
        """The next turn of the loop: as many waiting keys may start as started in the last."""
        granted, self._started, self._turn_started = max(1, self._started), 0, None
        while granted and self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                granted -= 1

    async def _take_turn(self) -> None:
        """Return when a key may start: at once in a new turn of the loop, else when the
        turn's time is not used up and no key waits; otherwise in a later turn, in order."""
        loop = asyncio.get_running_loop()
        if self._turn_started is None:
            self._turn_started = time.monotonic()
            loop.call_soon(self._end_turn)  # after what is ready in this turn
        elif self._waiting or time.monotonic() - self._turn_started >= self._turn:
            waiter = loop.create_future()
            self._waiting.append(waiter)
            await waiter  # granted by `_end_turn`
            if self._turn_started is None:  # the turn it was granted in has no end yet
                self._turn_started = time.monotonic()
                loop.call_soon(self._end_turn)
        self._started += 1

    async def _work(self) -> None:
        while True:
            key = await self._ready.get()
            self._queued.discard(key)
            self._active.add(key)
            try:
                await self._take_turn()
                await self._process(key)
            except errors.OvnkSecondaryError as exc:  # a condition we know: no traceback
                logger.warning("work on %r failed: %s", key, exc)
            except Exception:  # a bug: one key's failure must not stop the worker
                logger.exception("work on %r failed", key)
            finally:
                self._active.discard(key)
                if key in self._queued:
                    self._ready.put_nowait(key)
