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

Pure: values in, port modes out; the reconciler applies them to the ports it writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

# Set by KubeVirt's virt-handler on the target virt-launcher pod when the migrated domain is
# ready there (kubevirt.io/api/core/v1 MigrationTargetReadyTimestamp).
TARGET_READY = "kubevirt.io/migration-target-ready-timestamp"
# Warning Event on a pod refused because two other pods of its VM are migrating
CONFLICT = "LiveMigrationConflict"

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
    """A live pod of a VM (not finished, not being deleted, scheduled)."""

    key: Key
    created: str  # metadata.creationTimestamp, RFC 3339 (UTC, so it sorts as text)
    target_ready: bool  # carries TARGET_READY


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


def decide(vm: str, pods: Iterable[VmPod]) -> Decision:
    """The modes of the live pods of VM `vm` (any order).

    One pod: ACTIVE. Two: source ACTIVE and target WAITING, or, once the target is ready,
    source VACATED and target ACTIVE. More: the two oldest as for two, the others refused.
    """
    ordered = sorted(pods, key=lambda p: (p.created, p.key))
    if len(ordered) < 2:
        return Decision(modes={p.key: ACTIVE for p in ordered}, refused={})
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
