"""The controller's own pod watch against the API emulator: list+watch, resume, deletions."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from ovnk_secondary.controller import apiclient, podwatch
from tests.controller.harness import Api, until
from tests.served import LoopThread


class Recorder:
    def __init__(self) -> None:
        self.changed: list[str] = []
        self.deleted: list[str] = []

    def pod_changed(self, body: Mapping[str, Any]) -> None:
        self.changed.append(body["metadata"]["name"])

    def pod_deleted(self, body: Mapping[str, Any]) -> None:
        self.deleted.append(body["metadata"]["name"])


def test_existing_pods_then_changes_and_a_resumed_stream_miss_nothing(
        api: Api, loop: LoopThread) -> None:
    api.create_pod("ns", "before", "nad")
    recorder = Recorder()
    client = apiclient.ApiClient(apiclient.load_credentials(str(api.kubeconfig)))

    async def start() -> asyncio.Event:
        return asyncio.Event()

    stop = loop.run(start())
    watching = asyncio.run_coroutine_threadsafe(podwatch.run(client, recorder, stop), loop.loop)
    try:
        until(lambda: "before" in recorder.changed, "an existing pod was not seen")
        api.create_pod("ns", "after", "nad")
        until(lambda: "after" in recorder.changed, "a new pod was not seen")

        async def end_streams() -> None:
            api.server.emulator.close_watches()

        # the server ends the stream (as at its timeout); what happens next is not missed
        api.thread.run(end_streams())
        api.core.delete_namespaced_pod("before", "ns")
        until(lambda: recorder.deleted == ["before"], "a deletion after the resume was missed")
        # resumed from the last version seen: no replay of the pods as if they were new
        assert recorder.changed.count("after") == 1
    finally:
        watching.cancel()
        loop.run(client.close())
    assert watching.cancelled()
