"""rtnetlink requests on a plain socket: pyroute2 encodes the message, the kernel's ack is all
that is read back.

pyroute2's `IPRoute` runs every call through its request pipeline (argument filters, its own
event loop, a full decode of every answer): a pod's ADD spent most of the agent's CPU there,
and the agent's CPU is what bounds a burst of ADDs on a node. The requests on that path (create
the veth pair, add addresses and routes, bring a link up, delete a link) need nothing back but
the kernel's yes or no, so they are built with pyroute2's message classes and sent here. Queries
that need an answer decoded (CHECK, clean-up paths) still use `IPRoute`.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr: length, type, flags, sequence, port id
_ERROR = struct.Struct("=i")  # struct nlmsgerr starts with the (negative) errno; 0 is an ack
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3  # what `ip route add` sets
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1
CREATE = NLM_F_CREATE | NLM_F_EXCL  # "add": fail with EEXIST rather than replace


class RouteSocket:
    """A NETLINK_ROUTE socket in the network namespace of the thread that made it.

    Not thread-safe (one request at a time); close it, or use it as a context manager.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._sequence = 0

    def __enter__(self) -> RouteSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def request(self, msg: Any, kind: int, flags: int = 0) -> None:
        """Send `msg` as a `kind` request and wait for the kernel's ack; NetlinkError if it says
        no (`code` is the errno, as pyroute2 raises it)."""
        self._sequence = self._sequence % 0xFFFFFFFF + 1
        header = msg["header"]
        header["type"] = kind
        header["flags"] = NLM_F_REQUEST | NLM_F_ACK | flags
        header["sequence_number"] = self._sequence
        header["pid"] = 0
        msg.encode()
        self._sock.send(msg.data)
        while True:  # answers to an earlier request that was interrupted are skipped
            data = self._sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, got, _, sequence, _ = _HEADER.unpack_from(data, offset)
                if got == NLMSG_ERROR and sequence == self._sequence:
                    (code,) = _ERROR.unpack_from(data, offset + _HEADER.size)
                    if code:
                        raise NetlinkError(-code)
                    return
                if length < _HEADER.size:
                    break
                offset += (length + 3) & ~3


def veth(*, name: str, mtu: int, peer_name: str, peer_mac: str, peer_netns_fd: int) -> Any:
    """A veth pair, this end up on the node, the peer (down) in the namespace of the fd."""
    peer = {"attrs": [("IFLA_IFNAME", peer_name), ("IFLA_MTU", mtu), ("IFLA_ADDRESS", peer_mac),
                      ("IFLA_NET_NS_FD", peer_netns_fd)]}
    msg = ifinfmsg()
    msg["flags"] = msg["change"] = IFF_UP
    msg["attrs"] = [("IFLA_IFNAME", name), ("IFLA_MTU", mtu), ("IFLA_LINKINFO", {"attrs": [
        ("IFLA_INFO_KIND", "veth"),
        ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]})]})]
    return msg


def link_up(index: int) -> Any:
    msg = ifinfmsg()
    msg["index"] = index
    msg["flags"] = msg["change"] = IFF_UP
    return msg


def link_named(name: str) -> Any:
    """A link by name (for RTM_DELLINK)."""
    msg = ifinfmsg()
    msg["attrs"] = [("IFLA_IFNAME", name)]
    return msg


def address(index: int, cidr: str) -> Any:
    """`ip address add CIDR dev INDEX`."""
    interface = ipaddress.ip_interface(cidr)
    msg = ifaddrmsg()
    msg["index"] = index
    msg["prefixlen"] = interface.network.prefixlen
    ip = str(interface.ip)
    if interface.version == 4:
        msg["family"] = socket.AF_INET
        msg["attrs"] = [("IFA_LOCAL", ip), ("IFA_ADDRESS", ip)]
    else:
        msg["family"] = socket.AF_INET6
        msg["attrs"] = [("IFA_ADDRESS", ip)]
    return msg


def route(index: int, dst: str, gateway: str | None) -> Any:
    """`ip route add DST [via GATEWAY] dev INDEX` in the main table."""
    network = ipaddress.ip_network(dst, strict=False)
    msg = rtmsg()
    msg["family"] = socket.AF_INET if network.version == 4 else socket.AF_INET6
    msg["dst_len"] = network.prefixlen
    msg["table"] = RT_TABLE_MAIN
    msg["proto"] = RTPROT_BOOT
    msg["scope"] = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
    msg["type"] = RTN_UNICAST
    attrs: list[tuple[str, object]] = [("RTA_OIF", index)]
    if network.prefixlen:
        attrs.append(("RTA_DST", str(network.network_address)))
    if gateway:
        attrs.append(("RTA_GATEWAY", gateway))
    msg["attrs"] = attrs
    return msg


__all__ = ["CREATE", "RTM_DELLINK", "RTM_NEWADDR", "RTM_NEWLINK", "RTM_NEWROUTE", "NetlinkError",
           "RouteSocket", "address", "link_named", "link_up", "route", "veth"]
