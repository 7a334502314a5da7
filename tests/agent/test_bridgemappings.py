"""Bridge mappings: the file's validation, the entry-by-entry merge, and applying it to real OVS."""

from __future__ import annotations

import json

import pytest

from ovnk_secondary import errors
from ovnk_secondary.agent import bridgemappings, ovs
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
