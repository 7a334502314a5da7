"""Bridge mappings: the file's validation, the entry-by-entry merge, and applying it to real OVS."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from ovnk_secondary import errors
from ovnk_secondary.agent import bridgemappings, ovs, uplinks
from tests.agent import conftest

SCENARIO = """
bridgeMappings:
  - physicalNetworkName: localnet1
    bridge: br-ex
  - physicalNetworkName: localnet2
    bridge: ovs-br1
    uplinks: [enp2s0]
"""


def test_scenario_file_parses_into_both_mappings() -> None:
    mappings = bridgemappings.parse_file(SCENARIO, source="f.yaml")
    assert mappings == (
        bridgemappings.BridgeMapping(physical_network="localnet1", bridge="br-ex"),
        bridgemappings.BridgeMapping(physical_network="localnet2", bridge="ovs-br1",
                                     uplinks=("enp2s0",)),
    )


def test_json_and_empty_files_are_accepted() -> None:
    text = json.dumps({"bridgeMappings": [{"physicalNetworkName": "p", "bridge": "b"}]})
    assert len(bridgemappings.parse_file(text, source="f.json")) == 1
    assert bridgemappings.parse_file("", source="f") == ()
    assert bridgemappings.parse_file("bridgeMappings: []\n", source="f") == ()


@pytest.mark.parametrize(("text", "fragment"), [
    ("bridgeMappings:\n - {physicalNetworkName: a, bridge: b}\n"
     " - {physicalNetworkName: a, bridge: c}\n", "physical network a is mapped twice"),
    ("bridgeMappings:\n - {physicalNetworkName: a, bridge: b, uplinks: [eth9]}\n"
     " - {physicalNetworkName: c, bridge: d, uplinks: [eth9]}\n", "uplink eth9 is listed for"),
    ("bridgeMappings:\n - {physicalNetworkName: a}\n",
     "(physicalNetworkName a): bridge is missing"),
    ("bridgeMappings:\n - {physicalNetworkName: 'a:b', bridge: b}\n", "not a plain name"),
    ("bridgeMappings:\n - {physicalNetworkName: a, bridge: b, vlan: 3}\n", "unknown key(s) vlan"),
    ("bridgeMappings:\n - {physicalNetworkName: a, bridge: averyveryverylongbridge}\n",
     "at most 15"),
    ("mappings: []\n", "only 'bridgeMappings'"),
    ("bridgeMappings: [\n", "not valid YAML"),
])
def test_invalid_files_say_what_to_fix(text: str, fragment: str) -> None:
    with pytest.raises(errors.InvalidConfig, match=r"f\.yaml") as info:
        bridgemappings.parse_file(text, source="f.yaml")
    assert fragment in str(info.value)


def test_unknown_uplink_nic_is_refused() -> None:
    mappings = bridgemappings.parse_file(SCENARIO, source="f.yaml")
    with pytest.raises(errors.InvalidConfig, match=r"uplink NIC enp2s0 .* does not exist"):
        bridgemappings.validate_on_node(mappings, links={"lo", "eth0"}, port_bridges={},
                                        source="f.yaml")
    with pytest.raises(errors.InvalidConfig, match="already a port of bridge br-ex"):
        bridgemappings.validate_on_node(mappings, links={"enp2s0"},
                                        port_bridges={"enp2s0": "br-ex"}, source="f.yaml")
    bridgemappings.validate_on_node(mappings, links={"enp2s0"}, port_bridges={}, source="f")


def test_merge_keeps_foreign_entries_and_drops_only_ours() -> None:
    current = bridgemappings.parse_value("physnet0:br-admin,localnet1:br-ex,old:br-old")
    merged = bridgemappings.merge(current=current, owned={"localnet1": "br-ex", "old": "br-old"},
                                  desired={"localnet1": "br-ex", "localnet2": "ovs-br1"})
    assert bridgemappings.format_value(merged) == (
        "physnet0:br-admin,localnet1:br-ex,localnet2:ovs-br1")


def test_merge_refuses_to_overwrite_someone_elses_entry() -> None:
    with pytest.raises(errors.InvalidConfig, match="already mapped to bridge br-admin"):
        bridgemappings.merge(current={"localnet1": "br-admin"}, owned={},
                             desired={"localnet1": "br-ex"})


def test_merge_leaves_an_entry_we_wrote_but_an_admin_changed() -> None:
    merged = bridgemappings.merge(current={"localnet1": "br-admin"},
                                  owned={"localnet1": "br-ex"}, desired={})
    assert merged == {"localnet1": "br-admin"}


def _mappings(switch: conftest.LocalSwitch) -> str:
    return switch.vsctl("get", "open", ".", "external_ids:ovn-bridge-mappings").strip('"')


def test_apply_creates_bridge_and_uplink_and_merges(local_switch: conftest.LocalSwitch) -> None:
    sw = local_switch
    sw.ip("link", "add", "enp2s0", "type", "veth", "peer", "name", "tor0")
    sw.vsctl("set", "open", ".", "external_ids:ovn-bridge-mappings=physnet0:br-admin")
    switch = ovs.LocalOvs(remote=sw.remote)
    try:
        mappings = bridgemappings.parse_file(SCENARIO, source="f.yaml")
        value = bridgemappings.apply(switch, mappings, links={"enp2s0"}, source="f.yaml")
        assert value == "physnet0:br-admin,localnet1:br-ex,localnet2:ovs-br1"
        assert _mappings(sw) == value
        assert sw.vsctl("get", "bridge", "ovs-br1", "datapath_type") == "netdev"
        assert sw.vsctl("port-to-br", "enp2s0") == "ovs-br1"

        # an entry leaves the file: only it goes; an admin's entry added meanwhile stays
        sw.vsctl("set", "open", ".",
                 f"external_ids:ovn-bridge-mappings=\"{value},physnet9:br-nine\"")
        smaller = bridgemappings.parse_file(
            "bridgeMappings:\n - {physicalNetworkName: localnet2, bridge: ovs-br1}\n",
            source="f.yaml")
        value = bridgemappings.apply(switch, smaller, links=(), source="f.yaml")
        assert value == "physnet0:br-admin,localnet2:ovs-br1,physnet9:br-nine"
        assert sw.vsctl("br-exists", "ovs-br1") == ""

        # a conflicting file changes nothing at all (not even the bridge it would create)
        conflicting = bridgemappings.parse_file(
            "bridgeMappings:\n - {physicalNetworkName: physnet0, bridge: br-new}\n",
            source="f.yaml")
        with pytest.raises(errors.InvalidConfig, match="physnet0 is already mapped"):
            bridgemappings.apply(switch, conflicting, links=(), source="f.yaml")
        assert _mappings(sw) == value
        assert "br-new" not in sw.vsctl("list-br").split()
    finally:
        switch.close()


# --- uplinks that carry the node's address (pure) -------------------------------------------

MOVING = """
bridgeMappings:
  - physicalNetworkName: localnet2
    bridge: ovs-br1
    uplinks: [enp2s0]
    moveAddresses: true
"""
MAC = "52:54:00:12:34:56"
NODE_ADDRESS = uplinks.Address(cidr="192.168.1.5/24", broadcast="192.168.1.255")
PREFIX_ROUTE = uplinks.Route(dst="192.168.1.0/24", src="192.168.1.5",
                             protocol=uplinks.RTPROT_KERNEL, scope=uplinks.RT_SCOPE_LINK)
DEFAULT_ROUTE = uplinks.Route(dst="0.0.0.0/0", gateway="192.168.1.1", metric=100)
LINK_LOCAL = uplinks.Address(cidr="fe80::5054:ff:fe12:3456/64", scope=uplinks.RT_SCOPE_LINK)
LINK_LOCAL_ROUTE = uplinks.Route(dst="fe80::/64", metric=256, protocol=uplinks.RTPROT_KERNEL)
NODE_NIC = uplinks.Link(name="enp2s0", mac=MAC,
                        addresses=(NODE_ADDRESS, LINK_LOCAL),
                        routes=(DEFAULT_ROUTE, PREFIX_ROUTE, LINK_LOCAL_ROUTE))


def _plan(text: str, *links: uplinks.Link,
          port_bridges: dict[str, str] | None = None) -> tuple[uplinks.Move, ...]:
    return uplinks.plan(bridgemappings.parse_file(text, source="f.yaml"),
                        links={link.name: link for link in links},
                        port_bridges=port_bridges or {}, source="f.yaml")


def test_move_addresses_is_a_boolean_of_an_entry_with_uplinks() -> None:
    mapping, = bridgemappings.parse_file(MOVING, source="f.yaml")
    assert mapping.move_addresses
    assert mapping.to_json()["moveAddresses"] is True
    assert "moveAddresses" not in bridgemappings.parse_file(SCENARIO, source="f")[1].to_json()
    with pytest.raises(errors.InvalidConfig, match="moveAddresses 'yes' must be true or false"):
        bridgemappings.parse_file(MOVING.replace("true", "'yes'"), source="f.yaml")
    with pytest.raises(errors.InvalidConfig, match="lists no uplinks"):
        bridgemappings.parse_file(MOVING.replace("uplinks: [enp2s0]", "uplinks: []"),
                                  source="f.yaml")


def test_uplink_carrying_the_node_address_is_refused_with_what_to_do() -> None:
    with pytest.raises(errors.InvalidConfig) as info:
        _plan(SCENARIO, NODE_NIC)
    assert str(info.value) == (
        "f.yaml: uplink NIC enp2s0 of bridge ovs-br1 carries the node's address 192.168.1.5/24 "
        "and the default route via 192.168.1.1; moving it into the bridge would cut the node "
        "off: set moveAddresses: true on this entry to move them to the bridge's interface, or "
        "list another NIC")


@pytest.mark.parametrize(("link", "carried"), [
    # a route alone is enough (here: a subnet reached through the NIC, no address on it)
    (uplinks.Link(name="enp2s0", mac=MAC, routes=(
        uplinks.Route(dst="10.0.0.0/8", scope=uplinks.RT_SCOPE_LINK),)), "the route 10.0.0.0/8"),
    (uplinks.Link(name="enp2s0", mac=MAC, addresses=(
        uplinks.Address(cidr="2001:db8::5/64"), uplinks.Address(cidr="192.168.1.5/24"))),
     "the node's addresses 2001:db8::5/64, 192.168.1.5/24"),
    (uplinks.Link(name="enp2s0", mac=MAC, addresses=(NODE_ADDRESS,), routes=(
        DEFAULT_ROUTE, uplinks.Route(dst="10.0.0.0/8", gateway="192.168.1.2"))),
     "the node's address 192.168.1.5/24, the default route via 192.168.1.1 and the route "
     "10.0.0.0/8 via 192.168.1.2"),
])
def test_every_address_and_route_an_uplink_carries_is_named(link: uplinks.Link,
                                                            carried: str) -> None:
    assert link.carries
    with pytest.raises(errors.InvalidConfig, match=f"carries {re.escape(carried)}; moving"):
        _plan(SCENARIO, link)


def test_link_local_only_uplink_and_converged_uplink_are_plain_ports() -> None:
    # what every IPv6 interface has: a fe80:: address and route (the kernel makes them anew)
    fresh = uplinks.Link(name="enp2s0", mac=MAC, addresses=(LINK_LOCAL,),
                         routes=(LINK_LOCAL_ROUTE,
                                 uplinks.Route(dst="ff00::/8", metric=256, kind=5)))
    assert not fresh.carries
    assert _plan(SCENARIO, fresh) == ()
    # already a port of its bridge (moved earlier, or added by an admin): nothing to decide
    assert _plan(SCENARIO, NODE_NIC, port_bridges={"enp2s0": "ovs-br1"}) == ()


def test_move_plan_takes_the_global_addresses_and_the_routes_the_kernel_does_not_remake() -> None:
    onlink = uplinks.Route(dst="10.0.0.0/8", gateway="172.16.0.1", onlink=True)
    subnet = uplinks.Route(dst="198.51.100.0/24", scope=uplinks.RT_SCOPE_LINK)
    v6 = uplinks.Address(cidr="2001:db8::5/64")
    nic = dataclasses.replace(NODE_NIC, addresses=(NODE_ADDRESS, v6, LINK_LOCAL),
                              routes=(DEFAULT_ROUTE, onlink, PREFIX_ROUTE, subnet,
                                      LINK_LOCAL_ROUTE))
    assert _plan(MOVING, nic) == (uplinks.Move(
        bridge="ovs-br1", uplink="enp2s0", mac=MAC, addresses=(NODE_ADDRESS, v6),
        # routes without a gateway first: another route's gateway may be reached through them
        routes=(subnet, DEFAULT_ROUTE, onlink)),)
    # nothing carried: nothing to move, even when allowed
    assert _plan(MOVING, uplinks.Link(name="enp2s0", mac=MAC)) == ()


def test_move_is_refused_for_two_carrying_uplinks_or_a_multipath_route() -> None:
    text = MOVING.replace("[enp2s0]", "[enp2s0, enp3s0]")
    other = dataclasses.replace(NODE_NIC, name="enp3s0", addresses=(
        uplinks.Address(cidr="10.1.0.5/16"),), routes=())
    with pytest.raises(errors.InvalidConfig,
                       match="uplink NICs enp2s0 and enp3s0 of bridge ovs-br1 both carry"):
        _plan(text, NODE_NIC, other)
    # one of them a port already: the other one moves
    moves = _plan(text, NODE_NIC, other, port_bridges={"enp2s0": "ovs-br1"})
    assert [m.uplink for m in moves] == ["enp3s0"]
    ecmp = dataclasses.replace(NODE_NIC, routes=(dataclasses.replace(DEFAULT_ROUTE,
                                                                     multipath=True),))
    with pytest.raises(errors.InvalidConfig,
                       match=r"one of several next hops of the default route via 192\.168\.1\.1"):
        _plan(MOVING, ecmp)
