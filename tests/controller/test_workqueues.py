"""Work queues: each key queued once, never worked on twice at once, later events not lost."""

from __future__ import annotations

import asyncio

from ovnk_secondary.controller import workqueues


async def test_a_key_added_many_times_while_waiting_is_worked_on_once() -> None:
    seen: list[str] = []

    async def process(key: str) -> None:
        seen.append(key)

    queue: workqueues.WorkQueue[str] = workqueues.WorkQueue(process=process, workers=2)
    for key in ("a", "b", "a", "a", "c", "b"):
        queue.add(key)
    assert len(queue) == 3
    queue.start()
    for _ in range(100):
        if len(seen) == 3 and len(queue) == 0:
            break
        await asyncio.sleep(0.01)
    assert seen == ["a", "b", "c"]  # in the order first added, once each
    await queue.close()


async def test_a_key_added_during_its_work_is_worked_on_again_after_never_alongside() -> None:
    running: set[str] = set()
    overlaps = 0
    calls = 0
    first_started = asyncio.Event()
    release = asyncio.Event()

    async def process(key: str) -> None:
        nonlocal overlaps, calls
        if key in running:
            overlaps += 1
        running.add(key)
        calls += 1
        if calls == 1:
            first_started.set()
            await release.wait()  # the first work is slow: the key is added again meanwhile
        running.discard(key)

    queue: workqueues.WorkQueue[str] = workqueues.WorkQueue(process=process, workers=4)
    queue.start()
    queue.add("pod")
    await first_started.wait()
    queue.add("pod")  # an event arriving while the pod is being worked on
    queue.add("pod")
    await asyncio.sleep(0.05)  # idle workers must not take it meanwhile
    assert calls == 1
    release.set()
    for _ in range(100):
        if calls == 2 and len(queue) == 0:
            break
        await asyncio.sleep(0.01)
    assert calls == 2 and overlaps == 0  # worked on again (the later state), never twice at once
    await queue.close()


async def test_a_failing_key_does_not_stop_the_workers() -> None:
    done: list[str] = []

    async def process(key: str) -> None:
        if key == "bad":
            raise RuntimeError("boom")
        done.append(key)

    queue: workqueues.WorkQueue[str] = workqueues.WorkQueue(process=process, workers=1)
    queue.start()
    queue.add("bad")
    queue.add("good")
    for _ in range(100):
        if done:
            break
        await asyncio.sleep(0.01)
    assert done == ["good"]
    await queue.close()
