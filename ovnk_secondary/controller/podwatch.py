"""The pods of the cluster, watched directly (not through kopf) and handed to the reconciler.

A burst of pod creations is the controller's hot path, and kopf's per-event machinery (a
worker per object, causes, handler kwargs) cost more CPU than the reconciliation itself. Pods
need none of it: the reconciler only records each pod and queues its key (`workqueues`). So the
controller reads the pod watch stream itself, as an informer does: one stream from the start
(every existing pod first, as ADDED), resumed from the last resourceVersion seen when the server
ends it, started afresh when that version is too old (410), with backoff while the API is away.
NADs, few and rarely changing, stay with kopf (`handlers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp

from ovnk_secondary.controller import apiclient

logger = logging.getLogger(__name__)


class PodSink(Protocol):
    """Where pod events go (the reconciler)."""

    def pod_changed(self, body: Mapping[str, Any]) -> None: ...

    def pod_deleted(self, body: Mapping[str, Any]) -> None: ...


async def run(api: apiclient.ApiClient, policy: PodSink, stop: asyncio.Event) -> None:
    """Until `stop` is set (or the task is cancelled: a stream is not interrupted by `stop`)."""
    version = ""
    delay = 0.5
    while not stop.is_set():
        try:
            async for event in api.watch(apiclient.PODS_PATH, resource_version=version):
                kind = event.get("type")
                pod = event.get("object") or {}
                if kind == "ERROR":
                    if pod.get("code") == 410:
                        version = ""  # too old: start again from the current pods
                    raise apiclient.ApiError(int(pod.get("code") or 500),
                                             f"pod watch: {pod.get('message')}")
                version = str((pod.get("metadata") or {}).get("resourceVersion") or version)
                if kind == "DELETED":
                    policy.pod_deleted(pod)
                elif kind in ("ADDED", "MODIFIED"):
                    policy.pod_changed(pod)
                delay = 0.5
        except (apiclient.ApiError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            logger.warning("pod watch ended: %s; again in %.1f s", exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 30.0)
