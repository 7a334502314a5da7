"""Pod attachments: what ADD, DEL and CHECK do to connect one pod interface to OVN.

ADD: refuse a localnet NAD whose physical network the node does not map, wait for the pod's
`k8s.ovn.org/pod-networks` entry of the NAD, build the veth pair with the annotated
MAC/IPs/routes and the NAD's MTU (down on a KubeVirt VM's own port: `desired_interface`), plug
the host side into br-int with OVN-K's external_ids, wait for `ovn-installed`; on any failure
undo what it made. DEL removes the port and the veth and succeeds when they are already gone.
CHECK reports every difference.

No two attachments ever merge. An attachment is (sandbox, CNI_IFNAME, NAD); the names derived
from it (the host side `ovk...`, the logical switch port as iface-id) can be shared by a
misconfigured pod (Multus giving two NADs the same CNI_IFNAME, a NAD selected twice, two NADs
whose names map to one port name). An ADD whose names are held by another attachment, or by an
interface this plugin did not create, fails with INTERFACE_IN_USE and leaves the holder as it
is; a retried ADD of the same attachment replaces its own pair. A DEL removes only the ports of
its own NAD (Multus sends one for the NAD whose ADD failed, under the same names).

At start-up, `reconcile` looks at the ports a previous run plugged: ports of pods that no longer
exist (or whose sandbox is gone) are removed, and a host interface re-created under the same
name is re-plugged, because OVS keeps a stale handle otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from typing import Any, TypeVar

from pyroute2.netlink.exceptions import NetlinkError

from ovnk_secondary import errors, nads, naming, podnetworks
from ovnk_secondary.agent import bridgemappings, interfaces, metrics, mtus, ovs, pods
from ovnk_secondary.cni import protocol, results

LOG = logging.getLogger(__name__)
T = TypeVar("T")
# Building interfaces is CPU-bound Python (netlink messages) under one GIL: a few at a time,
# first come first served, so that a burst of pods finishes one by one instead of all at the
# end (and each ADD's own time stays short).
PLUMBING_CONCURRENCY = 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    node_name: str
    annotation_timeout: float = 120.0
    binding_timeout: float = 60.0
    tx_checksum_offload: bool = True  # off for the userspace datapath (see interfaces)


def network_config(config: Mapping[str, Any]) -> nads.NetworkConfig:
    """The NAD config from stdin as a network; refused (code 7) when invalid or not ours."""
    try:
        network = nads.parse_config(config)
    except errors.InvalidConfig as exc:
        raise protocol.CniError(protocol.INVALID_CONFIG, str(exc),
                                "fix the NetworkAttachmentDefinition's spec.config") from None
    if network is None:
        raise protocol.CniError(protocol.INVALID_CONFIG,
                                f"network config of type {config.get('type')!r} is not "
                                f"{nads.CNI_TYPE}", "this plugin serves only its own NADs")
    return network


def declared_nad(config: Mapping[str, Any]) -> str:
    """The NAD a request is for (its `netAttachDefName`), read leniently for DEL: "" when the
    config does not say (then DEL goes by the host side's name and the sandbox alone)."""
    try:
        return network_config(config).nad_key
    except protocol.CniError:
        value = config.get("netAttachDefName")
        plugins = config.get("plugins")
        if value is None and isinstance(plugins, list) and plugins and isinstance(
                plugins[0], Mapping):
            value = plugins[0].get("netAttachDefName")
        return value if isinstance(value, str) else ""


def unmapped_network_error(network: nads.NetworkConfig, *, mappings: str,
                           node_name: str) -> protocol.CniError | None:
    """The error for a localnet NAD whose physical network is not in the node's
    `ovn-bridge-mappings` (`mappings`, the Open_vSwitch row's value): OVN would leave its
    localnet port unconnected and the pod without traffic. None when mapped, or not localnet."""
    if network.topology != naming.LOCALNET:
        return None
    physnet = network.physical_network
    if bridgemappings.parse_value(mappings).get(physnet):
        return None
    return protocol.CniError(
        protocol.UNMAPPED_PHYSICAL_NETWORK,
        f"physical network {physnet} of NAD {network.nad_key} is not mapped on node {node_name} "
        f"(ovn-bridge-mappings: {mappings or 'none'}); add it to the bridge-mappings file of "
        f"the node agent (physicalNetworkName: {physnet}, with the bridge that reaches it)",
        "or set the NAD's physicalNetworkName to a network mapped on every node its pods run "
        "on; the agent re-reads the file every 5 s and the runtime retries the ADD")


IN_USE_DETAILS = ("each network of a pod needs its own interface name (the \"interface\" of its "
                  "network selection element; Multus numbers net1, net2, ... when none is given), "
                  "and a pod attaches to a NAD once")


def not_created_here(*, request: protocol.Request, network: nads.NetworkConfig,
                     taken: interfaces.InterfaceExists) -> str:
    """The message for a CNI_IFNAME that some other plugin (or the runtime) made."""
    kind = f"a {taken.pod_side} interface" if taken.pod_side else "an interface"
    return (f"interface {request.ifname} already exists in {request.netns} ({kind}) and was not "
            f"created by ovn-k8s-cni-overlay for NAD {network.nad_key} of pod "
            f"{request.pod_namespace}/{request.pod_name}; it is left alone")


def occupant(*, request: protocol.Request, network: nads.NetworkConfig,
             taken: interfaces.InterfaceExists, holders: Sequence[ovs.PortState]) -> str | None:
    """Why the names an ADD found taken are not its own (a message for the runtime), or None:
    they are this attachment's own pair (a retried ADD), which the ADD replaces.

    `holders`: the OVS interfaces named like the host side, or recorded with CNI_IFNAME in this
    namespace as their pod side. Without any record, only a pair of the host side's name can be
    this attachment's (a veth pair's two ends live and die together).
    """
    for holder in holders:
        if ovs.relation(holder.external_ids, nad_key=network.nad_key,
                        sandbox=request.container_id, ifname=request.ifname) != ovs.SAME:
            return (f"interface {request.ifname} of pod {request.pod_namespace}/"
                    f"{request.pod_name} for NAD {network.nad_key} is taken: it is already "
                    f"{ovs.describe(holder.name, holder.external_ids)}; it is left alone")
    if holders or taken.host_side:
        return None
    return not_created_here(request=request, network=network, taken=taken)


def desired_interface(*, request: protocol.Request, network: nads.NetworkConfig,
                      pod_network: podnetworks.PodNetwork,
                      tx_checksum_offload: bool = True) -> interfaces.PodInterface:
    """The pod side of the veth: annotation values, NAD MTU, gateways as default routes.

    An entry on a KubeVirt VM's own port (`logical_switch_port`: the multi-chassis strategy,
    `migration`) is handed over **down**, with its addresses and without routes. The pod's
    kernel holds the VM's MAC and IPs there, and while the VM's guest runs on the other node
    it must neither answer for the VM nor be reached (a TCP reset to the VM's peers): the
    port's OVN binding on this node only blocks traffic until the guest's RARP, and has let
    some through (`migration`). KubeVirt's bridge binding brings the link up itself once it
    has moved the addresses away (`pkg/network/setup/netpod/netpod.go`, bridgeBindingSpec:
    the pod interface `State: up`, IPv4 and IPv6 disabled, enslaved to the in-pod bridge).
    The binding reads the addresses to hand them to the guest by DHCP; routes go with the
    link (the kernel takes none through a down link), so such a NIC's guest gets its routes
    from its own configuration, not from `default-route`.
    """
    up = pod_network.logical_switch_port is None
    routes = [interfaces.RouteSpec(dst=r.dest, gateway=r.next_hop or None)
              for r in pod_network.routes]
    for gateway in pod_network.gateway_ips:
        default = "0.0.0.0/0" if ipaddress.ip_address(gateway).version == 4 else "::/0"
        routes.append(interfaces.RouteSpec(dst=default, gateway=gateway))
    return interfaces.PodInterface(
        netns=request.netns, ifname=request.ifname, mac=pod_network.mac_address,
        mtu=network.mtu or nads.DEFAULT_MTU, addresses=pod_network.ip_addresses or (),
        routes=tuple(routes) if up else (), tx_checksum_offload=tx_checksum_offload, up=up)


def port_external_ids(*, request: protocol.Request, network: nads.NetworkConfig,
                      port_name: str, mac: str, ifindex: int) -> dict[str, str]:
    """OVN-K's keys on the OVS Interface (conventions section 4) plus ours for restarts."""
    return {
        ovs.IFACE_ID: port_name,
        ovs.IFACE_ID_VER: request.pod_uid,
        ovs.ATTACHED_MAC: mac,
        ovs.SANDBOX: request.container_id,
        naming.NAD_KEY: network.nad_key,
        naming.NETWORK_KEY: network.name,
        naming.OWNER_KEY: naming.OWNER_VALUE,
        ovs.POD_KEY: f"{request.pod_namespace}/{request.pod_name}",
        ovs.NETNS_KEY: request.netns,
        ovs.IFNAME_KEY: request.ifname,
        ovs.IFINDEX_KEY: str(ifindex),
    }


def cni_result(*, spec: interfaces.PodInterface, host_name: str, host_mac: str,
               pod_network: podnetworks.PodNetwork) -> results.Result:
    """As OVN-K answers: host interface first, container interface (index 1) with the IPs."""
    ips = []
    for cidr in spec.addresses:
        version = ipaddress.ip_interface(cidr).version
        gateway = next((g for g in pod_network.gateway_ips
                        if ipaddress.ip_address(g).version == version), None)
        ips.append(results.IPConfig(address=cidr, interface=1, gateway=gateway))
    return results.Result(
        interfaces=(results.Interface(name=host_name, mac=host_mac),
                    results.Interface(name=spec.ifname, mac=spec.mac, sandbox=spec.netns,
                                       mtu=spec.mtu)),
        ips=tuple(ips),
        routes=tuple(results.Route(dst=r.dst, gw=r.gateway) for r in spec.routes))


def check_problems(*, spec: interfaces.PodInterface,
                   observed: interfaces.ObservedInterface | None,
                   port: ovs.PortState | None, port_name: str) -> list[str]:
    """Everything CHECK finds wrong, each phrased so that the reader knows what is missing."""
    problems = []
    if observed is None:
        problems.append(f"interface {spec.ifname} is missing in {spec.netns}")
    else:
        if observed.mac.lower() != spec.mac.lower():
            problems.append(f"{spec.ifname} has MAC {observed.mac}, expected {spec.mac}")
        if observed.mtu != spec.mtu:
            problems.append(f"{spec.ifname} has MTU {observed.mtu}, expected {spec.mtu}")
        missing = [a for a in spec.addresses if a not in observed.addresses]
        if missing:
            problems.append(f"{spec.ifname} lacks address(es) {', '.join(missing)}")
        if spec.up and not observed.up:  # else whoever took it over decides
            problems.append(f"{spec.ifname} is down")
    if port is None:
        problems.append(f"no OVS interface carries iface-id {port_name} on br-int")
    elif not port.installed:
        problems.append(f"OVS interface {port.name} (iface-id {port_name}) is not bound: "
                        "ovn-controller has not set ovn-installed")
    return problems


class Attachments:
    """Serves CNI requests (the server serialises requests per pod interface)."""

    def __init__(self, *, settings: Settings, switch: ovs.LocalOvs, reader: pods.PodReader,
                 executor: futures.Executor, keeper: mtus.MtuKeeper | None = None) -> None:
        self.settings = settings
        self.switch = switch
        self.reader = reader
        self.keeper = keeper  # applies NAD mtu edits to plugged interfaces
        self._executor = executor
        self._plumbing = asyncio.Semaphore(PLUMBING_CONCURRENCY)

    async def _run(self, func: Callable[..., T], /, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: func(**kwargs))

    async def handle(self, request: protocol.Request) -> dict[str, Any] | None:
        if request.command == "ADD":
            result = await self.add(request)
            return results.shape_result(result, request.cni_version)
        if request.command == "DEL":
            await self.delete(request)
            return None
        if request.command == "CHECK":
            await self.check(request)
            return None
        raise protocol.CniError(protocol.INVALID_ENVIRONMENT,
                                f"CNI_COMMAND {request.command} is not served by the agent")

    async def add(self, request: protocol.Request) -> results.Result:
        start = time.monotonic()
        timings: dict[str, float] = {}  # for the log line
        network = network_config(request.config)
        if network.topology == naming.LOCALNET:  # before anything is made or waited for
            unmapped = unmapped_network_error(
                network, mappings=await self._run(bridgemappings.read, switch=self.switch),
                node_name=self.settings.node_name)
            if unmapped is not None:
                raise unmapped
        try:
            pod_network = await self.reader.wait_for_network(
                namespace=request.pod_namespace, name=request.pod_name, uid=request.pod_uid,
                nad_key=network.nad_key, timeout=self.settings.annotation_timeout)
        except errors.InvalidConfig as exc:
            raise protocol.CniError(protocol.INVALID_CONFIG, str(exc)) from None
        except errors.Unavailable as exc:
            raise protocol.CniError(protocol.TRY_AGAIN_LATER, str(exc)) from None
        except errors.OvnkSecondaryError as exc:  # the pod was re-created, or is going
            raise protocol.CniError(protocol.UNKNOWN_CONTAINER, str(exc)) from None
        if pod_network is None:
            raise protocol.CniError(
                protocol.ANNOTATION_TIMEOUT,
                f"timed out after {self.settings.annotation_timeout:.0f} s waiting for "
                f"annotation {pods.ANNOTATION} entry {network.nad_key} on pod "
                f"{request.pod_namespace}/{request.pod_name}",
                "the controller says on the pod why it has not allocated this network "
                "(Warning Events: NetworkConflict, AddressInUse, IPAMFailed, InvalidConfig, "
                "NetworkNotFound); without such an Event, check that the ovnk-secondary "
                "controller runs")
        annotated = time.monotonic()
        timings["annotation"] = annotated - start
        port_name = podnetworks.port_name(network.nad_key, request.pod_namespace,
                                          request.pod_name, pod_network)
        host_name = interfaces.host_ifname(container_id=request.container_id,
                                           ifname=request.ifname)
        spec = desired_interface(request=request, network=network, pod_network=pod_network,
                                 tx_checksum_offload=self.settings.tx_checksum_offload)
        created: interfaces.HostSide | None = None
        try:
            async with self._plumbing:
                created = await self._run(self._create, request=request, network=network,
                                          spec=spec, host_name=host_name)
            # outside the limit: plugs waiting together are committed together (`ovs`)
            plugged = await self._run(self.switch.plug, name=host_name,
                                      external_ids=port_external_ids(
                                          request=request, network=network, port_name=port_name,
                                          mac=pod_network.mac_address, ifindex=created.index))
        except protocol.CniError:  # the names are somebody else's: nothing was made
            raise
        except FileNotFoundError:
            if created is not None:
                await self._undo(network, host_name)
            raise protocol.CniError(protocol.UNKNOWN_CONTAINER,
                                    f"network namespace {request.netns} does not exist",
                                    "the sandbox is gone; the runtime will retry") from None
        except ovs.PortInUse as exc:
            await self._undo(network, host_name)
            raise protocol.CniError(protocol.INTERFACE_IN_USE,
                                    f"cannot plug {request.ifname} of pod "
                                    f"{request.pod_namespace}/{request.pod_name} for NAD "
                                    f"{network.nad_key}: {exc}; it is left alone",
                                    IN_USE_DETAILS) from None
        except Exception as exc:  # netlink, OVSDB (also its timeouts): never leave half a pod
            if created is not None:
                await self._undo(network, host_name)
            raise protocol.CniError(protocol.AGENT_FAILURE,
                                    f"cannot plug {request.ifname} of pod "
                                    f"{request.pod_namespace}/{request.pod_name}: {exc}") from None
        if plugged.removed or plugged.unbound:
            LOG.info("ADD %s/%s %s: replaced the port(s) of older sandboxes %s; took iface-id %s "
                     "from interface(s) not plugged by the agent: %s", request.pod_namespace,
                     request.pod_name, request.ifname, ", ".join(plugged.removed) or "none",
                     port_name, ", ".join(plugged.unbound) or "none")
        plumbed = time.monotonic()
        timings["plumbing"] = plumbed - annotated
        installed = await self.switch.wait_installed(host_name,
                                                     timeout=self.settings.binding_timeout)
        timings["binding"] = time.monotonic() - plumbed
        metrics.ovn_installed_wait(installed=installed, seconds=timings["binding"])
        if not installed:
            await self._undo(network, host_name)
            raise protocol.CniError(
                protocol.BINDING_TIMEOUT,
                f"timed out waiting for OVS port binding (ovn-installed) of logical switch port "
                f"{port_name} on node {self.settings.node_name} after "
                f"{self.settings.binding_timeout:.0f} s",
                "check that the port exists in the OVN northbound DB with requested-chassis of "
                "this node and that ovn-controller runs here (ovn-appctl -t ovn-controller "
                "connection-status)")
        if self.keeper is not None:  # the NAD's mtu may have been edited since Multus read it
            self.keeper.plugged(nad_key=network.nad_key, mtu=spec.mtu)
        LOG.info("ADD %s/%s %s: port %s on %s (annotation %.3f s, plumbing %.3f s, binding "
                 "%.3f s)", request.pod_namespace, request.pod_name, request.ifname, port_name,
                 host_name, timings["annotation"], timings["plumbing"], timings["binding"])
        return cni_result(spec=spec, host_name=host_name, host_mac=created.mac,
                          pod_network=pod_network)

    def _create(self, *, request: protocol.Request, network: nads.NetworkConfig,
                spec: interfaces.PodInterface, host_name: str) -> interfaces.HostSide:
        """The veth pair; names already taken are replaced only when they are this attachment's
        own (see `occupant`), else CniError INTERFACE_IN_USE and nothing is touched."""
        try:
            return interfaces.create(spec, host_name=host_name)
        except interfaces.InterfaceExists as exc:
            taken = exc
        holders = self.switch.holders(name=host_name, netns=request.netns, ifname=request.ifname)
        problem = occupant(request=request, network=network, taken=taken, holders=holders)
        if problem is None:
            try:
                return interfaces.create(spec, host_name=host_name, replace=True)
            except interfaces.InterfaceExists as exc:  # our old pair was not all that was there
                problem = not_created_here(request=request, network=network, taken=exc)
        raise protocol.CniError(protocol.INTERFACE_IN_USE, problem, IN_USE_DETAILS)

    async def _undo(self, network: nads.NetworkConfig, host_name: str) -> None:
        """Remove what a failed ADD made: its pair, and its port (never another NAD's)."""
        try:
            await self._run(self.switch.unplug, name=host_name, nad_key=network.nad_key)
            await self._run(interfaces.delete, host_name=host_name)
        except Exception:  # the original error is what the user needs to see
            LOG.exception("undoing a failed ADD of %s left something behind", host_name)

    async def delete(self, request: protocol.Request) -> None:
        host_name = interfaces.host_ifname(container_id=request.container_id,
                                           ifname=request.ifname)
        nad_key = declared_nad(request.config)
        try:
            unplugged = await self._run(self.switch.unplug, name=host_name,
                                        sandbox=request.container_id, ifname=request.ifname,
                                        nad_key=nad_key)
            if host_name not in unplugged.kept:  # else the pair is another NAD's
                await self._run(interfaces.delete, host_name=host_name)
        except (NetlinkError, OSError, RuntimeError) as exc:
            raise protocol.CniError(protocol.AGENT_FAILURE,
                                    f"cannot delete {request.ifname} of sandbox "
                                    f"{request.container_id}: {exc}", "the runtime will retry"
                                    ) from None
        LOG.info("DEL %s/%s %s: removed OVS port(s) %s%s", request.pod_namespace,
                 request.pod_name, request.ifname, ", ".join(unplugged.removed) or "none",
                 f"; left {', '.join(unplugged.kept)}: not of NAD {nad_key or '(unknown)'}"
                 if unplugged.kept else "")

    async def check(self, request: protocol.Request) -> None:
        network = network_config(request.config)
        pod = await self._run(self.reader.get, namespace=request.pod_namespace,
                              name=request.pod_name)
        pod_network = pods.network_for(pod.annotations, network.nad_key) if pod else None
        if pod_network is None:
            raise protocol.CniError(protocol.CHECK_FAILED,
                                    f"pod {request.pod_namespace}/{request.pod_name} has no "
                                    f"{pods.ANNOTATION} entry {network.nad_key}")
        spec = desired_interface(request=request, network=network, pod_network=pod_network,
                                 tx_checksum_offload=self.settings.tx_checksum_offload)
        port_name = podnetworks.port_name(network.nad_key, request.pod_namespace,
                                          request.pod_name, pod_network)
        observed = await self._run(interfaces.observe, netns=request.netns,
                                   ifname=request.ifname)
        candidates = await self._run(self.switch.interfaces_with_iface_id, iface_id=port_name)
        host_name = interfaces.host_ifname(container_id=request.container_id,
                                           ifname=request.ifname)
        port = next((c for c in candidates if c.name == host_name), None)
        problems = check_problems(spec=spec, observed=observed, port=port, port_name=port_name)
        if problems:
            raise protocol.CniError(protocol.CHECK_FAILED, "; ".join(problems))

    # --- start-up --------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Remove ports of vanished pods or sandboxes; re-plug re-created host interfaces."""
        for state in await self._run(self.switch.our_interfaces):
            try:
                await self._reconcile_one(state)
            except Exception:
                LOG.exception("start-up check of OVS port %s failed; leaving it", state.name)

    async def _reconcile_one(self, state: ovs.PortState) -> None:
        ids = state.external_ids
        namespace, _, name = ids.get(ovs.POD_KEY, "").partition("/")
        try:
            pod = await self._run(self.reader.get, namespace=namespace, name=name)
        except Exception as exc:  # API down: judge by the node's own state only
            LOG.warning("cannot read pod %s/%s at start-up (%s)", namespace, name, exc)
            pod = pods.Pod(uid=ids.get(ovs.IFACE_ID_VER, ""), annotations={})
        index = await self._run(interfaces.host_index, name=state.name)
        gone = pod is None or (ids.get(ovs.IFACE_ID_VER) and pod.uid != ids[ovs.IFACE_ID_VER])
        if gone or index is None:
            await self._run(self.switch.unplug, name=state.name)
            await self._run(interfaces.delete, host_name=state.name)
            LOG.info("start-up: removed port %s of %s (%s)", state.name, ids.get(ovs.POD_KEY),
                     "pod gone" if gone else "sandbox gone")
        elif (ids.get(ovs.IFINDEX_KEY) != str(index) or state.ofport in (None, -1)
              or state.error):
            await self._run(self.switch.replug, state=state, ifindex=index)
            LOG.info("start-up: re-plugged %s (plugged ifindex %s, now %s; OVS error %s)",
                     state.name, ids.get(ovs.IFINDEX_KEY), index, state.error)
