"""The links between a pod's network selection element and the wire, judged from plain facts.

Pure: `facts` reads the Kubernetes API, NB, SB and the node; this module decides, link by
link and in the order the product builds them, whether each holds, and stops at the first
one that does not (the later ones cannot hold without it). Each `Step` says what was checked,
what was found, and for a broken link what to do.

The links (conventions: ../shared/reference/ovnk-conventions.md; OVN's ovn-nb(5)/ovn-sb(5)):
selection parsed -> NAD exists, valid, ours -> accepted by the controller -> pod annotation
`k8s.ovn.org/pod-networks` entry -> NB logical switch (ours) -> NB logical switch port (ours,
addresses = annotation, requested-chassis = the pod's node) -> [localnet: NB localnet port, VLAN]
-> SB Port_Binding on the node's chassis, `up` -> OVS interface with that iface-id on the node,
`ovn-installed` -> [localnet: the node maps the physical network to a bridge, the bridge has an
uplink NIC that is up, and ovn-controller's patch port to br-int].
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ovnk_secondary import errors, nads, naming, podnetworks, selections

ACCEPTED_CONFIG = "ovnk-secondary.io/accepted-config"  # controller/reconciler.py
CONTROLLER_LOG = "kubectl logs -n ovnk-secondary deployment/ovnk-secondary-controller"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Step:
    what: str  # the link checked
    ok: bool
    found: str = ""  # what was seen
    fix: str = ""  # for a broken link: what to do


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pod:
    namespace: str
    name: str
    uid: str
    node: str | None  # spec.nodeName
    annotations: Mapping[str, str]
    warnings: tuple[str, ...] = ()  # the pod's Warning Events, "Reason: message"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Nad:
    key: str
    body: Mapping[str, Any] | None  # None: not found
    warnings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Northbound:
    """The rows of one element's network: None where a row is missing."""

    switch: Mapping[str, Any] | None  # Logical_Switch: name, external_ids, ports
    port: Mapping[str, Any] | None  # Logical_Switch_Port: name, addresses, external_ids, options
    localnet_port: Mapping[str, Any] | None = None  # with tag_request
    switch_holding_port: str | None = None  # the switch whose `ports` has `port`


@dataclasses.dataclass(frozen=True, kw_only=True)
class Southbound:
    # Port_Binding: logical_port, up, chassis (name/hostname), additional_chassis (a list of
    # them: a multi-chassis port's other nodes, ovn-sb(5), during a live migration)
    binding: Mapping[str, Any] | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Node:
    """`diagnose node`'s report from the node agent's pod, or why there is none."""

    name: str
    report: Mapping[str, Any] | None
    unreachable: str | None = None


class Broken(Exception):
    """A link does not hold: the walk stops there."""


class _Walk:
    def __init__(self) -> None:
        self.steps: list[Step] = []

    def ok(self, what: str, found: str = "") -> None:
        self.steps.append(Step(what=what, ok=True, found=found))

    def broken(self, what: str, found: str, fix: str) -> Broken:
        self.steps.append(Step(what=what, ok=False, found=found, fix=fix))
        return Broken(what)


def _atom(datum: Any) -> Any:
    """An optional OVSDB column: [] when empty, the value itself otherwise."""
    return None if datum == [] else datum


def _events(warnings: Sequence[str]) -> str:
    return "; ".join(warnings[-3:])


def pod_element(pod: Pod, selection: selections.NetworkSelection, nad: Nad,
                northbound: Northbound | None, southbound: Southbound | None,
                node: Node | None) -> list[Step]:
    """The steps of one element, up to and including the first broken link.

    The facts after a broken link may be None (not read): the walk never gets there.
    """
    walk = _Walk()
    with contextlib.suppress(Broken):
        _walk_element(walk, pod, selection, nad, northbound, southbound, node)
    return walk.steps


def network_of(nad: Nad) -> nads.NetworkConfig | None:
    """The NAD's network, None when missing, invalid or not ours."""
    if nad.body is None:
        return None
    try:
        return nads.parse_nad(nad.body)
    except errors.OvnkSecondaryError:
        return None


def _walk_element(walk: _Walk, pod: Pod, selection: selections.NetworkSelection, nad: Nad,
                  northbound: Northbound | None, southbound: Southbound | None,
                  node: Node | None) -> None:
    if pod.node is None:
        raise walk.broken("pod scheduled to a node", "spec.nodeName is empty",
                          "the scheduler has not placed the pod: see `kubectl describe pod "
                          f"-n {pod.namespace} {pod.name}`")
    network = _check_nad(walk, nad)
    _check_accepted(walk, nad)
    entry = _check_annotation(walk, pod, selection, network)
    port_name = podnetworks.port_name(selection.nad_key, pod.namespace, pod.name, entry)
    assert northbound is not None  # read once the annotation is there
    _check_northbound(walk, pod, network, entry, port_name, northbound)
    assert southbound is not None and node is not None
    _check_binding(walk, pod, port_name, southbound)
    _check_interface(walk, pod, port_name, node)
    if network.topology == naming.LOCALNET:
        _check_physical_network(walk, network, node)


def _check_nad(walk: _Walk, nad: Nad) -> nads.NetworkConfig:
    if nad.body is None:
        raise walk.broken(f"NAD {nad.key} exists", "not found",
                          f"create NetworkAttachmentDefinition {nad.key}, or fix the pod's "
                          f"{selections.ANNOTATION} annotation")
    try:
        network = nads.parse_nad(nad.body)
    except errors.OvnkSecondaryError as exc:
        raise walk.broken(f"NAD {nad.key} is valid", str(exc), "fix the NAD's spec.config "
                          "as the message says") from None
    if network is None:
        raise walk.broken(f"NAD {nad.key} is ours", "its config is not of type "
                          f"{nads.CNI_TYPE}", "Multus hands this network to another plugin: "
                          "nothing of ovnk-secondary is involved")
    found = f"{network.topology} network {network.name}"
    if network.subnets:
        found += f", subnets {', '.join(str(s) for s in network.subnets)}"
    if network.topology == naming.LOCALNET:
        found += f", physical network {network.physical_network}"
        if network.vlan_id is not None:
            found += f", VLAN {network.vlan_id}"
    walk.ok(f"NAD {nad.key} is valid", found)
    return network


def _check_accepted(walk: _Walk, nad: Nad) -> None:
    assert nad.body is not None
    annotations = (nad.body.get("metadata") or {}).get("annotations") or {}
    accepted = annotations.get(ACCEPTED_CONFIG)
    current = (nad.body.get("spec") or {}).get("config")
    if accepted is None:
        raise walk.broken(
            "NAD accepted by the controller", f"no {ACCEPTED_CONFIG} annotation",
            (f"the NAD's Warning Events say why: {_events(nad.warnings)}" if nad.warnings else
             f"no Warning Event on the NAD: is the controller running? {CONTROLLER_LOG}"))
    if _normal(accepted) != _normal(current):
        walk.ok("NAD accepted by the controller",
                "the NAD's current config differs from the accepted one: "
                + (_events(nad.warnings) or "the change is not applied yet"))
        return
    walk.ok("NAD accepted by the controller", f"{ACCEPTED_CONFIG} is its current config")


def _normal(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return text


def _check_annotation(walk: _Walk, pod: Pod, selection: selections.NetworkSelection,
                      network: nads.NetworkConfig) -> podnetworks.PodNetwork:
    what = f"pod annotation {podnetworks.ANNOTATION} has {selection.nad_key}"
    try:
        entries = podnetworks.decode(pod.annotations.get(podnetworks.ANNOTATION))
    except errors.OvnkSecondaryError as exc:
        raise walk.broken(what, str(exc), "delete the annotation: the controller writes it "
                          "again") from None
    entry = entries.get(selection.nad_key)
    if entry is None:
        raise walk.broken(what, "no entry", (
            f"the pod's Warning Events say why: {_events(pod.warnings)}" if pod.warnings else
            f"no Warning Event on the pod: is the controller running? {CONTROLLER_LOG}"))
    addresses = " ".join(entry.ip_addresses) if entry.ip_addresses else "no IPAM"
    walk.ok(what, f"{addresses}, MAC {entry.mac_address}")
    return entry


def _check_northbound(walk: _Walk, pod: Pod, network: nads.NetworkConfig,
                      entry: podnetworks.PodNetwork, port_name: str,
                      northbound: Northbound) -> None:
    switch_name = _check_switch(walk, network, northbound, "ours")
    what = f"NB logical switch port {port_name}"
    port = northbound.port
    if port is None:
        raise walk.broken(what, "missing", f"the controller creates it: see {CONTROLLER_LOG}")
    if port["external_ids"].get(naming.OWNER_KEY) != naming.OWNER_VALUE:
        raise walk.broken(what, "not ours (no ownership marker)",
                          "another product owns a port of this name: remove it")
    if northbound.switch_holding_port != switch_name:
        raise walk.broken(what, f"on switch {northbound.switch_holding_port}, not "
                          f"{switch_name}", f"the next full sync repairs it; see {CONTROLLER_LOG}")
    wanted = " ".join([entry.mac_address,
                       *(ip.split("/")[0] for ip in entry.ip_addresses or ())])
    addresses = list(port["addresses"]) if isinstance(port["addresses"], list) else [
        port["addresses"]]
    if addresses != [wanted]:
        raise walk.broken(what, f"addresses {addresses}, the annotation says {wanted!r}",
                          f"the next full sync repairs it; see {CONTROLLER_LOG}")
    chassis = port["options"].get("requested-chassis")
    # a KubeVirt VM's own port lists both nodes during a live migration (`migration`)
    if pod.node not in str(chassis or "").split(","):
        raise walk.broken(what, f"requested-chassis {chassis}, the pod runs on {pod.node}",
                          f"the next full sync repairs it; see {CONTROLLER_LOG}")
    walk.ok(what, f"addresses {wanted}, requested-chassis {chassis}")
    if network.topology == naming.LOCALNET:
        _check_localnet_port(walk, network, northbound)


def _check_switch(walk: _Walk, network: nads.NetworkConfig, northbound: Northbound,
                  found: str) -> str:
    """The network's logical switch is in NB and ours: its name."""
    switch_name = naming.switch_name(network.name, network.topology)
    switch = northbound.switch
    if switch is None:
        raise walk.broken(f"NB logical switch {switch_name}", "missing",
                          f"the controller creates it: see {CONTROLLER_LOG}")
    if switch["external_ids"].get(naming.OWNER_KEY) != naming.OWNER_VALUE:
        raise walk.broken(f"NB logical switch {switch_name} is ours", "it has no "
                          f"{naming.OWNER_KEY} marker: another product created it",
                          "rename the network, or remove the other product's switch")
    walk.ok(f"NB logical switch {switch_name}", found)
    return switch_name


def _check_localnet_port(walk: _Walk, network: nads.NetworkConfig,
                         northbound: Northbound) -> None:
    localnet = northbound.localnet_port
    name = naming.localnet_port_name(network.name)
    if localnet is None:
        raise walk.broken(f"NB localnet port {name}", "missing",
                          f"the controller creates it: see {CONTROLLER_LOG}")
    tag = _atom(localnet.get("tag_request"))
    if tag != network.vlan_id:
        raise walk.broken(f"NB localnet port {name}", f"VLAN {tag}, the NAD says "
                          f"{network.vlan_id}", f"the next full sync repairs it; see "
                          f"{CONTROLLER_LOG}")
    physnet = localnet["options"].get("network_name")
    walk.ok(f"NB localnet port {name}",
            f"physical network {physnet}" + (f", VLAN {tag}" if tag is not None else ""))


def _check_binding(walk: _Walk, pod: Pod, port_name: str, southbound: Southbound) -> None:
    what = f"SB Port_Binding {port_name} on chassis {pod.node}"
    binding = southbound.binding
    if binding is None:
        raise walk.broken(what, "missing", "northd has not translated the port yet: is "
                          "ovn-northd running and connected to NB and SB?")
    chassis = binding.get("chassis")
    if not chassis:
        raise walk.broken(what, "not bound to any chassis", (
            f"ovn-controller on {pod.node} has not claimed it: is it running, and is the pod's "
            "interface plugged (the node agent's log on that node says)?"))
    if not _is_node(pod.node, chassis):
        additional = binding.get("additional_chassis") or ()
        if any(_is_node(pod.node, other) for other in additional):
            # a live migration's target (multi-chassis strategy): bound beside the source's
            # node, blocked until the guest's RARP there (ovn-nb(5), activation-strategy)
            walk.ok(what, f"bound as an additional chassis beside {chassis.get('name')} "
                          "(a live migration's target)")
            return
        raise walk.broken(what, f"bound to {chassis.get('name')}", "the pod's node and the "
                          "chassis disagree: the chassis name (system-id) or hostname must be "
                          "the Kubernetes node name")
    up = _atom(binding.get("up"))
    if up is False:
        raise walk.broken(what, "bound, up=false", f"ovn-controller on {pod.node} has not "
                          "finished installing its flows: see its log")
    walk.ok(what, "bound" + (", up" if up else ""))


def _is_node(node: str | None, chassis: Mapping[str, Any]) -> bool:
    return node in (chassis.get("name"), chassis.get("hostname"))


def _check_interface(walk: _Walk, pod: Pod, port_name: str, node: Node) -> None:
    what = f"OVS interface with iface-id {port_name} on {node.name}"
    if node.report is None:
        raise walk.broken(what, f"cannot ask the node agent: {node.unreachable}",
                          f"check the node-agent pod on {node.name} (kubectl get pods -n "
                          "ovnk-secondary -o wide)")
    interface = node.report.get("interface")
    if interface is None:
        raise walk.broken(what, "none", f"the node agent on {node.name} did not plug it: see "
                          "its log and the pod's events (the CNI error)")
    ids = interface["external_ids"]
    if _atom(interface.get("error")):
        raise walk.broken(what, f"{interface['name']}: {interface['error']}",
                          "OVS could not open the interface: see ovs-vswitchd's log")
    if ids.get("iface-id-ver") not in (None, pod.uid):
        raise walk.broken(what, f"{interface['name']} belongs to pod uid "
                          f"{ids.get('iface-id-ver')}, not {pod.uid}",
                          "a stale port of a previous pod of that name: the node agent removes "
                          "it; restart the node-agent pod if it stays")
    if ids.get("ovn-installed") != "true":
        raise walk.broken(what, f"{interface['name']} without ovn-installed",
                          f"ovn-controller on {node.name} has not installed its flows: see its "
                          "log")
    walk.ok(what, f"{interface['name']}, ovn-installed")


def _check_physical_network(walk: _Walk, network: nads.NetworkConfig, node: Node, *,
                            patch_port: bool = True) -> None:
    if node.report is None:
        raise walk.broken(f"the node agent on {node.name} answers",
                          f"cannot ask it: {node.unreachable}",
                          f"check the node-agent pod on {node.name} (kubectl get pods -n "
                          "ovnk-secondary -o wide)")
    physnet = network.physical_network
    mappings = dict(item.split(":", 1) for item in
                    str(node.report.get("ovn_bridge_mappings") or "").split(",") if ":" in item)
    bridge = mappings.get(physnet)
    what = f"{node.name} maps physical network {physnet}"
    if bridge is None:
        value = node.report.get("ovn_bridge_mappings")
        raise walk.broken(what, f"ovn-bridge-mappings is {value!r}",
                          f"add {physnet} to the bridge-mappings ConfigMap "
                          "(ovnk-secondary-bridge-mappings) and see the Node annotation "
                          "ovnk-secondary.io/bridge-mappings for errors")
    walk.ok(what, f"to bridge {bridge}")
    members = node.report.get("bridges", {}).get(bridge)
    if members is None:
        raise walk.broken(f"bridge {bridge} on {node.name}", "missing",
                          "the node agent creates it from the bridge-mappings file: see the "
                          "Node annotation ovnk-secondary.io/bridge-mappings")
    uplinks = [m for m in members if m["type"] in ("", "system") and m["name"] != bridge]
    what = f"bridge {bridge} on {node.name} has an uplink that is up"
    if not uplinks:
        raise walk.broken(what, "no NIC in the bridge: traffic cannot leave the node",
                          f"list the NIC under uplinks of {physnet}'s entry in the "
                          "bridge-mappings ConfigMap")
    down = [m["name"] for m in uplinks if _atom(m.get("link_state")) != "up"]
    if len(down) == len(uplinks):
        raise walk.broken(what, f"{', '.join(down)} down",
                          f"bring the NIC up on {node.name} (`ip link set {down[0]} up`) or "
                          "check its cable and switch port")
    walk.ok(what, ", ".join(f"{m['name']} up" for m in uplinks if m["name"] not in down))
    if not patch_port:  # ovn-controller makes it only while the node has a port there
        return
    patch = f"patch-{naming.localnet_port_name(network.name)}-to-br-int"
    what = f"ovn-controller's patch port {patch} on {bridge}"
    if not any(m["name"] == patch and m["type"] == "patch" for m in members):
        raise walk.broken(what, "missing", f"ovn-controller on {node.name} creates it when the "
                          "mapping is in ovn-bridge-mappings: see its log")
    walk.ok(what)


def pod_selections(pod: Pod) -> Iterator[selections.NetworkSelection]:
    """The pod's network selection elements; raises errors.InvalidConfig for a bad annotation."""
    yield from selections.parse(pod.annotations.get(selections.ANNOTATION),
                                pod_namespace=pod.namespace, pod_name=pod.name)


def network(name: str, nads_of_network: Sequence[Nad], northbound: Northbound,
            nodes: Sequence[Node], *, pods: int) -> list[Step]:
    """The steps of a network (every NAD naming it, its NB rows, for localnet every node's
    mapping, bridge and uplink), up to and including the first broken link. `northbound.port`
    is unused; `pods`: how many pod ports its switch has."""
    walk = _Walk()
    try:
        if not nads_of_network:
            raise walk.broken(f"a NAD names network {name}", "none found",
                              "the network exists through its NADs (spec.config `name`)")
        config = None
        for nad in nads_of_network:
            config = _check_nad(walk, nad)
            _check_accepted(walk, nad)
        assert config is not None
        _check_switch(walk, config, northbound, f"ours, {pods} pod port(s)")
        if config.topology == naming.LOCALNET:
            _check_localnet_port(walk, config, northbound)
            for node in nodes:
                _check_physical_network(walk, config, node, patch_port=False)
    except Broken:
        pass
    return walk.steps
