"""End to end: the reference scenario through the whole path, on real nodes.

kubectl -> API -> controller (its Deployment) -> NB -> northd -> SB -> ovn-controller, and
API -> kubelet -> containerd -> Multus -> our CNI binary -> node agent (its DaemonSet) -> OVS.
The manifests are `manifests/examples/`, applied as a user applies them; the pods are real
containers and every ping runs in one with `kubectl exec`. Tests run in file order on one
sandbox cluster; the last ones delete.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes
import pytest

from ovnk_secondary.sandbox import cluster, scenario

pytestmark = pytest.mark.sandbox
NS = scenario.NAMESPACE


@pytest.fixture(scope="module")
def sb(cluster_sandbox: cluster.Sandbox) -> Iterator[cluster.Sandbox]:
    scenario.apply_examples(cluster_sandbox)
    scenario.wait_ready(cluster_sandbox, scenario.PODS)
    yield cluster_sandbox


def _iface_ids(sb: cluster.Sandbox, node: str) -> list[str]:
    """external_ids:iface-id of every OVS interface on `node`."""
    out = sb.exec(node, "ovs-vsctl --format=json --columns=external_ids list Interface").stdout
    ids = []
    for (external_ids,) in json.loads(out)["data"]:
        ids += [value for key, value in external_ids[1] if key == "iface-id"]
    return ids


def _names(sb: cluster.Sandbox, table: str, *, owned: bool = False) -> list[str]:
    """Names of the rows of an NB table (only those carrying our ownership marker if `owned`)."""
    where = ["find", table, "external_ids:ovnk-secondary.io/owner=ovnk-secondary"]
    return sb.ovn_nbctl("--bare", "--columns=name", *(where if owned else ["list", table])).split()


def _eventually(check: Callable[[], bool], *, timeout: float = 30,
                show: Callable[[], object] | None = None) -> None:
    """Poll `check` until true; on timeout fail, with what `show` returns (the last seen)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, (
            f"still not true after {timeout} s" + (f"; last seen: {show()}" if show else ""))
        time.sleep(0.3)


def _ip(pod: scenario.PodView, interface: str = "net1") -> str:
    return pod.addresses(interface)[0].split("/")[0]


def test_northbound_reads_as_ovn_kubernetes_writes_it(sb: cluster.Sandbox) -> None:
    switches = sb.ovn_nbctl("--bare", "--columns=name", "list", "Logical_Switch").split()
    assert {
        "l2.network_ovn_layer2_switch",
        "localnet1_ovn_localnet_switch",
        "localnet2_ovn_localnet_switch",
    } <= set(switches)
    assert (
        sb.ovn_nbctl(
            "get", "Logical_Switch_Port", "localnet1_ovn_localnet_port", "tag_request"
        ).strip()
        == "34"
    )
    assert (
        sb.ovn_nbctl(
            "get", "Logical_Switch_Port", "localnet2_ovn_localnet_port", "tag_request"
        ).strip()
        == "33"
    )
    ports = sb.ovn_nbctl("lsp-list", "l2.network_ovn_layer2_switch")
    for name in ("l2-pod-1", "l2-pod-2", "two-networks-pod"):
        assert f"(test.nad.layer2_test_{name})" in ports
    chassis = sb.ovn_nbctl(
        "get", "Logical_Switch_Port", "test.nad.layer2_test_l2-pod-2", "options:requested-chassis"
    ).strip()
    assert chassis == '"node-2"' or chassis == "node-2"


def test_layer2_pods_on_two_nodes_ping_over_geneve(sb: cluster.Sandbox) -> None:
    a, b = scenario.view(sb, "l2-pod-1"), scenario.view(sb, "l2-pod-2")
    assert a.node != b.node
    reached, lines = scenario.captured_ping(
        sb, a, _ip(b), on=(a.node, "underlay0"), bpf_filter="udp port 6081", extra_args=("-v",)
    )
    assert reached
    outer, inner = scenario.geneve_evidence(lines, _ip(a), _ip(b)) or ("", "")
    assert "Geneve" in outer and ".6081:" in outer and "vni 0x" in outer, lines[:6]
    assert f"{_ip(a)} > {_ip(b)}: ICMP echo request" in inner


def test_other_networks_cannot_reach_layer2_pods(sb: cluster.Sandbox) -> None:
    """localnet2-pod claims 10.100.0.0/24 is on-link and asks for l2-pod-1: the ARP goes out on
    its own network and never reaches the layer2 pod, which would answer it if it arrived."""
    stranger, target = scenario.view(sb, "localnet2-pod"), scenario.view(sb, "l2-pod-1")
    scenario.on_pod_network(
        sb, stranger, ["ip", "route", "add", "10.100.0.0/24", "dev", "net1"], check=True
    )
    try:
        # everything that reaches the target's net1 passes its OVS port on the node
        with sb.capture(target.node, target.host_ports["net1"], "arp") as seen:
            assert not scenario.ping(sb, stranger, _ip(target), replies=1, deadline=2)
        assert not any("who-has" in line for line in seen.lines), seen.lines
    finally:
        scenario.on_pod_network(sb, stranger,
                                ["ip", "route", "del", "10.100.0.0/24", "dev", "net1"])


@pytest.mark.parametrize(
    ("pod_name", "vlan", "uplink", "other_vlan"),
    [("localnet2-pod", 33, "enp2s0", 34), ("localnet1-pod", 34, "enp1s0", 33)],
)
def test_localnet_pod_reaches_its_vlan_host_tagged_through_its_bridge(
    sb: cluster.Sandbox, pod_name: str, vlan: int, uplink: str, other_vlan: int
) -> None:
    pod = scenario.view(sb, pod_name)
    _, host = cluster.EXTERNAL_HOSTS[vlan]
    # leaves the node through the mapped bridge's uplink (ovs-br1: enp2s0, br-ex: enp1s0), tagged
    reached, lines = scenario.captured_ping(
        sb, pod, host, on=(pod.node, uplink), bpf_filter="vlan and icmp"
    )
    assert reached
    requests = scenario.vlan_evidence(lines, _ip(pod), host)
    assert requests and all(f"vlan {vlan}," in line for line in requests), lines
    # the other VLAN's host: declared on-link, the ARP for it stays on our VLAN, unanswered
    _, other_host = cluster.EXTERNAL_HOSTS[other_vlan]
    other_subnet = other_host.rsplit(".", 1)[0] + ".0/24"
    scenario.on_pod_network(sb, pod, ["ip", "route", "add", other_subnet, "dev", "net1"],
                            check=True)
    try:
        with sb.capture(pod.node, uplink, "vlan and arp") as arp:
            assert not scenario.ping(sb, pod, other_host, replies=1, deadline=2)
            asked = arp.wait_for(lambda line: f"who-has {other_host}" in line, timeout=3)
        assert asked is not None and f"vlan {vlan}," in asked, arp.lines
        assert not any(f"{other_host} is-at" in line for line in arp.lines), arp.lines
    finally:
        scenario.on_pod_network(sb, pod, ["ip", "route", "del", other_subnet, "dev", "net1"])


def test_pod_with_two_networks_has_both_interfaces_as_annotated(sb: cluster.Sandbox) -> None:
    pod = scenario.view(sb, "two-networks-pod")
    assert pod.ready
    annotated = pod.pod_networks
    assert set(annotated) == {"test/nad-layer2", "test/nad-localnet2"}
    status = {s["name"]: s for s in pod.network_status}
    for nad, interface in (("test/nad-layer2", "net1"), ("test/nad-localnet2", "net2")):
        assert pod.addresses(interface) == annotated[nad]["ip_addresses"]
        assert pod.mac(interface) == annotated[nad]["mac_address"]
        assert status[nad]["interface"] == interface
        assert status[nad]["mac"] == annotated[nad]["mac_address"]
        assert status[nad]["ips"] == [a.split("/")[0] for a in annotated[nad]["ip_addresses"]]
    assert scenario.ping(sb, pod, _ip(scenario.view(sb, "l2-pod-2")))
    assert scenario.ping(sb, pod, cluster.EXTERNAL_HOSTS[33][1])


# Run in a node agent's container, with its in-cluster credentials (its pod's token): one merge
# patch of a Node; prints "allowed" or the API server's status and message. Its user agent marks
# its requests in the audit log (the refusals it provokes are expected).
PATCH_NODE = """
import json, sys
from kubernetes import client, config
config.load_incluster_config()
api = client.ApiClient()
api.user_agent = "ovnk-e2e-agent-policy"
try:
    client.CoreV1Api(api).patch_node(sys.argv[1], json.loads(sys.argv[2]),
                                     _content_type="application/merge-patch+json")
    print("allowed")
except client.ApiException as exc:
    print(exc.status, json.loads(exc.body)["message"])
"""


def test_diagnose_walks_every_link_and_stops_at_the_broken_one(sb: cluster.Sandbox) -> None:
    """`ovnk-secondary diagnose` as an admin runs it (kubeconfig, NB, SB; the node's OVSDB
    through its agent pod): every link of a healthy pod holds; a NIC down and a missing NAD
    are each named as the broken link, with the fix, and exit status 1."""
    code, output = scenario.diagnose(sb, "pod", f"{NS}/two-networks-pod")
    assert code == 0, output
    assert "FAILED" not in output and output.count("  ok ") == 7 + 11, output
    code, output = scenario.diagnose(sb, "network", "localnet1")
    assert code == 0 and output.count("  ok ") == 4 + 2 * len(sb.node_names), output

    pod = scenario.view(sb, "localnet1-pod")  # localnet1: br-ex, uplink enp1s0
    sb.exec(pod.node, ["ip", "link", "set", "enp1s0", "down"])
    try:
        code, output = scenario.diagnose(sb, "pod", f"{NS}/localnet1-pod")
    finally:
        sb.exec(pod.node, ["ip", "link", "set", "enp1s0", "up"])
    assert code == 1, output
    failed = [line for line in output.splitlines() if "FAILED" in line]
    assert failed == [f"  FAILED bridge br-ex on {pod.node} has an uplink that is up: "
                      "enp1s0 down"], output
    assert "fix: bring the NIC up" in output
    _eventually(lambda: scenario.diagnose(sb, "pod", f"{NS}/localnet1-pod")[0] == 0)

    scenario.kubectl(sb, "run", "lost-pod", "-n", NS, "--image",
                     "ovnk-sandbox/workload:busybox", "--image-pull-policy", "IfNotPresent",
                     "--annotations", "k8s.v1.cni.cncf.io/networks=nad-missing",
                     "--command", "--", "sleep", "3600")
    try:
        _eventually(lambda: "on node node-" in scenario.diagnose(sb, "pod", f"{NS}/lost-pod")[1])
        code, output = scenario.diagnose(sb, "pod", f"{NS}/lost-pod")
        assert code == 1 and "FAILED NAD test/nad-missing exists: not found" in output, output
        assert "fix: create NetworkAttachmentDefinition test/nad-missing" in output
    finally:
        scenario.kubectl(sb, "delete", "pod", "-n", NS, "lost-pod")


_METRICS_NAD = {
    "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
    "metadata": {"name": "nad-pool", "namespace": NS},
    "spec": {"config": json.dumps({
        "cniVersion": "0.3.1", "name": "pool-network", "type": "ovn-k8s-cni-overlay",
        "topology": "layer2", "subnets": "10.123.0.0/29", "netAttachDefName": f"{NS}/nad-pool"})},
}


def _samples(samples: list[scenario.Sample], name: str) -> dict[tuple[tuple[str, str], ...],
                                                                 float]:
    return {tuple(sorted(labels.items())): value for n, labels, value in samples if n == name}


def test_metrics_count_what_the_cluster_holds(sb: cluster.Sandbox) -> None:
    """/metrics of the deployed controller and of each node's agent, scraped on the nodes:
    the model follows the cluster's objects (an IP pool fills with its pods, its series go with
    its NAD), the agents' counts follow their ADDs."""
    controller = scenario.controller_metrics(sb)
    assert _samples(controller, "ovnk_secondary_leader") == {(): 1.0}
    assert _samples(controller, "ovnk_secondary_networks") == {
        (("topology", "layer2"),): 1.0, (("topology", "localnet"),): 2.0}
    assert _samples(controller, "ovnk_secondary_nb_transaction_failures_total") == {(): 0.0}

    pool = (("network", "pool-network"), ("subnet", "10.123.0.0/29"))
    sb.kubectl("apply", "-f", "-", stdin=json.dumps(_METRICS_NAD))
    names = ["pool-pod-1", "pool-pod-2"]
    for name in names:
        sb.kubectl("run", name, "-n", NS, "--image", "ovnk-sandbox/workload:busybox",
                   "--image-pull-policy", "IfNotPresent", "--annotations",
                   "k8s.v1.cni.cncf.io/networks=nad-pool", "--command", "--", "sleep", "3600")
    try:
        scenario.wait_ready(sb, names)
        controller = scenario.controller_metrics(sb)
        assert _samples(controller, "ovnk_secondary_ip_pool_addresses")[pool] == 6  # a /29
        assert _samples(controller, "ovnk_secondary_ip_pool_used_addresses")[pool] == 2
        for node in sb.node_names:
            agent = scenario.agent_metrics(sb, node)
            plugged = _samples(agent, "ovnk_secondary_pod_attachments")
            assert sum(plugged.values()) == len(scenario.our_ports(sb, node)) > 0
            adds = _samples(agent, "ovnk_secondary_cni_request_seconds_count")
            # every interface this agent process plugged came from a successful ADD
            assert adds.get((("command", "ADD"), ("result", "success")), 0) >= sum(
                plugged.values())
            assert _samples(agent, "ovnk_secondary_bridge_mappings_applied") == {(): 1.0}
    finally:
        sb.kubectl("delete", "pod", "-n", NS, *names)
        sb.kubectl("delete", "network-attachment-definitions", "-n", NS, "nad-pool")
    _eventually(lambda: pool not in _samples(scenario.controller_metrics(sb),
                                             "ovnk_secondary_ip_pool_addresses"))


def test_a_node_agent_may_change_only_its_own_nodes_report(sb: cluster.Sandbox) -> None:
    """manifests/node-agent-policy.yaml: RBAC lets the agent patch every Node; the admission
    policy lets it change only its own Node's ovnk-secondary.io/bridge-mappings annotation."""
    agent = sb.kubectl("get", "pods", "-n", cluster.PRODUCT_NAMESPACE, "-o", "name",
                       "-l", "app.kubernetes.io/component=node-agent",
                       "--field-selector=spec.nodeName=node-1").stdout.split()[0]

    def patch(node: str, metadata: dict[str, Any]) -> str:
        return sb.kubectl("exec", "-n", cluster.PRODUCT_NAMESPACE, agent, "-c", "node-agent",
                          "--", "/opt/venv/bin/python", "-c", PATCH_NODE, node,
                          json.dumps({"metadata": metadata})).stdout.strip()

    report = json.loads(sb.kubectl("get", "node", "node-1", "-o", "json").stdout)[
        "metadata"]["annotations"]["ovnk-secondary.io/bridge-mappings"]
    # its own report, rewritten as it is: allowed (the agent does this itself)
    assert patch("node-1", {"annotations": {"ovnk-secondary.io/bridge-mappings": report}}) \
        == "allowed"
    other = patch("node-2", {"annotations": {"ovnk-secondary.io/bridge-mappings": "{}"}})
    assert other.startswith("403") and "only the Node its pod runs on, not node-2" in other, other
    for metadata in ({"labels": {"evil": "true"}}, {"annotations": {"evil": "true"}}):
        own = patch("node-1", metadata)
        assert own.startswith("403") and "only the ovnk-secondary.io/bridge-mappings" in own, own
    node = json.loads(sb.kubectl("get", "node", "node-1", "-o", "json").stdout)["metadata"]
    assert "evil" not in node.get("labels", {}) and "evil" not in node["annotations"]


def test_an_uplink_carrying_the_nodes_address_is_refused_on_the_node(
        sb: cluster.Sandbox) -> None:
    """The bridge-mappings ConfigMap names each node's management NIC (its address, the API
    server's and NB's route) as an uplink: the agents refuse it, say so on their Node
    (annotation, Warning Event) and in readiness, and change nothing; the file fixed, they
    apply it again."""
    central = sb.nb_connection.split(":")[1]
    nics = {node: sb.exec(node, ["ip", "-o", "route", "get", central]).stdout.split(" dev ")[1]
            .split()[0] for node in sb.node_names}
    assert len(set(nics.values())) == 1, nics  # one ConfigMap for all nodes
    nic = nics[sb.node_names[0]]
    name = "ovnk-secondary-bridge-mappings"
    original = json.loads(sb.kubectl("get", "configmap", "-n", cluster.PRODUCT_NAMESPACE, name,
                                     "-o", "json").stdout)["data"]["bridge-mappings.yaml"]
    dangerous = original + (f"  - physicalNetworkName: danger\n    bridge: br-danger\n"
                            f"    uplinks: [{nic}]\n")

    def report(node: str) -> dict[str, Any]:
        annotations = json.loads(sb.kubectl("get", "node", node, "-o", "json").stdout)[
            "metadata"]["annotations"]
        return dict(json.loads(annotations["ovnk-secondary.io/bridge-mappings"]))

    def set_file(text: str) -> None:
        sb.kubectl("patch", "configmap", "-n", cluster.PRODUCT_NAMESPACE, name, "--type=merge",
                   "-p", json.dumps({"data": {"bridge-mappings.yaml": text}}))

    before = {node: sb.exec(node, "ovs-vsctl get open . external_ids:ovn-bridge-mappings")
              .stdout for node in sb.node_names}
    set_file(dangerous)
    try:
        # the kubelet refreshes a mounted ConfigMap within about a minute
        _eventually(lambda: all(report(n)["error"] for n in sb.node_names), timeout=180)
        for node in sb.node_names:
            error = report(node)["error"]
            refusal = f"uplink NIC {nic} of bridge br-danger carries the node's address"
            assert refusal in error, error
            assert "moveAddresses: true" in error, error
            assert sb.exec(node, ["ip", "-o", "-4", "addr", "show", "dev", nic]).stdout.strip()
            assert sb.exec(node, "ovs-vsctl br-exists br-danger", check=False).exit_code == 2
            assert sb.exec(node, "ovs-vsctl get open . external_ids:ovn-bridge-mappings"
                           ).stdout == before[node]
        events = json.loads(sb.kubectl("get", "events", "-A", "--field-selector",
                                       "reason=BridgeMappingsRefused", "-o", "json").stdout)
        assert {e["involvedObject"]["name"] for e in events["items"]} >= set(sb.node_names)
        _eventually(lambda: sb.kubectl(
            "get", "daemonset", "-n", cluster.PRODUCT_NAMESPACE, "ovnk-secondary-node-agent",
            "-o", "jsonpath={.status.numberReady}").stdout == "0", timeout=60)
        # pods keep working meanwhile: the agents still serve (readiness is not liveness)
        assert scenario.ping(sb, scenario.view(sb, "l2-pod-1"),
                             _ip(scenario.view(sb, "l2-pod-2")))
    finally:
        set_file(original)
    _eventually(lambda: not any(report(n)["error"] for n in sb.node_names), timeout=180)
    sb.kubectl("rollout", "status", "daemonset", "-n", cluster.PRODUCT_NAMESPACE,
               "ovnk-secondary-node-agent", "--timeout=120s")


def _controller_nb(sb: cluster.Sandbox, remote: str) -> None:
    """Point the deployed controller at `remote` (its ConfigMap) and roll it out."""
    sb.kubectl("patch", "configmap", "-n", cluster.PRODUCT_NAMESPACE,
               "ovnk-secondary-controller", "--type=merge", "-p",
               json.dumps({"data": {"ovn-nb": remote}}))
    sb.rollout_restart_controller()


def test_the_deployed_controller_reaches_nb_over_tls_from_its_secret(
    sb: cluster.Sandbox, tmp_path: pathlib.Path,
) -> None:
    """Issue 16, item 2 on the real cluster: NB serves TLS, the user creates the Secret the
    Deployment mounts (manifests/controller.yaml) and sets an ssl: remote; the controller pod
    connects with the client certificate and converges a new NAD through it."""
    remote, pki = sb.serve_nb_over_tls(tmp_path / "pki")
    sb.kubectl("create", "secret", "generic", "-n", cluster.PRODUCT_NAMESPACE,
               "ovnk-secondary-nb-tls", f"--from-file=tls.key={pki.path('admin.key')}",
               f"--from-file=tls.crt={pki.path('admin.crt')}",
               f"--from-file=ca.crt={pki.path('ca.crt')}")
    nad = tmp_path / "nad.json"
    nad.write_text(json.dumps({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "nad-tls", "namespace": NS},
        "spec": {"config": json.dumps({
            "cniVersion": "0.3.1", "name": "tls-net", "type": "ovn-k8s-cni-overlay",
            "topology": "layer2", "netAttachDefName": f"{NS}/nad-tls"})}}))
    try:
        _controller_nb(sb, remote)
        sb.kubectl("apply", "-f", str(nad))
        _eventually(lambda: "tls.net_ovn_layer2_switch" in _names(sb, "Logical_Switch"))
        log = sb.kubectl("logs", "-n", cluster.PRODUCT_NAMESPACE,
                         "deployment/ovnk-secondary-controller").stdout
        assert f"connected to OVN northbound at {remote}" in log, log[-2000:]
    finally:
        sb.kubectl("delete", "-f", str(nad), "--ignore-not-found")
        _controller_nb(sb, sb.nb_connection)
        sb.kubectl("delete", "secret", "-n", cluster.PRODUCT_NAMESPACE, "ovnk-secondary-nb-tls")
        sb.ovn_nbctl("del-connection")
    _eventually(lambda: "tls.net_ovn_layer2_switch" not in _names(sb, "Logical_Switch"))


def _pod(name: str, node: str, networks: str) -> dict[str, Any]:
    """A pod of the workload image on `node`, as the examples' pods are."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS,
                     "annotations": {"k8s.v1.cni.cncf.io/networks": networks}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "sleeper", "image": "ovnk-sandbox/workload:busybox",
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"],
            }],
        },
    }


def test_controller_rollout_and_agent_restart_keep_running_pods_connected(
    sb: cluster.Sandbox,
) -> None:
    """A rolling update of the controller's Deployment (maxUnavailable 0: the new pod stands
    by until the old one hands the Lease over) and a restart of the agents' DaemonSet leave the
    running pods' interfaces and OVS ports as they were, and the pods keep reaching each other."""
    before = {name: scenario.view(sb, name) for name in ("l2-pod-1", "l2-pod-2")}
    sb.rollout_restart_controller()
    sb.kubectl("rollout", "restart", "-n", cluster.PRODUCT_NAMESPACE,
               "daemonset/ovnk-secondary-node-agent")
    sb.kubectl("rollout", "status", "-n", cluster.PRODUCT_NAMESPACE,
               "daemonset/ovnk-secondary-node-agent", "--timeout=180s", timeout=190)
    after = {name: scenario.view(sb, name) for name in before}
    for name, view in after.items():
        assert (view.uid, view.macs, view.ips, view.host_ports) == (
            before[name].uid, before[name].macs, before[name].ips, before[name].host_ports)
    assert scenario.ping(sb, after["l2-pod-1"], _ip(after["l2-pod-2"]))


def test_faults_while_30_pods_are_created(sb: cluster.Sandbox) -> None:
    """30 pods on an IPAM network are created while, in turn, the controller's Deployment is
    rolled, node-1's agent pod is deleted, node-2's kubelet restarts and NB restarts: every pod
    ends up Ready and connected with a unique IP, and once deleted nothing is left over."""
    nad = {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "nad-ipam", "namespace": NS},
        "spec": {
            "config": json.dumps(
                {
                    "cniVersion": "0.3.1",
                    "name": "ipam-net",
                    "type": "ovn-k8s-cni-overlay",
                    "topology": "layer2",
                    "netAttachDefName": f"{NS}/nad-ipam",
                    "subnets": "10.200.0.0/24",
                }
            )
        },
    }
    custom = scenario.custom_api(sb)
    core = scenario.core_api(sb)
    custom.create_namespaced_custom_object(
        "k8s.cni.cncf.io", "v1", NS, "network-attachment-definitions", nad
    )
    names = [f"churn-{i}" for i in range(30)]
    faults = {
        4: sb.rollout_restart_controller,
        10: lambda: sb.delete_node_agent_pod("node-1"),
        16: lambda: sb.restart_service("node-2", "kubelet"),
        22: lambda: sb.restart_nb(down_for=2),
    }

    fault_threads: list[threading.Thread] = []
    fault_errors: list[BaseException] = []

    def inject(fault: Callable[[], object]) -> None:
        try:
            fault()
        except BaseException as exc:  # reported by the test, not lost in a thread
            fault_errors.append(exc)

    try:
        for i, name in enumerate(names):
            if i in faults:
                fault_threads.append(threading.Thread(target=inject, args=(faults[i],)))
                fault_threads[-1].start()
            core.create_namespaced_pod(NS, _pod(name, f"node-{i % 2 + 1}", "nad-ipam"))
            time.sleep(0.1)
        for thread in fault_threads:  # every fault has run and the component is back
            thread.join(timeout=240)
        assert not fault_errors, fault_errors
        scenario.wait_ready(sb, names, timeout=240)
        views = [scenario.view(sb, name) for name in names]
        ips = [v.addresses("net1")[0] for v in views]
        assert len(set(ips)) == len(names), ips
        assert all(
            v.addresses("net1") == v.pod_networks["test/nad-ipam"]["ip_addresses"] for v in views
        )
        ports = sb.ovn_nbctl("--bare", "--columns=name", "list", "Logical_Switch_Port").split()
        assert sorted(p for p in ports if p.startswith("test.nad.ipam_")) == sorted(
            f"test.nad.ipam_test_{name}" for name in names
        )
        for node in sb.node_names:
            plugged = _iface_ids(sb, node)
            churn = [p for p in plugged if p.startswith("test.nad.ipam_")]
            assert len(churn) == len([v for v in views if v.node == node]), churn
        first_on_1 = next(v for v in views if v.node == "node-1")
        first_on_2 = next(v for v in views if v.node == "node-2")
        assert scenario.ping(sb, first_on_1, _ip(first_on_2))
    finally:
        for thread in fault_threads:
            thread.join(timeout=240)
        for name in names:
            with contextlib.suppress(kubernetes.client.ApiException):
                core.delete_namespaced_pod(name, NS)
        custom.delete_namespaced_custom_object(
            "k8s.cni.cncf.io", "v1", NS, "network-attachment-definitions", "nad-ipam"
        )
    scenario.wait_gone(sb, names)
    # the controller removes the ports and the switch on its own time: poll, with a deadline
    _eventually(lambda: "test.nad.ipam_" not in _names(sb, "Logical_Switch_Port"))
    _eventually(lambda: "ipam.net_ovn_layer2_switch" not in _names(sb, "Logical_Switch"))


def _apply_layer2_nad(sb: cluster.Sandbox, name: str, *, network: str, subnets: str) -> None:
    """`kubectl apply` of a layer2 NAD `name` in NS with `subnets`."""
    sb.kubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"config": json.dumps({
            "cniVersion": "0.3.1", "name": network, "type": "ovn-k8s-cni-overlay",
            "topology": "layer2", "subnets": subnets, "netAttachDefName": f"{NS}/{name}"})}}))


def _policy(name: str, policy_for: str, spec: dict[str, Any]) -> str:
    return json.dumps({
        "apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy",
        "metadata": {"name": name, "namespace": NS,
                     "annotations": {"k8s.v1.cni.cncf.io/policy-for": policy_for}},
        "spec": spec})


def test_multinetworkpolicies_close_and_open_traffic_on_both_topologies(
        sb: cluster.Sandbox) -> None:
    """MultiNetworkPolicies applied with kubectl, judged by pings between pods' containers. On
    a layer2 network with subnets: ingress isolation, replies to the isolated pod's own
    traffic passing, a podSelector peer opened and closed by a label flip. On the IPAM-less
    localnet2: an egress ipBlock with except (selector peers are refused there, with an
    Event). Deleting the policies opens everything again and leaves no rows of ours."""
    _apply_layer2_nad(sb, "nad-policy", network="policy-network", subnets="10.124.0.0/24")
    pods = {"srv": "app=server", "cli": "role=other", "oth": "role=other"}
    for name, labels in pods.items():
        sb.kubectl("run", name, "-n", NS, "--image", "ovnk-sandbox/workload:busybox",
                   "--image-pull-policy", "IfNotPresent", "--labels", labels, "--annotations",
                   "k8s.v1.cni.cncf.io/networks=nad-policy", "--command", "--", "sleep", "3600")
    policies = ["deny-to-server", "allow-clients", "selector-on-ipamless", "no-external"]
    try:
        scenario.wait_ready(sb, list(pods))
        srv, cli, oth = (scenario.view(sb, name) for name in pods)
        localnet = scenario.view(sb, "localnet2-pod")
        _, external = cluster.EXTERNAL_HOSTS[33]

        def reaches(pod: scenario.PodView, address: str) -> bool:
            return scenario.ping(sb, pod, address, replies=1, deadline=2)

        assert scenario.ping(sb, cli, _ip(srv)) and scenario.ping(sb, oth, _ip(srv))
        sb.kubectl("apply", "-f", "-", stdin=_policy("deny-to-server", "nad-policy", {
            "podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
            "ingress": []}))
        _eventually(lambda: not reaches(cli, _ip(srv)))
        assert not reaches(oth, _ip(srv))
        assert scenario.ping(sb, srv, _ip(cli))  # its own traffic and the replies pass

        sb.kubectl("apply", "-f", "-", stdin=_policy("allow-clients", "nad-policy", {
            "podSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}))
        sb.kubectl("label", "pod", "-n", NS, "cli", "role=client", "--overwrite")
        _eventually(lambda: reaches(cli, _ip(srv)))
        assert not reaches(oth, _ip(srv))  # not a client
        sb.kubectl("label", "pod", "-n", NS, "cli", "role=other", "--overwrite")
        _eventually(lambda: not reaches(cli, _ip(srv)))

        # localnet2 has no subnets: pod selectors cannot name addresses there
        sb.kubectl("apply", "-f", "-", stdin=_policy("selector-on-ipamless", "nad-localnet2", {
            "podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}))
        _eventually(lambda: "PolicyNotApplied" in sb.kubectl(
            "get", "events", "-n", NS, "--field-selector",
            "involvedObject.name=selector-on-ipamless", "-o", "jsonpath={.items[*].reason}"
        ).stdout)
        assert scenario.ping(sb, localnet, external)
        sb.kubectl("apply", "-f", "-", stdin=_policy("no-external", "nad-localnet2", {
            "podSelector": {}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "172.17.33.0/24",
                                            "except": [f"{external}/32"]}}]}]}))
        _eventually(lambda: not reaches(localnet, external))
        two = scenario.view(sb, "two-networks-pod")
        assert scenario.ping(sb, localnet, _ip(two, "net2"))  # the rest of its /24
    finally:
        sb.kubectl("delete", "multi-networkpolicies", "-n", NS, *policies,
                   "--ignore-not-found")
    _eventually(lambda: reaches(cli, _ip(srv)) and reaches(oth, _ip(srv))
                and reaches(localnet, external))
    for table in ("ACL", "Port_Group", "Address_Set"):  # the last policy gone, nothing of ours
        assert not sb.ovn_nbctl("--bare", "--columns=_uuid", "find", table,
                                "external_ids:ovnk-secondary.io/owner=ovnk-secondary").split()
    sb.kubectl("delete", "pod", "-n", NS, *pods)
    sb.kubectl("delete", "network-attachment-definitions", "-n", NS, "nad-policy")


PEER_NS = "policy-peer"
TCP_PORTS, UDP_PORTS = (8080, 8081, 9090), (5353, 9000)


def _product_image(sb: cluster.Sandbox) -> str:
    """The product image the sandbox deployed (it has python3 for the listeners and probes)."""
    return sb.kubectl("get", "deployment", "-n", "ovnk-secondary", "ovnk-secondary-controller",
                      "-o", "jsonpath={.spec.template.spec.containers[0].image}").stdout.strip()


def _run_listener(sb: cluster.Sandbox, name: str, *, namespace: str, labels: str,
                  networks: str) -> None:
    """A pod of the product image whose container is a TCP and UDP listener on every port."""
    sb.kubectl("run", name, "-n", namespace, "--image", _product_image(sb),
               "--image-pull-policy", "IfNotPresent", "--labels", labels,
               "--annotations", f"k8s.v1.cni.cncf.io/networks={networks}", "--command", "--",
               *scenario.listener_command(name, tcp=TCP_PORTS, udp=UDP_PORTS))


def _matrix(sb: cluster.Sandbox, clients: dict[str, scenario.PodView],
            server: scenario.PodView, name: str) -> dict[str, set[str]]:
    """client -> the "PROTOCOL/PORT"s of the server that answered it (with its own name)."""
    probes = [scenario.Probe(protocol, _ip(server), port)
              for protocol, ports in (("tcp", TCP_PORTS), ("udp", UDP_PORTS)) for port in ports]
    reached = {}
    for client_name, client in clients.items():
        answers = scenario.probe_from_pod(sb, client, probes)
        reached[client_name] = {f"{p.protocol}/{p.port}" for p, answer in answers.items()
                                if answer == f"{name} {p.protocol} {p.port}"}
    return reached


ALL = {f"tcp/{port}" for port in TCP_PORTS} | {f"udp/{port}" for port in UDP_PORTS}


def test_multinetworkpolicies_decide_tcp_and_udp_per_port_on_both_topologies(
        sb: cluster.Sandbox) -> None:
    """A matrix of TCP and UDP listeners in pods (each answers with its name, protocol and
    port), probed from client pods after each step. Layer2 with subnets: default allow,
    ingress deny-all, a podSelector peer limited to TCP/8080 and UDP/5353 and opened by a
    label flip, the same label in another namespace not matching, a namespaceSelector peer
    (UDP/9000, TCP/9090) closed again by a namespace label change, an egress port range
    (TCP 8080-8081), a named port and a missing policy-for refused with their Events and not
    applied, deletion opening everything. Localnet2 (VLAN 33, IPAM-less): an ipBlock
    ingress peer, the external VLAN host, allowed on TCP/8080 and UDP/5353 only, and a pod of
    the same VLAN outside the block refused."""
    _apply_layer2_nad(sb, "nad-matrix", network="matrix-network", subnets="10.125.0.0/24")
    scenario.ensure_namespace(sb, PEER_NS)
    sb.kubectl("label", "namespace", PEER_NS, "team=peer", "--overwrite")
    on_matrix = f"{NS}/nad-matrix"
    _run_listener(sb, "msrv", namespace=NS, labels="app=server", networks=on_matrix)
    _run_listener(sb, "mcli", namespace=NS, labels="role=other", networks=on_matrix)
    _run_listener(sb, "mfar", namespace=PEER_NS, labels="role=other", networks=on_matrix)
    localnet = '[{{"namespace": "{ns}", "name": "nad-localnet2", "ips": ["{ip}/24"]}}]'
    _run_listener(sb, "lnsrv", namespace=NS, labels="app=ln-server",
                  networks=localnet.format(ns=NS, ip="172.17.33.60"))
    _run_listener(sb, "lncli", namespace=NS, labels="app=ln-client",
                  networks=localnet.format(ns=NS, ip="172.17.33.61"))
    policies = ["deny-to-server", "allow-clients", "allow-peer-namespace", "client-egress",
                "named-port", "no-policy-for", "from-external-host"]
    vlan_netns, _ = cluster.EXTERNAL_HOSTS[33]
    try:
        scenario.wait_ready(sb, ["msrv", "mcli", "lnsrv", "lncli"])
        scenario.wait_ready(sb, ["mfar"], namespace=PEER_NS)
        srv, cli = scenario.view(sb, "msrv"), scenario.view(sb, "mcli")
        clients = {"mcli": cli, "mfar": scenario.view(sb, "mfar", namespace=PEER_NS)}

        def expect(expected: dict[str, set[str]]) -> None:
            seen: list[dict[str, set[str]]] = []
            _eventually(lambda: seen.append(_matrix(sb, clients, srv, "msrv"))
                        or seen[-1] == expected, timeout=45, show=lambda: seen[-1])

        expect({"mcli": ALL, "mfar": ALL})  # no policy: everything open
        sb.kubectl("apply", "-f", "-", stdin=_policy("deny-to-server", "nad-matrix", {
            "podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
            "ingress": []}))
        expect({"mcli": set(), "mfar": set()})
        sb.kubectl("apply", "-f", "-", stdin=_policy("allow-clients", "nad-matrix", {
            "podSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                         "ports": [{"protocol": "TCP", "port": 8080},
                                   {"protocol": "UDP", "port": 5353}]}]}))
        expect({"mcli": set(), "mfar": set()})  # nobody is a client yet
        sb.kubectl("label", "pod", "-n", NS, "mcli", "role=client", "--overwrite")
        sb.kubectl("label", "pod", "-n", PEER_NS, "mfar", "role=client", "--overwrite")
        # a bare podSelector names pods of the policy's own namespace only
        expect({"mcli": {"tcp/8080", "udp/5353"}, "mfar": set()})
        sb.kubectl("apply", "-f", "-", stdin=_policy("allow-peer-namespace", "nad-matrix", {
            "podSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "peer"}}}],
                         "ports": [{"protocol": "UDP", "port": 9000},
                                   {"protocol": "TCP", "port": 9090}]}]}))
        expect({"mcli": {"tcp/8080", "udp/5353"}, "mfar": {"udp/9000", "tcp/9090"}})
        sb.kubectl("label", "namespace", PEER_NS, "team=other", "--overwrite")
        expect({"mcli": {"tcp/8080", "udp/5353"}, "mfar": set()})

        sb.kubectl("delete", "multi-networkpolicies", "-n", NS, "deny-to-server",
                   "allow-clients", "allow-peer-namespace")
        expect({"mcli": ALL, "mfar": ALL})
        sb.kubectl("apply", "-f", "-", stdin=_policy("client-egress", "nad-matrix", {
            "podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
            "egress": [{"ports": [{"protocol": "TCP", "port": 8080, "endPort": 8081}]}]}))
        expect({"mcli": {"tcp/8080", "tcp/8081"}, "mfar": ALL})  # mfar: not of NS

        # refused with an Event that says why, and not applied at all (never half a policy)
        sb.kubectl("apply", "-f", "-", stdin=_policy("named-port", "nad-matrix", {
            "podSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{"ports": [{"protocol": "TCP", "port": "http"}]}]}))
        unannotated = json.loads(_policy("no-policy-for", "nad-matrix", {"podSelector": {}}))
        del unannotated["metadata"]["annotations"]
        sb.kubectl("apply", "-f", "-", stdin=json.dumps(unannotated))
        for name, reason in (("named-port", "UnsupportedPolicy"),
                             ("no-policy-for", "PolicyForMissing")):
            _eventually(lambda name=name, reason=reason: reason in sb.kubectl(  # type: ignore[misc]
                "get", "events", "-n", NS, "--field-selector", f"involvedObject.name={name}",
                "-o", "jsonpath={.items[*].reason}").stdout)
        expect({"mcli": {"tcp/8080", "tcp/8081"}, "mfar": ALL})

        # localnet2: the external host on VLAN 33 is an ipBlock peer; lncli is on the VLAN too
        lnsrv, lncli = scenario.view(sb, "lnsrv"), scenario.view(sb, "lncli")
        probes = [scenario.Probe(protocol, _ip(lnsrv), port)
                  for protocol, ports in (("tcp", TCP_PORTS), ("udp", UDP_PORTS))
                  for port in ports]

        def localnet_matrix() -> dict[str, set[str]]:
            from_host = scenario.answered(probes, sb.exec(
                sb.external, ["ip", "netns", "exec", vlan_netns,
                              *scenario.probe_command(probes)], check=False))
            from_pod = scenario.probe_from_pod(sb, lncli, probes)
            return {who: {f"{p.protocol}/{p.port}" for p, answer in answers.items()
                          if answer == f"lnsrv {p.protocol} {p.port}"}
                    for who, answers in (("host", from_host), ("lncli", from_pod))}

        seen: list[dict[str, set[str]]] = []
        _eventually(lambda: seen.append(localnet_matrix())
                    or seen[-1] == {"host": ALL, "lncli": ALL}, timeout=45,
                    show=lambda: seen[-1])
        sb.kubectl("apply", "-f", "-", stdin=_policy("from-external-host", "nad-localnet2", {
            "podSelector": {"matchLabels": {"app": "ln-server"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"ipBlock": {"cidr": "172.17.33.0/28"}}],
                         "ports": [{"protocol": "TCP", "port": 8080},
                                   {"protocol": "UDP", "port": 5353}]}]}))
        _eventually(lambda: seen.append(localnet_matrix()) or seen[-1] == {
            "host": {"tcp/8080", "udp/5353"}, "lncli": set()}, timeout=45,
                    show=lambda: seen[-1])
    finally:
        sb.kubectl("delete", "multi-networkpolicies", "-n", NS, *policies,
                   "--ignore-not-found")
        sb.kubectl("label", "namespace", PEER_NS, "team=peer", "--overwrite")
    expect({"mcli": ALL, "mfar": ALL})
    sb.kubectl("delete", "pod", "-n", NS, "msrv", "mcli", "lnsrv", "lncli", "--wait=false")
    sb.kubectl("delete", "pod", "-n", PEER_NS, "mfar", "--wait=false")
    scenario.wait_gone(sb, ["msrv", "mcli", "lnsrv", "lncli"])
    scenario.wait_gone(sb, ["mfar"], namespace=PEER_NS)
    sb.kubectl("delete", "network-attachment-definitions", "-n", NS, "nad-matrix")
    for table in ("ACL", "Port_Group", "Address_Set"):
        assert not sb.ovn_nbctl("--bare", "--columns=_uuid", "find", table,
                                "external_ids:ovnk-secondary.io/owner=ovnk-secondary").split()


def test_deleting_everything_leaves_nothing_and_a_recreated_pod_works(
    sb: cluster.Sandbox,
) -> None:
    scenario.kubectl(sb, "delete", "-f", str(scenario.EXAMPLES / "20-pods.yaml"))
    scenario.kubectl(sb, "delete", "-f", str(scenario.EXAMPLES / "10-nads.yaml"))
    scenario.wait_gone(sb, scenario.PODS)  # no OVS port, no network namespace left
    _eventually(lambda: _names(sb, "Logical_Switch", owned=True) == [])
    _eventually(lambda: _names(sb, "Logical_Switch_Port", owned=True) == [])
    for node in sb.node_names:
        # only Geneve tunnel ports (ovn-controller removes the localnet patch ports shortly
        # after their switches leave NB)
        _eventually(lambda node=node: all(  # type: ignore[misc]
            p.startswith("ovn-") for p in sb.exec(node, "ovs-vsctl list-ports br-int")
            .stdout.split()))
        assert scenario.our_ports(sb, node) == []
        links = sb.exec(node, "ip -o link show type veth").stdout
        assert "ovk" not in links, links

    scenario.apply_examples(sb, "10-nads.yaml", "20-pods.yaml")
    scenario.wait_ready(sb, scenario.PODS)
    a, b = scenario.view(sb, "l2-pod-1"), scenario.view(sb, "l2-pod-2")
    assert scenario.ping(sb, a, _ip(b))


def test_no_component_was_refused_by_the_api_server(sb: cluster.Sandbox) -> None:
    """After the whole scenario (faults included), the API server's audit log has no request
    of the controller, the node agents (their ServiceAccounts, bound by exactly
    manifests/rbac.yaml) or Multus that it refused (403), pods deleted since included, and no
    request at all that failed authentication (401: a token sent wrong, as the controller once
    did in a pod).
    (Last in the module on purpose.)"""
    ours = ("system:serviceaccount:ovnk-secondary:", "system:serviceaccount:kube-system:multus")
    seen: dict[str, int] = {}
    refused = []
    for event in sb.audit_events():
        if event.get("userAgent", "").startswith("ovnk-e2e-"):
            continue  # a test's own requests with a component's credentials
        user = event.get("user", {}).get("username", "")
        code = event.get("responseStatus", {}).get("code")
        if code == 401:  # authentication failed: the event cannot say whose credentials
            refused.append((user, event.get("verb"), event.get("requestURI"), "401"))
        if not user.startswith(ours):
            continue
        seen[user] = seen.get(user, 0) + 1
        if code == 403:
            refused.append((user, event.get("verb"), event.get("requestURI"),
                            event["responseStatus"].get("message", "")))
    assert set(seen) >= {"system:serviceaccount:ovnk-secondary:ovnk-secondary-controller",
                         "system:serviceaccount:ovnk-secondary:ovnk-secondary-node-agent",
                         "system:serviceaccount:kube-system:multus"}, seen  # the log is read
    assert not refused, refused[:10]
