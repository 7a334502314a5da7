"""The HTTP endpoint of a long-running component's probes (aiohttp): `/healthz` answers while
the event loop runs; `/readyz`, `/metrics` and any other routes are the component's own."""

from __future__ import annotations

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


def metrics(*collectors: registry.Collector) -> Handler:
    """A `/metrics` handler: the Prometheus text format (0.0.4) of `collectors`, then of
    prometheus_client's default registry (the `process_*` and `python_*` of the process).

    Collected on the event loop, so collectors may read what the loop's tasks keep. A
    collector with an `exposition()` method gives its text itself (bytes, the same as
    `generate_latest` would make of it): prometheus_client spends ~10 us a sample, and the
    controller's model at 1,000 networks (3,000 samples) held the loop for 30-90 ms a scrape.
    (Rendering it in a thread moves the cost without removing it: the loop thread then waits
    for the GIL.)"""
    async def handler(_: aiohttp.web.Request) -> aiohttp.web.Response:
        body = b"".join(_text(c) for c in (*collectors, prometheus_client.REGISTRY))
        return aiohttp.web.Response(body=body,
                                    headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    return handler


def _text(collector: registry.Collector) -> bytes:
    exposition = getattr(collector, "exposition", None)
    if exposition is not None:
        return bytes(exposition())
    return prometheus_client.generate_latest(collector)
