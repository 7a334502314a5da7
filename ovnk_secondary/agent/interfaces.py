"""Pod interfaces: the veth pair between a pod's network namespace and the node, over netlink.

The container side carries the name the runtime asked for (`CNI_IFNAME`), the annotated MAC,
IPs and routes, and the network's MTU. The host side gets a deterministic name of at most 15
characters (the kernel's limit) derived from the sandbox and the interface name, so DEL finds
it again without any stored state. Deleting the host side deletes the pair.

Everything goes through pyroute2 (netlink) rather than `ip` commands: no fork/exec per step.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import hashlib
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

HOST_PREFIX = "ovk"  # recognisable in `ip link` on the node
_LIBC = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
_SIOCETHTOOL = 0x8946
_ETHTOOL_STXCSUM = 0x17
T = TypeVar("T")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RouteSpec:
    dst: str  # CIDR; 0.0.0.0/0 or ::/0 for a default route
    gateway: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class PodInterface:
    """What the pod's side of the veth should look like."""

    netns: str
    ifname: str
    mac: str
    mtu: int
    addresses: Sequence[str] = ()  # CIDRs
    routes: Sequence[RouteSpec] = ()
    # False for OVS's userspace datapath: it reads veths with AF_PACKET and forwards the pod's
    # partial (offloaded) TCP/UDP checksums unfinished, so the receiver drops every segment.
    tx_checksum_offload: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class ObservedInterface:
    """The container side as found in the pod namespace (for CHECK)."""

    mac: str
    mtu: int
    addresses: frozenset[str]
    up: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostSide:
    """The node's end of a created pair."""

    name: str
    index: int
    mac: str


def host_ifname(*, container_id: str, ifname: str) -> str:
    """`ovk` + 12 hex digits of sha256(sandbox/ifname): 15 characters, stable, collision-safe."""
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return f"{HOST_PREFIX}{digest[:12]}"


def _ipr(netns: str) -> IPRoute:
    """A netlink socket in a pod's namespace (the namespace is never created when missing)."""
    return _in_netns(netns, lambda: IPRoute(groups=0))


_NODE = threading.local()


@contextlib.contextmanager
def _node() -> Iterator[IPRoute]:
    """This thread's netlink socket on the node, kept for the thread's life.

    A pyroute2 IPRoute is a socket plus its own event loop: making one per call cost about as
    much CPU as the call itself, and the agent's CPU bounds how fast a burst of ADDs goes.
    IPRoute is not thread-safe, hence one per (executor) thread. After an error other than the
    kernel's answer (NetlinkError) or a missing pod namespace, the socket's state is unknown: it
    is dropped, not reused.
    """
    ipr: IPRoute | None = getattr(_NODE, "ipr", None)
    if ipr is None:
        ipr = _NODE.ipr = IPRoute(groups=0)
    try:
        yield ipr
    except (NetlinkError, FileNotFoundError):
        raise
    except Exception:
        _NODE.ipr = None
        ipr.close()
        raise


def _in_netns(netns: str, make: Callable[[], T]) -> T:
    """Call `make` (a socket factory) inside the namespace `netns`, on this thread only.

    pyroute2's own netns support forks a child per socket: slow, unsafe next to the agent's
    threads, and the child's signals reach the parent's event loop. A socket stays in the
    namespace it was created in, so enter the namespace, create it, and come back.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)  # FileNotFoundError when gone
        try:
            _setns(target)
            try:
                return make()
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


def _disable_tx_checksum(netns: str, ifname: str) -> None:
    """`ethtool -K <ifname> tx off` in the pod's namespace (SIOCETHTOOL, ETHTOOL_STXCSUM)."""
    value = ctypes.create_string_buffer(struct.pack("II", _ETHTOOL_STXCSUM, 0))
    request = struct.pack("16sP", ifname.encode(), ctypes.addressof(value))
    with _in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as sock:
        fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, request)


def _setns(fd: int) -> None:
    if _LIBC.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


def create(spec: PodInterface, *, host_name: str) -> HostSide:
    """Create the veth pair and configure the pod side; returns the host side.

    Both ends are born with their final names, MTU and (pod side) MAC, the pod side directly in
    the pod's namespace: few netlink round trips, nothing half-named on the node. A pair left
    by an earlier attempt (a retried ADD) is replaced.
    """
    with _node() as host:
        with _opened(spec.netns) as netns_fd:
            peer = {"ifname": spec.ifname, "net_ns_fd": netns_fd, "mtu": spec.mtu,
                    "address": spec.mac}
            try:
                host.link("add", ifname=host_name, kind="veth", mtu=spec.mtu, state="up",
                          peer=peer)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
                _delete_link(host, host_name)
                with _ipr(spec.netns) as pod:
                    _delete_veth(pod, spec.ifname)
                host.link("add", ifname=host_name, kind="veth", mtu=spec.mtu, state="up",
                          peer=peer)
        try:
            with _ipr(spec.netns) as pod:
                index = pod.link("get", ifname=spec.ifname)[0]["index"]
                for cidr in spec.addresses:
                    address = ipaddress.ip_interface(cidr)
                    pod.addr("add", index=index, address=str(address.ip),
                             prefixlen=address.network.prefixlen)
                if not spec.tx_checksum_offload:
                    _disable_tx_checksum(spec.netns, spec.ifname)
                pod.link("set", index=index, state="up")
                for route in spec.routes:
                    _add_route(pod, route, index=index)
            link = host.link("get", ifname=host_name)[0]
        except BaseException:
            _delete_link(host, host_name)
            raise
    return HostSide(name=host_name, index=int(link["index"]), mac=str(link.get("IFLA_ADDRESS")))


def _delete_veth(ipr: IPRoute, name: str) -> bool:
    """Delete `name` if it is a veth (never the runtime's own interfaces)."""
    try:
        link = ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "veth":
        return False
    return _delete_link(ipr, name)


@contextlib.contextmanager
def _opened(path: str) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _add_route(pod: IPRoute, route: RouteSpec, *, index: int) -> None:
    network = ipaddress.ip_network(route.dst, strict=False)
    kwargs: dict[str, object] = {"dst": str(network.network_address),
                                 "dst_len": network.prefixlen, "oif": index}
    if network.version == 6:
        kwargs["family"] = 10  # AF_INET6
    if route.gateway:
        kwargs["gateway"] = route.gateway
    try:
        pod.route("add", **kwargs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def _delete_link(ipr: IPRoute, name: str) -> bool:
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    return True


def delete(*, host_name: str, netns: str = "", ifname: str = "") -> bool:
    """Delete the pair (idempotent; also when the namespace is gone). True if anything went."""
    with _node() as host:
        deleted = _delete_link(host, host_name)
    if not deleted and netns and ifname:
        # The host side can be missing while the pod side survives only in odd cases (a
        # half-done ADD); the veth kind check keeps us off the runtime's own interfaces.
        try:
            with _ipr(netns) as pod:
                deleted = _delete_veth(pod, ifname)
        except (FileNotFoundError, OSError):
            pass
    return deleted


def host_index(name: str) -> int | None:
    """The ifindex of a host interface, None when it does not exist."""
    with _node() as host:
        found = host.link_lookup(ifname=name)
    return found[0] if found else None


def host_links() -> set[str]:
    with _node() as host:
        return {link.get("IFLA_IFNAME") for link in host.get_links()}


def observe(*, netns: str, ifname: str) -> ObservedInterface | None:
    """The container side as it is now; None when the namespace or interface is missing."""
    try:
        with _ipr(netns) as pod:
            links = pod.link_lookup(ifname=ifname)
            if not links:
                return None
            link = pod.get_links(links[0])[0]
            addresses = frozenset(
                f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in pod.get_addr(index=links[0]) if a.get("IFA_ADDRESS"))
    except (FileNotFoundError, OSError):
        return None
    return ObservedInterface(mac=str(link.get("IFLA_ADDRESS")), mtu=int(link.get("IFLA_MTU")),
                             addresses=addresses, up=link.get("state") == "up")
