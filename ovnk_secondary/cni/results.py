"""CNI results: the interfaces, IPs and routes an ADD produced, shaped per `cniVersion`.

Spec 0.3.1/0.4.0 and 1.0.0 differ in details: from 0.3.x to 1.0.0 the IP entries lose their
`version` key, and interfaces may carry `mtu`. The agent builds a `Result` and shapes it for
the version the NAD config declares; the plugin prints it unchanged.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence
from typing import Any

from ovnk_secondary.cni import protocol


@dataclasses.dataclass(frozen=True, kw_only=True)
class Interface:
    name: str
    mac: str
    sandbox: str = ""  # the netns path; empty for the host side
    mtu: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class IPConfig:
    address: str  # CIDR notation: 10.100.0.5/24
    interface: int | None = None  # index into Result.interfaces
    gateway: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Route:
    dst: str
    gw: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Result:
    interfaces: Sequence[Interface] = ()
    ips: Sequence[IPConfig] = ()
    routes: Sequence[Route] = ()


def shape_result(result: Result, cni_version: str) -> dict[str, Any]:
    """The result object of the spec version the request declared."""
    if cni_version not in protocol.SUPPORTED_VERSIONS:
        raise protocol.CniError(protocol.INCOMPATIBLE_VERSION,
                                f"cniVersion {cni_version!r} is not supported",
                                f"use one of {', '.join(protocol.SUPPORTED_VERSIONS)}")
    modern = cni_version == "1.0.0"
    interfaces = []
    for iface in result.interfaces:
        item: dict[str, Any] = {"name": iface.name, "mac": iface.mac}
        if iface.sandbox:
            item["sandbox"] = iface.sandbox
        if modern and iface.mtu:
            item["mtu"] = iface.mtu
        interfaces.append(item)
    ips = []
    for ip in result.ips:
        entry: dict[str, Any] = {}
        if not modern:
            entry["version"] = str(ipaddress.ip_interface(ip.address).version)
        entry["address"] = ip.address
        if ip.gateway:
            entry["gateway"] = ip.gateway
        if ip.interface is not None:
            entry["interface"] = ip.interface
        ips.append(entry)
    routes = []
    for route in result.routes:
        shaped: dict[str, Any] = {"dst": route.dst}
        if route.gw:
            shaped["gw"] = route.gw
        routes.append(shaped)
    return {"cniVersion": cni_version, "interfaces": interfaces, "ips": ips, "routes": routes,
            "dns": {}}
