"""The Kubernetes API emulator as its clients see it: the official client, kubectl and kopf."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import kopf
import kubernetes
import pytest

from ovnk_secondary.sandbox import apiserver

NAD_GROUP, NAD_VERSION, NAD_PLURAL = apiserver.NAD_RESOURCE

LAYER2_NAD: dict[str, Any] = {
    "apiVersion": "k8s.cni.cncf.io/v1",
    "kind": "NetworkAttachmentDefinition",
    "metadata": {"name": "nad-layer2", "namespace": "test"},
    "spec": {"config": json.dumps({
        "cniVersion": "0.3.1", "name": "l2-network", "type": "ovn-k8s-cni-overlay",
        "topology": "layer2", "netAttachDefName": "test/nad-layer2",
    })},
}


def _pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "test",
                     "annotations": {"k8s.v1.cni.cncf.io/networks": "test/nad-layer2"}},
        "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "busybox"}]},
    }


@pytest.fixture
async def api() -> AsyncIterator[apiserver.ApiServer]:
    async with apiserver.ApiServer() as server:
        yield server


def _client(api: apiserver.ApiServer, tmp_path: pathlib.Path) -> kubernetes.client.ApiClient:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    return kubernetes.config.new_client_from_config(config_file=str(kubeconfig))


async def test_official_client_creates_patches_lists_and_watches(
    api: apiserver.ApiServer, tmp_path: pathlib.Path
) -> None:
    client = _client(api, tmp_path)
    core = kubernetes.client.CoreV1Api(client)
    custom = kubernetes.client.CustomObjectsApi(client)

    nad = await asyncio.to_thread(custom.create_namespaced_custom_object,
                                  NAD_GROUP, NAD_VERSION, "test", NAD_PLURAL, LAYER2_NAD)
    assert nad["metadata"]["uid"] and nad["metadata"]["resourceVersion"]
    assert nad["metadata"]["generation"] == 1
    pod = await asyncio.to_thread(core.create_namespaced_pod, "test", _pod("tinypod"))
    assert pod is not None, "a create must answer 201 with the object"
    assert pod.metadata.uid and pod.status.phase == "Pending"

    listed = await asyncio.to_thread(core.list_namespaced_pod, "test")
    assert [p.metadata.name for p in listed.items] == ["tinypod"]
    since = listed.metadata.resource_version

    # A watch from the list's resourceVersion sees exactly the later changes, in order.
    events: list[tuple[str, str, dict[str, str]]] = []
    done = threading.Event()

    def watch_pods() -> None:
        watch = kubernetes.watch.Watch()
        for event in watch.stream(core.list_namespaced_pod, "test", resource_version=since,
                                  timeout_seconds=10):
            obj = event["object"]
            events.append((event["type"], obj.metadata.name, obj.metadata.annotations or {}))
            if event["type"] == "DELETED":
                watch.stop()
        done.set()

    watcher = threading.Thread(target=watch_pods, daemon=True)
    watcher.start()
    patched = await asyncio.to_thread(
        core.patch_namespaced_pod, "tinypod", "test",
        {"metadata": {"annotations": {"k8s.ovn.org/pod-networks": "{}"}}},
    )
    assert patched.metadata.annotations["k8s.ovn.org/pod-networks"] == "{}"
    assert int(patched.metadata.resource_version) > int(pod.metadata.resource_version)
    await asyncio.to_thread(core.delete_namespaced_pod, "tinypod", "test")
    await asyncio.to_thread(done.wait, 10)
    assert [(kind, name) for kind, name, _ in events] == [
        ("MODIFIED", "tinypod"), ("DELETED", "tinypod")
    ]
    assert events[0][2]["k8s.ovn.org/pod-networks"] == "{}"

    # A JSON patch on the NAD bumps its generation; a stale resourceVersion is refused.
    new_config = json.dumps({**json.loads(LAYER2_NAD["spec"]["config"]), "mtu": 1300})
    updated = await asyncio.to_thread(
        custom.patch_namespaced_custom_object, NAD_GROUP, NAD_VERSION, "test", NAD_PLURAL,
        "nad-layer2", [{"op": "replace", "path": "/spec/config", "value": new_config}],
        _content_type="application/json-patch+json",
    )
    assert updated["metadata"]["generation"] == 2
    with pytest.raises(kubernetes.client.ApiException) as conflict:
        await asyncio.to_thread(
            custom.patch_namespaced_custom_object, NAD_GROUP, NAD_VERSION, "test", NAD_PLURAL,
            "nad-layer2", {"metadata": {"resourceVersion": nad["metadata"]["resourceVersion"],
                                        "labels": {"a": "b"}}},
        )
    assert conflict.value.status == 409
    with pytest.raises(kubernetes.client.ApiException) as missing:
        await asyncio.to_thread(core.read_namespaced_pod, "tinypod", "test")
    assert missing.value.status == 404
    with pytest.raises(kubernetes.client.ApiException) as exists:
        await asyncio.to_thread(custom.create_namespaced_custom_object,
                                NAD_GROUP, NAD_VERSION, "test", NAD_PLURAL, LAYER2_NAD)
    assert exists.value.status == 409


async def test_label_and_field_selectors_filter_lists(
    api: apiserver.ApiServer, tmp_path: pathlib.Path
) -> None:
    core = kubernetes.client.CoreV1Api(_client(api, tmp_path))
    for name, node in (("a", "node1"), ("b", "node2")):
        body = _pod(name)
        body["metadata"]["labels"] = {"app": name}
        body["spec"]["nodeName"] = node
        await asyncio.to_thread(core.create_namespaced_pod, "test", body)
    by_label = await asyncio.to_thread(core.list_namespaced_pod, "test", label_selector="app=a")
    by_field = await asyncio.to_thread(core.list_pod_for_all_namespaces,
                                       field_selector="spec.nodeName=node2")
    by_set = await asyncio.to_thread(core.list_namespaced_pod, "test",
                                     label_selector="app in (a,b),app!=b")
    assert [p.metadata.name for p in by_label.items] == ["a"]
    assert [p.metadata.name for p in by_field.items] == ["b"]
    assert [p.metadata.name for p in by_set.items] == ["a"]


async def test_lists_are_paginated_with_limit_and_continue(
    api: apiserver.ApiServer, tmp_path: pathlib.Path
) -> None:
    core = kubernetes.client.CoreV1Api(_client(api, tmp_path))
    for name in ("p3", "p1", "p4", "p2", "p5"):
        await asyncio.to_thread(core.create_namespaced_pod, "test", _pod(name))
    names, token, pages = [], None, 0
    while True:
        page = await asyncio.to_thread(core.list_pod_for_all_namespaces, limit=2,
                                       _continue=token)
        pages += 1
        assert len(page.items) <= 2
        names += [p.metadata.name for p in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert names == ["p1", "p2", "p3", "p4", "p5"] and pages == 3  # each pod once, in order
    with pytest.raises(kubernetes.client.ApiException) as refused:
        await asyncio.to_thread(core.list_pod_for_all_namespaces, limit=2, _continue="bogus")
    assert refused.value.status == 400


async def test_watch_from_a_forgotten_version_gets_410(
    api: apiserver.ApiServer, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    core = kubernetes.client.CoreV1Api(_client(api, tmp_path))
    api.emulator._log = type(api.emulator._log)(maxlen=2)
    for name in ("a", "b", "c", "d"):
        await asyncio.to_thread(core.create_namespaced_pod, "test", _pod(name))

    def first_event() -> dict[str, Any]:
        response = core.list_namespaced_pod("test", watch=True, resource_version="1",
                                            _preload_content=False, timeout_seconds=5)
        line = response.readline()
        response.release_conn()
        return dict(json.loads(line))

    event = await asyncio.to_thread(first_event)
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


@pytest.fixture
def standalone(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """The runner the sandbox uses, as a process; yields its kubeconfig."""
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen(
        [sys.executable, "-m", "ovnk_secondary.sandbox.apiserver",
         "--host", "127.0.0.1", "--port", "0", "--kubeconfig", str(kubeconfig)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not kubeconfig.exists():
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "the API emulator did not start in 20 s"
            time.sleep(0.05)
        yield kubeconfig
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0, "SIGTERM must stop the emulator cleanly"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _kubectl(kubeconfig: pathlib.Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args],
        input=stdin, capture_output=True, text=True, timeout=60,
        env={**os.environ, "KUBECTL_KUBERC": "false"},
    )
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def test_kubectl_applies_gets_and_deletes_a_nad(standalone: pathlib.Path) -> None:
    manifest = json.dumps(LAYER2_NAD)
    assert "created" in _kubectl(standalone, "--validate=false", "apply", "-f", "-",
                                 stdin=manifest)
    changed = json.loads(manifest)
    changed["spec"]["config"] = json.dumps({**json.loads(changed["spec"]["config"]), "mtu": 1300})
    assert "configured" in _kubectl(standalone, "--validate=false", "apply", "-f", "-",
                                    stdin=json.dumps(changed))
    shown = json.loads(_kubectl(standalone, "get", "net-attach-def", "-n", "test",
                                "nad-layer2", "-o", "json"))
    assert json.loads(shown["spec"]["config"])["mtu"] == 1300
    _kubectl(standalone, "delete", "network-attachment-definitions", "-n", "test", "nad-layer2")
    missing = subprocess.run(
        ["kubectl", "--kubeconfig", str(standalone), "get", "net-attach-def", "-n", "test",
         "nad-layer2"], capture_output=True, text=True, timeout=60,
    )
    assert missing.returncode != 0 and "NotFound" in missing.stderr


async def test_kopf_handles_creation_and_finalized_deletion(
    api: apiserver.ApiServer, tmp_path: pathlib.Path
) -> None:
    registry = kopf.OperatorRegistry()
    seen: list[tuple[str, str]] = []

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=api.url)

    @kopf.on.create(NAD_GROUP, NAD_VERSION, NAD_PLURAL, registry=registry)
    def created(name: str, body: kopf.Body, **_: Any) -> None:
        seen.append(("create", name))
        kopf.info(body, reason="Seen", message="created")

    @kopf.on.delete(NAD_GROUP, NAD_VERSION, NAD_PLURAL, registry=registry)
    def deleted(name: str, **_: Any) -> None:
        seen.append(("delete", name))

    settings = kopf.OperatorSettings()
    stop = asyncio.Event()
    ready = asyncio.Event()
    operator = asyncio.create_task(kopf.operator(
        registry=registry, settings=settings, clusterwide=True, standalone=True,
        stop_flag=stop, ready_flag=ready,
    ))
    try:
        await asyncio.wait_for(ready.wait(), 20)
        custom = kubernetes.client.CustomObjectsApi(_client(api, tmp_path))
        await asyncio.to_thread(custom.create_namespaced_custom_object,
                                NAD_GROUP, NAD_VERSION, "test", NAD_PLURAL, LAYER2_NAD)
        await _until(lambda: ("create", "nad-layer2") in seen, "kopf saw no creation")
        stored = api.emulator.stored(apiserver.NAD_RESOURCE, "test", "nad-layer2")
        assert stored is not None and stored["metadata"].get("finalizers"), (
            "kopf must have added its finalizer through a merge patch"
        )
        await asyncio.to_thread(custom.delete_namespaced_custom_object,
                                NAD_GROUP, NAD_VERSION, "test", NAD_PLURAL, "nad-layer2")
        await _until(lambda: ("delete", "nad-layer2") in seen, "kopf saw no deletion")
        await _until(
            lambda: api.emulator.stored(apiserver.NAD_RESOURCE, "test", "nad-layer2") is None,
            "the NAD stayed after kopf released its finalizer",
        )
        await _until(lambda: api.emulator.stored_all(("", "v1", "events")),
                     "kopf's Events (named by generateName) were not accepted")
    finally:
        stop.set()
        await asyncio.wait_for(operator, 20)


async def _until(predicate: Any, message: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.05)
