"""Batches: many concurrent requests for one slow worker, written together when they pile up.

The controller's NB writes go through one thread, one transaction at a time, and each
transaction costs a round trip to ovsdb-server. Under load (thousands of pods created at
once) requests arrive faster than round trips complete; a `Batcher` then hands every request
that arrived while the previous batch was being written to the next call of `flush`, so the
number of round trips follows the load instead of the number of pods. When idle, a request
is flushed at once and alone: batching adds no delay.

`flush` gets the items in arrival order and returns one result per item, in the same order.
An exception from `flush` is the result of every item of that batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(self, *, flush: Callable[[list[T]], Awaitable[list[R]]],
                 limit: int = 256) -> None:
        self._flush = flush
        self._limit = limit
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # how many times `flush` ran (for logs and tests)

    async def submit(self, item: T) -> R:
        """Queue `item` for the next batch and wait for its result."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:self._limit], self._pending[self._limit:]
            self.batches += 1
            try:
                results = await self._flush([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"flush returned {len(results)} results for "
                                       f"{len(batch)} items")
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as exc:  # each waiter gets the error, the batcher goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        """Stop: cancel the batch in progress; waiters of unflushed items get CancelledError."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _, future in self._pending:
            future.cancel()
        self._pending = []
