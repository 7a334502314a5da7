"""Desired northbound rows, computed from the network model: pure functions over plain values.

A network becomes one logical switch (`<prefix>ovn_layer2_switch` or
`<prefix>ovn_localnet_switch`), a localnet network also its localnet port, and every pod on
one of its NADs a logical switch port, with the names, columns and external_ids of
OVN-Kubernetes (conventions, section 2) plus our ownership marker (`naming.OWNER_KEY`) on
every row, so that a full sync deletes only what we created.

The values are slotted dataclasses: a full sync holds one `Port` per pod twice over (wanted
and read), and without a `__dict__` each costs a few hundred bytes less.

MultiNetworkPolicies become port groups, ACLs and address sets (`northbound/acls.py` computes
them); they live in their own `PolicyState`, converged on their own, so that switches and ports
are read, diffed and written exactly as before. Port groups and address sets are keyed by
their (unique, indexed) name; an ACL has no unique name, so it is keyed by its exact identity,
OVN-K's `k8s.ovn.org/id`, and belongs to one port group (ACL rows are not roots: a port group
holds them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from ovnk_secondary import migration, nads, naming

OWNED = {naming.OWNER_KEY: naming.OWNER_VALUE}
# Map keys we manage per column: any other key in those maps (someone else's) is left alone.
MANAGED_KEYS: Mapping[str, frozenset[str]] = {
    "external_ids": frozenset({naming.OWNER_KEY, naming.NETWORK_KEY, naming.TOPOLOGY_KEY,
                               naming.ROLE_KEY, naming.NAD_KEY, "namespace", "pod"}),
    "other_config": frozenset({"subnet", "ipv6_prefix"}),
    "options": frozenset({"network_name", "requested-chassis", "iface-id-ver",
                          "activation-strategy", "disable_garp_rarp"}),
}


# The same for policy rows: OVN-K's DbObjectIDs keys and ours; ACL options.
POLICY_MANAGED_KEYS: Mapping[str, frozenset[str]] = {
    "external_ids": frozenset({
        naming.OWNER_KEY, naming.NETWORK_KEY, naming.OWNER_CONTROLLER_KEY, naming.OWNER_TYPE_KEY,
        naming.OBJECT_NAME_KEY, naming.PRIMARY_ID_KEY, "direction", "type", "gress-index",
        "port-policy-protocol", "ip-block-index", "ip-family"}),
    "options": frozenset({"apply-after-lb"}),
}


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Switch:
    """A Logical_Switch row (only the columns we manage)."""

    name: str
    external_ids: Mapping[str, str]
    other_config: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Port:
    """A Logical_Switch_Port row (only the columns we manage) and the switch holding it."""

    name: str
    switch: str
    type: str = ""
    addresses: tuple[str, ...] = ()
    port_security: tuple[str, ...] = ()
    external_ids: Mapping[str, str] = dataclasses.field(default_factory=dict)
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tag_request: int | None = None
    enabled: bool | None = None  # None: the column unset (OVN: enabled)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class State:
    """A set of rows keyed by name: what we want, or what NB holds of ours."""

    switches: Mapping[str, Switch] = dataclasses.field(default_factory=dict)
    ports: Mapping[str, Port] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PortGroup:
    """A Port_Group row: its logical switch ports by name (sorted) and external_ids."""

    name: str
    ports: tuple[str, ...] = ()
    external_ids: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Acl:
    """An ACL row held by the port group `port_group`; `id` is its `k8s.ovn.org/id`."""

    id: str
    port_group: str
    priority: int
    direction: str  # "from-lport" or "to-lport"
    match: str
    action: str  # "allow", "allow-related" or "drop" here
    name: str | None = None  # OVN-K's, for ACL logs; at most 63 characters
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)
    external_ids: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class AddressSet:
    """An Address_Set row: bare IP addresses (sorted) and external_ids."""

    name: str
    addresses: tuple[str, ...] = ()
    external_ids: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PolicyState:
    """Policy rows: port groups and address sets by name, ACLs by id."""

    port_groups: Mapping[str, PortGroup] = dataclasses.field(default_factory=dict)
    acls: Mapping[str, Acl] = dataclasses.field(default_factory=dict)
    address_sets: Mapping[str, AddressSet] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Attachment:
    """A pod on a NAD, as decided by the reconciler (IPs and MAC already allocated)."""

    nad_key: str
    pod_namespace: str
    pod_name: str
    pod_uid: str
    node: str
    mac: str
    ips: tuple[str, ...] | None  # CIDR strings; None without IPAM
    mode: migration.PortMode = migration.ACTIVE  # a live-migrating VM's pods: `migration`
    # A VM's own port (`migration.MULTI_CHASSIS`), shared by its pods, and the chassis that
    # bind it (main first); None: the pod's own port, bound on `node`
    vm_port: str | None = None
    chassis: tuple[str, ...] = ()

    @property
    def port_name(self) -> str:
        if self.vm_port is not None:
            return self.vm_port
        return naming.pod_port_name(self.nad_key, self.pod_namespace, self.pod_name)


def switch_name(network: nads.NetworkConfig) -> str:
    return naming.switch_name(network.name, network.topology)


def switch(network: nads.NetworkConfig) -> Switch:
    other_config: dict[str, str] = {}
    v4 = [s for s in network.subnets if s.version == 4]
    v6 = [s for s in network.subnets if s.version == 6]
    if v4:
        other_config["subnet"] = str(v4[0])
    if v6:
        other_config["ipv6_prefix"] = str(v6[0].network)
    return Switch(
        name=switch_name(network),
        external_ids={
            naming.NETWORK_KEY: network.name,
            naming.TOPOLOGY_KEY: network.topology,
            naming.ROLE_KEY: network.role,
            **OWNED,
        },
        other_config=other_config,
    )


def localnet_port(network: nads.NetworkConfig) -> Port | None:
    if network.topology != naming.LOCALNET:
        return None
    return Port(
        name=naming.localnet_port_name(network.name),
        switch=switch_name(network),
        type="localnet",
        addresses=("unknown",),
        external_ids={
            naming.NETWORK_KEY: network.name,
            naming.TOPOLOGY_KEY: network.topology,
            **OWNED,
        },
        options={"network_name": network.physical_network},
        tag_request=network.vlan_id,
    )


def pod_port(network: nads.NetworkConfig, attachment: Attachment) -> Port:
    """A pod's port: its MAC and IPs as addresses and port security; during a VM's live
    migration also `enabled=false`, and no addresses on a vacated source (`migration`).

    A VM's own port (`Attachment.vm_port`) is requested on its chassis, comma-separated, main
    first, with `activation-strategy=rarp` when there are two (ovn-nb(5)), and has no
    `iface-id-ver` (the pods of the VM, each its uid, plug into it).

    A VM's own port on a localnet network has `disable_garp_rarp=true` (ovn-nb(5), OVN >=
    24.09; older OVN ignores it): ovn-controller announces a port bound to its chassis on a
    bridged switch 0, 1, 3, 7 and 15 s after it bound it (`send_garp_rarp`, OVN
    controller/pinctrl.c, 25.03), and keeps those times as long as it is the port's main
    chassis, which the node a VM is leaving stays until its sandbox is down; its announce
    taught the physical network the old place again (seen here: 150-230 ms outages 0.3 s after
    the switch-over, when the VM had come 7-8 s before). The guest announces itself on its new
    node (a virtio NIC's gratuitous ARPs; its RARP activates the port there); a guest whose
    NIC sends only QEMU's RARPs (which port security drops) is found once it sends anything.
    Per-pod ports keep OVN's announces: their target port is enabled by the controller after
    the guest's first announces, and when the controller is late (restarting) OVN's announces
    from the target's node are what tell the physical network."""
    address = " ".join([attachment.mac, *(ip.split("/")[0] for ip in attachment.ips or ())])
    mode = attachment.mode
    options = {"requested-chassis": attachment.node, "iface-id-ver": attachment.pod_uid}
    if attachment.vm_port is not None:
        mode = migration.ACTIVE
        options = {"requested-chassis": ",".join(attachment.chassis)}
        if len(attachment.chassis) > 1:
            options["activation-strategy"] = "rarp"
        if network.topology == naming.LOCALNET:
            options["disable_garp_rarp"] = "true"
    return Port(
        name=attachment.port_name,
        switch=switch_name(network),
        addresses=(address,) if mode.addresses else (),
        port_security=(address,),
        enabled=None if mode.enabled else False,
        external_ids={
            "namespace": attachment.pod_namespace,
            "pod": "true",
            naming.NETWORK_KEY: network.name,
            naming.NAD_KEY: attachment.nad_key,
            naming.TOPOLOGY_KEY: network.topology,
            **OWNED,
        },
        options=options,
    )


def network_state(network: nads.NetworkConfig) -> State:
    """The rows of a network without its pods: the switch and, for localnet, its port."""
    row = switch(network)
    port = localnet_port(network)
    return State(switches={row.name: row}, ports={port.name: port} if port else {})


def state(
    networks: Iterable[nads.NetworkConfig],
    attachments: Iterable[tuple[nads.NetworkConfig, Attachment]],
) -> State:
    """Everything: each network's rows plus one port per (network, attachment)."""
    switches: dict[str, Switch] = {}
    ports: dict[str, Port] = {}
    for network in networks:
        part = network_state(network)
        switches.update(part.switches)
        ports.update(part.ports)
    for network, attachment in attachments:
        port = pod_port(network, attachment)
        ports[port.name] = port
    return State(switches=switches, ports=ports)
