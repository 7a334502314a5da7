"""The diagnosis chain judged from plain facts: every link holds for a healthy localnet pod, and
each broken link stops the walk there with a fix that names what to do."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from ovnk_secondary import naming, selections
from ovnk_secondary.diagnose import chain

CONFIG = {"cniVersion": "0.3.1", "name": "localnet2", "type": "ovn-k8s-cni-overlay",
          "topology": "localnet", "vlanID": 33, "netAttachDefName": "test/nad-localnet2",
          "subnets": "10.200.0.0/24"}
PORT = "test.nad.localnet2_test_pod"
SWITCH = "localnet2_ovn_localnet_switch"
OURS = {naming.OWNER_KEY: naming.OWNER_VALUE}
POD = chain.Pod(namespace="test", name="pod", uid="u1", node="node-2", annotations={
    "k8s.v1.cni.cncf.io/networks": "nad-localnet2",
    "k8s.ovn.org/pod-networks": json.dumps({"test/nad-localnet2": {
        "ip_addresses": ["10.200.0.5/24"], "mac_address": "0a:58:0a:c8:00:05"}})})
NAD = chain.Nad(key="test/nad-localnet2", body={
    "metadata": {"namespace": "test", "name": "nad-localnet2",
                 "annotations": {chain.ACCEPTED_CONFIG: json.dumps(CONFIG)}},
    "spec": {"config": json.dumps(CONFIG)}})
NB = chain.Northbound(
    switch={"name": SWITCH, "external_ids": OURS, "ports": []},
    port={"name": PORT, "addresses": "0a:58:0a:c8:00:05 10.200.0.5", "external_ids": OURS,
          "options": {"requested-chassis": "node-2"}},
    localnet_port={"name": "localnet2_ovn_localnet_port", "options": {"network_name": "localnet2"},
                   "tag_request": 33},
    switch_holding_port=SWITCH)
SB = chain.Southbound(binding={"logical_port": PORT, "up": True,
                               "chassis": {"name": "node-2", "hostname": "node-2"}})
PATCH = "patch-localnet2_ovn_localnet_port-to-br-int"
REPORT: dict[str, Any] = {
    "interface": {"name": "c0ffee_net1", "ofport": 5, "error": [], "link_state": "up",
                  "external_ids": {"iface-id": PORT, "iface-id-ver": "u1",
                                   "ovn-installed": "true"}},
    "ovn_bridge_mappings": "localnet1:br-ex,localnet2:ovs-br1",
    "bridges": {"ovs-br1": [
        {"name": "enp2s0", "type": "", "link_state": "up", "options": {}},
        {"name": "ovs-br1", "type": "internal", "link_state": "up", "options": {}},
        {"name": PATCH, "type": "patch", "link_state": [], "options": {"peer": "x"}}]}}
NODE = chain.Node(name="node-2", report=REPORT)
SELECTION = selections.NetworkSelection(namespace="test", name="nad-localnet2")


def walk(**changes: Any) -> list[chain.Step]:
    facts = {"pod": POD, "selection": SELECTION, "nad": NAD, "northbound": NB,
             "southbound": SB, "node": NODE} | changes
    return chain.pod_element(facts["pod"], facts["selection"], facts["nad"],
                             facts["northbound"], facts["southbound"], facts["node"])


def test_a_healthy_localnet_pod_passes_every_link_in_order() -> None:
    steps = walk()
    assert all(step.ok for step in steps), steps
    assert [step.what for step in steps] == [
        "NAD test/nad-localnet2 is valid",
        "NAD accepted by the controller",
        "pod annotation k8s.ovn.org/pod-networks has test/nad-localnet2",
        f"NB logical switch {SWITCH}",
        f"NB logical switch port {PORT}",
        "NB localnet port localnet2_ovn_localnet_port",
        f"SB Port_Binding {PORT} on chassis node-2",
        f"OVS interface with iface-id {PORT} on node-2",
        "node-2 maps physical network localnet2",
        "bridge ovs-br1 on node-2 has an uplink that is up",
        f"ovn-controller's patch port {PATCH} on ovs-br1",
    ]
    assert steps[0].found == ("localnet network localnet2, subnets 10.200.0.0/24, physical "
                              "network localnet2, VLAN 33")


def _with_uplink_state(state: str) -> chain.Node:
    bridges = {"ovs-br1": [dict(m, link_state=state) if m["name"] == "enp2s0" else m
                           for m in REPORT["bridges"]["ovs-br1"]]}
    return chain.Node(name="node-2", report=REPORT | {"bridges": bridges})


@pytest.mark.parametrize(("changes", "what", "fix"), [
    ({"pod": dataclasses.replace(POD, node=None)}, "pod scheduled to a node", "scheduler"),
    ({"nad": chain.Nad(key="test/nad-localnet2", body=None)}, "NAD test/nad-localnet2 exists",
     "create NetworkAttachmentDefinition test/nad-localnet2"),
    ({"nad": chain.Nad(key=NAD.key, body={**NAD.body, "metadata": {
        "namespace": "test", "name": "nad-localnet2"}}, warnings=("NetworkConflict: x",))},
     "NAD accepted by the controller", "NetworkConflict: x"),
    ({"pod": dataclasses.replace(POD, annotations={}, warnings=("IPAMFailed: no free",))},
     "pod annotation k8s.ovn.org/pod-networks has test/nad-localnet2", "IPAMFailed: no free"),
    ({"pod": dataclasses.replace(POD, annotations={})},
     "pod annotation k8s.ovn.org/pod-networks has test/nad-localnet2", "is the controller running"),
    ({"northbound": dataclasses.replace(NB, switch=None)}, f"NB logical switch {SWITCH}",
     "the controller creates it"),
    ({"northbound": dataclasses.replace(NB, port=dict(NB.port or {}, external_ids={}))},
     f"NB logical switch port {PORT}", "another product"),
    ({"northbound": dataclasses.replace(NB, localnet_port=dict(NB.localnet_port or {},
                                                               tag_request=34))},
     "NB localnet port localnet2_ovn_localnet_port", "full sync"),
    ({"southbound": chain.Southbound(binding=dict(SB.binding or {}, chassis=None))},
     f"SB Port_Binding {PORT} on chassis node-2", "ovn-controller on node-2"),
    ({"node": chain.Node(name="node-2", report=None, unreachable="no running node-agent pod")},
     f"OVS interface with iface-id {PORT} on node-2", "node-agent pod on node-2"),
    ({"node": chain.Node(name="node-2", report=REPORT | {"interface": None})},
     f"OVS interface with iface-id {PORT} on node-2", "did not plug it"),
    ({"node": chain.Node(name="node-2", report=REPORT | {"ovn_bridge_mappings": "x:br-ex"})},
     "node-2 maps physical network localnet2", "bridge-mappings ConfigMap"),
    ({"node": _with_uplink_state("down")}, "bridge ovs-br1 on node-2 has an uplink that is up",
     "ip link set enp2s0 up"),
])
def test_a_broken_link_stops_the_walk_with_its_fix(changes: dict[str, Any], what: str,
                                                   fix: str) -> None:
    steps = walk(**changes)
    assert all(step.ok for step in steps[:-1])
    assert (steps[-1].what, steps[-1].ok) == (what, False)
    assert fix in steps[-1].fix


def test_a_migration_targets_node_bound_as_an_additional_chassis_passes() -> None:
    # multi-chassis strategy: the VM's port is bound on the source's node (node-1) and, as an
    # additional chassis, on the target pod's (node-2) until the switch-over
    source = {"name": "node-1", "hostname": "node-1"}
    target = SB.binding["chassis"] if SB.binding else None
    during = chain.Southbound(binding=dict(SB.binding or {}, chassis=source,
                                           additional_chassis=[target]))
    steps = walk(southbound=during)
    assert all(step.ok for step in steps), steps
    binding = next(s for s in steps if s.what.startswith("SB Port_Binding"))
    assert binding.found == ("bound as an additional chassis beside node-1 (a live "
                             "migration's target)")
    elsewhere = chain.Southbound(binding=dict(SB.binding or {}, chassis=source,
                                              additional_chassis=[{"name": "node-3"}]))
    steps = walk(southbound=elsewhere)
    assert (steps[-1].what, steps[-1].ok, steps[-1].found) == (
        f"SB Port_Binding {PORT} on chassis node-2", False, "bound to node-1")


def test_a_network_checks_every_nodes_mapping_and_uplink() -> None:
    healthy = chain.network("localnet2", [NAD], NB, [NODE, dataclasses.replace(NODE, name="n1")],
                            pods=3)
    assert all(step.ok for step in healthy)
    assert [s.what for s in healthy][-2:] == ["n1 maps physical network localnet2",
                                            "bridge ovs-br1 on n1 has an uplink that is up"]
    assert healthy[2].found == "ours, 3 pod port(s)"
    broken = chain.network("localnet2", [NAD], NB, [_with_uplink_state("down"), NODE], pods=3)
    assert not broken[-1].ok and broken[-1].what == (
        "bridge ovs-br1 on node-2 has an uplink that is up")
    assert not chain.network("localnet2", [], NB, [], pods=0)[-1].ok
