"""Liveness, readiness and metrics over HTTP: `/healthz` (the loop answers), `/readyz`, `/metrics`.

Ready means, for the leader (or a controller without leader election): connected to OVN
northbound with a complete copy, and the first full sync done. A standby that is alive is
ready too (leadership is not readiness: a rolling update with maxUnavailable 0 waits for the
new pod's readiness, and the new pod stands by until the old one releases the Lease); its
`/readyz` says it is a standby and who holds the Lease.
`/metrics`: the Prometheus text format of the controller's metrics (`metrics`: its events, and
this controller's model read at scrape time).
"""

from __future__ import annotations

import aiohttp.web

from ovnk_secondary import probes
from ovnk_secondary.controller import leaderelection, metrics, reconciler


async def start(*, host: str, port: int, policy: reconciler.Reconciler,
                elector: leaderelection.LeaderElector | None = None) -> aiohttp.web.AppRunner:
    async def readyz(_: aiohttp.web.Request) -> aiohttp.web.Response:
        if elector is not None and not elector.leading:
            holder = elector.holder()
            return aiohttp.web.Response(
                text=f"ready: standby for Lease {elector.config.namespace}/"
                     f"{elector.config.name}, " + (f"held by {holder}\n" if holder else
                                                   "no holder seen yet\n"))
        if not policy.northbound.ready():
            return aiohttp.web.Response(status=503, text="OVN northbound not connected\n")
        if not policy.synced.is_set():
            return aiohttp.web.Response(status=503, text="first full sync not done\n")
        return aiohttp.web.Response(text="ready\n")

    return await probes.serve(host=host, port=port, readyz=readyz, routes={
        "/metrics": probes.metrics(metrics.REGISTRY,
                                   lambda: metrics.Model(policy.snapshot()))})
