"""The CNI plugin and the node agent end to end, in the sandbox's chassis containers.

The plugin is executed as Multus executes it (CNI_* variables, the NAD config on stdin, a pod
network namespace on that node); real OVS and OVN carry the traffic. The test plays the
controller (pod annotation, logical switch port) as the conventions describe it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import re

import pytest

from tests import kube
from tests.agent import conftest, harness
from tests.agent.harness import Network, Pod

pytestmark = pytest.mark.sandbox

L2 = Network("l2-network", "layer2", "test/nad-layer2", subnet="10.100.0.0/24")
L2_OTHER = Network("l2-other", "layer2", "test/nad-other", subnet="10.100.0.0/24")
LOCALNET1 = Network("localnet1", "localnet", "test/nad-localnet1", vlan=34)  # via br-ex
LOCALNET2 = Network("localnet2", "localnet", "test/nad-localnet2", vlan=33)  # via ovs-br1


def _pod(node: str, name: str, network: Network, ip: str, mac: str) -> Pod:
    return Pod(node, "test", name, network, ip, mac)


def test_layer2_pods_on_two_nodes_ping_and_other_networks_cannot(
        world: harness.Cluster) -> None:
    world.add_network(L2)
    world.add_network(L2_OTHER)
    a = _pod("node-1", "l2a", L2, "10.100.0.5/24", "0a:58:0a:64:00:05")
    b = _pod("node-2", "l2b", L2, "10.100.0.6/24", "0a:58:0a:64:00:06")
    # same subnet, another network: only the network separates it from a and b
    c = _pod("node-1", "l2c", L2_OTHER, "10.100.0.7/24", "0a:58:0a:64:00:07")
    for pod in (a, b, c):
        world.add_pod(pod)
    result = world.cni(a, "ADD", cni_version="1.0.0").output
    world.cni(b, "ADD")
    world.cni(c, "ADD")

    assert result is not None and result["cniVersion"] == "1.0.0"
    container = result["interfaces"][1]
    assert container == {"name": "net1", "mac": "0a:58:0a:64:00:05",
                         "sandbox": a.netns, "mtu": 1400}
    assert result["ips"] == [{"address": "10.100.0.5/24", "interface": 1}]
    inside = world.sb.exec("node-1", f"ip -n {a.netns_name} -o link show net1").stdout
    assert "mtu 1400" in inside and "0a:58:0a:64:00:05" in inside
    assert a.port in world.iface_ids("node-1")

    assert world.ping(a, b.address), "layer2 pods on two nodes must reach each other"
    assert world.ping(b, a.address)
    assert not world.ping(c, a.address, deadline=3), "another network must not reach a"
    assert not world.ping(c, b.address, deadline=3), "another network must not reach b"


def test_localnet_vlans_reach_their_external_host_and_not_the_other(
        world: harness.Cluster) -> None:
    sb = world.sb
    for node in sb.node_names:
        mappings = sb.exec(node, "ovs-vsctl get open . external_ids:ovn-bridge-mappings").stdout
        assert mappings.strip().strip('"') == "localnet1:br-ex,localnet2:ovs-br1"
        assert sb.exec(node, "ovs-vsctl port-to-br enp2s0").stdout.strip() == "ovs-br1"
        annotation = world.core.read_node(node).metadata.annotations[
            "ovnk-secondary.io/bridge-mappings"]
        assert json.loads(annotation)["error"] is None
        assert json.loads(annotation)["ovnBridgeMappings"] == "localnet1:br-ex,localnet2:ovs-br1"

    world.add_network(LOCALNET1)
    world.add_network(LOCALNET2)
    on33 = _pod("node-1", "vlan33", LOCALNET2, "172.17.33.250/24", "0a:58:ac:11:21:fa")
    on34 = _pod("node-2", "vlan34", LOCALNET1, "172.17.34.250/24", "0a:58:ac:11:22:fa")
    # addresses of the other VLAN's subnet, on the wrong VLAN
    stray33 = _pod("node-1", "stray33", LOCALNET2, "172.17.34.251/24", "0a:58:ac:11:22:fb")
    stray34 = _pod("node-2", "stray34", LOCALNET1, "172.17.33.251/24", "0a:58:ac:11:21:fb")
    for pod in (on33, on34, stray33, stray34):
        world.add_pod(pod)
        world.cni(pod, "ADD")

    with sb.capture("node-1", "enp2s0", "vlan and icmp") as cap:
        assert world.ping(on33, "172.17.33.1"), "VLAN 33 pod must reach 172.17.33.1"
        tagged = cap.wait_for(lambda line: "vlan 33" in line and "172.17.33.250 >" in line,
                              timeout=5)
    assert tagged, f"VLAN 33 traffic must leave through enp2s0 tagged: {cap.lines}"
    assert world.ping(on34, "172.17.34.1"), "VLAN 34 pod (br-ex) must reach 172.17.34.1"
    assert not world.ping(stray33, "172.17.34.1", deadline=3)
    assert not world.ping(stray34, "172.17.33.1", deadline=3)


def test_port_security_and_check(world: harness.Cluster) -> None:
    world.add_network(L2)
    a = _pod("node-1", "psa", L2, "10.100.0.15/24", "0a:58:0a:64:00:0f")
    b = _pod("node-2", "psb", L2, "10.100.0.16/24", "0a:58:0a:64:00:10")
    for pod in (a, b):
        world.add_pod(pod)
        world.cni(pod, "ADD")
    assert world.ping(a, b.address)
    assert world.cni(a, "CHECK", cni_version="0.4.0").exit_code == 0

    sb, ns = world.sb, a.netns_name
    sb.exec("node-1", f"ip -n {ns} addr flush dev net1 && ip -n {ns} addr add 10.100.0.99/24 "
            "dev net1")
    assert not world.ping(a, b.address, deadline=3), "a changed IP must not pass port security"
    sb.exec("node-1", f"ip -n {ns} addr flush dev net1 && ip -n {ns} addr add {a.ip} dev net1")
    assert world.ping(a, b.address)

    sb.exec("node-1", f"ip -n {ns} link set net1 address 0a:58:0a:64:00:63")
    assert not world.ping(a, b.address, deadline=3), "a changed MAC must not pass port security"
    check = world.cni(a, "CHECK", cni_version="0.4.0", check=False)
    assert check.exit_code != 0 and check.output is not None
    assert "MAC 0a:58:0a:64:00:63, expected 0a:58:0a:64:00:0f" in check.output["msg"]


def test_del_leaves_nothing_and_is_idempotent(world: harness.Cluster) -> None:
    world.add_network(L2)
    a = _pod("node-1", "dela", L2, "10.100.0.25/24", "0a:58:0a:64:00:19")
    world.add_pod(a)
    world.cni(a, "ADD")
    assert a.host_side in world.ovs_ports("node-1")

    assert world.cni(a, "DEL").exit_code == 0
    assert a.host_side not in world.ovs_ports("node-1")
    assert a.port not in world.iface_ids("node-1")
    assert world.sb.exec("node-1", f"ip link show {a.host_side}", check=False).exit_code != 0
    assert "net1" not in world.sb.exec("node-1", f"ip -n {a.netns_name} -o link").stdout
    assert world.cni(a, "DEL").exit_code == 0  # again
    world.sb.delete_pod_netns("node-1", a.netns_name)
    assert world.cni(a, "DEL").exit_code == 0  # and with the sandbox gone


def test_a_second_add_replaces_a_stale_interface_with_the_same_iface_id(
        world: harness.Cluster) -> None:
    world.add_network(L2)
    a = _pod("node-1", "dupa", L2, "10.100.0.35/24", "0a:58:0a:64:00:23")
    b = _pod("node-2", "dupb", L2, "10.100.0.36/24", "0a:58:0a:64:00:24")
    for pod in (a, b):
        world.add_pod(pod)
        world.cni(pod, "ADD")
    old_host_side = a.host_side
    a.container_id = "0ther" + a.container_id[5:]  # a new sandbox of the same pod
    world.sb.exec("node-1", f"ip netns del {a.netns_name}; ip netns add {a.netns_name}")
    world.cni(a, "ADD")
    assert old_host_side not in world.ovs_ports("node-1")
    assert world.iface_ids("node-1").count(a.port) == 1
    assert world.ping(a, b.address)


def test_errors_are_cni_error_objects(world: harness.Cluster) -> None:
    world.add_network(L2)
    a = _pod("node-1", "erra", L2, "10.100.0.45/24", "0a:58:0a:64:00:2d")
    world.add_pod(a, annotate=False)  # the controller never writes the annotation

    bad = world.cni(a, "ADD", stdin="{not json", check=False)
    assert bad.exit_code != 0 and bad.output is not None and bad.output["code"] == 7
    env = a.env("ADD")
    del env["CNI_NETNS"]
    missing = world.cni(a, "ADD", env=env, check=False)
    assert missing.exit_code != 0 and missing.output is not None
    assert missing.output["code"] == 4 and "CNI_NETNS" in missing.output["msg"]

    late = world.cni(a, "ADD", check=False)  # the agents wait 5 s for the annotation here
    assert late.exit_code != 0 and late.output is not None and late.output["code"] == 100
    assert "timed out" in late.output["msg"] and "test/nad-layer2" in late.output["msg"]
    assert a.port not in world.iface_ids("node-1")
    assert world.sb.exec("node-1", f"ip link show {a.host_side}", check=False).exit_code != 0
    assert "net1" not in world.sb.exec("node-1", f"ip -n {a.netns_name} -o link").stdout


def test_agent_restart_keeps_pods_connected_and_cleans_up(world: harness.Cluster) -> None:
    sb = world.sb
    world.add_network(L2)
    a = _pod("node-1", "rsa", L2, "10.100.0.55/24", "0a:58:0a:64:00:37")
    b = _pod("node-2", "rsb", L2, "10.100.0.56/24", "0a:58:0a:64:00:38")
    gone = _pod("node-1", "rsgone", L2, "10.100.0.57/24", "0a:58:0a:64:00:39")
    for pod in (a, b, gone):
        world.add_pod(pod)
        world.cni(pod, "ADD")
    log = f"/tmp/ping-{a.name}.log"
    sb.exec("node-1", f"ip netns exec {a.netns_name} ping -i 0.1 -c 60 {b.address} > {log}",
            detach=True)
    try:
        agent = world.agents["node-1"]
        agent.stop()
        # a DEL meanwhile succeeds and changes nothing (the shim: no agent, nothing to tear
        # down now; a's interface and port stay, and a keeps pinging)
        down = world.cni(a, "DEL", check=False)
        assert (down.exit_code, down.output) == (0, None)
        world.remove_pod(gone)  # deleted while the agent was down: cleaned up at its start
        agent.start()
        harness.wait_until(lambda: "packets transmitted" in sb.exec(
            "node-1", ["cat", log], check=False).stdout, timeout=30, what="the ping to finish")
        summary = sb.exec("node-1", ["cat", log]).stdout
        loss = re.search(r"(\d+)% packet loss", summary)
        assert loss and loss.group(1) == "0", summary
        assert a.host_side in world.ovs_ports("node-1"), "the DEL without an agent removed a port"
        harness.wait_until(lambda: gone.host_side not in world.ovs_ports("node-1"), timeout=30,
                           what="the restarted agent to remove the port of the deleted pod")
    finally:
        sb.exec("node-1", f"rm -f {log}", check=False)


def test_recreated_host_interface_is_replugged_at_start_up(world: harness.Cluster) -> None:
    sb = world.sb
    world.add_network(L2)
    a = _pod("node-1", "rpa", L2, "10.100.0.65/24", "0a:58:0a:64:00:41")
    b = _pod("node-2", "rpb", L2, "10.100.0.66/24", "0a:58:0a:64:00:42")
    for pod in (a, b):
        world.add_pod(pod)
        world.cni(pod, "ADD")
    agent = world.agents["node-1"]
    agent.stop()
    # the same names again, as after a runtime re-created the pair: OVS keeps a stale handle
    ns, host = a.netns_name, a.host_side
    sb.exec("node-1", f"""set -e
        ip link del {host}
        ip link add {host} mtu 1400 type veth peer name net1 netns {ns}
        ip -n {ns} link set net1 address {a.mac} mtu 1400 up
        ip -n {ns} addr add {a.ip} dev net1
        ip link set {host} up""")
    assert not world.ping(a, b.address, deadline=3), "expected the stale handle to drop traffic"
    agent.start()
    assert world.ping(a, b.address, deadline=10), "the agent must re-plug the new interface"


def test_bridge_mappings_file_changes_are_validated_and_converged(
        world: harness.Cluster) -> None:
    sb, node = world.sb, "node-2"
    agent = world.agents[node]

    def mappings() -> str:
        return sb.exec(node, "ovs-vsctl get open . external_ids:ovn-bridge-mappings").stdout \
            .strip().strip('"')

    def annotation() -> dict[str, object]:
        text = world.core.read_node(node).metadata.annotations["ovnk-secondary.io/bridge-mappings"]
        return dict(json.loads(text))

    original = agent.mappings
    assert original is not None and mappings() == "localnet1:br-ex,localnet2:ovs-br1"
    # an admin's own entry, which the agent must never drop
    sb.exec(node, 'ovs-vsctl set open . external_ids:ovn-bridge-mappings='
                  '"localnet1:br-ex,localnet2:ovs-br1,physnet-admin:br-admin"')
    try:
        agent.write_mappings(original.replace("enp2s0", "enp9s9"))
        error = harness.wait_until(lambda: annotation()["error"], timeout=20,
                                   what="the agent to report the bad file")
        assert "uplink NIC enp9s9 of bridge ovs-br1 does not exist" in str(error)
        assert mappings() == "localnet1:br-ex,localnet2:ovs-br1,physnet-admin:br-admin"

        agent.write_mappings("bridgeMappings:\n  - {physicalNetworkName: localnet1, "
                             "bridge: br-ex}\n")
        harness.wait_until(lambda: mappings() == "localnet1:br-ex,physnet-admin:br-admin",
                           timeout=20, what="localnet2 to leave ovn-bridge-mappings")
        # the Node annotation is written after OVS: wait for it too
        harness.wait_until(lambda: annotation()["error"] is None, timeout=20,
                           what="the agent to clear the error on its Node")
    finally:
        agent.write_mappings(original)
        harness.wait_until(lambda: mappings().startswith("localnet1:br-ex,")
                           and "localnet2:ovs-br1" in mappings(), timeout=20,
                           what="the original mappings to come back")
        sb.exec(node, 'ovs-vsctl set open . external_ids:ovn-bridge-mappings='
                      '"localnet1:br-ex,localnet2:ovs-br1"')


def test_many_adds_and_dels_at_once(world: harness.Cluster) -> None:
    world.add_network(L2)
    pods = [_pod("node-1", f"many{i}", L2, f"10.100.1.{i + 10}/24", f"0a:58:0a:64:01:{i + 10:02x}")
            for i in range(12)]
    for pod in pods:
        world.add_pod(pod)
    with concurrent.futures.ThreadPoolExecutor(len(pods)) as pool:
        added = list(pool.map(lambda p: world.cni(p, "ADD", check=False), pods))
    assert [o.exit_code for o in added] == [0] * len(pods), [o.output for o in added]
    ports = world.ovs_ports("node-1")
    assert all(p.host_side in ports for p in pods)
    assert world.ping(pods[0], pods[-1].address)
    with concurrent.futures.ThreadPoolExecutor(len(pods)) as pool:
        deleted = list(pool.map(lambda p: world.cni(p, "DEL", check=False), pods))
    assert [o.exit_code for o in deleted] == [0] * len(pods)
    ports = world.ovs_ports("node-1")
    assert not any(p.host_side in ports for p in pods)


def test_binding_timeout_names_the_port_and_undoes_everything(world: harness.Cluster) -> None:
    world.add_network(L2)
    a = _pod("node-1", "nobind", L2, "10.100.0.75/24", "0a:58:0a:64:00:4b")
    world.add_pod(a, port=False)  # annotated, but no logical switch port: OVN never binds it
    outcome = world.cni(a, "ADD", check=False)  # the agents wait 12 s for ovn-installed here
    assert outcome.exit_code != 0 and outcome.output is not None
    assert outcome.output["code"] == 101
    assert "timed out waiting for OVS port binding" in outcome.output["msg"]
    assert a.port in outcome.output["msg"]
    assert a.host_side not in world.ovs_ports("node-1")
    assert world.sb.exec("node-1", f"ip link show {a.host_side}", check=False).exit_code != 0
    assert "net1" not in world.sb.exec("node-1", f"ip -n {a.netns_name} -o link").stdout


def test_tcp_between_pods_on_two_nodes(world: harness.Cluster) -> None:
    """On the userspace datapath TCP needs the pod side's checksum offload off (the agent's
    default there); with it on, every segment arrives with a bad checksum and is dropped."""
    sb = world.sb
    world.add_network(L2)
    a = _pod("node-1", "tcpa", L2, "10.100.0.85/24", "0a:58:0a:64:00:55")
    b = _pod("node-2", "tcpb", L2, "10.100.0.86/24", "0a:58:0a:64:00:56")
    for pod in (a, b):
        world.add_pod(pod)
        world.cni(pod, "ADD")
    pidfile = "/tmp/http-tcpb.pid"
    sb.exec("node-2", f"ip netns exec {b.netns_name} timeout 120 /opt/venv/bin/python -m "
            f"http.server 8080 --bind {b.address} >/dev/null 2>&1 & echo $! > {pidfile}")
    fetch = ["ip", "netns", "exec", a.netns_name, "/opt/venv/bin/python", "-c",
             "import urllib.request as r; "
             f"print(len(r.urlopen('http://{b.address}:8080/', timeout=3).read()))"]
    try:
        harness.wait_until(lambda: sb.exec("node-1", fetch, check=False).exit_code == 0,
                           timeout=30, what="an HTTP answer from the pod on the other node",
                           interval=0.5)
    finally:
        sb.exec("node-2", f"kill $(cat {pidfile}); rm -f {pidfile}", check=False)


def _link(world: harness.Cluster, pod: Pod, name: str | None = None) -> str:
    """`ip -o link show` of a pod interface (`net1` by default), empty when it is missing."""
    return world.sb.exec(pod.node, ["ip", "-n", pod.netns_name, "-o", "link", "show",
                                    name or pod.ifname], check=False).stdout


def test_an_add_never_takes_the_interface_of_another_nad(world: harness.Cluster) -> None:
    """Multus with `[{"name":"l2a"},{"name":"l2b","interface":"net1"}]` calls ADD twice with
    CNI_IFNAME net1 in one sandbox: the second must fail and leave the first's net1 alone."""
    world.add_network(L2)
    world.add_network(L2_OTHER)
    a = _pod("node-1", "held", L2, "10.100.0.95/24", "0a:58:0a:64:00:5f")
    peer = _pod("node-2", "heldpeer", L2, "10.100.0.96/24", "0a:58:0a:64:00:60")
    for pod in (a, peer):
        world.add_pod(pod)
    world.cni(a, "ADD")
    world.cni(a, "ADD")  # a retried ADD of the same attachment stays idempotent
    world.cni(peer, "ADD")
    assert world.iface_ids("node-1").count(a.port) == 1
    assert world.ping(a, peer.address)

    b = dataclasses.replace(a, network=L2_OTHER, ip="10.100.0.97/24", mac="0a:58:0a:64:00:61")
    world.add_attachment(b)
    refused = world.cni(b, "ADD", check=False)
    assert refused.exit_code != 0 and refused.output is not None, refused
    assert refused.output["code"] == 104, refused.output
    assert "net1" in refused.output["msg"] and "test/nad-layer2" in refused.output["msg"]
    assert a.mac in _link(world, a), "the first attachment's net1 must be untouched"
    assert a.host_side in world.ovs_ports("node-1") and a.port in world.iface_ids("node-1")
    assert b.port not in world.iface_ids("node-1")
    assert world.ping(a, peer.address)

    # Multus undoes the failed attachment with a DEL of the same sandbox and interface name
    assert world.cni(b, "DEL").exit_code == 0
    assert a.mac in _link(world, a), "a DEL of another NAD must not remove net1"
    assert a.host_side in world.ovs_ports("node-1") and a.port in world.iface_ids("node-1")
    assert world.ping(a, peer.address)


def test_an_add_never_takes_an_interface_another_plugin_made(world: harness.Cluster) -> None:
    world.add_network(L2)
    a = _pod("node-1", "foreign", L2, "10.100.0.98/24", "0a:58:0a:64:00:62")
    world.add_pod(a)
    # another CNI's veth pair with its pod end named net1 (its host end: fgn-net1)
    world.sb.exec("node-1", f"ip link add fgn-net1 type veth peer name net1 netns {a.netns_name}")
    try:
        refused = world.cni(a, "ADD", check=False)
        assert refused.exit_code != 0 and refused.output is not None, refused
        assert refused.output["code"] == 104, refused.output
        assert "net1" in refused.output["msg"], refused.output
        assert "not created by ovn-k8s-cni-overlay" in refused.output["msg"], refused.output
        assert world.sb.exec("node-1", "ip link show fgn-net1", check=False).exit_code == 0
        assert a.port not in world.iface_ids("node-1")
        assert world.sb.exec("node-1", f"ip link show {a.host_side}", check=False).exit_code != 0

        assert world.cni(a, "DEL").exit_code == 0
        assert world.sb.exec("node-1", "ip link show fgn-net1", check=False).exit_code == 0, \
            "a DEL must not remove another plugin's interface"
        assert _link(world, a)
    finally:
        world.sb.exec("node-1", "ip link del fgn-net1", check=False)


def test_the_same_nad_twice_in_one_sandbox_is_refused(world: harness.Cluster) -> None:
    """Both interfaces would be one logical switch port: the second must not unplug the first."""
    world.add_network(L2)
    a = _pod("node-1", "twice", L2, "10.100.0.99/24", "0a:58:0a:64:00:63")
    peer = _pod("node-2", "twicepeer", L2, "10.100.0.100/24", "0a:58:0a:64:00:64")
    for pod in (a, peer):
        world.add_pod(pod)
        world.cni(pod, "ADD")
    second = dataclasses.replace(a, ifname="net2")
    world.add_attachment(second)  # the pod selects the NAD again, as net2
    refused = world.cni(second, "ADD", check=False)
    assert refused.exit_code != 0 and refused.output is not None, refused
    assert refused.output["code"] == 104, refused.output
    assert a.port in refused.output["msg"] and "net1" in refused.output["msg"]
    assert not _link(world, second), "the refused ADD must leave no net2 behind"
    assert second.host_side not in world.ovs_ports("node-1")
    assert a.host_side in world.ovs_ports("node-1")
    assert world.ping(a, peer.address)


def test_localnet_without_a_bridge_mapping_fails_before_creating_anything(
        world: harness.Cluster) -> None:
    unmapped = Network("localnet9", "localnet", "test/nad-localnet9", vlan=39,
                       physical_network="physnet9")
    world.add_network(unmapped)
    a = _pod("node-1", "unmapped", unmapped, "172.17.39.5/24", "0a:58:ac:11:27:05")
    world.add_pod(a)
    outcome = world.cni(a, "ADD", check=False)
    assert outcome.exit_code != 0 and outcome.output is not None, outcome
    assert outcome.output["code"] == 105, outcome.output
    assert outcome.output["msg"].startswith(
        "physical network physnet9 of NAD test/nad-localnet9 is not mapped on node node-1 "
        "(ovn-bridge-mappings: localnet1:br-ex,localnet2:ovs-br1); add it to the "
        "bridge-mappings file"), outcome.output
    assert a.port not in world.iface_ids("node-1")
    assert world.sb.exec("node-1", f"ip link show {a.host_side}", check=False).exit_code != 0
    assert not _link(world, a)


def _mtus(world: harness.Cluster, pod: Pod) -> tuple[int, int]:
    """(host side, pod side) MTU of a pod interface, as `ip link` shows them."""
    def mtu(line: str) -> int:
        found = re.search(r" mtu (\d+) ", line)
        assert found, line
        return int(found.group(1))

    host = world.sb.exec(pod.node, f"ip -o link show {pod.host_side}").stdout
    return mtu(host), mtu(_link(world, pod))


def _big_ping(world: harness.Cluster, pod: Pod, address: str, size: int) -> bool:
    """One ping of `size` bytes of IP packet that must not be fragmented."""
    done = world.sb.exec(pod.node, ["ip", "netns", "exec", pod.netns_name, "ping", "-M", "do",
                                    "-s", str(size - 28), "-c", "2", "-W", "1", "-w", "5",
                                    address], check=False, timeout=30)
    return done.exit_code == 0


def test_a_nad_mtu_edit_reaches_running_pods_on_both_ends(world: harness.Cluster) -> None:
    small = Network("mtu-net", "layer2", "test/nad-mtu", subnet="10.100.2.0/24", mtu=1300)
    world.add_network(small)
    world.add_network(L2_OTHER)
    world.add_nad(small)
    a = _pod("node-1", "mtua", small, "10.100.2.5/24", "0a:58:0a:64:02:05")
    b = _pod("node-1", "mtub", small, "10.100.2.6/24", "0a:58:0a:64:02:06")
    bystander = _pod("node-1", "mtuc", L2_OTHER, "10.100.0.105/24", "0a:58:0a:64:00:69")
    for pod in (a, b, bystander):
        world.add_pod(pod)
        world.cni(pod, "ADD")
    assert _mtus(world, a) == _mtus(world, b) == (1300, 1300)
    assert world.ping(a, b.address)
    assert not _big_ping(world, a, b.address, 1450)

    world.edit_nad(dataclasses.replace(small, mtu=1450))
    harness.wait_until(lambda: _mtus(world, a) == _mtus(world, b) == (1450, 1450), timeout=20,
                       what="the new MTU on both ends of both pods' interfaces")
    # packets of the new size cross both veths and br-int, in both directions
    assert _big_ping(world, a, b.address, 1450)
    assert _big_ping(world, b, a.address, 1450)
    assert _mtus(world, bystander) == (1400, 1400), "another NAD's pod must keep its MTU"
    log = world.agents["node-1"].log_text()
    changed = [line for line in log.splitlines() if "MTU" in line and "test/nad-mtu" in line]
    assert [line for line in changed if a.host_side in line], changed
    assert [line for line in changed if b.host_side in line], changed
    assert not [line for line in log.splitlines() if "MTU" in line and bystander.host_side
                in line]


def test_an_agent_is_ready_only_while_its_bridge_mappings_apply(
        world: harness.Cluster) -> None:
    agent = world.agents["node-1"]
    assert agent.readyz() == (200, "ready\n")
    try:
        agent.write_mappings("bridgeMappings:\n  - physicalNetworkName: physnet9\n")  # no bridge
        _, text = harness.wait_until(
            lambda: (answer := agent.readyz())[0] == 503 and answer, timeout=30,
            what="the agent to report the broken bridge-mappings file")
        assert text.startswith("bridge mappings not applied: "), text
        assert text.endswith("entry 1 (physicalNetworkName physnet9): bridge is missing\n"), text
    finally:
        agent.write_mappings(conftest.MAPPINGS_FILE)
    harness.wait_until(lambda: agent.readyz() == (200, "ready\n"), timeout=30,
                       what="the agent to be ready again once the file is fixed")


def test_no_agent_was_refused_by_the_api_server(world: harness.Cluster) -> None:
    """After this module's tests, no node agent (on the node agent's ServiceAccount, bound by
    manifests/rbac.yaml) met a 403. (Last in the module on purpose.)"""
    logs = {agent.node: world.sb.exec(agent.node, f"cat {agent.log}").stdout
            for agent in world.agents.values()}
    assert all(logs.values()), "an agent's log is empty: nothing was checked"
    refused = {node: [line for line in text.splitlines() if kube.REFUSAL.search(line)]
               for node, text in logs.items()}
    assert not any(refused.values()), refused
