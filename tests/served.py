"""The Kubernetes API emulator served from a loop thread, for synchronous tests and benchmarks."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from kubernetes import client

from ovnk_secondary.sandbox import apiserver

T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a daemon thread, for servers the (sync) tests talk to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class ServedApi:
    """The emulator listening on `host` (an address the sandbox's containers reach, when they
    are to use it), on a port of its own, until `close`."""

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        self.thread = LoopThread()
        self.server = apiserver.ApiServer(host=host, port=0)
        try:
            self.thread.run(self.server.__aenter__())
        except BaseException:
            self.thread.close()
            raise

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        self.thread.run(self.server.__aexit__(None, None, None))
        self.thread.close()

    def kubeconfig_text(self) -> str:
        return json.dumps(apiserver.kubeconfig(server=self.url))

    def core(self) -> Any:  # the client's stubs do not take the plain dicts tests use
        configuration = client.Configuration()
        configuration.host = self.url
        return client.CoreV1Api(client.ApiClient(configuration))
