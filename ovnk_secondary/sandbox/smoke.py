"""The sandbox's data-path smoke scenario, with hand-made pods and northbound rows.

It shows that the sandbox carries the reference scenario before any of our components is
involved: pods on two chassis talk over Geneve, and a localnet port leaves a dedicated bridge
with an 802.1Q tag towards the external host. Pods here are plumbed the way OVN-K's node side
plumbs them (netns, veth, `iface-id` on br-int), with `ip` and `ovs-vsctl`; northbound rows are
written with ovsdbapp. `make demo` prints what it shows; the tests assert on it.
"""

from __future__ import annotations

import dataclasses
import shlex
from typing import Any

from ovsdbapp.backend.ovs_idl import connection
from ovsdbapp.schema.ovn_northbound import impl_idl as nb_impl

from ovnk_secondary.sandbox import cluster

LAYER2_SWITCH = "smoke.l2_ovn_layer2_switch"
LOCALNET_SWITCH = "smoke.ln_ovn_localnet_switch"
LOCALNET_PORT = "smoke.ln_ovn_localnet_port"
PHYSNET = "smokenet"


@dataclasses.dataclass(frozen=True)
class SandboxPod:
    node: str
    netns: str
    port: str  # logical switch port name = OVS iface-id
    mac: str
    cidr: str  # address/prefix on net1

    @property
    def ip(self) -> str:
        return self.cidr.split("/")[0]

    @property
    def host_side(self) -> str:
        return f"v{self.netns}"[:15]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a smoke step shows: the ping and the capture taken meanwhile."""

    ping: cluster.ExecResult
    capture: list[str]

    @property
    def reached(self) -> bool:
        return self.ping.exit_code == 0


def nb_api(remote: str, *, timeout: int = 30) -> Any:
    """A northbound API on its own connection (ovsdbapp keeps the connection in a class
    attribute where the first one wins, so each API gets a class of its own)."""
    idl = connection.OvsdbIdl.from_server(remote, "OVN_Northbound")
    api_class = type("SmokeNbApi", (nb_impl.OvnNbApiIdlImpl,), {})
    return api_class(connection.Connection(idl, timeout=timeout))


def plug(sb: cluster.Sandbox, pod: SandboxPod) -> None:
    """netns + veth (`net1` inside), host side in br-int with iface-id = the logical port."""
    sb.add_pod_netns(pod.node, pod.netns)
    q = shlex.quote
    sb.exec(
        pod.node,
        f"""set -e
        ip link add {q(pod.host_side)} type veth peer name net1 netns {q(pod.netns)}
        ip -n {q(pod.netns)} link set net1 address {q(pod.mac)} mtu 1400 up
        ip -n {q(pod.netns)} addr add {q(pod.cidr)} dev net1
        ip link set {q(pod.host_side)} mtu 1400 up
        ovs-vsctl add-port br-int {q(pod.host_side)} -- set interface {q(pod.host_side)} \
            external_ids:iface-id={q(pod.port)}""",
    )


def unplug(sb: cluster.Sandbox, pod: SandboxPod) -> None:
    sb.exec(
        pod.node, ["ovs-vsctl", "--if-exists", "del-port", "br-int", pod.host_side], check=False
    )
    sb.delete_pod_netns(pod.node, pod.netns)


def wait_ovn_installed(sb: cluster.Sandbox, pod: SandboxPod, timeout: float = 20) -> None:
    """ovn-controller marks the interface once the port's flows are in br-int."""
    sb.exec(
        pod.node,
        f"for i in $(seq {int(timeout * 10)}); do "
        f'[ "$(ovs-vsctl --if-exists get interface {shlex.quote(pod.host_side)} '
        'external_ids:ovn-installed)" = \'"true"\' ] && exit 0; sleep 0.1; done; exit 1',
        timeout=timeout + 10,
    )


def ping(
    sb: cluster.Sandbox, pod: SandboxPod, address: str, *, count: int = 3
) -> cluster.ExecResult:
    return sb.exec(
        pod.node,
        [
            "ip",
            "netns",
            "exec",
            pod.netns,
            "ping",
            "-c",
            str(count),
            "-i",
            "0.2",
            "-W",
            "2",
            address,
        ],
        check=False,
    )


LAYER2_PODS = (
    SandboxPod("node-1", "smoke-a", "smoke.l2_a", "0a:58:0a:64:00:02", "10.100.0.2/24"),
    SandboxPod("node-2", "smoke-b", "smoke.l2_b", "0a:58:0a:64:00:03", "10.100.0.3/24"),
)
LOCALNET_POD = SandboxPod(
    "node-1", "smoke-ln", "smoke.ln_pod", "0a:58:ac:11:21:0a", "172.17.33.10/24"
)
# on VLAN 33 too, but addressed in the VLAN 34 host's subnet: it must not reach that host
STRAY_POD = SandboxPod(
    "node-1", "smoke-ln2", "smoke.ln_stray", "0a:58:ac:11:22:0a", "172.17.34.10/24"
)


def layer2_over_geneve(sb: cluster.Sandbox, nb: Any) -> Outcome:
    """Two pods on one logical switch on node-1 and node-2 ping; capture on node-1's underlay."""
    a, b = LAYER2_PODS
    with nb.transaction(check_error=True) as txn:
        txn.add(nb.ls_add(LAYER2_SWITCH, may_exist=True))
        for pod in LAYER2_PODS:
            txn.add(nb.lsp_add(LAYER2_SWITCH, pod.port, may_exist=True))
            txn.add(nb.lsp_set_addresses(pod.port, [f"{pod.mac} {pod.ip}"]))
    try:
        for pod in LAYER2_PODS:
            plug(sb, pod)
        for pod in LAYER2_PODS:
            wait_ovn_installed(sb, pod)
        # -v: tcpdump decodes the Geneve header and the ICMP inside it
        with sb.capture("node-1", "underlay0", "udp port 6081", extra_args=("-v",)) as geneve:
            result = ping(sb, a, b.ip)
            geneve.wait_for(lambda text: f"{a.ip} > {b.ip}: ICMP echo request" in text, timeout=3)
        return Outcome(result, geneve.lines)
    finally:
        for pod in LAYER2_PODS:
            unplug(sb, pod)
        nb.ls_del(LAYER2_SWITCH, if_exists=True).execute(check_error=True)


def localnet_vlan33(sb: cluster.Sandbox, nb: Any) -> tuple[Outcome, Outcome]:
    """A localnet switch with VLAN 33 mapped to a dedicated bridge `ovs-br1` (uplink enp2s0) on
    node-1. Returns (a pod pinging the VLAN 33 host, captured on the physnet link; a pod on VLAN 33
    pinging the VLAN 34 host's address, with the ARP captured on that link)."""
    with nb.transaction(check_error=True) as txn:
        txn.add(nb.ls_add(LOCALNET_SWITCH, may_exist=True))
        txn.add(nb.lsp_add(LOCALNET_SWITCH, LOCALNET_PORT, may_exist=True))
        txn.add(
            nb.db_set(
                "Logical_Switch_Port", LOCALNET_PORT, ("type", "localnet"), ("tag_request", 33)
            )
        )
        txn.add(nb.lsp_set_addresses(LOCALNET_PORT, ["unknown"]))
        txn.add(nb.lsp_set_options(LOCALNET_PORT, network_name=PHYSNET))
        for pod in (LOCALNET_POD, STRAY_POD):
            txn.add(nb.lsp_add(LOCALNET_SWITCH, pod.port, may_exist=True))
            txn.add(nb.lsp_set_addresses(pod.port, [f"{pod.mac} {pod.ip}"]))
    sb.exec(
        "node-1",
        "ovs-vsctl --may-exist add-br ovs-br1 -- set bridge ovs-br1 datapath_type=netdev "
        "-- --may-exist add-port ovs-br1 enp2s0 "
        f"-- set open . external_ids:ovn-bridge-mappings={PHYSNET}:ovs-br1",
    )
    try:
        for pod in (LOCALNET_POD, STRAY_POD):
            plug(sb, pod)
            wait_ovn_installed(sb, pod)
        with sb.capture(sb.external, "trunk2", "vlan and icmp") as wire:
            tagged = ping(sb, LOCALNET_POD, "172.17.33.1")
            wire.wait_for(lambda text: f"{LOCALNET_POD.ip} > 172.17.33.1" in text, timeout=3)
        with sb.capture(sb.external, "trunk2", "vlan and arp") as arp:
            stray = ping(sb, STRAY_POD, "172.17.34.1", count=2)
            arp.wait_for(lambda text: "who-has 172.17.34.1" in text, timeout=3)
        return Outcome(tagged, wire.lines), Outcome(stray, arp.lines)
    finally:
        for pod in (LOCALNET_POD, STRAY_POD):
            unplug(sb, pod)
        sb.exec(
            "node-1",
            "ovs-vsctl --if-exists del-br ovs-br1 "
            "-- remove open . external_ids ovn-bridge-mappings",
        )
        nb.ls_del(LOCALNET_SWITCH, if_exists=True).execute(check_error=True)
