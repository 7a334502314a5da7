"""The `k8s.ovn.org/pod-networks` annotation: what each pod got on each NAD, and its MAC rule.

The controller writes it; the node side reads it to build the pod's interface. It is a JSON
map keyed by `<nad namespace>/<nad name>`; each value holds `ip_addresses` (CIDR strings,
null without IPAM), `mac_address`, optional `gateway_ips` and `routes`, and `role`. Once a key
is written its addresses never change, so an annotation is also the record IPAM is rebuilt
from after a restart.

One key is ours, not OVN-K's: `logical_switch_port`, written only on the entries of a KubeVirt
VM's pods whose port is the VM's own (`naming.vm_port_name`: the multi-chassis live-migration
strategy, see `migration`), so that the node agent plugs the pod's interface into that port.
Without it, the port is the pod's (`naming.pod_port_name`), as in OVN-K.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ovnk_secondary import errors, naming

ANNOTATION = "k8s.ovn.org/pod-networks"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Route:
    dest: str
    next_hop: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class PodNetwork:
    """One NAD's entry of the annotation."""

    ip_addresses: tuple[str, ...] | None  # None: the network has no IPAM
    mac_address: str
    gateway_ips: tuple[str, ...] = ()
    routes: tuple[Route, ...] = ()
    role: str = "secondary"
    logical_switch_port: str | None = None  # ours: the VM's port, when not the pod's own

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "ip_addresses": list(self.ip_addresses) if self.ip_addresses is not None else None,
            "mac_address": self.mac_address,
        }
        if self.gateway_ips:
            value["gateway_ips"] = list(self.gateway_ips)
        if self.routes:
            value["routes"] = [{"dest": r.dest, "nextHop": r.next_hop} for r in self.routes]
        value["role"] = self.role
        if self.logical_switch_port is not None:
            value["logical_switch_port"] = self.logical_switch_port
        return value


def port_name(nad_key: str, pod_namespace: str, pod_name: str, entry: PodNetwork | None) -> str:
    """The logical switch port (and OVS iface-id) of a pod on a NAD: the one its entry names,
    else the pod's own (`naming.pod_port_name`)."""
    if entry is not None and entry.logical_switch_port is not None:
        return entry.logical_switch_port
    return naming.pod_port_name(nad_key, pod_namespace, pod_name)


def mac_address(ips: Sequence[str], *, requested: str | None = None, seed: str = "") -> str:
    """The MAC of a pod interface: `requested` wins; else from the first IP; else from `seed`.

    IPv4 -> `0a:58:` + the four address bytes; IPv6 -> `0a:58:` + the first four bytes of
    sha256(address text), as OVN-K. Without IPs, OVN-K picks a random locally administered
    unicast MAC; here it is derived from `seed` (pod UID + NAD key) so that a retried attempt
    before the annotation is written yields the same MAC.
    """
    if requested:
        return requested.lower()
    if ips:
        address = ipaddress.ip_interface(ips[0]).ip
        if address.version == 4:
            tail = address.packed
        else:
            tail = hashlib.sha256(address.compressed.encode()).digest()[:4]
        return ":".join(f"{b:02x}" for b in (0x0A, 0x58, *tail))
    digest = bytearray(hashlib.sha256(seed.encode()).digest()[:6])
    digest[0] = (digest[0] | 0x02) & 0xFE  # locally administered, unicast
    return ":".join(f"{b:02x}" for b in digest)


def _fail(message: str) -> errors.InvalidConfig:
    return errors.InvalidConfig(f"annotation {ANNOTATION}: {message}; the controller rewrites "
                                "entries it cannot read")


def _decode_entry(key: str, value: Any) -> PodNetwork:
    if not isinstance(value, Mapping):
        raise _fail(f"entry {key} must be an object")
    raw_ips = value.get("ip_addresses")
    if raw_ips is None and isinstance(value.get("ip_address"), str) and value["ip_address"]:
        raw_ips = [value["ip_address"]]  # older OVN-K writers
    ips: tuple[str, ...] | None = None
    if raw_ips is not None:
        if not isinstance(raw_ips, list) or not all(isinstance(i, str) for i in raw_ips):
            raise _fail(f"entry {key}: ip_addresses must be a list of CIDR strings or null")
        for ip in raw_ips:
            try:
                ipaddress.ip_interface(ip)
            except ValueError as exc:
                raise _fail(f"entry {key}: {ip!r} is not an address in CIDR notation") from exc
        ips = tuple(raw_ips)
    mac = value.get("mac_address")
    if not isinstance(mac, str) or not mac:
        raise _fail(f"entry {key} has no mac_address")
    gateways = value.get("gateway_ips") or []
    if not isinstance(gateways, list) or not all(isinstance(g, str) for g in gateways):
        raise _fail(f"entry {key}: gateway_ips must be a list of IP strings")
    routes = []
    for route in value.get("routes") or []:
        if not isinstance(route, Mapping) or not isinstance(route.get("dest"), str):
            raise _fail(f"entry {key}: each route needs dest and nextHop")
        routes.append(Route(dest=route["dest"], next_hop=str(route.get("nextHop") or "")))
    role = value.get("role") or "secondary"
    port = value.get("logical_switch_port")
    if port is not None and (not isinstance(port, str) or not port):
        raise _fail(f"entry {key}: logical_switch_port must be a port name")
    return PodNetwork(ip_addresses=ips, mac_address=mac.lower(), gateway_ips=tuple(gateways),
                      routes=tuple(routes), role=str(role), logical_switch_port=port)


def decode(text: str | None) -> dict[str, PodNetwork]:
    """The annotation's value -> {nad key: PodNetwork}; empty for no annotation."""
    if text is None or not text.strip():
        return {}
    try:
        decoded = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _fail(f"not valid JSON: {exc}") from exc
    if not isinstance(decoded, dict):
        raise _fail("it must be a JSON object keyed by <nad namespace>/<nad name>")
    return {str(key): _decode_entry(key, value) for key, value in decoded.items()}


def encode(networks: Mapping[str, PodNetwork]) -> str:
    """{nad key: PodNetwork} -> the annotation's value (keys sorted: stable text)."""
    return json.dumps({key: networks[key].to_json() for key in sorted(networks)},
                      separators=(",", ":"))
