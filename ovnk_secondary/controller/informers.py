"""Objects of the cluster (NADs, pods, IPAMClaims, MultiNetworkPolicies, namespaces), listed and
watched as client-go's informers do, for the reconciler.

One loop per resource: LIST (in pages), then WATCH from the list's resourceVersion, resumed
from the last version seen (events and bookmarks) when the server ends the stream or the
connection breaks, and a new LIST when that version is too old (410 Gone: etcd compacted it,
or the API server's watch cache no longer reaches back to it).

Every LIST is compared with what the reconciler holds (`Sink.held`: key -> (uid,
resourceVersion)): an object it holds that the list lacks was deleted while nobody watched and
is reported deleted (a watch never reports it); an object it holds at the same uid and
resourceVersion is not reported again (no replay of 10,000 pods after a re-list). The first
LIST happens after the reconciler's first full sync, so a NAD or pod deleted between that
sync's own listing and the watch is not lost either.

Why not kopf's watch: its raw event handlers never learn about objects deleted between two
of its listings (start-up, 410), which left the controller believing in a deleted NAD until
the next periodic full sync; kopf's per-event machinery also cost more CPU than the
reconciliation itself on the pod hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from ovnk_secondary.controller import apiclient

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
LIST_PAGE = 500


@dataclasses.dataclass(frozen=True)
class Sink:
    """Where one resource's news go (the reconciler)."""

    held: Callable[[], Mapping[Key, tuple[str, str]]]  # key -> (uid, resourceVersion) held
    changed: Callable[[dict[str, Any]], Awaitable[None]]  # ADDED/MODIFIED, or new in a list
    deleted: Callable[[dict[str, Any]], Awaitable[None]]  # DELETED, or missing from a list


def _identity(body: Mapping[str, Any]) -> tuple[Key, str, str]:
    metadata = body.get("metadata") or {}
    return ((str(metadata.get("namespace") or ""), str(metadata.get("name") or "")),
            str(metadata.get("uid") or ""), str(metadata.get("resourceVersion") or ""))


async def relist(api: apiclient.ApiClient, path: str, sink: Sink) -> str:
    """LIST `path` and report the differences with what `sink` holds; the list's version."""
    held = dict(sink.held())
    listed: set[Key] = set()
    version = ""
    async for page, page_version in api.pages(path, limit=LIST_PAGE):
        version = version or page_version  # every page is of the first page's snapshot
        for body in page:
            key, uid, object_version = _identity(body)
            listed.add(key)
            if held.get(key) != (uid, object_version):
                await sink.changed(body)
        del page
    for key in held.keys() - listed:
        namespace, name = key
        await sink.deleted({"metadata": {"namespace": namespace, "name": name,
                                         "uid": held[key][0]}})
    return version


async def run(api: apiclient.ApiClient, path: str, sink: Sink, stop: asyncio.Event, *,
              what: str, after: asyncio.Event | None = None, watch_timeout: int = 300) -> None:
    """Until `stop` is set (or the task is cancelled: a stream is not interrupted by `stop`).

    `what` names the resource in logs; the first list waits for `after` (when given);
    `watch_timeout` (seconds) is each watch request's `timeoutSeconds`, after which the server
    ends the stream and the watch resumes.
    """
    if after is not None:
        await after.wait()
    version = ""
    delay = 0.5
    while not stop.is_set():
        try:
            if not version:
                version = await relist(api, path, sink)
            async for event in api.watch(path, resource_version=version,
                                         timeout=watch_timeout):
                kind = event.get("type")
                body = event.get("object") or {}
                if kind == "ERROR":
                    if body.get("code") == 410:
                        version = ""  # too old: list again
                    raise apiclient.ApiError(int(body.get("code") or 500),
                                             f"{what} watch: {body.get('message')}")
                version = str((body.get("metadata") or {}).get("resourceVersion") or version)
                if kind == "DELETED":
                    await sink.deleted(body)
                elif kind in ("ADDED", "MODIFIED"):
                    await sink.changed(body)
                delay = 0.5
        except (apiclient.ApiError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if isinstance(exc, apiclient.ApiError) and exc.status == 410:
                # the server answers, only the version is too old: list again at once
                logger.info("%s watch: %s; listing again", what, exc)
                version = ""
                continue
            logger.warning("%s watch ended: %s; resuming in %.1f s", what, exc, delay)
        else:
            continue  # ended by the server at its timeout: resume at once
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 30.0)
