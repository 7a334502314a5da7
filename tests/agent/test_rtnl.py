"""Our rtnetlink encodings, byte for byte against pyroute2's, and one round trip to the kernel."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from ovnk_secondary.agent import rtnl


def pyroute2_body(msg: Any, kind: int) -> tuple[int, bytes]:
    msg["header"]["type"] = kind
    msg.encode()
    return kind, bytes(msg.data[16:])  # after struct nlmsghdr


def test_veth_pair() -> None:
    expected = ifinfmsg()
    expected["flags"] = expected["change"] = IFF_UP
    peer = {"attrs": [("IFLA_IFNAME", "net1"), ("IFLA_MTU", 1400),
                      ("IFLA_ADDRESS", "0a:58:0a:64:00:05"), ("IFLA_NET_NS_FD", 7)]}
    expected["attrs"] = [("IFLA_IFNAME", "ovk0123456789ab"), ("IFLA_MTU", 1400),
                         ("IFLA_LINKINFO", {"attrs": [
                             ("IFLA_INFO_KIND", "veth"),
                             ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]})]})]
    ours = rtnl.veth(name="ovk0123456789ab", mtu=1400, peer_name="net1",
                     peer_mac="0a:58:0a:64:00:05", peer_netns_fd=7)
    assert tuple(ours) == pyroute2_body(expected, RTM_NEWLINK)


def test_link_up_and_delete() -> None:
    up = ifinfmsg()
    up["index"] = 42
    up["flags"] = up["change"] = IFF_UP
    assert tuple(rtnl.link_up(42)) == pyroute2_body(up, RTM_NEWLINK)
    delete = ifinfmsg()
    delete["attrs"] = [("IFLA_IFNAME", "ovk0123456789ab")]
    assert tuple(rtnl.link_delete("ovk0123456789ab")) == pyroute2_body(delete, RTM_DELLINK)


@pytest.mark.parametrize(("cidr", "family", "attrs"), [
    ("10.100.0.5/24", socket.AF_INET, [("IFA_LOCAL", "10.100.0.5"), ("IFA_ADDRESS", "10.100.0.5")]),
    ("fd00::5/64", socket.AF_INET6, [("IFA_ADDRESS", "fd00::5")]),
])
def test_address(cidr: str, family: int, attrs: list[tuple[str, str]]) -> None:
    expected = ifaddrmsg()
    expected["family"] = family
    expected["prefixlen"] = int(cidr.rsplit("/", 1)[1])
    expected["index"] = 9
    expected["attrs"] = attrs
    assert tuple(rtnl.address(9, cidr)) == pyroute2_body(expected, RTM_NEWADDR)


@pytest.mark.parametrize(("dst", "gateway", "family", "attrs"), [
    ("10.200.0.0/16", "10.100.0.1", socket.AF_INET,
     [("RTA_DST", "10.200.0.0"), ("RTA_GATEWAY", "10.100.0.1")]),
    ("0.0.0.0/0", "10.100.0.1", socket.AF_INET, [("RTA_GATEWAY", "10.100.0.1")]),
    ("fd00:1::/64", None, socket.AF_INET6, [("RTA_DST", "fd00:1::")]),
])
def test_route(dst: str, gateway: str | None, family: int,
               attrs: list[tuple[str, str]]) -> None:
    expected = rtmsg()
    expected["family"] = family
    expected["dst_len"] = int(dst.rsplit("/", 1)[1])
    expected["table"] = 254
    expected["proto"] = 3  # boot, as `ip route add`
    expected["scope"] = 0 if gateway else 253  # universe via a gateway, else link
    expected["type"] = 1  # unicast
    expected["attrs"] = [("RTA_OIF", 9), *attrs]
    assert tuple(rtnl.route(9, dst, gateway)) == pyroute2_body(expected, RTM_NEWROUTE)


def test_the_kernel_acks_or_says_why() -> None:
    with rtnl.RouteSocket() as sock:
        with pytest.raises(NetlinkError) as missing:
            sock.request(rtnl.link_delete("ovk-no-such-if"))
        assert missing.value.code == errno.ENODEV
        sock.request(rtnl.link_up(socket.if_nametoindex("lo")))  # already up: a plain ack
