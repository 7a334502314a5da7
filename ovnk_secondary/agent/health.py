"""The node agent's liveness, readiness and metrics over HTTP: its DaemonSet's probes, and
Prometheus.

`/healthz`: the event loop answers. `/readyz`: 200 "ready" when the agent can serve ADDs on
this node: connected to the local OVSDB with a complete copy, the CNI socket serving, the
bridge-mappings file applied (when one is given) and our CNI plugin in place (when the agent
keeps it: --cni-bin-dir); otherwise 503 with one line per problem, in
words that say what is wrong (the Node's ovnk-secondary.io/bridge-mappings annotation has the
mapping error in full). `/metrics`: the Prometheus text format of the agent's metrics
(`metrics`: its events, and the node's state read at scrape time).
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp.web

from ovnk_secondary import probes
from ovnk_secondary.agent import metrics


def problems(*, ovs_connected: bool, socket_serving: bool, mappings_error: str | None,
             plugin_error: str | None = None) -> list[str]:
    """What keeps the agent from being ready (pure): empty when ready."""
    found = []
    if not ovs_connected:
        found.append("not connected to the local OVSDB (is ovsdb-server running?)")
    if not socket_serving:
        found.append("the CNI socket is not serving")
    if mappings_error:
        found.append(f"bridge mappings not applied: {mappings_error}")
    if plugin_error:
        found.append(f"ovn-k8s-cni-overlay not installed: {plugin_error}")
    return found


async def start(*, host: str, port: int, check: Callable[[], list[str]],
                snapshot: Callable[[], metrics.Snapshot]) -> aiohttp.web.AppRunner:
    """Serve /healthz, /readyz and /metrics on `host`:`port`; `check` returns the current
    problems, `snapshot` the node's state."""
    async def readyz(_: aiohttp.web.Request) -> aiohttp.web.Response:
        found = check()
        if found:
            return aiohttp.web.Response(status=503, text="".join(f"{p}\n" for p in found))
        return aiohttp.web.Response(text="ready\n")

    return await probes.serve(host=host, port=port, readyz=readyz, routes={
        "/metrics": probes.metrics(metrics.REGISTRY, lambda: metrics.State(snapshot()))})
