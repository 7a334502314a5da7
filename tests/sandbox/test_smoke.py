"""The sandbox carries the reference scenario's data paths (rows and pods made by hand)."""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ovnk_secondary.sandbox import cluster, realtime, smoke, vms

pytestmark = pytest.mark.sandbox


@pytest.fixture
def nb(sandbox: cluster.Sandbox) -> Iterator[Any]:
    api = smoke.nb_api(sandbox.nb_connection)
    try:
        yield api
    finally:
        api.ovsdb_connection.stop()


def test_layer2_pods_on_two_chassis_ping_over_geneve(sandbox: cluster.Sandbox, nb: Any) -> None:
    a, b = smoke.LAYER2_PODS
    outcome = smoke.layer2_over_geneve(sandbox, nb)
    assert outcome.reached, outcome.ping.stdout + outcome.ping.stderr
    carried = [line for line in outcome.capture if f"{a.ip} > {b.ip}: ICMP echo request" in line]
    assert carried, f"the ping did not cross the underlay: {outcome.capture}"
    # tcpdump -v prints: outer IP, outer UDP + Geneve header, inner IP, inner ICMP
    outer = outcome.capture[outcome.capture.index(carried[0]) - 2]
    assert ".6081:" in outer and "Geneve" in outer and "vni 0x" in outer, outer
    # nothing is left in NB or on the nodes
    assert smoke.LAYER2_SWITCH not in sandbox.ovn_nbctl("ls-list")
    for pod in smoke.LAYER2_PODS:
        assert pod.host_side not in sandbox.exec(pod.node, "ovs-vsctl list-ports br-int").stdout


def test_localnet_vlan33_leaves_dedicated_bridge_tagged(sandbox: cluster.Sandbox, nb: Any) -> None:
    tagged, stray = smoke.localnet_vlan33(sandbox, nb)
    assert tagged.reached, tagged.ping.stdout + tagged.ping.stderr
    requests = [line for line in tagged.capture if "172.17.33.10 > 172.17.33.1" in line]
    assert requests, f"nothing from the pod on the physnet link: {tagged.capture}"
    assert all("ethertype 802.1Q" in line and "vlan 33," in line for line in requests), requests
    # a pod on VLAN 33 asks for the VLAN 34 host's address, on VLAN 33, and nobody answers
    assert not stray.reached
    asked = [line for line in stray.capture if "who-has 172.17.34.1" in line]
    assert asked and all("vlan 33," in line for line in asked), stray.capture
    assert not any("is-at" in line for line in stray.capture), stray.capture


def test_a_chassis_geneve_address_is_answered_with_its_bridges_mac_alone(
        sandbox: cluster.Sandbox) -> None:
    """ARP for a chassis' Geneve address (on br-phy) gets br-phy's MAC only. The userspace
    datapath reads the underlay NIC with a packet socket, so the kernel sees its frames too:
    its ARP answered with the NIC's own MAC as well, and a peer whose tunnel neighbour cache
    kept that MAC sent Geneve frames the chassis did not decapsulate (seconds of loss)."""
    asker, owner = "node-1", "node-2"
    address = sandbox.exec(owner, ["ip", "-4", "-o", "addr", "show", "dev", "br-phy"]) \
        .stdout.split()[3].split("/")[0]
    bridge_mac = sandbox.exec(owner, ["cat", "/sys/class/net/br-phy/address"]).stdout.strip()
    nic_mac = sandbox.exec(owner, ["cat", "/sys/class/net/underlay0/address"]).stdout.strip()
    with sandbox.capture(asker, "underlay0", "arp") as arp:
        sandbox.exec(asker, ["ip", "neigh", "flush", "to", address, "dev", "br-phy"])
        sandbox.exec(asker, ["ping", "-c", "1", "-W", "1", "-I", "br-phy", address], check=False)
        assert arp.wait_for(lambda line: f"Reply {address} is-at" in line, timeout=5), arp.lines
        time.sleep(1)  # a second answer comes within moments
    answers = [line for line in arp.lines if f"Reply {address} is-at" in line]
    assert all(f"is-at {bridge_mac}" in line for line in answers), (nic_mac, answers)
    neighbour = sandbox.exec(asker, ["ip", "neigh", "show", "to", address, "dev", "br-phy"])
    assert bridge_mac in neighbour.stdout, neighbour.stdout


def test_the_datapath_forwards_in_a_real_time_thread(sandbox: cluster.Sandbox) -> None:
    """ovs-vswitchd's main thread, which forwards the userspace datapath's packets, is
    SCHED_FIFO in every chassis and the external host, as a kernel datapath's softirq would be
    ahead of processes; its other threads are left as they are (`realtime`)."""
    for container in [*sandbox.node_names, sandbox.external]:
        pid = realtime.vswitchd(sandbox.container(container))
        assert pathlib.Path(f"/proc/{pid}/comm").read_text().strip() == "ovs-vswitchd"
        assert realtime.policy(pid) == "SCHED_FIFO", container
        assert os.sched_getparam(pid).sched_priority == realtime.DATAPATH_PRIORITY
        others = [int(task.name) for task in pathlib.Path(f"/proc/{pid}/task").iterdir()
                  if int(task.name) != pid]
        assert others and all(realtime.policy(tid) == "SCHED_OTHER" for tid in others)


def test_a_probe_runs_real_time_above_the_datapath(sandbox: cluster.Sandbox) -> None:
    probe = vms.probe_in_background(sandbox.container("node-1"),
                                    ["sh", "-c", 'sleep 1; chrt -p "$$"'])
    output, _ = probe.communicate(timeout=30)
    assert "SCHED_FIFO" in output, output
    assert f"priority: {realtime.PROBE_PRIORITY}" in output, output
