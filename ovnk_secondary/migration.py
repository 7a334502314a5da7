"""Live migration of KubeVirt VMs: which of a VM's pods gets the traffic on a secondary network.

A live migration is two live virt-launcher pods of one VM (label `vm.kubevirt.io/name`, in
one namespace): the source, running the domain, and the target, created by virt-controller on
another node. Both attach to the VM's networks with the same MAC and IPs (an IPAMClaim's, see
`persistentips`), so each gets its own logical switch port with the same addresses, and OVN
must deliver to exactly one of them. As OVN-Kubernetes
(go-controller/pkg/ovn/base_network_controller_user_defined.go:
`setPodLogicalSwitchPortAddressesAndEnabledField`, `disableLiveMigrationSourceLSPOps`,
`enableSourceLSPFailedLiveMigration`; go-controller/pkg/util/kubevirt.go for the statuses):

- the older pod (creation time, then name) is the source, the newer the target;
- until the target pod carries `kubevirt.io/migration-target-ready-timestamp` (virt-handler
  sets it when the domain runs on the target), the target's port exists disabled
  (`enabled=false`) and the source's is as usual: traffic goes to the source;
- once it does, the target's port is enabled and the source's disabled with its `addresses`
  emptied, in one transaction: emptying the addresses removes the MAC from the switch's L2
  lookup, so that on a localnet switch traffic for the MAC leaves by the localnet port and the
  physical network learns the new location;
- a failed (or deleted) target leaves the source alone: its port is as usual again;
- a third live pod of one VM is refused (Warning Event `LiveMigrationConflict`, naming the two
  that are migrating); it attaches once one of them is gone.

That is the `PER_POD` strategy. The other, `MULTI_CHASSIS` (kube-ovn's; OVN's multi-chassis
port binding, ovn-nb(5) Logical_Switch_Port options `requested-chassis` and
`activation-strategy`, OVN >= 22.06), gives the VM one port on each network whose addresses are
the VM's for good (an IPAMClaim's on a network with `allowPersistentIPs`, or a network without
IPAM): `naming.vm_port_name`, which both pods' interfaces plug into (the annotation entry's
`logical_switch_port`). During a migration the port's `requested-chassis` lists the source's
node then the target's, with `activation-strategy=rarp`: ovn-controller on the target binds the
port as an additional chassis but keeps it blocked until the guest's first RARP there (QEMU
announces itself after resuming), then unblocks it at once, without a round trip through the
control plane. The port becomes the target's alone (`requested-chassis=<target>`) once the
source has left its node: its pod gone, or finished or being deleted with its sandbox down
(the kubelet's `PodReadyToStartContainers` condition False, reported once the runtime has torn
the sandbox and its interfaces down). Not at domain-ready: ovn-controller on the source
releases the binding with a blind write of SB `Port_Binding.chassis` (ovn
controller/binding.c, `release_lport_main_chassis`), so a narrowing while the source's
interface is still there races the target's claim: the port had no chassis at all for a
moment in 6 of 32 migrations (SB monitored; README "Live migration"). Once the
source's interface is gone its chassis has released the port alone; the target, an activated
additional chassis, forwards meanwhile (other chassis tunnel to it: ovn
controller/physical.c, `get_remote_tunnels`), and at the narrowing only the target writes.
Addresses never move between rows, so nothing on the path has to learn a new port (on a
localnet switch OVN tunnels the port's traffic between the two chassis while both are
listed: see the MTU note in README). A VM's other NICs (dynamic addresses without a claim)
keep per-pod ports.

Pure: values in, port modes (and requested chassis) out; the reconciler applies them to the
ports it writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

# Set by KubeVirt's virt-handler on the target virt-launcher pod when the migrated domain is
# ready there (kubevirt.io/api/core/v1 MigrationTargetReadyTimestamp).
TARGET_READY = "kubevirt.io/migration-target-ready-timestamp"
# The pod condition the kubelet sets True once the pod's sandbox (and its network) is up, and
# False once the runtime has torn it down (k8s.io/api core/v1 PodReadyToStartContainers,
# KEP-3085; on by default since Kubernetes 1.29): a VM pod that has it True while finished or
# being deleted is departing (`VmPod`)
SANDBOX_READY = "PodReadyToStartContainers"
# Warning Event on a pod refused because two other pods of its VM are migrating
CONFLICT = "LiveMigrationConflict"
# Live-migration strategies (the controller's --migration-strategy)
PER_POD = "per-pod"  # OVN-K's: a port per pod, the target's enabled at domain-ready
MULTI_CHASSIS = "multi-chassis"  # OVN's: one port of the VM, bound on both nodes
STRATEGIES = (PER_POD, MULTI_CHASSIS)
# The default: MULTI_CHASSIS. On OVN 25.03 (the sandbox, benchmarks/migration_bench.py, README
# "Live migration") it cuts the switch-over's gap and the packets lost to a third or a half of
# PER_POD's, with no control plane on the path. Its target's pod never answers for the VM: the
# node agent hands a VM port's pod interface over down (`agent.attachments.desired_interface`),
# because ovn-controller's activation block lets a few packets through to the target right
# after it binds the port.
DEFAULT_STRATEGY = MULTI_CHASSIS

Key = tuple[str, str]  # (namespace, name)


@dataclasses.dataclass(frozen=True, slots=True)
class Vm:
    """A VM by its exact identity: its pods may share its MAC and static IPs on a network
    (`ipam.Holders` groups)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"VM {self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True, slots=True)
class VmPod:
    """A pod of a VM: live (not finished, not being deleted, scheduled), or, with `live`
    False, departing (finished or being deleted, its sandbox still up on its node)."""

    key: Key
    created: str  # metadata.creationTimestamp, RFC 3339 (UTC, so it sorts as text)
    target_ready: bool  # carries TARGET_READY
    live: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class PortMode:
    """How a pod's logical switch ports are written: `enabled` (False: column enabled=false)
    and whether they publish their addresses (False: column addresses empty)."""

    enabled: bool = True
    addresses: bool = True


ACTIVE = PortMode()
WAITING = PortMode(enabled=False)  # a target whose domain is not ready yet
VACATED = PortMode(enabled=False, addresses=False)  # a source after the switch-over


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """Port modes of a VM's live pods, and the pods refused with the reason's message."""

    modes: dict[Key, PortMode]
    refused: dict[Key, str]
    source: Key | None = None  # during a migration
    target: Key | None = None
    switched: bool = False  # the target's domain is ready: traffic goes to it
    # a completed migration's source, departing (`VmPod`): the one live pod is its target
    departing: Key | None = None


def _order(pod: VmPod) -> tuple[str, Key]:
    return pod.created, pod.key


def decide(vm: str, pods: Iterable[VmPod]) -> Decision:
    """The modes of the live pods of VM `vm` (any order; departing pods get none).

    One pod: ACTIVE. Two: source ACTIVE and target WAITING, or, once the target is ready,
    source VACATED and target ACTIVE. More: the two oldest as for two, the others refused.
    One live pod whose domain came by migration (TARGET_READY) with an older departing pod:
    that pod is the migration's source, leaving (`departing`).
    """
    pods = list(pods)
    ordered = sorted((p for p in pods if p.live), key=_order)
    if len(ordered) < 2:
        older = [p for p in pods if not p.live and _order(p) < _order(ordered[0])] \
            if ordered and ordered[0].target_ready else []
        return Decision(modes={p.key: ACTIVE for p in ordered}, refused={},
                        departing=max(older, key=_order).key if older else None)
    source, target = ordered[0], ordered[1]
    switched = target.target_ready
    modes = {source.key: VACATED if switched else ACTIVE,
             target.key: ACTIVE if switched else WAITING}
    refused = {
        p.key: (f"VM {vm} already has two live pods, {source.key[1]} (migration source) and "
                f"{target.key[1]} (target): a third is not attached; it is once one of them "
                "is gone")
        for p in ordered[2:]}
    return Decision(modes=modes, refused=refused, source=source.key, target=target.key,
                    switched=switched)


def requested_chassis(decision: Decision, node_of: Mapping[Key, str]) -> tuple[str, ...]:
    """The `requested-chassis` of a VM's own port (`MULTI_CHASSIS`), main chassis first.

    The node of the VM's one pod; during a migration, before and after the switch-over, the
    source's node then the target's (an additional chassis); after it, while the source is
    departing, the same: the port is the target node's alone once the source has left its
    node (see the module's docstring). `node_of` maps the decision's pods (and `departing`)
    to their nodes; empty when the VM has no live pod."""
    if decision.source is not None and decision.target is not None:
        main, additional = decision.source, decision.target
    elif decision.departing is not None and decision.modes:
        main, additional = decision.departing, next(iter(decision.modes))
    else:
        return tuple(node_of[key] for key in decision.modes)[:1]
    return tuple(dict.fromkeys((node_of[main], node_of[additional])))
