"""Desired NB rows carry OVN-K's names and columns, plus our ownership marker."""

from __future__ import annotations

import functools

import netaddr

from ovnk_secondary import nads, naming
from ovnk_secondary.northbound import desired

LAYER2 = nads.NetworkConfig(name="l2-network", topology="layer2", nad_key="test/nad-layer2",
                            subnets=(netaddr.IPNetwork("10.100.0.0/24"),
                                     netaddr.IPNetwork("fd00:100::/64")))
LOCALNET = nads.NetworkConfig(name="localnet2", topology="localnet",
                              nad_key="test/nad-localnet2", vlan_id=33)


def test_layer2_switch_names_and_ids() -> None:
    switch = desired.switch(LAYER2)
    assert switch.name == "l2.network_ovn_layer2_switch"
    assert switch.external_ids == {"k8s.ovn.org/network": "l2-network",
                                   "k8s.ovn.org/topology": "layer2",
                                   "k8s.ovn.org/role": "secondary",
                                   naming.OWNER_KEY: naming.OWNER_VALUE}
    assert switch.other_config == {"subnet": "10.100.0.0/24", "ipv6_prefix": "fd00:100::"}
    assert desired.localnet_port(LAYER2) is None


def test_localnet_port_with_vlan() -> None:
    port = desired.localnet_port(LOCALNET)
    assert port is not None
    assert (port.name, port.switch, port.type, port.addresses, port.tag_request) == (
        "localnet2_ovn_localnet_port", "localnet2_ovn_localnet_switch", "localnet",
        ("unknown",), 33)
    assert port.options == {"network_name": "localnet2"}
    assert port.external_ids[naming.OWNER_KEY] == naming.OWNER_VALUE


def test_pod_port_matches_ovnk() -> None:
    attachment = desired.Attachment(
        nad_key="ns1/l2-network", pod_namespace="ns1", pod_name="tinypod", pod_uid="uid-1",
        node="node1", mac="0a:58:0a:64:00:05", ips=("10.100.0.5/24", "fd00:100::5/64"))
    port = desired.pod_port(LAYER2, attachment)
    assert port.name == "ns1.l2.network_ns1_tinypod"
    assert port.addresses == port.port_security == ("0a:58:0a:64:00:05 10.100.0.5 fd00:100::5",)
    assert port.options == {"requested-chassis": "node1", "iface-id-ver": "uid-1"}
    assert port.external_ids == {
        "namespace": "ns1", "pod": "true", "k8s.ovn.org/network": "l2-network",
        "k8s.ovn.org/nad": "ns1/l2-network", "k8s.ovn.org/topology": "layer2",
        naming.OWNER_KEY: naming.OWNER_VALUE}


def test_pod_port_without_ipam_has_mac_only() -> None:
    attachment = desired.Attachment(nad_key="test/nad-localnet2", pod_namespace="test",
                                    pod_name="vm", pod_uid="u", node="n",
                                    mac="02:00:00:00:00:01", ips=None)
    assert desired.pod_port(LOCALNET, attachment).addresses == ("02:00:00:00:00:01",)


def test_a_vms_own_port_on_localnet_has_no_announcements_from_ovn() -> None:
    """OVN's GARPs from the node a VM has just left would draw its traffic back there."""
    pod = functools.partial(desired.Attachment, nad_key="test/nad-localnet2",
                            pod_namespace="test", pod_name="virt-launcher-a", pod_uid="u",
                            node="n1", mac="0a:58:ac:11:21:81", ips=("172.17.33.129/24",))
    shared = desired.pod_port(LOCALNET, pod(vm_port="localnet2_test_vm_a", chassis=("n1", "n2")))
    assert shared.options == {"requested-chassis": "n1,n2", "activation-strategy": "rarp",
                              "disable_garp_rarp": "true"}
    # a pod's own port (plain, or a VM's under per-pod) keeps them; on layer2 (no bridged
    # switch) OVN sends none anyway
    assert "disable_garp_rarp" not in desired.pod_port(LOCALNET, pod()).options
    assert "disable_garp_rarp" not in desired.pod_port(
        LAYER2, pod(vm_port="l2_test_vm_a", chassis=("n1",))).options
