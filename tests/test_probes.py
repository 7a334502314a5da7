"""The probes' HTTP endpoint: `/metrics` is rendered without holding the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from collections.abc import Iterator

import aiohttp
from prometheus_client import core

from ovnk_secondary import probes

SLOW = 1.0  # seconds one collection takes


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Slow:
    """A collector of a snapshot whose collection takes SLOW seconds (thousands of samples)."""

    def __init__(self, value: int, threads: list[int]) -> None:
        self.value = value
        self.threads = threads

    def collect(self) -> Iterator[core.Metric]:
        self.threads.append(threading.get_ident())
        time.sleep(SLOW)
        family = core.GaugeMetricFamily("probe_test_value", "A value of the snapshot.")
        family.add_metric([], self.value)
        yield family


class _Nothing:
    def collect(self) -> Iterator[core.Metric]:
        return iter(())


def test_metrics_reads_the_state_on_the_loop_and_renders_it_off_the_loop() -> None:
    async def main() -> tuple[str, list[int], list[int], float]:
        state_threads: list[int] = []
        collect_threads: list[int] = []

        def state() -> _Slow:
            state_threads.append(threading.get_ident())
            return _Slow(42, collect_threads)

        async def readyz(_: aiohttp.web.Request) -> aiohttp.web.Response:
            return aiohttp.web.Response(text="ready\n")

        port = _free_port()
        runner = await probes.serve(host="127.0.0.1", port=port, readyz=readyz,
                                    routes={"/metrics": probes.metrics(_Nothing(), state)})
        worst = 0.0
        done = asyncio.Event()

        async def ticker() -> None:  # the loop's worst delay while the scrape runs
            nonlocal worst
            while not done.is_set():
                due = time.monotonic() + 0.01
                await asyncio.sleep(0.01)
                worst = max(worst, time.monotonic() - due)

        ticking = asyncio.create_task(ticker())
        try:
            async with aiohttp.ClientSession() as session, session.get(
                    f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
        finally:
            done.set()
            await ticking
            await runner.cleanup()
        return text, state_threads, collect_threads, worst

    loop_thread = threading.get_ident()
    text, state_threads, collect_threads, worst = asyncio.run(main())
    assert "probe_test_value 42.0" in text
    assert state_threads == [loop_thread]  # the model is read where its tasks keep it
    assert collect_threads and loop_thread not in collect_threads
    assert worst < SLOW / 2, f"the loop was held {worst * 1000:.0f} ms by a scrape"


@dataclasses.dataclass(frozen=True)
class _Counted:
    """A snapshot collector counting its collections (equal snapshots: equal collectors)."""

    value: int
    collections: list[int] = dataclasses.field(compare=False)

    def collect(self) -> Iterator[core.Metric]:
        self.collections.append(self.value)
        family = core.GaugeMetricFamily("probe_test_value", "A value of the snapshot.")
        family.add_metric([], self.value)
        yield family


def test_metrics_renders_the_state_again_only_when_it_changed() -> None:
    collections: list[int] = []
    current = [1]

    async def main() -> list[str]:
        async def readyz(_: aiohttp.web.Request) -> aiohttp.web.Response:
            return aiohttp.web.Response(text="ready\n")

        port = _free_port()
        handler = probes.metrics(_Nothing(), lambda: _Counted(current[0], collections))
        runner = await probes.serve(host="127.0.0.1", port=port, readyz=readyz,
                                    routes={"/metrics": handler})
        texts = []
        try:
            async with aiohttp.ClientSession() as session:
                for value in (1, 1, 2, 2, 1):
                    current[0] = value
                    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                        texts.append(await response.text())
        finally:
            await runner.cleanup()
        return texts

    texts = asyncio.run(main())
    assert [f"probe_test_value {v}.0" in t for v, t in zip((1, 1, 2, 2, 1), texts,
                                                            strict=True)] == [True] * 5
    assert collections == [1, 2, 1]  # an unchanged state's text is reused
