"""The node agent's /metrics, scraped over HTTP from the real agent (`main.serve`, in a thread)
with a real local OVS, a real API server and the real CNI binary on its socket.

The test plays the other components: the controller (it writes the pods' pod-networks
annotation) and ovn-controller (it marks ports `ovn-installed`). The node's gauges are read from
this agent's OVS at each scrape, so their absolute values are checked; counters and histograms
belong to the process and earlier tests moved them too: they are compared before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from ovnk_secondary import podnetworks
from ovnk_secondary.agent import interfaces
from ovnk_secondary.agent import main as agent_main
from tests import kube, loops, metrics
from tests.agent import conftest, harness

NODE = "node-m"
NAD = "ns1/l2"
CONFIG = {"cniVersion": "0.4.0", "name": "l2-network", "type": "ovn-k8s-cni-overlay",
          "topology": "layer2", "netAttachDefName": NAD, "subnets": "10.100.0.0/24"}
MAPPINGS = "bridgeMappings:\n  - physicalNetworkName: physnet-m\n    bridge: br-m\n"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Agent:
    """`ovnk-secondary node-agent` in-process, and what a test does with it."""

    def __init__(self, *, switch: conftest.LocalSwitch, kubeconfig: pathlib.Path,
                 directory: pathlib.Path, shim: pathlib.Path, netns: str) -> None:
        self.switch = switch
        self.shim = shim
        self.netns = netns
        self.socket = str(directory / "run" / "cni.sock")
        self.mappings = directory / "bridge-mappings.yaml"
        self.mappings.write_text(MAPPINGS)
        self.port = _free_port()
        parser = argparse.ArgumentParser()
        agent_main.add_arguments(parser)
        self.args = parser.parse_args([
            "--node-name", NODE, "--ovs-db", switch.remote, "--kubeconfig", str(kubeconfig),
            "--bridge-mappings", str(self.mappings), "--socket", self.socket,
            "--annotation-timeout", "1", "--binding-timeout", "2", "--workers", "8",
            "--health-port", str(self.port), "--health-host", "127.0.0.1"])
        self.thread = loops.LoopThread()
        self.stop = asyncio.Event()
        self.running = asyncio.run_coroutine_threadsafe(
            agent_main.serve(self.args, stop=self.stop), self.thread.loop)

    def close(self) -> None:
        self.thread.loop.call_soon_threadsafe(self.stop.set)
        try:
            self.running.result(30)
        finally:
            self.thread.close()

    def get(self, path: str) -> tuple[int, str]:
        """(status, body) of GET `path` on the health port; (0, "") while nothing listens."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def scrape(self) -> metrics.Samples:
        return metrics.scrape(f"http://127.0.0.1:{self.port}/metrics")

    def cni(self, command: str, *, pod: dict[str, Any], ifname: str = "net1") -> tuple[int, Any]:
        """Run the CNI binary as Multus does; (exit code, what it printed)."""
        metadata = pod["metadata"]
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command,
               "CNI_CONTAINERID": f"sandbox-{metadata['name']}", "CNI_NETNS": self.netns,
               "CNI_IFNAME": ifname, "CNI_PATH": "/opt/cni/bin",
               "CNI_ARGS": f"K8S_POD_NAMESPACE={metadata['namespace']};"
                           f"K8S_POD_NAME={metadata['name']};K8S_POD_UID={metadata['uid']}",
               "OVNK_SECONDARY_CNI_SOCKET": self.socket}
        done = subprocess.run([str(self.shim)], input=json.dumps(CONFIG).encode(), env=env,
                              capture_output=True, timeout=60, check=False)
        return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None

    @contextlib.contextmanager
    def ovn_controller(self, pod: dict[str, Any], ifname: str = "net1") -> Iterator[None]:
        """Mark the pod interface's OVS port ovn-installed as soon as it is plugged."""
        name = interfaces.host_ifname(container_id=f"sandbox-{pod['metadata']['name']}",
                                      ifname=ifname)
        done = threading.Event()

        def mark() -> None:
            while not done.is_set():
                try:
                    self.switch.vsctl("set", "interface", name,
                                      "external_ids:ovn-installed=true")
                    return
                except subprocess.CalledProcessError:  # not plugged yet
                    done.wait(0.05)

        marker = threading.Thread(target=mark, daemon=True)
        marker.start()
        try:
            yield
        finally:
            done.set()
            marker.join(10)


@pytest.fixture
def agent_kubeconfig(api: kube.KubeApi, tmp_path: pathlib.Path) -> pathlib.Path:
    """The node agent's credentials as its pod on NODE has them: a ServiceAccount token bound
    to that pod, which names the node (the Node policy lets the agent annotate only it)."""
    core = api.core()
    core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    core.create_namespaced_pod(kube.PRODUCT_NAMESPACE, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "node-agent-m"},
        "spec": {"nodeName": NODE, "serviceAccountName": kube.NODE_AGENT,
                 "containers": [{"name": "agent", "image": "ovnk-secondary"}]}})
    return api.plane.service_account_kubeconfig(
        kube.PRODUCT_NAMESPACE, kube.NODE_AGENT, tmp_path / "agent.kubeconfig",
        duration="1h", pod="node-agent-m")


@pytest.fixture
def agent(api: kube.KubeApi, agent_kubeconfig: pathlib.Path,
          local_switch: conftest.LocalSwitch, pod_netns: str, cni_shim: pathlib.Path,
          tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Agent]:
    monkeypatch.setattr(agent_main, "MAPPINGS_POLL", 0.2)  # file edits seen within moments
    api.custom().create_namespaced_custom_object(
        harness.NAD_GROUP, harness.NAD_VERSION, "ns1", harness.NAD_PLURAL,
        {"apiVersion": f"{harness.NAD_GROUP}/{harness.NAD_VERSION}",
         "kind": "NetworkAttachmentDefinition", "metadata": {"namespace": "ns1", "name": "l2"},
         "spec": {"config": json.dumps(CONFIG)}})
    running = Agent(switch=local_switch, kubeconfig=agent_kubeconfig, directory=tmp_path,
                    shim=cni_shim, netns=pod_netns)
    try:
        harness.wait_until(lambda: running.get("/readyz") == (200, "ready\n"), timeout=30,
                           what="the agent to be ready")
        yield running
    finally:
        running.close()


def _pod(api: kube.KubeApi, name: str, *, address: str | None) -> dict[str, Any]:
    """A pod on NODE; with `address`, annotated as the controller would."""
    annotations = {"k8s.v1.cni.cncf.io/networks": "l2"}
    if address is not None:
        annotations[podnetworks.ANNOTATION] = podnetworks.encode({NAD: podnetworks.PodNetwork(
            ip_addresses=(address,), mac_address=podnetworks.mac_address((address,)))})
    created: dict[str, Any] = api.client.sanitize_for_serialization(
        api.core().create_namespaced_pod("ns1", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "i"}]}}))
    return created


def _delta(before: metrics.Samples, after: metrics.Samples, name: str, **labels: str) -> float:
    return (metrics.value(after, name, **labels) or 0) - (metrics.value(before, name, **labels)
                                                          or 0)


def test_cni_requests_are_timed_by_command_and_result(api: kube.KubeApi, agent: Agent) -> None:
    plugged = _pod(api, "plugged", address="10.100.0.5/24")
    unbound = _pod(api, "unbound", address="10.100.0.6/24")
    unannotated = _pod(api, "unannotated", address=None)
    before = agent.scrape()
    assert metrics.series(before, "ovnk_secondary_pod_attachments") == []

    with agent.ovn_controller(plugged):
        assert agent.cni("ADD", pod=plugged)[0] == 0
    code, answer = agent.cni("ADD", pod=unbound, ifname="net2")  # nobody marks it installed
    assert (code, answer["code"]) == (1, 101)
    code, answer = agent.cni("ADD", pod=unannotated, ifname="net3")
    assert (code, answer["code"]) == (1, 100)
    after = agent.scrape()
    requests = "ovnk_secondary_cni_request_seconds_count"
    assert _delta(before, after, requests, command="ADD", result="success") == 1
    assert _delta(before, after, requests, command="ADD", result="101") == 1
    assert _delta(before, after, requests, command="ADD", result="100") == 1
    waits = "ovnk_secondary_ovn_installed_wait_seconds_count"
    assert _delta(before, after, waits, result="installed") == 1
    assert _delta(before, after, waits, result="timeout") == 1
    # the failed ADD took its port away again
    assert metrics.series(after, "ovnk_secondary_pod_attachments") == [{"nad": NAD}]
    assert metrics.value(after, "ovnk_secondary_pod_attachments", nad=NAD) == 1

    assert agent.cni("DEL", pod=plugged) == (0, None)
    final = agent.scrape()
    assert _delta(after, final, requests, command="DEL", result="success") == 1
    assert metrics.series(final, "ovnk_secondary_pod_attachments") == []


def test_ovs_errors_and_bridge_mappings_are_reported_beside_the_probes(
        api: kube.KubeApi, agent: Agent, local_switch: conftest.LocalSwitch) -> None:
    before = agent.scrape()
    assert metrics.value(before, "ovnk_secondary_bridge_mappings_applied") == 1
    assert agent.get("/healthz") == (200, "ok\n")

    # br-int missing (ovn-controller has not made it yet): the plug fails in OVSDB
    local_switch.vsctl("del-br", "br-int")
    pod = _pod(api, "early", address="10.100.0.7/24")
    code, answer = agent.cni("ADD", pod=pod)
    assert (code, answer["code"]) == (1, 103)
    after = agent.scrape()
    assert _delta(before, after, "ovnk_secondary_ovs_errors_total", operation="plug") == 1
    assert _delta(before, after, "ovnk_secondary_cni_request_seconds_count", command="ADD",
                  result="103") == 1

    agent.mappings.write_text(MAPPINGS + "    uplinks: [nosuchnic0]\n")
    harness.wait_until(lambda: metrics.value(agent.scrape(),
                                             "ovnk_secondary_bridge_mappings_applied") == 0,
                       timeout=10, what="the gauge to say the mappings are not applied")
    status, text = agent.get("/readyz")
    assert status == 503 and "bridge mappings not applied" in text
