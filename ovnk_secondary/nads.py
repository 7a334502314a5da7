"""NetworkAttachmentDefinition configs of type `ovn-k8s-cni-overlay`, parsed into a network model.

A NAD's `spec.config` is a CNI config (or a conflist holding exactly one plugin). Configs of
another `type` belong to other CNIs and are ignored (`None`). Ours are validated field by
field as OVN-Kubernetes does (see the conventions, section 1); any problem raises
`errors.InvalidConfig` with a message that names the field, the NAD and what to do.

Several NADs may name one network (networks are cluster-wide, keyed by `name`); they must
agree on the fields in `NETWORK_FIELDS`, which `disagreements` compares.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import Any

import netaddr

from ovnk_secondary import errors, naming

CNI_TYPE = "ovn-k8s-cni-overlay"
DEFAULT_MTU = 1400
RESERVED_NAMES = frozenset({"default", "ovn-kubernetes"})
TOPOLOGIES = (naming.LAYER2, naming.LOCALNET)
# The keys of a config of ours that are read (the CNI spec's own, OVN-K's that we implement);
# any other is reported as ignored (OVN-K's layer3/primary-network keys, typos).
KNOWN_KEYS = frozenset({
    "cniVersion", "name", "type", "topology", "netAttachDefName", "subnets", "excludeSubnets",
    "mtu", "vlanID", "physicalNetworkName", "allowPersistentIPs", "role",
    "capabilities", "runtimeConfig", "args", "prevResult", "dns",  # the CNI spec's, any plugin
})
# Fields every NAD of one network must agree on (the conventions' list).
NETWORK_FIELDS = (
    "topology",
    "subnets",
    "exclude_subnets",
    "mtu",
    "vlan_id",
    "physical_network_name",
    "allow_persistent_ips",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    name: str  # the network name (cluster-wide key)
    topology: str  # naming.LAYER2 or naming.LOCALNET
    nad_key: str  # netAttachDefName, "<nad namespace>/<nad name>"
    subnets: tuple[netaddr.IPNetwork, ...] = ()
    exclude_subnets: tuple[netaddr.IPNetwork, ...] = ()
    mtu: int | None = None
    vlan_id: int | None = None
    physical_network_name: str | None = None  # localnet: defaults to name
    allow_persistent_ips: bool = False
    role: str = "secondary"
    cni_version: str = "0.3.1"
    # what the config says that is not acted on (yet), one sentence each: a Warning Event
    ignored: tuple[str, ...] = dataclasses.field(default=(), compare=False)

    @property
    def has_ipam(self) -> bool:
        """Without `subnets` the network is L2 only: MACs, no IPs (and static `ips` allowed)."""
        return bool(self.subnets)

    @property
    def effective_mtu(self) -> int:
        return self.mtu if self.mtu is not None else DEFAULT_MTU

    @property
    def physical_network(self) -> str:
        """The `ovn-bridge-mappings` name of a localnet network."""
        return self.physical_network_name or self.name


def _fail(nad_key: str | None, message: str) -> errors.InvalidConfig:
    where = f" in NAD {nad_key}" if nad_key else ""
    return errors.InvalidConfig(f"{message}{where}")


def _string(config: Mapping[str, Any], key: str, nad_key: str | None) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(nad_key, f"{key} must be a string, not {type(value).__name__} {value!r}")
    return value


def _integer(config: Mapping[str, Any], key: str, nad_key: str | None) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(nad_key, f"{key} must be an integer, not {type(value).__name__} {value!r}")
    return value


def _networks(text: str, key: str, nad_key: str | None) -> tuple[netaddr.IPNetwork, ...]:
    result: list[netaddr.IPNetwork] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            # the standard library is strict about notation (netaddr accepts "10/8" and such)
            parsed = ipaddress.ip_network(item, strict=False)
            if "%" in item:
                raise ValueError("zone identifiers are not allowed")
        except ValueError as exc:
            raise _fail(nad_key, f"{key}: {item!r} is not a CIDR or an IP address "
                                 f"(e.g. 10.100.0.0/24 or fd00:100::/64)") from exc
        address = item.split("/")[0].strip()
        result.append(netaddr.IPNetwork(f"{ipaddress.ip_address(address)}/{parsed.prefixlen}"))
    return tuple(result)


def parse_config(config: Mapping[str, Any], *, nad_key: str | None = None) -> NetworkConfig | None:
    """A CNI config (already JSON-decoded) -> NetworkConfig, or None when it is not ours.

    `nad_key` (`<namespace>/<name>` of the NAD holding the config) is checked against
    `netAttachDefName`; without it `netAttachDefName` is taken as the NAD key.
    """
    if not isinstance(config, Mapping):
        raise _fail(nad_key, f"the CNI config must be a JSON object, not {type(config).__name__}")
    cni_version = _string(config, "cniVersion", nad_key) or "0.3.1"
    if "plugins" in config:
        plugins = config["plugins"]
        if not isinstance(plugins, list) or not all(isinstance(p, Mapping) for p in plugins):
            raise _fail(nad_key, "plugins must be a list of CNI plugin configs")
        ours = [p for p in plugins if p.get("type") == CNI_TYPE]
        if not ours:
            return None
        if len(plugins) != 1:
            raise _fail(nad_key, f"a conflist with {CNI_TYPE} must hold exactly one plugin "
                                 f"(chaining is not supported); it holds {len(plugins)}")
        conflist_name = config.get("name")
        config = dict(ours[0])
        if "name" not in config and conflist_name is not None:
            config["name"] = conflist_name
    if config.get("type") != CNI_TYPE:
        return None

    name = _string(config, "name", nad_key)
    if not name:
        raise _fail(nad_key, "name (the network name) is required")
    if name in RESERVED_NAMES:
        raise _fail(nad_key, f"network name {name!r} is reserved; choose another name")

    topology = _string(config, "topology", nad_key)
    if topology is None:
        raise _fail(nad_key, "topology is required: layer2 or localnet")
    if topology not in TOPOLOGIES:
        raise _fail(nad_key, f"topology {topology!r} is not supported; use layer2 or localnet")

    declared_key = _string(config, "netAttachDefName", nad_key)
    if not declared_key:
        raise _fail(nad_key, "netAttachDefName is required and must be <nad namespace>/<nad name>")
    if nad_key is not None and declared_key != nad_key:
        raise _fail(nad_key, f"netAttachDefName {declared_key!r} must equal {nad_key!r}")
    parts = declared_key.split("/")
    if len(parts) != 2 or not all(parts):
        raise _fail(nad_key, f"netAttachDefName {declared_key!r} must be "
                             "<nad namespace>/<nad name>")

    if "ipam" in config:
        raise _fail(nad_key, "the ipam key is not supported: IP addresses come from subnets; "
                             "remove ipam and set subnets")

    role = _string(config, "role", nad_key) or "secondary"
    if role != "secondary":
        raise _fail(nad_key, f"role {role!r} is not supported; only secondary networks are")

    subnets = _networks(_string(config, "subnets", nad_key) or "", "subnets", nad_key)
    for index, subnet in enumerate(subnets):
        for other in subnets[:index]:
            if subnet.version == other.version and (subnet in other or other in subnet):
                raise _fail(nad_key, f"subnets {other} and {subnet} overlap; list each once")
    subnets = tuple(netaddr.IPNetwork(f"{s.network}/{s.prefixlen}") for s in subnets)

    excludes = _networks(
        _string(config, "excludeSubnets", nad_key) or "", "excludeSubnets", nad_key
    )
    if excludes and not subnets:
        raise _fail(nad_key, "excludeSubnets needs subnets: there is nothing to exclude from")
    for exclude in excludes:
        if not any(exclude.version == s.version and exclude in s for s in subnets):
            raise _fail(nad_key, f"excludeSubnets entry {exclude} is not inside any of the "
                                 f"subnets ({', '.join(str(s) for s in subnets)})")

    mtu = _integer(config, "mtu", nad_key)
    if mtu is not None:
        minimum = 1280 if any(s.version == 6 for s in subnets) else 576
        if not minimum <= mtu <= 65535:
            raise _fail(nad_key, f"mtu {mtu} out of range {minimum}-65535")

    vlan_id = _integer(config, "vlanID", nad_key)
    physical = _string(config, "physicalNetworkName", nad_key)
    if topology == naming.LOCALNET:
        if vlan_id is not None and not 1 <= vlan_id <= 4094:
            raise _fail(nad_key, f"vlanID {vlan_id} out of range 1-4094")
        if physical is not None and not physical.strip():
            raise _fail(nad_key, "physicalNetworkName must not be empty; omit it to use name")
    else:
        if vlan_id is not None:
            raise _fail(nad_key, f"vlanID is only valid with topology localnet, not {topology}")
        if physical is not None:
            raise _fail(nad_key, f"physicalNetworkName is only valid with topology localnet, "
                                 f"not {topology}")

    persistent = config.get("allowPersistentIPs", False)
    if not isinstance(persistent, bool):
        raise _fail(nad_key, f"allowPersistentIPs must be true or false, not {persistent!r}")
    if persistent and not subnets:
        raise _fail(nad_key, "allowPersistentIPs needs subnets (IPAM) to keep IPs for")

    ignored = []
    unknown = sorted(set(config) - KNOWN_KEYS)
    if unknown:
        ignored.append(f"{', '.join(unknown)}: not known to ovnk-secondary, ignored (check the "
                       "spelling; OVN-Kubernetes' layer3 and primary-network fields are not "
                       "supported)")

    return NetworkConfig(
        name=name,
        topology=topology,
        nad_key=declared_key,
        subnets=subnets,
        exclude_subnets=excludes,
        mtu=mtu,
        vlan_id=vlan_id,
        physical_network_name=physical,
        allow_persistent_ips=persistent,
        role=role,
        cni_version=cni_version,
        ignored=tuple(ignored),
    )


def parse_nad(body: Mapping[str, Any]) -> NetworkConfig | None:
    """A NetworkAttachmentDefinition object -> NetworkConfig, None when not ours."""
    metadata = body.get("metadata") or {}
    nad_key = f"{metadata.get('namespace')}/{metadata.get('name')}"
    spec = body.get("spec") or {}
    text = spec.get("config") if isinstance(spec, Mapping) else None
    if not text:
        return None  # a NAD without config names a CNI config file on the node: not ours
    if not isinstance(text, str):
        raise _fail(nad_key, "spec.config must be a string holding the CNI config JSON")
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _fail(nad_key, f"spec.config is not valid JSON: {exc}") from exc
    return parse_config(config, nad_key=nad_key)


def disagreements(first: NetworkConfig, second: NetworkConfig) -> list[str]:
    """The NETWORK_FIELDS on which two NADs of one network differ (empty: they agree)."""
    differing = []
    for field in NETWORK_FIELDS:
        a, b = getattr(first, field), getattr(second, field)
        if field == "physical_network_name":
            a, b = first.physical_network, second.physical_network
        if a != b:
            differing.append(field)
    return differing


def describe(config: NetworkConfig, field: str) -> str:
    """A field's value as a user wrote it, for messages."""
    value = getattr(config, field)
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "(none)"
    return "(none)" if value is None else str(value)


def check_gateways(network: NetworkConfig, gateways: Sequence[str], *,
                   static_ips: Sequence[str] = ()) -> None:
    """A pod's `default-route` gateways must be on-link on the network.

    With `subnets`, each gateway lies in one of them (and is not its network address); without,
    in the subnet of one of the pod's static `ips` of its family. Raises InvalidConfig naming
    the gateway and where it should lie. (Network Plumbing WG multi-net-spec, 4.1.2.1.9: the
    gateway of the default route is on the attachment's network.)
    """
    for text in gateways:
        gateway = netaddr.IPAddress(text)
        if network.has_ipam:
            ranges = [s for s in network.subnets if s.version == gateway.version]
            where = f"the network's subnets ({', '.join(str(s) for s in network.subnets)})"
        else:
            ranges = [netaddr.IPNetwork(i).cidr for i in static_ips
                      if netaddr.IPNetwork(i).version == gateway.version]
            where = (f"the subnets of the pod's static ips ({', '.join(static_ips)})"
                     if static_ips else "a subnet: the network has no subnets and the pod no "
                     "static ips")
        if not any(gateway in r and gateway != r.network for r in ranges):
            raise errors.InvalidConfig(f"default-route gateway {gateway} is not in {where}; use a "
                                "gateway on that network")
