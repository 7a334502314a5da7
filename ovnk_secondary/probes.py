"""The HTTP endpoint of a long-running component's probes (aiohttp): `/healthz` answers while
the event loop runs; `/readyz`, `/metrics` and any other routes are the component's own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import aiohttp.web
import prometheus_client
from prometheus_client import registry

Handler = Callable[[aiohttp.web.Request], Awaitable[aiohttp.web.Response]]


async def serve(*, host: str, port: int, readyz: Handler,
                routes: Mapping[str, Handler] | None = None) -> aiohttp.web.AppRunner:
    """Serve /healthz, /readyz and `routes` (path -> GET handler) on `host`:`port`; the runner
    to `cleanup()` at the end."""
    async def healthz(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(text="ok\n")

    app = aiohttp.web.Application()
    for path, handler in {"/healthz": healthz, "/readyz": readyz, **(routes or {})}.items():
        app.router.add_get(path, handler)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, host, port).start()
    return runner


def metrics(events: registry.Collector, state: Callable[[], registry.Collector]) -> Handler:
    """A `/metrics` handler: the Prometheus text format (0.0.4) of `events` (a registry of
    counters, histograms... recorded where they happen), of `state()` and of
    prometheus_client's default registry (the `process_*` and `python_*` of the process).

    `state()` is called on the event loop, so it may read what the loop's tasks keep; it
    returns a collector of plain values (a snapshot) that compares equal to an unchanged one.
    The text itself is rendered in a worker thread: prometheus_client's `generate_latest` costs
    tens of microseconds per sample, and a controller with 1,000 networks has thousands of
    samples: rendered on the loop, each scrape held it for 25-90 ms (up to 250 ms under load),
    delaying every event meanwhile (network_bench). In a thread, the loop gets the GIL back at
    every switch interval, but the rendering still competes with it and the NB threads for the
    GIL: the state's text is rendered again only when the state changed."""
    rendered: list[tuple[registry.Collector, bytes]] = []  # the last state and its text

    def render(current: registry.Collector) -> bytes:
        last = rendered[-1] if rendered else None
        if last is not None and last[0] == current:
            text = last[1]
        else:
            text = prometheus_client.generate_latest(current)
            rendered[:] = [(current, text)]
        return b"".join((prometheus_client.generate_latest(events),
                         text, prometheus_client.generate_latest(prometheus_client.REGISTRY)))

    async def handler(_: aiohttp.web.Request) -> aiohttp.web.Response:
        body = await asyncio.to_thread(render, state())
        return aiohttp.web.Response(body=body,
                                    headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    return handler
