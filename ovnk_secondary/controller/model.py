"""The controller's model of what it has seen: pods and NADs as small records, and the pure
facts it derives from them (a port's pod, a NAD's accepted config, a digest of written rows).

`reconciler` keeps one `Pod` per pod of the cluster and one `Nad` per NAD; everything here is
pure (no I/O, no state), so it is tested on its own (`tests/controller/test_model.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from collections.abc import Mapping
from typing import Any

from ovnk_secondary import errors, migration, nads, naming, persistentips, podnetworks, selections
from ovnk_secondary.northbound import desired

Key = tuple[str, str]  # (namespace, name)
# On each NAD of ours: the spec.config in force (accepted). A change of the network's identity
# (name, topology, subnets, excludeSubnets) is refused while pods are attached; keeping what
# was accepted on the NAD itself makes the refusal survive full syncs and restarts.
ACCEPTED_CONFIG = "ovnk-secondary.io/accepted-config"
# Fields whose change is refused while pods are attached to the NAD.
IDENTITY_FIELDS = ("name", "topology", "subnets", "exclude_subnets")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Pod:
    """What the reconciler keeps of a pod: the fields it uses, in one small object.

    The model holds every pod of the cluster: as dicts (even trimmed ones, with their
    metadata and annotation maps) 10,000 pods cost several times more.
    """

    namespace: str
    name: str
    uid: str
    version: str  # metadata.resourceVersion
    node: str | None  # spec.nodeName
    phase: str | None  # status.phase
    deleting: bool  # metadata.deletionTimestamp is set
    networks: str | None  # the network selection annotation
    pod_networks: str | None  # our annotation, as the API last showed it
    vm: str | None = None  # label vm.kubevirt.io/name: the pods of one VM may share IPAMClaims
    # VM pods only (live migration, `migration`): creationTimestamp, TARGET_READY set, and the
    # kubelet's condition PodReadyToStartContainers True (its sandbox and interfaces are up)
    created: str = ""
    target_ready: bool = False
    sandbox_up: bool = False
    # sorted, for MultiNetworkPolicies' selectors; kept only of pods naming networks
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> Key:
        return self.namespace, self.name

    @property
    def finished(self) -> bool:
        """Completed pods hold no addresses (released on Succeeded/Failed, as on deletion)."""
        return self.phase in ("Succeeded", "Failed")

    @property
    def live(self) -> bool:
        """Scheduled, neither finished nor being deleted: a pod that may be attached."""
        return bool(self.node) and not self.finished and not self.deleting

    @property
    def departing(self) -> bool:
        """A VM pod finished or being deleted whose sandbox is still up on its node
        (`migration.VmPod`)."""
        return bool(self.node) and not self.live and self.sandbox_up

    def involved(self) -> dict[str, Any]:
        """The pod as an Event's involved object."""
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid}}

    def user(self) -> persistentips.User:
        """The pod as a user of IPAMClaims."""
        return persistentips.User(namespace=self.namespace, name=self.name, uid=self.uid,
                                  vm=self.vm)


def pod(body: Mapping[str, Any]) -> Pod:
    """The record of a pod's API body (or of what a deletion gives: namespace, name and uid
    alone). The VM fields only for pods labelled `vm.kubevirt.io/name` (KubeVirt's
    virt-launcher pods), the labels only for pods naming networks."""
    metadata = body.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    labels = metadata.get("labels") or {}
    vm = labels.get(persistentips.VM_LABEL)
    vm = vm if isinstance(vm, str) and vm else None
    node = (body.get("spec") or {}).get("nodeName")
    status = body.get("status") or {}
    networks = annotations.get(selections.ANNOTATION)
    pod_networks = annotations.get(podnetworks.ANNOTATION)
    return Pod(
        # interned: namespaces and nodes repeat across pods
        namespace=sys.intern(str(metadata.get("namespace") or "")),
        name=str(metadata.get("name") or ""),
        uid=str(metadata.get("uid") or ""),
        version=str(metadata.get("resourceVersion") or ""),
        node=sys.intern(str(node)) if node else None,
        phase=status.get("phase"),
        deleting=bool(metadata.get("deletionTimestamp")),
        networks=networks,
        pod_networks=pod_networks,
        vm=vm,
        created=str(metadata.get("creationTimestamp") or "") if vm else "",
        target_ready=vm is not None and migration.TARGET_READY in annotations,
        sandbox_up=vm is not None and any(
            isinstance(c, dict) and c.get("type") == migration.SANDBOX_READY
            and c.get("status") == "True" for c in status.get("conditions") or ()),
        labels=(tuple(sorted((str(k), str(v)) for k, v in labels.items()))
                if networks or pod_networks else ()),
    )


def vm_group(pod: Pod) -> migration.Vm | None:
    """The VM whose pods share the pod's MAC and static IPs (`ipam.Holders`), if any."""
    return migration.Vm(pod.namespace, pod.vm) if pod.vm else None


def migration_facts(pod: Pod) -> tuple[bool, bool, bool, str]:
    """What of a VM's pod decides the ports of its other pods (`migration.decide`)."""
    return pod.live, pod.departing, pod.target_ready, pod.created


def network_name(body: Mapping[str, Any]) -> str | None:
    """The network a NAD names, None when it is not ours or invalid."""
    try:
        config = nads.parse_nad(body)
    except errors.InvalidConfig:
        return None
    return config.name if config is not None else None


def pod_of_port(port: str, external_ids: Mapping[str, str]) -> Key | None:
    """The pod a pod port of ours belongs to: exact, from its NAD and namespace keys.

    The port name is `naming.pod_port_name(nad, namespace, pod)`; knowing the NAD and the
    namespace, the pod's name is what follows them (checked by deriving the name again).
    """
    nad_key, namespace = external_ids.get(naming.NAD_KEY), external_ids.get("namespace")
    if not nad_key or not namespace:
        return None
    head = naming.pod_port_name(nad_key, namespace, "")
    name = port[len(head):]
    # a KubeVirt VM's own port (`naming.vm_port_name`) has a `_` there: no pod's
    return (namespace, name) if name and "_" not in name and port.startswith(head) else None


def split_nad_key(nad_key: str) -> Key:
    """`namespace/name` (a NAD key, `nads.NetworkConfig.nad_key`) as (namespace, name)."""
    namespace, _, name = nad_key.partition("/")
    return namespace, name


def key_of(body: Mapping[str, Any]) -> Key:
    """(namespace, name) of an API object's body; empty strings for what it lacks."""
    metadata = body.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def fingerprint(state: desired.State) -> bytes:
    """A digest of rows, to remember what was written without keeping the rows (~2 kB a pod).

    Equal states give equal digests (the rows are built the same way each time); a state
    that differs gives another digest but with a chance of 2**-128.
    """
    return hashlib.blake2b(repr(state).encode(), digest_size=16).digest()


@dataclasses.dataclass(kw_only=True)
class Nad:
    """What the reconciler keeps of a NAD: its body and the decision on it."""

    body: dict[str, Any]
    config: nads.NetworkConfig | None  # in force; None: not ours or invalid
    problem: str | None = None  # why it is not applied, for pods that select it
    reason: str | None = None  # the Event reason of `problem` (or of a refused change)
    accepted_text: str | None = None  # the spec.config text of `config`, once accepted
    pending: bool = False  # accepted, but ACCEPTED_CONFIG is not yet written: no pods yet

    @property
    def applied(self) -> bool:
        return self.config is not None and self.problem is None


def accepted_text(body: Mapping[str, Any]) -> str | None:
    """The spec.config text a NAD's ACCEPTED_CONFIG annotation records, if any."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(ACCEPTED_CONFIG)
    return text if isinstance(text, str) else None


def spec_config(body: Mapping[str, Any]) -> str | None:
    """A NAD's spec.config text, None when it has none (or not a string)."""
    spec = body.get("spec") or {}
    text = spec.get("config") if isinstance(spec, Mapping) else None
    return text if isinstance(text, str) else None


def identity_changed(old: nads.NetworkConfig, new: nads.NetworkConfig) -> bool:
    """Whether `new` changes what is refused while pods are attached (IDENTITY_FIELDS)."""
    return any(getattr(old, f) != getattr(new, f) for f in IDENTITY_FIELDS)
