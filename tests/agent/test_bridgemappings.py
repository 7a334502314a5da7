"""Bridge mappings: the file's validation, the entry-by-entry merge, and applying it to real OVS."""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import pytest

from ovnk_secondary import errors
from ovnk_secondary.agent import bridgemappings, health, ovs, pods, uplinks
from ovnk_secondary.agent import main as agent_main
from tests import kube
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
        value = bridgemappings.apply(switch, mappings, source="f.yaml", netns=sw.netns_path)
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
        value = bridgemappings.apply(switch, smaller, source="f.yaml", netns=sw.netns_path)
        assert value == "physnet0:br-admin,localnet2:ovs-br1,physnet9:br-nine"
        assert sw.vsctl("br-exists", "ovs-br1") == ""

        # a conflicting file changes nothing at all (not even the bridge it would create)
        conflicting = bridgemappings.parse_file(
            "bridgeMappings:\n - {physicalNetworkName: physnet0, bridge: br-new}\n",
            source="f.yaml")
        with pytest.raises(errors.InvalidConfig, match="physnet0 is already mapped"):
            bridgemappings.apply(switch, conflicting, source="f.yaml", netns=sw.netns_path)
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


def test_refusal_event_is_a_warning_on_the_node() -> None:
    now = datetime.datetime(2025, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    event = bridgemappings.refusal_event(node="node-1", message="f.yaml: no", now=now,
                                         suffix="abc")
    assert event["metadata"] == {"name": "node-1.abc", "namespace": "default"}
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": "node-1",
                                       "uid": "node-1"}
    assert (event["type"], event["reason"], event["message"]) == (
        "Warning", "BridgeMappingsRefused", "f.yaml: no")
    assert event["firstTimestamp"] == "2025-05-06T07:08:09Z"


# --- uplinks that carry the node's address, on a real OVS and kernel ----------------------------

PLAIN = MOVING.replace("    moveAddresses: true\n", "")
NODE_IP, NODE_IP6 = "192.0.2.5", "2001:db8::5"
ROUTER_IP, ROUTER_IP6 = "192.0.2.1", "2001:db8::1"


@dataclasses.dataclass
class Wire:
    """The NIC enp2s0 in the switch's namespace (the node) with the node's addresses, its
    default route and an IPv6 route, cabled (a veth pair) to `peer`, a namespace holding the
    router's addresses on the same subnets."""

    switch: conftest.LocalSwitch
    peer: str
    mac: str

    def answers(self, address: str) -> bool:
        """A ping from the router to `address` gets its reply (polled: ARP, ND)."""
        deadline = time.monotonic() + 10
        while True:
            done = subprocess.run(["ip", "netns", "exec", self.peer, "ping", "-c1", "-W1",
                                   address], capture_output=True, text=True, check=False)
            if done.returncode == 0:
                return True
            if time.monotonic() > deadline:
                return False

    def addresses(self, dev: str) -> set[str]:
        """The global addresses of an interface of the node."""
        link, = json.loads(self.switch.ip("-j", "address", "show", "dev", dev))
        return {f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                if a["scope"] == "global"}

    def routes(self) -> set[str]:
        """The node's main-table routes as `ip route` prints them (not fe80::/64)."""
        lines = (self.switch.ip("-4", "route", "show", "table", "main").splitlines()
                 + self.switch.ip("-6", "route", "show", "table", "main").splitlines())
        return {line.strip() for line in lines if not line.startswith("fe80::")}

    def mac_of(self, dev: str) -> str:
        link, = json.loads(self.switch.ip("-j", "link", "show", "dev", dev))
        return str(link["address"])


@pytest.fixture
def wire(local_switch: conftest.LocalSwitch) -> Iterator[Wire]:
    sw = local_switch
    peer = f"ovnk-peer-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", peer], check=True)
    try:
        sw.ip("link", "set", "lo", "up")
        sw.ip("link", "add", "enp2s0", "type", "veth", "peer", "name", "wire0", "netns", peer)
        sw.ip("address", "add", f"{NODE_IP}/24", "dev", "enp2s0")
        sw.ip("address", "add", f"{NODE_IP6}/64", "dev", "enp2s0", "nodad")
        sw.ip("link", "set", "enp2s0", "up")
        sw.ip("route", "add", "default", "via", ROUTER_IP, "dev", "enp2s0", "metric", "100")
        sw.ip("-6", "route", "add", "2001:db8:1::/48", "via", ROUTER_IP6, "dev", "enp2s0")
        # Strict reverse-path filtering on the NIC. The userspace datapath reads a port with
        # AF_PACKET and leaves its packets to the kernel too, which answers a ping for the
        # bridge's address that came in directly (a duplicate reply, seen without this). Once
        # the routes point at the bridge, the kernel drops what comes in through enp2s0: an
        # IPv4 reply proves the path through OVS and the bridge's interface both ways, as the
        # kernel datapath has it. (IPv6 has no rp_filter: its reply, routed through the
        # bridge, proves the way back.)
        subprocess.run(["ip", "netns", "exec", sw.netns, "sysctl", "-qw",
                        "net.ipv4.conf.enp2s0.rp_filter=1"], check=True)
        for args in (["link", "set", "lo", "up"],
                     ["address", "add", f"{ROUTER_IP}/24", "dev", "wire0"],
                     ["address", "add", f"{ROUTER_IP6}/64", "dev", "wire0", "nodad"],
                     ["link", "set", "wire0", "up"]):
            subprocess.run(["ip", "-n", peer, *args], check=True)
        found = Wire(switch=sw, peer=peer, mac="")
        found.mac = found.mac_of("enp2s0")
        assert found.answers(NODE_IP) and found.answers(NODE_IP6), "the wire does not work"
        yield found
    finally:
        subprocess.run(["ip", "netns", "del", peer], check=False)


def test_uplink_carrying_the_node_address_is_refused_and_nothing_changes(
        wire: Wire) -> None:
    sw = wire.switch
    routes = wire.routes()
    switch = ovs.LocalOvs(remote=sw.remote)
    try:
        with pytest.raises(errors.InvalidConfig) as info:
            bridgemappings.apply(switch, bridgemappings.parse_file(PLAIN, source="f.yaml"),
                                 source="f.yaml", netns=sw.netns_path)
    finally:
        switch.close()
    assert str(info.value).startswith(
        "f.yaml: uplink NIC enp2s0 of bridge ovs-br1 carries the node's addresses "
        f"{NODE_IP}/24, {NODE_IP6}/64, the default route via {ROUTER_IP} and the route "
        f"2001:db8:1::/48 via {ROUTER_IP6}; moving it into the bridge would cut the node off: "
        "set moveAddresses: true")
    assert sw.vsctl("list-br").split() == [ovs.INTEGRATION_BRIDGE]
    assert sw.vsctl("get", "open", ".", "external_ids").find("bridge-mappings") == -1
    assert wire.addresses("enp2s0") == {f"{NODE_IP}/24", f"{NODE_IP6}/64"}
    assert wire.routes() == routes
    assert wire.answers(NODE_IP) and wire.answers(NODE_IP6)


def test_move_addresses_moves_them_to_the_bridge_and_the_node_stays_reachable(
        wire: Wire) -> None:
    sw = wire.switch
    mappings = bridgemappings.parse_file(MOVING, source="f.yaml")
    switch = ovs.LocalOvs(remote=sw.remote)
    try:
        value = bridgemappings.apply(switch, mappings, source="f.yaml", netns=sw.netns_path)
        assert value == "localnet2:ovs-br1"
        assert sw.vsctl("port-to-br", "enp2s0") == "ovs-br1"
        assert wire.addresses("ovs-br1") == {f"{NODE_IP}/24", f"{NODE_IP6}/64"}
        assert wire.addresses("enp2s0") == set()
        routes = wire.routes()
        assert f"default via {ROUTER_IP} dev ovs-br1 metric 100" in routes
        assert f"2001:db8:1::/48 via {ROUTER_IP6} dev ovs-br1 metric 1024 pref medium" in routes
        assert not [r for r in routes if "enp2s0" in r], routes
        # the bridge answers with the NIC's MAC: the router's ARP and ND caches stay right
        assert wire.mac_of("ovs-br1") == wire.mac
        assert wire.answers(NODE_IP), "the node is cut off (IPv4, through the bridge)"
        assert wire.answers(NODE_IP6), "the node is cut off (IPv6)"

        # converged: the next resync finds enp2s0 in its bridge and changes nothing
        assert bridgemappings.apply(switch, mappings, source="f.yaml",
                                    netns=sw.netns_path) == value
        assert wire.routes() == routes
        assert wire.addresses("ovs-br1") == {f"{NODE_IP}/24", f"{NODE_IP6}/64"}
    finally:
        switch.close()


def test_a_move_that_fails_at_the_end_is_rolled_back_entirely(
        wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    """An admin maps localnet2 elsewhere while the agent moves the addresses: the final
    transaction refuses the file, and the node is as it was (the bridge it made is gone)."""
    sw = wire.switch
    routes = wire.routes()
    converge = bridgemappings._converge

    def racing(*args: Any, **kwargs: Any) -> str:
        sw.vsctl("set", "open", ".", "external_ids:ovn-bridge-mappings=localnet2:br-admin")
        return converge(*args, **kwargs)

    monkeypatch.setattr(bridgemappings, "_converge", racing)
    switch = ovs.LocalOvs(remote=sw.remote)
    try:
        with pytest.raises(errors.OvnkSecondaryError) as info:
            bridgemappings.apply(switch, bridgemappings.parse_file(MOVING, source="f.yaml"),
                                 source="f.yaml", netns=sw.netns_path)
    finally:
        switch.close()
    message = str(info.value)
    assert "localnet2 is already mapped to bridge br-admin" in message
    assert "everything was rolled back" in message
    assert sw.vsctl("list-br").split() == [ovs.INTEGRATION_BRIDGE]
    assert wire.addresses("enp2s0") == {f"{NODE_IP}/24", f"{NODE_IP6}/64"}
    assert wire.routes() == routes
    assert wire.answers(NODE_IP) and wire.answers(NODE_IP6)


def test_refusal_is_on_the_node_annotation_readiness_and_one_event(
        wire: Wire, api: kube.KubeApi, tmp_path: pathlib.Path) -> None:
    """As `kubectl describe node` shows it; a resync posts no second Event."""
    sw = wire.switch
    api.core().create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(api.kubeconfig_text())
    path = tmp_path / "bridge-mappings.yaml"
    path.write_text(PLAIN)
    executor = futures.ThreadPoolExecutor(2)
    reader = pods.PodReader(kubeconfig=str(kubeconfig), executor=executor)
    switch = ovs.LocalOvs(remote=sw.remote)

    def reported() -> tuple[object, list[dict[str, Any]]]:
        node = api.core().read_node("node-1")
        report = json.loads(node.metadata.annotations[bridgemappings.NODE_ANNOTATION])
        return report["error"], [e for e in api.events("node-1")
                                 if e["reason"] == bridgemappings.REFUSED]

    try:
        loop = agent_main.BridgeMappingsLoop(path=str(path), switch=switch, reader=reader,
                                             node_name="node-1", netns=sw.netns_path)
        loop.converge(force=True)
        loop.converge(force=True)  # the resync
        assert loop.error is not None and "carries the node's addresses" in loop.error
        assert health.problems(ovs_connected=True, socket_serving=True,
                               mappings_error=loop.error) == [
            f"bridge mappings not applied: {loop.error}"]
        error, events = reported()
        assert error == loop.error
        assert [(e["type"], e["message"], e["involvedObject"]["kind"]) for e in events] == [
            ("Warning", loop.error, "Node")]

        path.write_text(MOVING)  # what the message says to do
        loop.converge()
        assert loop.error is None
        error, events = reported()
        assert error is None and len(events) == 1
    finally:
        switch.close()
        reader.close()
        executor.shutdown(wait=False)
