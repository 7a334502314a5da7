"""Events: what the controller tells a user about their objects (a NAD, a pod, an IPAMClaim, a
MultiNetworkPolicy), each distinct message said once.

A problem is found again by every full sync and every echo of our own writes; posting an Event
each time would flood the object's Events with copies. So each (object uid, reason, message) is
posted once per process (the last 10,000 remembered): a new message (the problem changed, or
another object) is posted, a repeated one is not. Every Event is also a log line. A failed post
is logged and not retried: the log keeps the message.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from ovnk_secondary.controller import apiclient

logger = logging.getLogger(__name__)

WARNING = "Warning"
NORMAL = "Normal"
REMEMBERED = 10_000


class Events:
    def __init__(self, api: apiclient.ApiClient) -> None:
        self.api = api
        self._posted: collections.OrderedDict[tuple[str, str, str], None] = (
            collections.OrderedDict())

    async def post(self, involved: Mapping[str, Any], reason: str, message: str, *,
                   event_type: str = WARNING) -> None:
        """An Event on `involved` (an object with apiVersion, kind and metadata: namespace,
        name, uid), unless this very message was posted on it before."""
        metadata = involved.get("metadata") or {}
        marker = (str(metadata.get("uid")), reason, message)
        if marker in self._posted:
            return
        self._posted[marker] = None
        while len(self._posted) > REMEMBERED:
            self._posted.popitem(last=False)
        logger.log(logging.WARNING if event_type == WARNING else logging.INFO, "%s %s/%s: %s: %s",
                   involved.get("kind"), metadata.get("namespace") or "",
                   metadata.get("name") or "", reason, message)
        try:
            await self.api.post_event(involved=involved, event_type=event_type, reason=reason,
                                      message=message)
        except (apiclient.ApiError, aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("could not post Event %s: %s", reason, exc)
