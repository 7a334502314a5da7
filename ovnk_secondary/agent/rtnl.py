"""The rtnetlink requests of a pod's ADD and DEL, encoded here and sent on a plain socket.

pyroute2's `IPRoute` runs every call through its request pipeline (argument filters, its own
event loop, a full decode of every answer), and even its message classes take a few hundred
microseconds to encode one request: in a burst of ADDs that was most of the node agent's CPU,
and the agent's CPU bounds how fast a node starts pods. The requests here (create the veth pair,
add addresses and routes, bring a link up, delete a link) have fixed layouts from
`linux/rtnetlink.h` and `linux/if_link.h` and need nothing back but the kernel's ack, so they
are packed with `struct`; `tests/agent/test_rtnl.py` checks every one byte for byte against
pyroute2's encoding of the same message. Queries whose answers need decoding (CHECK, clean-up
of a half-done ADD) still go through pyroute2's `IPRoute`, and errors are pyroute2's
`NetlinkError`, as `IPRoute` raises them.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import NamedTuple

from pyroute2.netlink.exceptions import NetlinkError

# linux/netlink.h
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
CREATE = NLM_F_CREATE | NLM_F_EXCL  # "add": EEXIST rather than replace
NLMSG_ERROR = 2
# linux/rtnetlink.h
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3  # what `ip route add` sets
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTN_UNICAST = 1
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
# linux/if_link.h, linux/veth.h, linux/if_addr.h
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFF_UP = 0x1

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_NLMSGERR = struct.Struct("=i")  # the negative errno; 0 is an ack
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope,
#                                       type, flags
_NLATTR = struct.Struct("=HH")  # length, type
_U32 = struct.Struct("=I")


class Request(NamedTuple):
    """One request: its message type and its body (the part after the netlink header)."""

    kind: int
    body: bytes


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

    def request(self, request: Request, flags: int = 0) -> None:
        """Send the request and wait for the kernel's ack; NetlinkError (with the errno as its
        `code`) when the kernel says no."""
        self._sequence = self._sequence % 0xFFFFFFFF + 1
        self._sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(request.body), request.kind,
                                       NLM_F_REQUEST | NLM_F_ACK | flags, self._sequence, 0)
                        + request.body)
        while True:  # answers to an earlier, interrupted request are skipped
            data = self._sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _, sequence, _ = _NLMSGHDR.unpack_from(data, offset)
                if kind == NLMSG_ERROR and sequence == self._sequence:
                    (code,) = _NLMSGERR.unpack_from(data, offset + _NLMSGHDR.size)
                    if code:
                        raise NetlinkError(-code)
                    return
                if length < _NLMSGHDR.size:
                    break
                offset += (length + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    length = _NLATTR.size + len(payload)
    return _NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _name(value: str) -> bytes:
    return value.encode() + b"\0"


def veth(*, name: str, mtu: int, peer_name: str, peer_mac: str, peer_netns_fd: int) -> Request:
    """A veth pair: this end on the node and up, the peer (down) in the fd's namespace."""
    mtu_attr = _attr(IFLA_MTU, _U32.pack(mtu))
    peer = (_IFINFOMSG.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(peer_name)) + mtu_attr
            + _attr(IFLA_ADDRESS, bytes.fromhex(peer_mac.replace(":", "")))
            + _attr(IFLA_NET_NS_FD, _U32.pack(peer_netns_fd)))
    info = (_attr(IFLA_INFO_KIND, _name("veth"))
            + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer)))
    return Request(RTM_NEWLINK, _IFINFOMSG.pack(0, 0, 0, IFF_UP, IFF_UP)
                   + _attr(IFLA_IFNAME, _name(name)) + mtu_attr + _attr(IFLA_LINKINFO, info))


def link_up(index: int) -> Request:
    """`ip link set INDEX up`."""
    return Request(RTM_NEWLINK, _IFINFOMSG.pack(0, 0, index, IFF_UP, IFF_UP))


def link_delete(name: str) -> Request:
    """`ip link del NAME`."""
    return Request(RTM_DELLINK, _IFINFOMSG.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(name)))


def address(index: int, cidr: str) -> Request:
    """`ip address add CIDR dev INDEX`."""
    interface = ipaddress.ip_interface(cidr)
    packed = interface.ip.packed
    if interface.version == 4:
        family, attrs = socket.AF_INET, _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
    else:
        family, attrs = socket.AF_INET6, _attr(IFA_ADDRESS, packed)
    return Request(RTM_NEWADDR,
                   _IFADDRMSG.pack(family, interface.network.prefixlen, 0, 0, index) + attrs)


def route(index: int, dst: str, gateway: str | None) -> Request:
    """`ip route add DST [via GATEWAY] dev INDEX` in the main table."""
    network = ipaddress.ip_network(dst, strict=False)
    family = socket.AF_INET if network.version == 4 else socket.AF_INET6
    scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
    body = (_RTMSG.pack(family, network.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope,
                        RTN_UNICAST, 0) + _attr(RTA_OIF, _U32.pack(index)))
    if network.prefixlen:
        body += _attr(RTA_DST, network.network_address.packed)
    if gateway:
        body += _attr(RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
    return Request(RTM_NEWROUTE, body)
