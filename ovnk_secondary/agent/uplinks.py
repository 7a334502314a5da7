"""Uplinks: a NIC joins a bridge only if that does not cut the node off.

A NIC that becomes a port of an OVS bridge stops being the node's own interface: the kernel
datapath takes its packets before the IP stack sees them. A NIC that carries the node's
address or a route (its default route, say) would take the node off the network with it. Such
an uplink is refused, unless its bridge-mappings entry says `moveAddresses: true` (as an nmstate
policy moves the IP configuration to the OVS interface when it says so); then the NIC's IP
configuration moves to the bridge's own (internal) interface, which reaches the same wire
through the NIC.

"Carries": a global-scope IPv4 or IPv6 address (IPv6 link-local fe80::/10 does not count, every
interface has one), or being the output device of a route in the main table (the default route
included; the kernel's IPv6 link-local and multicast routes do not count).

The move, in an order that never leaves the node without its address (`bridgemappings.apply`
runs it and undoes every step done so far when one fails): the bridge is created when missing
and gets the NIC's MAC (`other_config:hwaddr`, so neighbours' ARP caches stay valid); the NIC's
addresses are added to the bridge's interface, which is brought up; the NIC becomes a port;
then its addresses leave it and each of its routes is re-created on the bridge's interface
(same destination, gateway, metric, source, protocol, table main). The kernel's own prefix
routes are not re-created: it makes them again from the addresses.

Addresses and routes move as they are, without lifetimes: a DHCP client or network manager
that manages the NIC has to be pointed at the bridge's interface instead. A route with several
next hops is not moved (refused). Routes in other tables, and routes through nexthop objects
(`ip route ... nhid N`, which name no device), are not looked at.

The decision and the plan are pure functions over plain values (`Link`, as `observe` reads it
over netlink); `Netlink` is the thin adapter that performs each step.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ovnk_secondary import errors
from ovnk_secondary.agent import interfaces

# linux/rtnetlink.h, linux/if_addr.h
RT_TABLE_MAIN = 254
RTPROT_KERNEL, RTPROT_BOOT = 2, 3
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTN_UNICAST = 1
RTNH_F_ONLINK = 0x4
IFF_UP = 0x1
IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
_LINK_LOCAL6 = ipaddress.IPv6Network("fe80::/10")
_MULTICAST6 = ipaddress.IPv6Network("ff00::/8")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Address:
    """An address of a link (RTM_GETADDR)."""

    cidr: str  # interface notation: 192.168.1.5/24, 2001:db8::5/64
    scope: int = RT_SCOPE_UNIVERSE  # 0 global, 253 link, 254 host
    broadcast: str | None = None  # IPv4 only
    noprefixroute: bool = False  # IFA_F_NOPREFIXROUTE: the kernel made no prefix route for it

    @property
    def carried(self) -> bool:
        """The node's own address: global scope, not IPv6 link-local."""
        ip = ipaddress.ip_interface(self.cidr).ip
        return self.scope == RT_SCOPE_UNIVERSE and not (ip.version == 6 and ip in _LINK_LOCAL6)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Route:
    """A main-table route whose output device is the link (RTM_GETROUTE)."""

    dst: str  # CIDR; 0.0.0.0/0 or ::/0 for a default route
    gateway: str | None = None
    metric: int | None = None  # RTA_PRIORITY; None when the kernel reports none (IPv4's 0)
    src: str | None = None  # RTA_PREFSRC
    protocol: int = RTPROT_BOOT  # 2 kernel (made from an address), 3 boot (`ip route add`), ...
    scope: int = RT_SCOPE_UNIVERSE
    kind: int = RTN_UNICAST  # rtm_type
    onlink: bool = False  # RTNH_F_ONLINK: the gateway is on the link without a prefix route
    multipath: bool = False  # the link is one of several next hops (RTA_MULTIPATH)

    @property
    def default(self) -> bool:
        return ipaddress.ip_network(self.dst, strict=False).prefixlen == 0

    @property
    def carried(self) -> bool:
        """A route the node needs: not the kernel's IPv6 link-local or multicast ones."""
        network = ipaddress.ip_network(self.dst, strict=False)
        return not (isinstance(network, ipaddress.IPv6Network)
                    and (network.subnet_of(_LINK_LOCAL6) or network.subnet_of(_MULTICAST6)))

    @property
    def from_kernel(self) -> bool:
        """The kernel's prefix route of an address: it goes and comes with the address."""
        return self.protocol == RTPROT_KERNEL

    def describe(self) -> str:
        where = "default route" if self.default else f"route {self.dst}"
        return f"{where} via {self.gateway}" if self.gateway else where


@dataclasses.dataclass(frozen=True, kw_only=True)
class Link:
    """A network interface of the node, with its addresses and main-table routes."""

    name: str
    mac: str
    addresses: tuple[Address, ...] = ()  # in the kernel's order (an IPv4 primary first)
    routes: tuple[Route, ...] = ()

    @property
    def carried_addresses(self) -> tuple[Address, ...]:
        return tuple(a for a in self.addresses if a.carried)

    @property
    def carried_routes(self) -> tuple[Route, ...]:
        return tuple(r for r in self.routes if r.carried)

    @property
    def carries(self) -> bool:
        """Adding it to a bridge as it is would cut the node off (see the module)."""
        return bool(self.carried_addresses or self.carried_routes)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Move:
    """Moving an uplink's IP configuration to its bridge's interface (see the module)."""

    bridge: str
    uplink: str
    mac: str  # the uplink's, given to the bridge
    addresses: tuple[Address, ...]  # added to the bridge, then removed from the uplink
    routes: tuple[Route, ...]  # re-created on the bridge (the kernel's own excluded)


class Entry(Protocol):
    """What the plan needs of a bridge-mappings entry (`bridgemappings.BridgeMapping`)."""

    @property
    def bridge(self) -> str: ...

    @property
    def uplinks(self) -> tuple[str, ...]: ...

    @property
    def move_addresses(self) -> bool: ...


def describe_carried(link: Link) -> str:
    """What a link carries, in words: "the node's address 192.168.1.5/24 and the default
    route via 192.168.1.1" (the kernel's prefix routes go with their addresses: not named)."""
    addresses = [a.cidr for a in link.carried_addresses]
    routes = [r for r in link.carried_routes if not (addresses and r.from_kernel)]
    parts = []
    if addresses:
        noun = "address" if len(addresses) == 1 else "addresses"
        parts.append(f"the node's {noun} {', '.join(addresses)}")
    parts += [f"the {r.describe()}" for r in routes]
    if len(parts) <= 2:
        return " and ".join(parts)
    return f"{', '.join(parts[:-1])} and {parts[-1]}"


def plan(entries: Iterable[Entry], *, links: Mapping[str, Link],
         port_bridges: Mapping[str, str], source: str) -> tuple[Move, ...]:
    """The moves that adding the entries' uplinks needs; InvalidConfig for a refused uplink.

    `links`: the node's interfaces by name (`observe`); `port_bridges`: OVS port -> its bridge.
    An uplink that is a port of its bridge already (converged earlier) needs nothing. An uplink
    that carries the node's address or a route is refused without `moveAddresses: true` on its
    entry; with it, at most one uplink of a bridge may carry them (the bridge's interface can
    take over one NIC's configuration) and its routes must have one next hop each.
    """
    moves: dict[str, Move] = {}
    for entry in entries:
        for name in entry.uplinks:
            link = links.get(name)
            if port_bridges.get(name) == entry.bridge or link is None or not link.carries:
                continue  # converged, or (missing) refused by validate_on_node
            where = f"{source}: uplink NIC {name} of bridge {entry.bridge}"
            carried = describe_carried(link)
            if not entry.move_addresses:
                raise errors.InvalidConfig(
                    f"{where} carries {carried}; moving it into the bridge would cut the node "
                    "off: set moveAddresses: true on this entry to move them to the bridge's "
                    "interface, or list another NIC")
            several = [r for r in link.carried_routes if r.multipath]
            if several:
                raise errors.InvalidConfig(
                    f"{where} is one of several next hops of the "
                    f"{', '.join(r.describe() for r in several)}; moveAddresses moves routes "
                    f"with one next hop only: replace that route by one through {entry.bridge} "
                    "by hand, or list another NIC")
            other = moves.get(entry.bridge)
            if other is not None:
                raise errors.InvalidConfig(
                    f"{source}: uplink NICs {other.uplink} and {name} of bridge {entry.bridge} "
                    f"both carry the node's addresses or routes ({name}: {carried}); the "
                    "bridge's interface can take over one NIC's only: list one of them, or move "
                    "the other's by hand first")
            # routes without a gateway first: a gateway may be reachable through one of them
            routes = sorted((r for r in link.carried_routes if not r.from_kernel),
                            key=lambda r: r.gateway is not None)
            moves[entry.bridge] = Move(bridge=entry.bridge, uplink=name, mac=link.mac,
                                       addresses=link.carried_addresses, routes=tuple(routes))
    return tuple(moves.values())


# --- the thin netlink adapter -------------------------------------------------------------------

def _ipr(netns: str | None) -> IPRoute:
    """pyroute2's IPRoute in `netns` (a path), or in the agent's own namespace (the host's)."""
    if netns is None:
        return IPRoute(groups=0)
    return interfaces.in_netns(netns, lambda: IPRoute(groups=0))


def observe(*, netns: str | None = None) -> dict[str, Link]:
    """Every interface of the namespace (default: the agent's own) with its addresses and
    main-table routes, by name."""
    with _ipr(netns) as ipr:
        found = ipr.get_links()
        addresses = ipr.get_addr()
        routes = ipr.get_routes(table=RT_TABLE_MAIN)
    by_index: dict[int, list[Address]] = {}
    for message in addresses:
        address = _address(message)
        if address is not None:
            by_index.setdefault(int(message["index"]), []).append(address)
    routes_of: dict[int, list[Route]] = {}
    for message in routes:
        if (message.get("RTA_TABLE") or message["table"]) != RT_TABLE_MAIN:
            continue
        for index, route in _routes(message):
            routes_of.setdefault(index, []).append(route)
    return {str(link.get("IFLA_IFNAME")): Link(
        name=str(link.get("IFLA_IFNAME")), mac=str(link.get("IFLA_ADDRESS") or ""),
        addresses=tuple(by_index.get(link["index"], ())),
        routes=tuple(routes_of.get(link["index"], ()))) for link in found}


def _address(message: Any) -> Address | None:
    ip = message.get("IFA_LOCAL") or message.get("IFA_ADDRESS")
    if not ip:
        return None
    flags = message.get("IFA_FLAGS") or message["flags"]
    return Address(cidr=f"{ip}/{message['prefixlen']}", scope=int(message["scope"]),
                   broadcast=message.get("IFA_BROADCAST"),
                   noprefixroute=bool(flags & IFA_F_NOPREFIXROUTE))


def _routes(message: Any) -> list[tuple[int, Route]]:
    """(output interface index, route) of a route message: one per next hop's interface."""
    dst = message.get("RTA_DST") or ("::" if message["family"] == 10 else "0.0.0.0")
    priority = message.get("RTA_PRIORITY")
    base = Route(dst=f"{dst}/{message['dst_len']}",
                 metric=int(priority) if priority is not None else None,
                 src=message.get("RTA_PREFSRC"), protocol=int(message["proto"]),
                 scope=int(message["scope"]), kind=int(message["type"]))
    hops = message.get("RTA_MULTIPATH")
    if hops:
        return [(int(hop["oif"]), dataclasses.replace(base, multipath=True,
                                                      gateway=hop.get("RTA_GATEWAY")))
                for hop in hops]
    oif = message.get("RTA_OIF")
    if oif is None:
        return []  # blackhole, unreachable, a nexthop object: no output interface here
    return [(int(oif), dataclasses.replace(base, gateway=message.get("RTA_GATEWAY"),
                                           onlink=bool(message["flags"] & RTNH_F_ONLINK)))]


class Netlink:
    """The steps of a move, each one netlink request in the namespace given (default: the
    agent's own). `add_*` return False when the kernel has it already (EEXIST), `delete_*`
    False when it is gone already: the caller then has nothing to undo."""

    def __init__(self, *, netns: str | None = None) -> None:
        self._ipr = _ipr(netns)

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._ipr.close()

    def index(self, name: str, *, timeout: float = 0.0) -> int:
        """The interface's index; waits up to `timeout` for it to appear (a bridge's interface,
        made by ovs-vswitchd once it has read the new bridge). InvalidConfig when missing."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._ipr.link_lookup(ifname=name)
            if found:
                return int(found[0])
            if time.monotonic() >= deadline:
                raise errors.InvalidConfig(f"interface {name} does not exist on this node")
            time.sleep(0.05)

    def is_up(self, index: int) -> bool:
        return bool(self._ipr.get_links(index)[0]["flags"] & IFF_UP)

    def set_up(self, index: int, up: bool = True) -> None:
        self._ipr.link("set", index=index, state="up" if up else "down")

    def add_address(self, index: int, address: Address) -> bool:
        interface = ipaddress.ip_interface(address.cidr)
        flags = IFA_F_NOPREFIXROUTE if address.noprefixroute else 0
        if interface.version == 6:
            flags |= IFA_F_NODAD  # the node's own address, verified where it was: no DAD delay
        extra = {"broadcast": address.broadcast} if address.broadcast else {}
        return _created(lambda: self._ipr.addr(
            "add", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen,
            flags=flags, **extra))

    def delete_address(self, index: int, address: Address) -> bool:
        interface = ipaddress.ip_interface(address.cidr)
        return _deleted(lambda: self._ipr.addr(
            "del", index=index, address=str(interface.ip),
            prefixlen=interface.network.prefixlen))

    def add_route(self, index: int, route: Route) -> bool:
        return _created(lambda: self._ipr.route("add", **_route_fields(index, route)))

    def delete_route(self, index: int, route: Route) -> bool:
        return _deleted(lambda: self._ipr.route("del", **_route_fields(index, route)))


def _route_fields(index: int, route: Route) -> dict[str, Any]:
    network = ipaddress.ip_network(route.dst, strict=False)
    fields: dict[str, Any] = {
        "family": 2 if network.version == 4 else 10, "dst": str(network.network_address),
        "dst_len": network.prefixlen, "oif": index, "table": RT_TABLE_MAIN,
        "proto": route.protocol, "scope": route.scope, "type": route.kind,
        "flags": RTNH_F_ONLINK if route.onlink else 0}
    if route.gateway:
        fields["gateway"] = route.gateway
    if route.metric is not None:
        fields["priority"] = route.metric
    if route.src:
        fields["prefsrc"] = route.src
    return fields


def _created(request: Callable[[], object]) -> bool:
    try:
        request()
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return False
        raise
    return True


def _deleted(request: Callable[[], object]) -> bool:
    try:
        request()
    except NetlinkError as exc:
        # ESRCH: no such route; EADDRNOTAVAIL: no such address (an IPv4 secondary goes with
        # its primary unless promote_secondaries is set)
        if exc.code in (errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENOENT):
            return False
        raise
    return True
