"""Pod interfaces: the veth pair between a pod's network namespace and the node, over netlink.

The container side carries the name the runtime asked for (`CNI_IFNAME`), the annotated MAC,
IPs and routes, and the network's MTU. The host side gets a deterministic name of at most 15
characters (the kernel's limit) derived from the sandbox and the interface name, so DEL finds
it again without any stored state. Deleting the host side deletes the pair; nothing here ever
deletes an interface by its pod-side name, which may belong to another plugin. A name that is
already taken is reported (`InterfaceExists`), and replaced only when the caller has found it
to be this attachment's own pair (a retried ADD).

Everything goes through netlink and ioctls rather than `ip` commands: no fork/exec per step.
The requests of ADD and DEL go through `rtnl` (packed here, only the kernel's ack read back);
queries that need an answer decoded (CHECK, what holds a taken name) use pyroute2's IPRoute.
MTUs are read and set by ioctl.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import hashlib
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ovnk_secondary.agent import rtnl

HOST_PREFIX = "ovk"  # recognisable in `ip link` on the node
_LIBC = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
_SIOCETHTOOL = 0x8946
_SIOCGIFINDEX = 0x8933
_SIOCGIFHWADDR = 0x8927
_SIOCGIFMTU, _SIOCSIFMTU = 0x8921, 0x8922
_IFREQ_INT = struct.Struct("16si")  # struct ifreq: name, ifr_ifindex or ifr_mtu
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
    # False: the pod side is left down, with its addresses and without routes (the kernel
    # takes no route through a down link), for whoever takes the interface over to bring up
    # (see `attachments.desired_interface`)
    up: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class ObservedInterface:
    """The container side as found in the pod namespace (for CHECK)."""

    mac: str
    mtu: int
    addresses: frozenset[str]
    up: bool


class InterfaceExists(Exception):
    """A name of the pair is taken: the host side's on the node, or `CNI_IFNAME` in the pod.

    `host_side`: the host side's name exists on the node. `pod_side`: the kind (`veth`,
    `macvlan`, ...; "" for none, e.g. a physical NIC) of the pod namespace's interface of that
    name, None when there is none.
    """

    def __init__(self, *, host_side: bool, pod_side: str | None) -> None:
        super().__init__(f"host side exists: {host_side}, pod side: {pod_side}")
        self.host_side = host_side
        self.pod_side = pod_side


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
    """pyroute2's IPRoute in a pod's namespace, for queries (the namespace is never created)."""
    return in_netns(netns, lambda: IPRoute(groups=0))


_NODE = threading.local()


@contextlib.contextmanager
def _node() -> Iterator[rtnl.RouteSocket]:
    """This thread's rtnetlink socket on the node, kept for the thread's life.

    One per (executor) thread: a socket serves one request at a time. After an error other
    than the kernel's answer (NetlinkError) or a missing pod namespace, the socket's state is
    unknown: it is dropped, not reused.
    """
    sock: rtnl.RouteSocket | None = getattr(_NODE, "sock", None)
    if sock is None:
        sock = _NODE.sock = rtnl.RouteSocket()
    try:
        yield sock
    except (NetlinkError, FileNotFoundError):
        raise
    except Exception:
        _NODE.sock = None
        sock.close()
        raise


class _PodSide(contextlib.AbstractContextManager["_PodSide"]):
    """Sockets inside a pod's namespace: rtnetlink for requests, an inet one for ioctls.

    Made in one visit to the namespace (see `in_netns`); both stay in it after the thread
    has come back.
    """

    def __init__(self, netns: str) -> None:
        self.rtnl, self.inet = in_netns(netns, lambda: (
            rtnl.RouteSocket(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)))

    def __exit__(self, *exc: object) -> None:
        self.rtnl.close()
        self.inet.close()

    def index(self, ifname: str) -> int:
        return _index(self.inet, ifname)

    def disable_tx_checksum(self, ifname: str) -> None:
        """`ethtool -K <ifname> tx off` (SIOCETHTOOL, ETHTOOL_STXCSUM)."""
        value = ctypes.create_string_buffer(struct.pack("II", _ETHTOOL_STXCSUM, 0))
        request = struct.pack("16sP", ifname.encode(), ctypes.addressof(value))
        fcntl.ioctl(self.inet.fileno(), _SIOCETHTOOL, request)


def in_netns(netns: str, make: Callable[[], T]) -> T:
    """Call `make` (a socket factory) inside the namespace `netns` (a path), on this thread only.

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


def _setns(fd: int) -> None:
    if _LIBC.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


def create(spec: PodInterface, *, host_name: str, replace: bool = False) -> HostSide:
    """Create the veth pair and configure the pod side; returns the host side.

    Both ends are born with their final names, MTU and (pod side) MAC, the pod side directly in
    the pod's namespace: few netlink round trips, nothing half-named on the node. When a name is
    taken, InterfaceExists; with `replace`, a pair with this host side name is deleted first
    (its pod end goes with it) and only what is still in the way then is reported.
    """
    if not _create_pair(spec, host_name=host_name, replace=replace):
        raise InterfaceExists(host_side=host_index(host_name) is not None,
                              pod_side=_kind(spec.netns, spec.ifname))
    try:
        with _PodSide(spec.netns) as pod:
            index = pod.index(spec.ifname)
            for cidr in spec.addresses:
                pod.rtnl.request(rtnl.address(index, cidr), rtnl.CREATE)
            if not spec.tx_checksum_offload:
                pod.disable_tx_checksum(spec.ifname)
            if spec.up:
                pod.rtnl.request(rtnl.link_up(index))
                for route in spec.routes:
                    _add_route(pod.rtnl, route, index=index)
        return _host_side(host_name)
    except BaseException:
        with _node() as node:
            _delete_link(node, host_name)
        raise


def _create_pair(spec: PodInterface, *, host_name: str, replace: bool) -> bool:
    """The veth pair in one request; False when a name is taken (see `create`)."""
    with _node() as node, _opened(spec.netns) as netns_fd:
        pair = rtnl.veth(name=host_name, mtu=spec.mtu, peer_name=spec.ifname, peer_mac=spec.mac,
                         peer_netns_fd=netns_fd)
        if _created(node, pair):
            return True
        # without a pair of this host side in the way, the pod side's name is somebody else's
        return replace and _delete_link(node, host_name) and _created(node, pair)


def _created(node: rtnl.RouteSocket, request: rtnl.Request) -> bool:
    """Send a create request; False when the kernel says EEXIST."""
    try:
        node.request(request, rtnl.CREATE)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise
        return False
    return True


def _kind(netns: str, ifname: str) -> str | None:
    """The kind of `ifname` in `netns` ("" for none), None when it does not exist."""
    try:
        with _ipr(netns) as pod:
            link = pod.link("get", ifname=ifname)[0]
    except NetlinkError as exc:
        if _gone(exc):
            return None
        raise
    return str(link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "")


def _index(sock: socket.socket, ifname: str) -> int:
    """SIOCGIFINDEX in the socket's namespace (no netlink dump to decode); ENODEV if missing."""
    answer = fcntl.ioctl(sock.fileno(), _SIOCGIFINDEX, _IFREQ_INT.pack(ifname.encode(), 0))
    return int(_IFREQ_INT.unpack(answer)[1])


def _host_side(name: str) -> HostSide:
    """Index and MAC of a node interface, by ioctl."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        answer = fcntl.ioctl(sock.fileno(), _SIOCGIFHWADDR, struct.pack("256s", name.encode()))
        index = _index(sock, name)
    mac = ":".join(f"{octet:02x}" for octet in answer[18:24])  # ifr_hwaddr.sa_data
    return HostSide(name=name, index=index, mac=mac)


@contextlib.contextmanager
def _opened(path: str) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _add_route(pod: rtnl.RouteSocket, route: RouteSpec, *, index: int) -> None:
    try:
        pod.request(rtnl.route(index, route.dst, route.gateway), rtnl.CREATE)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def _delete_link(node: rtnl.RouteSocket, name: str) -> bool:
    try:
        node.request(rtnl.link_delete(name))
    except NetlinkError as exc:
        if _gone(exc):
            return False
        raise
    return True


def _gone(exc: NetlinkError) -> bool:
    """The kernel's answer for a link that does not exist (any more)."""
    return exc.code in (errno.ENODEV, errno.ENOENT)


def delete(*, host_name: str) -> bool:
    """Delete the pair by its host side (idempotent; the pod side goes with it, also when its
    namespace is gone). True if it existed."""
    with _node() as host:
        return _delete_link(host, host_name)


def mtus(*, host_name: str, netns: str, ifname: str) -> tuple[int | None, int | None]:
    """(host side, pod side) MTU of a pair; None for a side that is missing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        host = _mtu(sock, host_name)
    try:
        pod_socket = in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    except FileNotFoundError:
        return host, None
    with pod_socket:
        return host, _mtu(pod_socket, ifname)


def set_mtu(*, host_name: str, netns: str, ifname: str, mtu: int) -> None:
    """Set both ends of a pair to `mtu` (SIOCSIFMTU); OSError (ENODEV, ENOENT) when gone."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), _SIOCSIFMTU, _IFREQ_INT.pack(host_name.encode(), mtu))
    with in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as sock:
        fcntl.ioctl(sock.fileno(), _SIOCSIFMTU, _IFREQ_INT.pack(ifname.encode(), mtu))


def _mtu(sock: socket.socket, ifname: str) -> int | None:
    """SIOCGIFMTU in the socket's namespace; None when the interface does not exist."""
    try:
        answer = fcntl.ioctl(sock.fileno(), _SIOCGIFMTU, _IFREQ_INT.pack(ifname.encode(), 0))
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            return None
        raise
    return int(_IFREQ_INT.unpack(answer)[1])


def host_index(name: str) -> int | None:
    """The ifindex of a host interface, None when it does not exist."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            return _index(sock, name)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise


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
