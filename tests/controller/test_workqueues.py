"""Work queues: each key queued once, never worked on twice at once, later events not lost."""

from __future__ import annotations

import asyncio
import time

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


async def test_keys_whose_work_never_suspends_do_not_hold_the_loop() -> None:
    """A backlog of keys whose work needs no I/O (the echoes of our own writes) is worked on
    a few milliseconds per turn of the loop, timers and I/O running in between, instead of in
    one step of one worker (`Queue.get` does not suspend while keys wait)."""
    done = 0

    async def process(_: int) -> None:
        nonlocal done
        end = time.perf_counter() + 0.002  # CPU only: never suspends
        while time.perf_counter() < end:
            pass
        done += 1

    worst = 0.0  # the loop thread's most CPU time between two ticks (a busy machine's
    # scheduling delays do not count)

    async def ticker() -> None:
        nonlocal worst
        while done < 200:
            cpu = time.thread_time()
            await asyncio.sleep(0.01)
            worst = max(worst, time.thread_time() - cpu)

    for workers in (1, 50):
        done, worst = 0, 0.0
        queue: workqueues.WorkQueue[int] = workqueues.WorkQueue(process=process,
                                                               workers=workers)
        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0.02)
        queue.start()
        for key in range(200):  # 0.4 s of work in all
            queue.add(key)
        await asyncio.wait_for(ticking, 30)
        await queue.close()
        assert done == 200
        assert worst < 0.1, f"{workers} worker(s) held the loop {worst * 1000:.0f} ms"
