"""Batches: requests that pile up while a flush runs go together; errors stay in their batch."""

from __future__ import annotations

import asyncio

import pytest

from ovnk_secondary.controller import batches


async def test_requests_arriving_during_a_flush_share_the_next_one() -> None:
    seen: list[list[int]] = []
    release = asyncio.Event()

    async def flush(items: list[int]) -> list[int]:
        seen.append(items)
        if len(seen) == 1:
            await release.wait()  # the first flush is slow: others pile up meanwhile
        return [item * 10 for item in items]

    batcher: batches.Batcher[int, int] = batches.Batcher(flush=flush, limit=3)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    release.set()
    assert await first == 0
    assert [await task for task in rest] == [10, 20, 30, 40, 50]
    assert seen == [[0], [1, 2, 3], [4, 5]]  # alone when idle, then at most `limit`
    await batcher.close()


async def test_a_failing_flush_fails_only_its_own_batch() -> None:
    calls = 0

    async def flush(items: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("NB is down")
        return [item.upper() for item in items]

    batcher: batches.Batcher[str, str] = batches.Batcher(flush=flush)
    with pytest.raises(RuntimeError, match="NB is down"):
        await batcher.submit("a")
    assert await batcher.submit("b") == "B"
    await batcher.close()


async def test_close_cancels_waiters() -> None:
    async def flush(items: list[int]) -> list[int]:
        await asyncio.Event().wait()  # never returns
        return items

    batcher: batches.Batcher[int, int] = batches.Batcher(flush=flush)
    waiter = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await batcher.close()
    with pytest.raises(asyncio.CancelledError):
        await waiter
