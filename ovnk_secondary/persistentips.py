"""Persistent IPs: an IPAMClaim holds a VM's addresses on a network across the VM's pods.

As OVN-Kubernetes (docs/features/multiple-networks/multi-homing.md, "Persistent IP addresses
for virtualization workloads"; go-controller/pkg/persistentips): a network whose NADs say
`"allowPersistentIPs": true` (and have `subnets`) honours a network selection element's
`"ipam-claim-reference": "<claim>"`, naming an IPAMClaim (`k8s.cni.cncf.io/v1alpha1`,
`spec.network`, `spec.interface`, `status.ips`, `status.ownerPod`) in the pod's namespace.
The first pod that uses a claim without `status.ips` gets new addresses from the pool, and
they are written to the claim's status before the pod's annotation records them; every later
pod with that claim gets exactly those addresses (hence the same MAC, derived from the first
IP). The addresses belong to the claim, not to a pod: they return to the pool when the claim is
deleted (and no live pod still uses them), never when a pod is. A controller restart reserves
every claim's addresses before it allocates anything.

Beyond OVN-K: a claim on a network without `allowPersistentIPs` is ignored with a Warning, a
claim of another network (`spec.network`) refuses the attachment, a missing claim makes the pod
wait for it, and a claim is shared only by the pods of one VM (label `vm.kubevirt.io/name`:
the source and target of a live migration); any other pod asking for it is refused, naming the
pod and VM that hold it.

Pure: values and an in-memory book of claims and of the live pods using them; the reconciler
reads and writes the API.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ovnk_secondary import errors, nads, selections

API_VERSION = "k8s.cni.cncf.io/v1alpha1"
KIND = "IPAMClaim"
# The label KubeVirt gives a VM's virt-launcher pods: the pods of one VM may share a claim.
VM_LABEL = "vm.kubevirt.io/name"

# Event reasons (Warnings on the pod)
IGNORED = "IPAMClaimIgnored"  # the network does not allow persistent IPs: the pool, as usual
NOT_FOUND = "IPAMClaimNotFound"  # the pod waits for the claim
NETWORK_MISMATCH = "IPAMClaimNetworkMismatch"  # the claim is another network's: not attached
IN_USE = "IPAMClaimInUse"  # a live pod of another VM uses the claim: the pod waits
CONFLICT = "IPAMClaimConflict"  # the claim's addresses cannot be held on the network

Key = tuple[str, str]  # (namespace, name)


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class ClaimOwner:
    """Who holds a claim's addresses in a pool: the IPAMClaim itself, by its exact identity
    (a claim deleted and created again under its name is another claim)."""

    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"IPAMClaim {self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Claim:
    """What the controller uses of an IPAMClaim."""

    namespace: str
    name: str
    uid: str
    version: str  # metadata.resourceVersion
    network: str  # spec.network: the network name (a NAD config's `name`)
    interface: str  # spec.interface
    ips: tuple[str, ...]  # status.ips (CIDR strings); empty until a pod used the claim
    owner_pod: str | None = None  # status.ownerPod

    @property
    def key(self) -> Key:
        return self.namespace, self.name

    @property
    def owner(self) -> ClaimOwner:
        return ClaimOwner(self.namespace, self.name, self.uid)

    def involved(self) -> dict[str, Any]:
        """The claim as an Event's involved object."""
        return {"apiVersion": API_VERSION, "kind": KIND,
                "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid}}


def parse(body: Mapping[str, Any]) -> Claim:
    """An IPAMClaim object -> Claim; what is missing or malformed reads as empty (the CRD's
    schema validates the rest)."""
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    ips = status.get("ips") if isinstance(status, Mapping) else None
    owner_pod = status.get("ownerPod") if isinstance(status, Mapping) else None
    return Claim(
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        uid=str(metadata.get("uid") or ""),
        version=str(metadata.get("resourceVersion") or ""),
        network=str(spec.get("network") or "") if isinstance(spec, Mapping) else "",
        interface=str(spec.get("interface") or "") if isinstance(spec, Mapping) else "",
        ips=tuple(i for i in ips if isinstance(i, str)) if isinstance(ips, list) else (),
        owner_pod=owner_pod if isinstance(owner_pod, str) and owner_pod else None,
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class User:
    """A live pod attached with a claim's addresses."""

    namespace: str
    name: str
    uid: str
    vm: str | None  # its VM_LABEL, None without

    @property
    def key(self) -> Key:
        return self.namespace, self.name

    def __str__(self) -> str:
        vm = f"VM {self.vm}" if self.vm else f"no VM: no label {VM_LABEL}"
        return f"pod {self.namespace}/{self.name} ({vm})"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Resolution:
    """What a network selection element's claim means for its attachment."""

    claim: Claim | None = None  # the claim whose addresses the pod gets; None: the pool's
    problem: tuple[str, str] | None = None  # (Event reason, message) for a Warning on the pod
    attach: bool = True  # False: nothing on this NAD for now


def reference(selection: selections.NetworkSelection, *, pod_namespace: str) -> Key | None:
    """The claim a selection element names: (the pod's namespace, its name), or None."""
    name = selection.ipam_claim_reference
    return (pod_namespace, name) if name else None


def resolve(network: nads.NetworkConfig, selection: selections.NetworkSelection, *,
            pod_namespace: str, claim: Claim | None) -> Resolution:
    """Whether the element's claim (`claim`: the one it names, None when that does not exist)
    applies to the network, and what the pod is told."""
    key = reference(selection, pod_namespace=pod_namespace)
    if key is None:
        return Resolution()
    name = f"{key[0]}/{key[1]}"
    if not network.allow_persistent_ips:
        return Resolution(problem=(IGNORED, (
            f"ipam-claim-reference {key[1]} of {selection.nad_key} is ignored: network "
            f"{network.name} does not allow persistent IPs (allowPersistentIPs is not true in "
            "its NADs); the pod gets addresses from the pool, released when it is deleted")))
    if claim is None:
        return Resolution(attach=False, problem=(NOT_FOUND, (
            f"IPAMClaim {name} (ipam-claim-reference of {selection.nad_key}) does not exist; "
            f"the pod waits for it: create it with spec.network {network.name}")))
    if claim.network != network.name:
        return Resolution(attach=False, problem=(NETWORK_MISMATCH, (
            f"IPAMClaim {name} is for network {claim.network!r}, not {network.name!r} of NAD "
            f"{selection.nad_key}: the pod gets nothing there; reference a claim whose "
            f"spec.network is {network.name} (spec.network cannot change: create another "
            "claim)")))
    return Resolution(claim=claim)


def reserved(claim: Claim, network: nads.NetworkConfig | None) -> tuple[str, ...]:
    """The addresses to hold for `claim` on `network` (its config in force, None when it has
    none): its status.ips when it is that network's and the network allows persistent IPs."""
    if network is None or not network.allow_persistent_ips or claim.network != network.name:
        return ()
    return claim.ips


def holds(claim: Claim, *, recorded: Sequence[str], held: Sequence[str] | None) -> bool:
    """Whether a live pod's recorded addresses are the claim's (else they are the pod's own).

    `held`: what the claim's owner holds in the pool (an allocation not yet written to the
    claim). A claim without addresses adopts those of the pod that recorded them first (as
    OVN-K writes an empty claim's status from the pod's annotation).
    """
    wanted = set(claim.ips) or set(held or ())
    return not wanted or wanted == set(recorded)


def status_patch(claim: Claim, *, ips: Sequence[str], pod: str) -> dict[str, Any] | None:
    """The merge patch of the claim's status subresource that records `ips` as the addresses
    pod `pod` got from it; None when the claim holds them already.

    The claim's resourceVersion makes it a compare-and-swap: a claim changed since it was read
    is not written (409). A claim's addresses are never replaced: IpamError when it holds others.
    """
    if set(claim.ips) == set(ips):
        return None
    if claim.ips:
        raise errors.IpamError(f"IPAMClaim {claim.namespace}/{claim.name} holds "
                               f"{', '.join(claim.ips)}, not {', '.join(ips)}; a claim's "
                               "addresses are never replaced: delete the claim to free them")
    patch: dict[str, Any] = {"status": {"ips": list(ips), "ownerPod": pod}}
    if claim.version:
        patch["metadata"] = {"resourceVersion": claim.version}
    return patch


def blocking_user(pod: User, users: Iterable[User]) -> User | None:
    """The live pod whose use of a claim refuses it to `pod`, None when `pod` may use it.

    Pods of one VM (the same VM_LABEL, in the claim's namespace) share its addresses: the
    source and target of a live migration. Any other pod is refused while another uses it.
    """
    others = sorted((u for u in users if u.key != pod.key), key=lambda u: u.key)
    for user in others:
        if pod.vm is None or user.vm != pod.vm:
            return user
    return None


def in_use_message(claim: Claim, *, nad_key: str, holder: User) -> str:
    """The Warning of a pod refused a claim that `holder` uses."""
    addresses = f" ({', '.join(claim.ips)})" if claim.ips else ""
    return (f"IPAMClaim {claim.namespace}/{claim.name}{addresses} of {nad_key} is in use by "
            f"{holder}; only the pods of one VM (label {VM_LABEL}) share a claim: the pod "
            "waits until that pod is gone")


class Book:
    """The claims the controller knows, the live pods using each, and deleted claims whose
    addresses live pods still use (their addresses are freed with the last of those pods)."""

    def __init__(self, claims: Iterable[Claim] = ()) -> None:
        self._claims: dict[Key, Claim] = {}
        self._by_network: dict[str, set[Key]] = {}
        self._users: dict[ClaimOwner, dict[Key, User]] = {}
        self._used: dict[Key, set[ClaimOwner]] = {}  # pod -> the claims it uses
        self._deleted: dict[ClaimOwner, Claim] = {}
        for claim in claims:
            self.put(claim)

    def __len__(self) -> int:
        return len(self._claims)

    def get(self, key: Key) -> Claim | None:
        return self._claims.get(key)

    def deleted(self, key: Key) -> Claim | None:
        """A deleted claim of that name whose addresses live pods still use."""
        return next((c for c in self._deleted.values() if c.key == key), None)

    def claims(self, network: str | None = None) -> list[Claim]:
        """Every claim, or those whose spec.network is `network`."""
        if network is None:
            return list(self._claims.values())
        return [self._claims[k] for k in sorted(self._by_network.get(network, ()))]

    def put(self, claim: Claim) -> Claim | None:
        """Record `claim` (new, or a newer version). Returns the claim it replaces when that
        is another one of the same name (a different uid) whose addresses are free now."""
        previous = self._claims.get(claim.key)
        freed = None
        if previous is not None and previous.uid != claim.uid:
            freed = self.delete(previous.key, previous.uid)
        if previous is not None and previous.network != claim.network:
            self._by_network.get(previous.network, set()).discard(previous.key)
        self._claims[claim.key] = claim
        self._by_network.setdefault(claim.network, set()).add(claim.key)
        return freed

    def delete(self, key: Key, uid: str) -> Claim | None:
        """Forget the claim (that incarnation: `uid`, or any when empty). Returns it when its
        addresses are free now; while live pods use them it is kept as deleted, and
        `release` returns it with the last of them."""
        claim = self._claims.get(key)
        if claim is None or (uid and claim.uid != uid):
            return None
        del self._claims[key]
        keys = self._by_network.get(claim.network, set())
        keys.discard(key)
        if not keys:
            self._by_network.pop(claim.network, None)
        if self._users.get(claim.owner):
            self._deleted[claim.owner] = claim
            return None
        self._users.pop(claim.owner, None)
        return claim

    def use(self, owner: ClaimOwner, user: User) -> None:
        """`user` is attached with the addresses of the claim `owner`."""
        self._users.setdefault(owner, {})[user.key] = user
        self._used.setdefault(user.key, set()).add(owner)

    def users(self, owner: ClaimOwner) -> list[User]:
        return list(self._users.get(owner, {}).values())

    def release(self, key: Key, uid: str) -> tuple[list[ClaimOwner], list[Claim]]:
        """Pod `key` (incarnation `uid`) is gone: the claims it used, and the deleted claims it
        was the last user of (their addresses are free now)."""
        used, freed = [], []
        for owner in sorted(self._used.get(key, ())):
            users = self._users.get(owner, {})
            user = users.get(key)
            if user is None or user.uid != uid:
                continue
            del users[key]
            self._used[key].discard(owner)
            used.append(owner)
            if not users:
                self._users.pop(owner, None)
                claim = self._deleted.pop(owner, None)
                if claim is not None:
                    freed.append(claim)
        if not self._used.get(key):
            self._used.pop(key, None)
        return used, freed
