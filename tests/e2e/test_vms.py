"""KubeVirt VMs on the sandbox cluster (the VM stand-in, `ovnk_secondary/sandbox/vms.py`): one
VM with a NIC on a layer2 network and one on a localnet network (VLAN 33), both with
`subnets` and `allowPersistentIPs`, keeps its MAC and IPs across a live migration, a failed
migration and a restart, with pings running through the whole path; under OVN-Kubernetes'
per-pod strategy (the `per_pod` fixture) and OVN's multi-chassis (`multi_chassis`, the
default)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator

import kubernetes
import pytest

from ovnk_secondary import migration, naming
from ovnk_secondary.sandbox import cluster, scenario, vms

pytestmark = pytest.mark.sandbox
NS = scenario.NAMESPACE
L2, LOCALNET = f"{NS}/nad-vm-l2", f"{NS}/nad-vm-localnet"
VM_NADS = scenario.EXAMPLES / "vms" / "10-nads.yaml"  # nad-vm-l2, nad-vm-localnet


def _eventually(check: Callable[[], bool], *, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"still not true after {timeout} s"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def sb(cluster_sandbox: cluster.Sandbox) -> Iterator[cluster.Sandbox]:
    scenario.ensure_namespace(cluster_sandbox, NS)
    cluster_sandbox.kubectl("apply", "-f", str(VM_NADS))
    yield cluster_sandbox
    cluster_sandbox.kubectl("delete", "-f", str(VM_NADS))


@contextlib.contextmanager
def _strategy(sb: cluster.Sandbox, strategy: str) -> Iterator[cluster.Sandbox]:
    """The sandbox with a live-migration strategy for one test, the default after it."""
    if strategy != migration.DEFAULT_STRATEGY:
        sb.set_migration_strategy(strategy)
    try:
        yield sb
    finally:
        if strategy != migration.DEFAULT_STRATEGY:
            sb.set_migration_strategy(migration.DEFAULT_STRATEGY)


@pytest.fixture
def per_pod(sb: cluster.Sandbox) -> Iterator[cluster.Sandbox]:
    with _strategy(sb, migration.PER_POD) as strategy:
        yield strategy


@pytest.fixture
def multi_chassis(sb: cluster.Sandbox) -> Iterator[cluster.Sandbox]:
    with _strategy(sb, migration.MULTI_CHASSIS) as strategy:
        yield strategy


def _peer(sb: cluster.Sandbox) -> scenario.PodView:
    """A pod on the layer2 network on node-1 (the VM leaves it for node-2)."""
    scenario.core_api(sb).create_namespaced_pod(NS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "vm-peer", "namespace": NS,
                     "annotations": {"k8s.v1.cni.cncf.io/networks": L2}},
        "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 1, "containers": [{
            "name": "c", "image": "ovnk-sandbox/workload:busybox",
            "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}]}})
    scenario.wait_ready(sb, ["vm-peer"])
    return scenario.view(sb, "vm-peer")


def _addresses(pod: scenario.PodView) -> dict[str, tuple[str, list[str]]]:
    return {nad: (entry["mac_address"], entry["ip_addresses"])
            for nad, entry in pod.pod_networks.items()}


def _guest_nics(sb: cluster.Sandbox) -> dict[str, tuple[str, list[str]]]:
    """The guest's NICs as `ip` shows them in the guest: name -> (MAC, addresses)."""
    links = json.loads(vms.guest(sb, "vm-a", ["ip", "-j", "addr"], check=True).stdout)
    return {link["ifname"]: (link["address"], [f"{a['local']}/{a['prefixlen']}"
                                               for a in link["addr_info"]
                                               if a["family"] == "inet"])
            for link in links if link["ifname"] != "lo"}


def _port(nad: str, pod: str) -> str:
    return naming.pod_port_name(nad, NS, pod)


def test_a_vm_keeps_its_addresses_across_live_migration_failed_migration_and_restart(
        per_pod: cluster.Sandbox) -> None:
    sb = per_pod
    peer = _peer(sb)
    vlan_netns, _ = cluster.EXTERNAL_HOSTS[33]
    try:
        launcher = vms.create(sb, "vm-a", [L2, LOCALNET], node="node-1")
        addresses = _addresses(launcher)
        l2_ip = addresses[L2][1][0].split("/")[0]
        ln_ip = addresses[LOCALNET][1][0].split("/")[0]
        assert ln_ip.startswith("172.17.33.") and int(ln_ip.rsplit(".", 1)[1]) >= 128
        # the guest carries what the annotation says; the claims hold the same
        assert _guest_nics(sb) == {"net1": addresses[L2], "net2": addresses[LOCALNET]}
        custom = scenario.custom_api(sb)
        for nic, nad in (("net1", L2), ("net2", LOCALNET)):
            claim = custom.get_namespaced_custom_object(*vms.CLAIMS[:2], NS, vms.CLAIMS[2],
                                                        f"vm-a.{nic}")
            assert claim["status"]["ips"] == addresses[nad][1]
        assert scenario.ping(sb, peer, l2_ip)
        assert vms.guest(sb, "vm-a", ["ping", "-c", "2", "-W", "2", "172.17.33.1"]).exit_code == 0

        def pinging(seconds: int) -> list[Callable[[], vms.Outage]]:
            assert peer.netns is not None
            return [vms.ping_in_background(sb, "node-1", ["nsenter", f"--net={peer.netns}"],
                                           l2_ip, seconds=seconds),
                    vms.ping_in_background(sb, sb.external, ["ip", "netns", "exec", vlan_netns],
                                           ln_ip, seconds=seconds)]

        # live migration node-1 -> node-2, both pings running
        results = pinging(12)
        time.sleep(1)
        moved = vms.migrate(sb, "vm-a")
        assert moved is not None and moved.target.node == "node-2"
        assert _addresses(moved.target) == addresses  # the claims' IPs, hence the MACs
        outages = [result() for result in results]
        for seen in outages:  # bounded (benchmarks/migration_bench.py measures it)
            assert seen.received > 0.5 * seen.sent and seen.longest_gap < 3, outages
            assert seen.duplicates == 0, outages  # never both pods answering
        scenario.wait_gone(sb, [moved.source.name])
        assert _guest_nics(sb) == {"net1": addresses[L2], "net2": addresses[LOCALNET]}
        for nad in (L2, LOCALNET):  # the target's ports as usual; the source's gone
            port = _port(nad, moved.target.name)
            assert sb.ovn_nbctl("get", "Logical_Switch_Port", port, "enabled").strip() == "[]"
            assert moved.target.name in sb.ovn_nbctl("--bare", "--columns=name", "find",
                                                     "Logical_Switch_Port",
                                                     f"name={port}")
            assert not sb.ovn_nbctl("--bare", "--columns=name", "find", "Logical_Switch_Port",
                                    f"name={_port(nad, moved.source.name)}").strip()
        assert scenario.ping(sb, peer, l2_ip)

        # a migration that fails before the switch-over: the source keeps the traffic
        results = pinging(8)
        time.sleep(1)
        assert vms.migrate(sb, "vm-a", abort=True) is None
        for seen in (result() for result in results):
            assert seen.longest_gap < 0.5 and seen.duplicates == 0, seen
        assert [p["metadata"]["name"] for p in vms.launchers(sb, "vm-a", NS)] == \
            [moved.target.name]

        # a restart on the first node: a new pod, the same addresses
        restarted = vms.restart(sb, "vm-a", to="node-1")
        assert restarted.node == "node-1" and _addresses(restarted) == addresses
        assert _guest_nics(sb) == {"net1": addresses[L2], "net2": addresses[LOCALNET]}
        assert scenario.ping(sb, peer, l2_ip)

        # a pod of no VM asking for the VM's claim is refused, naming the holder
        scenario.core_api(sb).create_namespaced_pod(NS, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "claim-thief", "namespace": NS, "annotations": {
                "k8s.v1.cni.cncf.io/networks": json.dumps([{
                    "namespace": NS, "name": "nad-vm-l2", "ipam-claim-reference": "vm-a.net1"}])}},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "c", "image": "ovnk-sandbox/workload:busybox",
                "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}]}})
        _eventually(lambda: "VM vm-a" in sb.kubectl(
            "get", "events", "-n", NS, "--field-selector",
            "involvedObject.name=claim-thief,reason=IPAMClaimInUse",
            "-o", "jsonpath={.items[*].message}").stdout)
        annotations = scenario.core_api(sb).read_namespaced_pod(
            "claim-thief", NS).metadata.annotations or {}
        assert scenario.POD_NETWORKS not in annotations
    finally:
        core = scenario.core_api(sb)
        for name in ("claim-thief", "vm-peer"):
            with contextlib.suppress(kubernetes.client.ApiException):
                core.delete_namespaced_pod(name, NS)
        vms.delete(sb, "vm-a")
        scenario.wait_gone(sb, ["claim-thief", "vm-peer"])
    # the VM deleted with its claims: nothing of it is left in NB or in the API (the ports go
    # once the controller has seen the pods' deletion)
    _eventually(lambda: not [line for line in sb.ovn_nbctl("--bare", "--columns=name", "list",
                                                           "Logical_Switch_Port").split()
                             if "virt-launcher" in line])
    _eventually(lambda: not scenario.custom_api(sb).list_namespaced_custom_object(
        *vms.CLAIMS[:2], NS, vms.CLAIMS[2])["items"])


def test_a_vm_with_static_addresses_on_an_ipamless_localnet_migrates_with_them(
        sb: cluster.Sandbox) -> None:
    """The talk's cloud-init case: no subnets; the VM's pods name the same static IP and
    MAC, the target gets them, the external host keeps reaching the VM."""
    nad = f"{NS}/nad-vm-static"
    static = {nad: (("172.17.33.70/24",), "02:00:00:00:33:70")}
    vlan_netns, _ = cluster.EXTERNAL_HOSTS[33]
    try:
        launcher = vms.create(sb, "vm-b", [nad], node="node-1", static=static)
        assert launcher.pod_networks[nad]["ip_addresses"] == ["172.17.33.70/24"]
        assert launcher.pod_networks[nad]["mac_address"] == "02:00:00:00:33:70"
        result = vms.ping_in_background(sb, sb.external, ["ip", "netns", "exec", vlan_netns],
                                        "172.17.33.70", seconds=10)
        time.sleep(1)
        moved = vms.migrate(sb, "vm-b")
        assert moved is not None and moved.target.node == "node-2"
        assert moved.target.pod_networks[nad] == launcher.pod_networks[nad]
        seen = result()
        assert seen.received > 0.5 * seen.sent and seen.longest_gap < 3, seen
        assert seen.duplicates == 0, seen
        scenario.wait_gone(sb, [moved.source.name])
        assert vms.guest(sb, "vm-b", ["ping", "-c", "2", "-W", "2", "172.17.33.1"]).exit_code == 0
    finally:
        vms.delete(sb, "vm-b")


def _gratuitous_arps(lines: list[str], mac: str, address: str) -> list[float]:
    """When `mac` announced `address` (`who-has A tell A`), from `tcpdump -e -tt` lines."""
    return [float(line.split()[0]) for line in lines
            if line.split()[1:2] == [mac] and f"who-has {address} tell {address}," in line]


def test_ovn_announces_a_plain_pod_on_localnet_but_not_a_vm(sb: cluster.Sandbox) -> None:
    """ovn-controller announces a port bound on a bridged switch 0, 1, 3 and 7 s after it
    bound it, from that node; after a live migration those announces from the node the VM
    left drew its traffic back there for 150-230 ms (`desired.pod_port`). A VM's own port
    (the default strategy, multi-chassis) has none: after the guest's own announces (its
    first 0.8 s up) the uplink carries no gratuitous ARP for it, while a plain pod's keep
    coming."""
    plain = "garp-plain"
    try:
        with sb.capture("node-1", "enp2s0", "vlan and arp", extra_args=("-e", "-tt")) as arp:
            scenario.core_api(sb).create_namespaced_pod(NS, {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": plain, "namespace": NS,
                             "annotations": {"k8s.v1.cni.cncf.io/networks": LOCALNET}},
                "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "c", "image": "ovnk-sandbox/workload:busybox",
                                         "imagePullPolicy": "IfNotPresent",
                                         "command": ["sleep", "3600"]}]}})
            launcher = vms.create(sb, "vm-garp", [LOCALNET], node="node-1")
            announced = time.time()  # the guest's announces run for 0.8 s from about now
            scenario.wait_ready(sb, [plain])
            pod = scenario.view(sb, plain)
            time.sleep(8.5)  # OVN's 1, 3 and 7 s
        vm_mac, vm_ips = _addresses(launcher)[LOCALNET]
        pod_mac, pod_ips = _addresses(pod)[LOCALNET]
        by_pod = _gratuitous_arps(arp.lines, pod_mac, pod_ips[0].split("/")[0])
        assert len([t for t in by_pod if t > announced + 1.5]) >= 2, arp.lines
        by_vm = _gratuitous_arps(arp.lines, vm_mac, vm_ips[0].split("/")[0])
        assert by_vm, f"the guest's own announces did not show: {arp.lines}"
        assert [t - announced for t in by_vm if t > announced + 1.5] == [], arp.lines
    finally:
        scenario.core_api(sb).delete_namespaced_pod(plain, NS)
        vms.delete(sb, "vm-garp")
        scenario.wait_gone(sb, [plain])


def _scale_controller(sb: cluster.Sandbox, replicas: int) -> None:
    sb.kubectl("scale", "deployment", "-n", cluster.PRODUCT_NAMESPACE,
               "ovnk-secondary-controller", f"--replicas={replicas}")
    if replicas == 0:
        sb.kubectl("wait", "--for=delete", "pod", "-n", cluster.PRODUCT_NAMESPACE,
                   "-l", "app.kubernetes.io/component=controller", "--timeout=90s", timeout=100)
    else:
        sb.kubectl("rollout", "status", "-n", cluster.PRODUCT_NAMESPACE,
                   "deployment/ovnk-secondary-controller", "--timeout=90s", timeout=100)


def test_multichassis_the_guests_rarp_moves_the_traffic_with_the_controller_down(
        multi_chassis: cluster.Sandbox) -> None:
    """OVN's multi-chassis strategy (`migration.MULTI_CHASSIS`): one port of the VM per
    network, listed on both nodes while the target pod runs; the controller is stopped before
    the switch-over, and the guest's RARP alone moves the traffic (ovn-controller activates
    the target's binding). The target pod's interfaces on the VM's port are handed over down
    (`attachments.desired_interface`). Once the controller is back, the port is the target
    node's alone."""
    sb = multi_chassis
    vlan_netns, _ = cluster.EXTERNAL_HOSTS[33]
    peer = _peer(sb)
    ports = {nad: naming.vm_port_name(nad, NS, "vm-c") for nad in (L2, LOCALNET)}

    def chassis(port: str) -> str:
        return sb.ovn_nbctl("get", "Logical_Switch_Port", port,
                            "options:requested-chassis").strip().strip('"')

    try:
        launcher = vms.create(sb, "vm-c", [L2, LOCALNET], node="node-1")
        addresses = _addresses(launcher)
        l2_ip = addresses[L2][1][0].split("/")[0]
        ln_ip = addresses[LOCALNET][1][0].split("/")[0]
        for nad, port in ports.items():
            assert launcher.pod_networks[nad]["logical_switch_port"] == port
            assert chassis(port) == "node-1"
        results: list[Callable[[], vms.Outage]] = []

        def stop_controller() -> None:
            for port in ports.values():  # the target pod is ready: both nodes bind the port
                assert chassis(port) == "node-1,node-2"
            target = vms.launchers(sb, "vm-c", NS)[-1]["metadata"]["name"]  # the newer pod
            code, output = scenario.diagnose(sb, "pod", f"{NS}/{target}")
            assert code == 0, output  # SB binds the target's node as an additional chassis
            assert output.count("bound as an additional chassis beside node-1") == 2, output
            _scale_controller(sb, 0)
            assert peer.netns is not None
            results.extend([
                vms.ping_in_background(sb, "node-1", ["nsenter", f"--net={peer.netns}"],
                                       l2_ip, seconds=8),
                vms.ping_in_background(sb, sb.external, ["ip", "netns", "exec", vlan_netns],
                                       ln_ip, seconds=8)])
            time.sleep(1)

        handed_over: dict[str, vms.Link] = {}
        moved = vms.migrate(sb, "vm-c", before_binding=lambda target: handed_over.update(
            vms.pod_links(sb, target)), before_switch_over=stop_controller)
        assert moved is not None and moved.target.node == "node-2"
        # the target pod was ready (its ports installed) with the VM's NICs down: its kernel,
        # holding the VM's addresses, could not answer for the guest running on node-1
        assert {i: handed_over[i].up for i in ("net1", "net2")} == {"net1": False, "net2": False}
        assert _addresses(moved.target) == addresses
        outages = [result() for result in results]
        for seen in outages:  # no control plane in the path: a short gap, one location
            assert seen.received > 0.5 * seen.sent and seen.longest_gap < 1.0, outages
            assert seen.duplicates == 0, outages
        for port in ports.values():  # nobody has told NB yet
            assert chassis(port) == "node-1,node-2"
        _scale_controller(sb, 1)
        _eventually(lambda: all(chassis(p) == "node-2" for p in ports.values()), timeout=90)
        scenario.wait_gone(sb, [moved.source.name])
        assert scenario.ping(sb, peer, l2_ip)
        assert vms.guest(sb, "vm-c", ["ping", "-c", "2", "-W", "2", "172.17.33.1"]).exit_code == 0
        assert not [line for line in sb.ovn_nbctl("--bare", "--columns=name", "list",
                                                  "Logical_Switch_Port").split()
                    if "virt-launcher-vm-c" in line]  # no per-pod port of the VM
    finally:
        _scale_controller(sb, 1)
        with contextlib.suppress(kubernetes.client.ApiException):
            scenario.core_api(sb).delete_namespaced_pod("vm-peer", NS)
        vms.delete(sb, "vm-c")
        scenario.wait_gone(sb, ["vm-peer"])
    _eventually(lambda: not any(p in sb.ovn_nbctl("--bare", "--columns=name", "list",
                                                  "Logical_Switch_Port")
                                for p in ports.values()))


def test_per_pod_a_migration_across_a_controller_restart_completes_once_it_is_back(
        per_pod: cluster.Sandbox) -> None:
    """The per-pod strategy with the controller restarting at the switch-over: the target's
    port is enabled by the controller, so traffic returns once the new controller runs; then
    the target's ports are as usual, the source's gone, and nothing answers twice."""
    sb = per_pod
    vlan_netns, _ = cluster.EXTERNAL_HOSTS[33]
    peer = _peer(sb)
    try:
        launcher = vms.create(sb, "vm-d", [L2, LOCALNET], node="node-1")
        addresses = _addresses(launcher)
        l2_ip = addresses[L2][1][0].split("/")[0]
        ln_ip = addresses[LOCALNET][1][0].split("/")[0]

        def restart_controller() -> None:
            sb.kubectl("delete", "pod", "-n", cluster.PRODUCT_NAMESPACE, "--wait=false",
                       "-l", "app.kubernetes.io/component=controller")

        moved = vms.migrate(sb, "vm-d", before_switch_over=restart_controller)
        assert moved is not None
        _eventually(lambda: scenario.ping(sb, peer, l2_ip, replies=1, deadline=2), timeout=120)
        assert peer.netns is not None
        results = [vms.ping_in_background(sb, "node-1", ["nsenter", f"--net={peer.netns}"],
                                          l2_ip, seconds=4),
                   vms.ping_in_background(sb, sb.external, ["ip", "netns", "exec", vlan_netns],
                                          ln_ip, seconds=4)]
        for seen in (result() for result in results):
            assert seen.received > 0.9 * seen.sent and seen.duplicates == 0, seen
        scenario.wait_gone(sb, [moved.source.name])
        assert _addresses(scenario.view(sb, moved.target.name)) == addresses
        for nad in (L2, LOCALNET):
            port = _port(nad, moved.target.name)
            _eventually(lambda port=port: sb.ovn_nbctl(
                "get", "Logical_Switch_Port", port, "enabled").strip() == "[]", timeout=60)
            _eventually(lambda nad=nad: not sb.ovn_nbctl(
                "--bare", "--columns=name", "find", "Logical_Switch_Port",
                f"name={_port(nad, moved.source.name)}").strip(), timeout=60)
    finally:
        with contextlib.suppress(kubernetes.client.ApiException):
            scenario.core_api(sb).delete_namespaced_pod("vm-peer", NS)
        vms.delete(sb, "vm-d")
        scenario.wait_gone(sb, ["vm-peer"])
        sb.kubectl("rollout", "status", "-n", cluster.PRODUCT_NAMESPACE,
                   "deployment/ovnk-secondary-controller", "--timeout=90s", timeout=100)
