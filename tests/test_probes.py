"""probes.metrics: collected on the event loop, rendered off it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import prometheus_client
import pytest
from prometheus_client import core

from ovnk_secondary import probes


class _Model:
    """A collector that must be read on the loop's thread (like the reconciler's model)."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def collect(self) -> list[core.Metric]:
        self.threads.append(threading.current_thread())
        gauge = core.GaugeMetricFamily("model_size", "rows", labels=["network"])
        for i in range(3):
            gauge.add_metric([f"net{i}"], i)
        return [gauge]


def test_collected_on_the_loop_rendered_in_another_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    render_threads = []
    generate = prometheus_client.generate_latest

    def recorded(collector: Any) -> bytes:
        render_threads.append(threading.current_thread())
        return generate(collector)

    monkeypatch.setattr(prometheus_client, "generate_latest", recorded)
    model = _Model()
    handler = probes.metrics(model)

    async def scrape() -> bytes:
        response = await handler(None)  # type: ignore[arg-type]
        assert response.body is not None
        return bytes(response.body)  # type: ignore[arg-type]

    body = asyncio.run(scrape()).decode()
    assert model.threads == [threading.main_thread()]  # asyncio.run's loop runs here
    assert render_threads and threading.main_thread() not in render_threads
    assert 'model_size{network="net2"} 2.0\n' in body
    assert "# TYPE process_cpu_seconds_total counter" in body  # the default registry follows
