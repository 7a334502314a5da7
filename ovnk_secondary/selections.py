"""Network selection elements: which NADs a pod asks for, from `k8s.v1.cni.cncf.io/networks`.

The annotation has two forms (Multus' and the Network Plumbing Working Group's):
- text: comma-separated `[<namespace>/]<nad name>[@<interface>]`;
- JSON: a list of objects with `name`, and optionally `namespace`, `interface`, `ips`, `mac`,
  `default-route`, `ipam-claim-reference`.
A missing namespace means the pod's own. Parsing is strict: a malformed annotation raises
`errors.InvalidConfig` saying what to fix, and nothing of it is applied.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from collections.abc import Sequence
from typing import Any

from ovnk_secondary import errors

ANNOTATION = "k8s.v1.cni.cncf.io/networks"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class NetworkSelection:
    """One element of the annotation: a request to attach the pod to one NAD."""

    namespace: str
    name: str
    interface: str | None = None
    ips: tuple[str, ...] = ()  # CIDRs, static; only for networks without subnets
    mac: str | None = None
    default_route: tuple[str, ...] = ()  # gateway IPs
    ipam_claim_reference: str | None = None

    @property
    def nad_key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _fail(pod: str, message: str) -> errors.InvalidConfig:
    return errors.InvalidConfig(f"annotation {ANNOTATION} of pod {pod}: {message}")


def _check_names(pod: str, namespace: str, name: str) -> None:
    if not _DNS_LABEL.match(namespace) or len(namespace) > 63:
        raise _fail(pod, f"namespace {namespace!r} is not a valid namespace name")
    if not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
        raise _fail(pod, f"NAD name {name!r} is not a valid object name "
                         "(lower-case letters, digits, '-' and '.')")


def _check_interface(pod: str, interface: str) -> None:
    if not 0 < len(interface) <= 15 or "/" in interface or interface in (".", "..") or any(
        c.isspace() or c == ":" for c in interface
    ):
        raise _fail(pod, f"interface {interface!r} is not a valid Linux interface name "
                         "(1-15 characters, no '/', ':' or spaces)")


def _parse_text(text: str, pod: str, pod_namespace: str) -> list[NetworkSelection]:
    result = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        reference, _, interface = item.partition("@")
        namespace, _, name = reference.rpartition("/")
        namespace = namespace or pod_namespace
        _check_names(pod, namespace, name)
        if "@" in item:
            _check_interface(pod, interface)
        result.append(NetworkSelection(
            namespace=namespace, name=name, interface=interface if "@" in item else None
        ))
    return result


def _strings(pod: str, element: dict[str, Any], key: str) -> tuple[str, ...]:
    value = element.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(pod, f"{key} must be a list of strings, not {value!r}")
    return tuple(value)


def _parse_element(element: Any, pod: str, pod_namespace: str) -> NetworkSelection:
    if not isinstance(element, dict):
        raise _fail(pod, f"each element must be an object with a name, not {element!r}")
    name = element.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(pod, f"element {element!r} has no name (the NAD's name)")
    namespace = element.get("namespace") or pod_namespace
    if not isinstance(namespace, str):
        raise _fail(pod, f"namespace must be a string, not {namespace!r}")
    _check_names(pod, namespace, name)
    interface = element.get("interface")
    if interface is not None:
        if not isinstance(interface, str):
            raise _fail(pod, f"interface must be a string, not {interface!r}")
        _check_interface(pod, interface)
    ips = _strings(pod, element, "ips")
    for ip in ips:
        try:
            ipaddress.ip_interface(ip)
        except ValueError as exc:
            raise _fail(pod, f"ips entry {ip!r} is not an address in CIDR notation "
                             "(e.g. 10.1.1.5/24)") from exc
        if "/" not in ip:
            raise _fail(pod, f"ips entry {ip!r} needs a prefix length (e.g. {ip}/24)")
    mac = element.get("mac")
    if mac is not None:
        if not isinstance(mac, str) or not _MAC.match(mac):
            raise _fail(pod, f"mac {mac!r} is not a MAC address like 0a:58:0a:01:01:05")
        if int(mac[:2], 16) & 1:
            raise _fail(pod, f"mac {mac} is a multicast address; use a unicast one")
        mac = mac.lower()
    routes = _strings(pod, element, "default-route")
    for gateway in routes:
        try:
            ipaddress.ip_address(gateway)
        except ValueError as exc:
            raise _fail(pod, f"default-route entry {gateway!r} is not an IP address") from exc
    claim = element.get("ipam-claim-reference")
    if claim is not None and (not isinstance(claim, str) or not claim):
        raise _fail(pod, f"ipam-claim-reference must be an IPAMClaim name, not {claim!r}")
    return NetworkSelection(
        namespace=namespace, name=name, interface=interface, ips=ips, mac=mac,
        default_route=routes, ipam_claim_reference=claim,
    )


def parse(annotation: str | None, *, pod_namespace: str, pod_name: str) -> tuple[
    NetworkSelection, ...
]:
    """The annotation's value -> selections, in order; empty for no annotation."""
    pod = f"{pod_namespace}/{pod_name}"
    if annotation is None or not annotation.strip():
        return ()
    if not isinstance(annotation, str):
        raise _fail(pod, "the value must be a string")
    text = annotation.strip()
    if text.startswith(("[", "{")):
        try:
            decoded = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise _fail(pod, f"not valid JSON: {exc}") from exc
        if isinstance(decoded, dict):
            decoded = [decoded]
        if not isinstance(decoded, list):
            raise _fail(pod, "the JSON form must be a list of network selection elements")
        selections = [_parse_element(e, pod, pod_namespace) for e in decoded]
    else:
        selections = _parse_text(text, pod, pod_namespace)
    _check_unique(pod, selections)
    return tuple(selections)


def _check_unique(pod: str, selections: Sequence[NetworkSelection]) -> None:
    """One port per NAD, one interface name per element (given or generated), one default route.

    Interface names are compared after Multus' defaults are applied (`interface_names`): an
    explicit `net1` on the second element collides with the first element's generated `net1`.
    More than one element with `default-route` is invalid (Network Plumbing WG
    multi-net-spec, section 4.1.2.1.9: "only one network attachment selection object ...").
    """
    seen_nads: set[str] = set()
    for selection in selections:
        if selection.nad_key in seen_nads:
            raise _fail(pod, f"NAD {selection.nad_key} is selected twice; one pod has one "
                             "port per NAD")
        seen_nads.add(selection.nad_key)
    holders: dict[str, int] = {}
    for index, selection in enumerate(selections, 1):
        interface = selection.interface or f"net{index}"
        if interface in holders:
            first = selections[holders[interface] - 1]
            how = "also requested by" if first.interface else "the default name (Multus') of"
            raise _fail(pod, f"interface {interface} of NAD {selection.nad_key} (element "
                             f"{index}) is {how} NAD {first.nad_key} (element "
                             f"{holders[interface]}); interface names of a pod must be unique: "
                             "set another interface")
        holders[interface] = index
    routed = [s.nad_key for s in selections if s.default_route]
    if len(routed) > 1:
        raise _fail(pod, f"default-route is set on {len(routed)} elements ({', '.join(routed)});"
                         " a pod has one default route: keep it on one element")


def interface_names(selections: Sequence[NetworkSelection]) -> dict[str, str]:
    """NAD key -> interface in the pod, `net1`, `net2`, ... where the element names none.

    Multus counts every element, named or not, so the n-th element gets `net<n>` by default.
    """
    return {s.nad_key: s.interface or f"net{index}" for index, s in enumerate(selections, 1)}
