"""The agent's CNI socket: one request per connection, served concurrently.

Requests for different pods run in parallel; two requests for the same pod interface (say a DEL
racing a retried ADD) are serialised in arrival order. The socket lives in a directory only
root can enter (0700) and is itself 0600, as OVN-K's: whoever can write to it can plug pods.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ovnk_secondary.agent import metrics
from ovnk_secondary.cni import protocol

LOG = logging.getLogger(__name__)
Handler = Callable[[protocol.Request], Awaitable[dict[str, Any] | None]]
MAX_REQUEST = 4 * 1024 * 1024
BACKLOG = 1024


class KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[object, asyncio.Lock] = {}
        self._users: collections.Counter[object] = collections.Counter()

    @contextlib.asynccontextmanager
    async def hold(self, key: object) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] += 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


class CniServer:
    def __init__(self, *, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.locks = KeyedLocks()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by a previous run
        # a node starting many pods at once connects many plugins at once
        self._server = await asyncio.start_unix_server(self._serve, path=self.path,
                                                       backlog=BACKLOG)
        os.chmod(self.path, 0o600)
        LOG.info("serving CNI requests on %s", self.path)

    def serving(self) -> bool:
        """Listening, and the socket file is still the one it listens on."""
        return (self._server is not None and self._server.is_serving()
                and os.path.exists(self.path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = time.monotonic()
        version = protocol.DEFAULT_VERSION
        command = None
        error = None
        try:
            data = await reader.read(-1)  # the plugin half-closes after its request
            if len(data) > MAX_REQUEST:
                raise protocol.CniError(protocol.DECODE_FAILURE, "request too large")
            # The plugin forwards the runtime's input unparsed (see cni.wire): validating here
            # gives the same errors the plugin gives by itself when the agent is down.
            env, stdin = protocol.unpack_request(data)
            command = env.get("CNI_COMMAND")
            version = protocol.declared_version(stdin, default=True) or version
            request = protocol.validate(env, stdin)
            async with self.locks.hold(request.interface_key):
                result = await self.handler(request)
            answer = protocol.answer(result=result, cni_version=version)
        except protocol.CniError as exc:
            LOG.warning("CNI request failed (code %s): %s %s", exc.code, exc.msg, exc.details)
            error = exc
            answer = protocol.answer(error=exc, cni_version=version)
        except Exception as exc:  # never let one request take the agent down
            LOG.exception("CNI request crashed")
            error = protocol.CniError(protocol.AGENT_FAILURE, f"node agent error: {exc}",
                                      "see the node agent's log")
            answer = protocol.answer(error=error, cni_version=version)
        metrics.cni_request(command=command, error=error, seconds=time.monotonic() - started)
        try:
            writer.write(answer)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, OSError):
            LOG.warning("the plugin went away before reading the answer")
