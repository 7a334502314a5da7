"""The controller's informers against the real API server: list+watch, resume, re-list.

A re-list is compared with what the consumer holds: a deletion nobody watched is reported, an
object held at its current version is not reported again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import pytest

from ovnk_secondary.controller import apiclient, informers
from tests.controller.harness import Api, until
from tests.loops import LoopThread


class Recorder:
    """A consumer that holds what it was told, as the reconciler does."""

    def __init__(self) -> None:
        self.held: dict[informers.Key, tuple[str, str]] = {}
        self.changed: list[str] = []
        self.deleted: list[str] = []

    def sink(self) -> informers.Sink:
        async def changed(body: dict[str, Any]) -> None:
            metadata = body["metadata"]
            self.held[metadata["namespace"], metadata["name"]] = (metadata["uid"],
                                                                   metadata["resourceVersion"])
            self.changed.append(metadata["name"])

        async def deleted(body: dict[str, Any]) -> None:
            metadata = body["metadata"]
            self.held.pop((metadata["namespace"], metadata["name"]), None)
            self.deleted.append(metadata["name"])

        return informers.Sink(held=lambda: self.held, changed=changed, deleted=deleted)


def test_existing_pods_then_changes_and_a_resumed_stream_miss_nothing(
        api: Api, loop: LoopThread) -> None:
    api.create_pod("ns", "before", "nad")
    recorder = Recorder()
    client = apiclient.ApiClient(apiclient.load_credentials(str(api.kubeconfig)))

    async def start() -> asyncio.Event:
        return asyncio.Event()

    stop = loop.run(start())
    watching = asyncio.run_coroutine_threadsafe(informers.run(
        client, apiclient.PODS_PATH, recorder.sink(), stop, what="pod", watch_timeout=2),
        loop.loop)
    try:
        until(lambda: "before" in recorder.changed, "an existing pod was not seen")
        api.create_pod("ns", "after", "nad")
        until(lambda: "after" in recorder.changed, "a new pod was not seen")
        time.sleep(3)  # the server ends the stream at its timeout (2 s): the watch resumes
        api.delete_pod("ns", "before")
        until(lambda: recorder.deleted == ["before"], "a deletion after the resume was missed")
        # resumed from the last version seen: no replay of the pods as if they were new
        assert recorder.changed.count("after") == 1
    finally:
        watching.cancel()
        loop.run(client.close())


def test_a_relist_reports_what_changed_unseen_and_only_that(api: Api, loop: LoopThread) -> None:
    for name in ("kept", "edited", "gone"):
        api.create_pod("ns", name, "nad")
    recorder = Recorder()
    client = apiclient.ApiClient(apiclient.load_credentials(str(api.kubeconfig)))
    try:
        loop.run(informers.relist(client, apiclient.PODS_PATH, recorder.sink()))
        assert sorted(recorder.changed) == ["edited", "gone", "kept"]
        recorder.changed.clear()
        # while nobody watches: a deletion, an edit, a creation, a pod recreated under its name
        api.delete_pod("ns", "gone")
        api.core().patch_namespaced_pod("edited", "ns", {"metadata": {"labels": {"x": "y"}}})
        api.create_pod("ns", "new", "nad")
        uid_before = recorder.held["ns", "kept"][0]
        loop.run(informers.relist(client, apiclient.PODS_PATH, recorder.sink()))
        assert recorder.deleted == ["gone"]
        assert sorted(recorder.changed) == ["edited", "new"]  # "kept" is not replayed
        assert recorder.held["ns", "kept"][0] == uid_before
    finally:
        loop.run(client.close())


class Partition:
    """A TCP relay between a client and the API server, which the test can cut: the client
    then neither reaches the server nor hears from it, while the server goes on."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.open = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1",
                                                                      self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, upstream}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream), pipe(upstream_reader, writer))

    async def cut(self) -> None:
        self.open = False
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def heal(self) -> None:
        self.open = True

    async def close(self) -> None:
        await self.cut()
        if self._server is not None:
            self._server.close()


@pytest.mark.restarts_api_server
def test_a_watch_too_old_after_compaction_relists_without_losing_or_replaying(
        api: Api, loop: LoopThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=informers.__name__)
    for name in ("kept", "gone"):
        api.create_pod("ns", name, "nad")
    partition = Partition(api.plane.port)
    loop.run(partition.start())
    credentials = apiclient.load_credentials(str(api.kubeconfig))
    client = apiclient.ApiClient(dataclasses.replace(
        credentials, server=f"https://127.0.0.1:{partition.port}"))
    recorder = Recorder()

    async def start() -> asyncio.Event:
        return asyncio.Event()

    stop = loop.run(start())
    watching = asyncio.run_coroutine_threadsafe(informers.run(
        client, apiclient.PODS_PATH, recorder.sink(), stop, what="pod"), loop.loop)
    try:
        until(lambda: {"kept", "gone"} <= set(recorder.changed), "existing pods not seen")
        loop.run(partition.cut())
        # while the informer hears nothing: changes, then the history it would resume from
        # goes away (the API server's watch cache restarts, etcd is compacted)
        api.delete_pod("ns", "gone")
        api.create_pod("ns", "new", "nad")
        api.plane.restart_apiserver()
        api.plane.compact_etcd()
        loop.run(partition.heal())
        until(lambda: "new" in recorder.changed and recorder.deleted == ["gone"],
              "the re-list missed the deletion or the creation", timeout=60)
        assert "listing again" in caplog.text, "the resume was not refused as too old (410)"
        assert recorder.changed.count("kept") == 1, "an unchanged pod was replayed"
        assert set(recorder.held) == {("ns", "kept"), ("ns", "new")}
    finally:
        watching.cancel()
        loop.run(partition.close())
        loop.run(client.close())
