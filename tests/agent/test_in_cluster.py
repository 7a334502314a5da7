"""The node agent's errors as a user meets them: through the kubelet and Multus, as pod Events.

Runs on the sandbox cluster (real kubelets, containerd and Multus; the product deployed from its
manifests), the user's path: kubectl applies a NAD and a pod, the controller annotates the pod,
Multus runs our CNI binary and the kubelet turns the failed ADD into a `FailedCreatePodSandBox`
Event on the pod.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import ApiException

from ovnk_secondary.sandbox import cluster, scenario
from tests.agent import harness

pytestmark = pytest.mark.sandbox
NAMESPACE = "agent-events"
NAD = "nad-physnet9"
POD = "unmapped"


@pytest.fixture
def unmapped_pod(cluster_sandbox: cluster.Sandbox) -> Iterator[cluster.Sandbox]:
    """A localnet NAD whose physical network no node maps, and a pod on node-1 selecting it."""
    sb = cluster_sandbox
    core, custom = scenario.core_api(sb), scenario.custom_api(sb)
    scenario.ensure_namespace(sb, NAMESPACE)
    config = {"cniVersion": "0.3.1", "name": "localnet9", "type": "ovn-k8s-cni-overlay",
              "topology": "localnet", "netAttachDefName": f"{NAMESPACE}/{NAD}", "vlanID": 39,
              "physicalNetworkName": "physnet9"}
    custom.create_namespaced_custom_object(
        harness.NAD_GROUP, harness.NAD_VERSION, NAMESPACE, harness.NAD_PLURAL,
        {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
         "metadata": {"name": NAD, "namespace": NAMESPACE},
         "spec": {"config": json.dumps(config)}})
    core.create_namespaced_pod(NAMESPACE, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": POD, "namespace": NAMESPACE, "annotations": {
            "k8s.v1.cni.cncf.io/networks": json.dumps([{"name": NAD}])}},
        "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 1, "containers": [
            {"name": "c", "image": "ovnk-sandbox/workload:busybox",
             "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}]}})
    try:
        yield sb
    finally:
        _delete(lambda: core.delete_namespaced_pod(POD, NAMESPACE))
        scenario.wait_gone(sb, [POD], namespace=NAMESPACE)
        _delete(lambda: custom.delete_namespaced_custom_object(
            harness.NAD_GROUP, harness.NAD_VERSION, NAMESPACE, harness.NAD_PLURAL, NAD))
        # the controller removes the network's switch on its own time
        harness.wait_until(lambda: "localnet9_ovn_localnet_switch" not in sb.ovn_nbctl(
            "--bare", "--columns=name", "list", "Logical_Switch").split(), timeout=30,
            what="the controller to remove the unmapped network's switch")


def _delete(call: Any) -> None:
    try:
        call()
    except ApiException as exc:
        if exc.status != 404:
            raise


def test_an_unmapped_physical_network_reaches_the_pod_as_an_event(
        unmapped_pod: cluster.Sandbox) -> None:
    core = scenario.core_api(unmapped_pod)

    def failure() -> str | None:
        for event in core.list_namespaced_event(NAMESPACE).items:
            if (event.involved_object.name == POD and event.reason == "FailedCreatePodSandBox"
                    and "physical network" in (event.message or "")):
                return str(event.message)
        return None

    message = harness.wait_until(failure, timeout=60, interval=0.5,
                                 what="a FailedCreatePodSandBox Event on the pod")
    assert (f"physical network physnet9 of NAD {NAMESPACE}/{NAD} is not mapped on node node-1 "
            "(ovn-bridge-mappings: localnet1:br-ex,localnet2:ovs-br1)") in message, message
    # as the kubelet words it: Multus' failure, carrying our error's msg and details (the
    # code, 105, is in the error object, which Multus does not print)
    assert 'plugin type="multus"' in message and "error adding container to network" in message
    assert "add it to the bridge-mappings file of the node agent" in message, message
    pod = core.read_namespaced_pod(POD, NAMESPACE)
    assert pod.status.phase != "Running", "the pod must not look fine"
