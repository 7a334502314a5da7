"""What ADD builds from the NAD config and the pod annotation, and what CHECK reports."""

from __future__ import annotations

import dataclasses

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


def test_a_vms_own_port_is_handed_over_down_with_its_addresses_and_no_routes() -> None:
    network = attachments.network_config(CONFIG)
    vm_port = dataclasses.replace(ANNOTATED, logical_switch_port="ns1.l2.network_ns1_vm_vm1")
    spec = attachments.desired_interface(request=REQUEST, network=network, pod_network=vm_port)
    assert not spec.up and spec.routes == ()
    assert spec.addresses == ("10.100.0.5/24", "fd00::5/64")
    assert spec.mac == "0a:58:0a:64:00:05"
    # a pod's own port: up, with its routes
    assert attachments.desired_interface(request=REQUEST, network=network,
                                         pod_network=ANNOTATED).up
    # CHECK: down is what ADD left, up is what KubeVirt's binding made of it: neither is wrong
    port = ovs.PortState(name="ovk1", external_ids={ovs.OVN_INSTALLED: "true"}, ofport=3,
                         ifindex=4, error=None)
    for up in (False, True):
        observed = interfaces.ObservedInterface(mac=spec.mac, mtu=spec.mtu,
                                                addresses=frozenset(spec.addresses), up=up)
        assert attachments.check_problems(spec=spec, observed=observed, port=port,
                                          port_name="p") == []
    down = interfaces.ObservedInterface(mac=spec.mac, mtu=spec.mtu,
                                        addresses=frozenset(spec.addresses), up=False)
    pod_spec = dataclasses.replace(spec, up=True)
    assert attachments.check_problems(spec=pod_spec, observed=down, port=port,
                                      port_name="p") == ["net1 is down"]


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


LOCALNET = {"cniVersion": "0.3.1", "name": "localnet9", "type": "ovn-k8s-cni-overlay",
            "topology": "localnet", "netAttachDefName": "ns1/ln9", "vlanID": 9}


def test_an_unmapped_physical_network_is_refused_with_what_the_node_has() -> None:
    network = attachments.network_config(LOCALNET | {"physicalNetworkName": "physnet9"})
    error = attachments.unmapped_network_error(
        network, mappings="localnet1:br-ex,localnet2:ovs-br1", node_name="node-1")
    assert error is not None and error.code == protocol.UNMAPPED_PHYSICAL_NETWORK == 105
    assert error.msg.startswith(
        "physical network physnet9 of NAD ns1/ln9 is not mapped on node node-1 "
        "(ovn-bridge-mappings: localnet1:br-ex,localnet2:ovs-br1); add it to the bridge-mappings "
        "file")
    assert "ovn-bridge-mappings: none" in str(attachments.unmapped_network_error(
        network, mappings="", node_name="node-1"))
    # mapped, by physicalNetworkName or (without it) by the network name; layer2 needs nothing
    assert attachments.unmapped_network_error(network, mappings="physnet9:br-ex",
                                              node_name="n") is None
    assert attachments.unmapped_network_error(attachments.network_config(LOCALNET),
                                              mappings="localnet9:br9", node_name="n") is None
    assert attachments.unmapped_network_error(attachments.network_config(CONFIG), mappings="",
                                              node_name="n") is None


def _port(name: str, **ids: str) -> ovs.PortState:
    base = {"iface-id": "ns1.l2.network_ns1_tinypod", "sandbox": "abc",
            "k8s.ovn.org/nad": "ns1/l2-network", "ovnk-secondary.io/owner": "ovnk-secondary",
            "ovnk-secondary.io/ifname": "net1", "ovnk-secondary.io/pod": "ns1/tinypod"}
    return ovs.PortState(name=name, external_ids=base | ids, ofport=1, ifindex=9, error=None)


def test_taken_names_are_replaced_only_when_they_are_this_attachments_own() -> None:
    network = attachments.network_config(CONFIG)
    ours = interfaces.InterfaceExists(host_side=True, pod_side="veth")

    def occupant(taken: interfaces.InterfaceExists, *holders: ovs.PortState) -> str | None:
        return attachments.occupant(request=REQUEST, network=network, taken=taken,
                                    holders=holders)

    assert occupant(ours, _port("ovk1")) is None  # a retried ADD
    assert occupant(ours) is None  # a half-made pair of this host side, not plugged yet
    other_nad = occupant(ours, _port("ovk1", **{"k8s.ovn.org/nad": "ns1/other"}))
    assert other_nad is not None and "ns1/other" in other_nad and "net1" in other_nad
    assert "ovk1" in other_nad
    not_ours = occupant(ours, ovs.PortState(name="ovk1", external_ids={}, ofport=1, ifindex=9,
                                            error=None))
    assert not_ours is not None and "not plugged by ovnk-secondary" in not_ours
    foreign = occupant(interfaces.InterfaceExists(host_side=False, pod_side="macvlan"))
    assert foreign == ("interface net1 already exists in /var/run/netns/p (a macvlan interface) "
                       "and was not created by ovn-k8s-cni-overlay for NAD ns1/l2-network of "
                       "pod ns1/tinypod; it is left alone")


def test_del_knows_its_nad_also_from_a_config_it_cannot_use() -> None:
    assert attachments.declared_nad(CONFIG) == "ns1/l2-network"
    assert attachments.declared_nad(CONFIG | {"topology": "layer5"}) == "ns1/l2-network"
    assert attachments.declared_nad({"plugins": [CONFIG | {"ipam": {}}]}) == "ns1/l2-network"
    assert attachments.declared_nad({"type": "ovn-k8s-cni-overlay"}) == ""
