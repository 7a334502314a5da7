"""Reading the controller's pod annotation through a real (emulated) Kubernetes API."""

from __future__ import annotations

import asyncio
import json
import pathlib
import time
from collections.abc import Iterator
from concurrent import futures

import pytest

from ovnk_secondary import errors
from ovnk_secondary.agent import pods
from tests import kube
from tests.agent import harness

NAD = "ns1/l2-network"


@pytest.fixture
def reader(api: kube.KubeApi, tmp_path: pathlib.Path) -> Iterator[pods.PodReader]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(api.kubeconfig_text())
    executor = futures.ThreadPoolExecutor(4)
    reader = pods.PodReader(kubeconfig=str(kubeconfig), executor=executor)
    reader.watch_node("node-1")
    try:
        yield reader
    finally:
        reader.close()
        executor.shutdown(wait=False)


def _create(api: kube.KubeApi, name: str, annotations: dict[str, str]) -> str:
    core = api.core()
    core.create_namespaced_pod("ns1", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns1", "annotations": annotations},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x"}]}})
    uid: str = core.read_namespaced_pod(name, "ns1").metadata.uid
    return uid


ENTRY = {NAD: {"ip_addresses": ["10.100.0.5/24"], "mac_address": "0a:58:0a:64:00:05",
               "role": "secondary"}}


def test_annotation_written_later_is_seen_promptly(api: kube.KubeApi,
                                                   reader: pods.PodReader) -> None:
    uid = _create(api, "late", {})
    harness.wait_until(lambda: reader.watch is not None and reader.watch.get("ns1", "late"),
                       timeout=10, what="the watch to see the pod")

    async def scenario() -> tuple[object, float]:
        waiting = asyncio.ensure_future(reader.wait_for_network(
            namespace="ns1", name="late", uid=uid, nad_key=NAD, timeout=20))
        await asyncio.sleep(0.5)
        written = time.monotonic()
        patch = {"metadata": {"annotations": {pods.ANNOTATION: json.dumps(ENTRY)}}}
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: api.core().patch_namespaced_pod("late", "ns1", patch))
        network = await waiting
        return network, time.monotonic() - written

    network, delay = asyncio.run(scenario())
    assert network is not None and getattr(network, "mac_address", None) == "0a:58:0a:64:00:05"
    # the fallback GET would come 1.5 s after the patch (2 s after the first read)
    assert delay < 1.0, "the watch, not the fallback GET, must wake the wait"


def test_missing_annotation_times_out_and_recreated_pod_is_refused(
        api: kube.KubeApi, reader: pods.PodReader) -> None:
    uid = _create(api, "never", {"k8s.ovn.org/pod-networks": json.dumps(ENTRY)})

    async def scenario() -> object:
        return await reader.wait_for_network(namespace="ns1", name="never", uid=uid,
                                             nad_key="ns1/other", timeout=0.5)

    assert asyncio.run(scenario()) is None

    async def stale() -> object:
        return await reader.wait_for_network(namespace="ns1", name="never", uid="old-uid",
                                             nad_key=NAD, timeout=5)

    with pytest.raises(errors.OvnkSecondaryError, match="was re-created"):
        asyncio.run(stale())


def test_a_pod_being_deleted_ends_the_wait(api: kube.KubeApi, reader: pods.PodReader) -> None:
    """A pod deleted before the controller annotated it (e.g. one the controller refuses):
    the kubelet's sandbox creation waits for this ADD, and the pod's deletion for the sandbox,
    so the wait ends at once instead of at its timeout."""
    uid = _create(api, "going", {})

    async def scenario() -> object:
        waiting = asyncio.ensure_future(reader.wait_for_network(
            namespace="ns1", name="going", uid=uid, nad_key=NAD, timeout=60))
        await asyncio.sleep(0.5)
        # bound to a node with no kubelet here: the pod stays, with its deletionTimestamp
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: api.core().delete_namespaced_pod("going", "ns1",
                                                           grace_period_seconds=30))
        return await waiting

    with pytest.raises(errors.OvnkSecondaryError, match="is being deleted"):
        asyncio.run(scenario())
    # an annotated pod being deleted still gets its entry (a retried ADD of a running pod)
    uid = _create(api, "annotated", {pods.ANNOTATION: json.dumps(ENTRY)})
    api.core().delete_namespaced_pod("annotated", "ns1", grace_period_seconds=30)

    async def annotated() -> object:
        return await reader.wait_for_network(namespace="ns1", name="annotated", uid=uid,
                                             nad_key=NAD, timeout=5)

    assert asyncio.run(annotated()) is not None
