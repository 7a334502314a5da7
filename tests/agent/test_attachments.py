"""What ADD builds from the NAD config and the pod annotation, and what CHECK reports."""

from __future__ import annotations

import pytest

from ovnk_secondary import nads, podnetworks
from ovnk_secondary.agent import attachments, interfaces, ovs
from ovnk_secondary.cni import protocol

CONFIG = {"cniVersion": "0.4.0", "name": "l2-network", "type": "ovn-k8s-cni-overlay",
          "topology": "layer2", "netAttachDefName": "ns1/l2-network",
          "subnets": "10.100.0.0/24,fd00::/64", "mtu": 1300}
REQUEST = protocol.request_from({
    "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/var/run/netns/p",
    "CNI_IFNAME": "net1", "CNI_ARGS": "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=tinypod;K8S_POD_UID=u1",
}, CONFIG)
ANNOTATED = podnetworks.PodNetwork(
    ip_addresses=("10.100.0.5/24", "fd00::5/64"), mac_address="0a:58:0a:64:00:05",
    gateway_ips=("10.100.0.1",),
    routes=(podnetworks.Route(dest="10.200.0.0/16", next_hop="10.100.0.254"),))


def test_interface_follows_annotation_and_nad() -> None:
    network = attachments.network_config(CONFIG)
    spec = attachments.desired_interface(request=REQUEST, network=network,
                                         pod_network=ANNOTATED)
    assert (spec.ifname, spec.mac, spec.mtu) == ("net1", "0a:58:0a:64:00:05", 1300)
    assert spec.addresses == ("10.100.0.5/24", "fd00::5/64")
    assert spec.routes == (
        interfaces.RouteSpec(dst="10.200.0.0/16", gateway="10.100.0.254"),
        interfaces.RouteSpec(dst="0.0.0.0/0", gateway="10.100.0.1"))


def test_mtu_defaults_to_1400() -> None:
    network = attachments.network_config(CONFIG | {"mtu": None})
    spec = attachments.desired_interface(request=REQUEST, network=network,
                                         pod_network=ANNOTATED)
    assert spec.mtu == nads.DEFAULT_MTU == 1400


def test_port_carries_ovn_k_external_ids() -> None:
    network = attachments.network_config(CONFIG)
    ids = attachments.port_external_ids(request=REQUEST, network=network,
                                        port_name="ns1.l2.network_ns1_tinypod",
                                        mac="0a:58:0a:64:00:05", ifindex=7)
    assert {k: ids[k] for k in ("iface-id", "iface-id-ver", "attached_mac", "sandbox",
                                "k8s.ovn.org/nad", "k8s.ovn.org/network")} == {
        "iface-id": "ns1.l2.network_ns1_tinypod", "iface-id-ver": "u1",
        "attached_mac": "0a:58:0a:64:00:05", "sandbox": "abc",
        "k8s.ovn.org/nad": "ns1/l2-network", "k8s.ovn.org/network": "l2-network"}


def test_result_puts_gateway_on_the_matching_family() -> None:
    network = attachments.network_config(CONFIG)
    spec = attachments.desired_interface(request=REQUEST, network=network,
                                         pod_network=ANNOTATED)
    result = attachments.cni_result(spec=spec, host_name="ovk1", host_mac="aa:aa:aa:aa:aa:aa",
                                    pod_network=ANNOTATED)
    assert [(ip.address, ip.gateway, ip.interface) for ip in result.ips] == [
        ("10.100.0.5/24", "10.100.0.1", 1), ("fd00::5/64", None, 1)]
    assert result.interfaces[1].sandbox == "/var/run/netns/p"


@pytest.mark.parametrize("config", [
    {"cniVersion": "0.3.1", "name": "x", "type": "bridge"},
    CONFIG | {"topology": "layer5"},
    CONFIG | {"ipam": {"type": "host-local"}},
])
def test_configs_that_are_not_ours_or_invalid_are_code_7(config: dict[str, object]) -> None:
    with pytest.raises(protocol.CniError) as info:
        attachments.network_config(config)
    assert info.value.code == protocol.INVALID_CONFIG


def test_check_lists_every_difference() -> None:
    spec = interfaces.PodInterface(netns="/n", ifname="net1", mac="0a:58:0a:64:00:05", mtu=1400,
                                   addresses=("10.100.0.5/24",))
    observed = interfaces.ObservedInterface(mac="0a:58:0a:64:00:63", mtu=1500,
                                            addresses=frozenset(), up=True)
    port = ovs.PortState(name="ovk1", external_ids={}, ofport=3, ifindex=4, error=None)
    problems = attachments.check_problems(spec=spec, observed=observed, port=port,
                                          port_name="p")
    assert problems == [
        "net1 has MAC 0a:58:0a:64:00:63, expected 0a:58:0a:64:00:05",
        "net1 has MTU 1500, expected 1400",
        "net1 lacks address(es) 10.100.0.5/24",
        "OVS interface ovk1 (iface-id p) is not bound: ovn-controller has not set ovn-installed"]
    assert attachments.check_problems(spec=spec, observed=None, port=None, port_name="p") == [
        "interface net1 is missing in /n", "no OVS interface carries iface-id p on br-int"]
