"""The sandbox carries the reference scenario's data paths (rows and pods made by hand)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ovnk_secondary.sandbox import cluster, smoke

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
