"""MultiNetworkPolicy (`k8s.cni.cncf.io/v1beta1`): NetworkPolicy for NAD networks, as a model.

A MultiNetworkPolicy has NetworkPolicy's `spec` exactly (OVN-Kubernetes'
docs/features/multiple-networks/multi-network-policies.md) and binds to networks through its
annotation `k8s.v1.cni.cncf.io/policy-for`: comma-separated `<namespace>/<nad>`, or `<nad>` for
the policy's own namespace, spaces ignored (OVN-K `base_network_controller_multipolicy.go`).
Without it the policy is ignored. The meaning, per network the policy is for:

- `spec.podSelector` selects pods of the policy's namespace; the policy applies to their
  interfaces on that network only (OVN-K: a network's controller handles its own ports).
- `spec.policyTypes` (`Ingress`, `Egress`) says which directions the policy isolates. Unset,
  it defaults as NetworkPolicy's does: `Ingress` always, `Egress` when `egress` rules exist.
- A pod is isolated in a direction as soon as one policy for that direction selects it; it
  then accepts exactly the union of the rules of every such policy (rules allow, nothing
  denies), replies to allowed traffic included; ARP and IPv6 ND always pass.
- A rule (`ingress[].from[]` / `egress[].to[]`) allows traffic from/to its peers on its ports.
  A peer is a `podSelector` (pods of the policy's namespace), a `namespaceSelector` (every pod
  of the selected namespaces), both (the selected pods of the selected namespaces), or an
  `ipBlock` (`cidr` minus `except`). No peers: anybody. `ports[]`: `protocol` (TCP, UDP or
  SCTP; TCP when unset), `port` (a number; none: the whole protocol), `endPort` (a range
  `port`..`endPort`). No ports: every port and protocol.
- Label selectors have `matchLabels` and `matchExpressions` (`In`, `NotIn`, `Exists`,
  `DoesNotExist`) with Kubernetes' semantics; `{}` selects everything.

Parsing (`parse`) is strict and all-or-nothing: a policy is either understood completely
(`Parsed.policy`) or refused with a `Notice` for a Warning Event that says what to fix; it is
never applied in part. Named ports (`port: http`) are refused as unsupported: their numbers
differ per pod. What depends on the networks is decided when rows are built
(`northbound/acls.py`): a network without `subnets` has no IPs to put in address sets, so
there only `ipBlock` peers are valid (OVN-K's rule); a policy with other peers is not applied
to it.

Where we differ from OVN-K on purpose (each would make a policy silently wrong):
- `endPort` is honoured; OVN-K's conversion of a MultiNetworkPolicy drops it (a range
  narrowed to its first port).
- A `ports` entry without `port` allows its whole protocol even beside numbered entries of the
  same protocol; OVN-K then keeps only the numbered ones.
- Rules of a direction missing from `policyTypes` are ignored, as NetworkPolicy defines, with
  a notice; OVN-K writes ACLs for them anyway (they would open traffic that another policy
  isolates).
- `policyTypes` unset is defaulted (the API server does it for NetworkPolicy, nobody does it
  for this CRD).

Values are frozen dataclasses; selectors evaluate labels purely (`Selector.matches`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

POLICY_FOR_ANNOTATION = "k8s.v1.cni.cncf.io/policy-for"
INGRESS = "Ingress"
EGRESS = "Egress"
DIRECTIONS = (INGRESS, EGRESS)
# Kubernetes protocol -> OVN match field prefix
PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

# Event reasons (the Event goes on the MultiNetworkPolicy)
POLICY_FOR_MISSING = "PolicyForMissing"  # Warning: no annotation, the policy is ignored
INVALID_POLICY = "InvalidPolicy"  # Warning: the policy is refused
UNSUPPORTED_POLICY = "UnsupportedPolicy"  # Warning: valid, but we cannot enforce it exactly
FIELD_IGNORED = "FieldIgnored"  # Warning: applied, a part of it means nothing
NOT_APPLIED = "PolicyNotApplied"  # Warning: not applied to one of its networks (see message)
NO_NETWORK = "NoNetworkOfOurs"  # Normal: policy-for names no NAD of ours (maybe another CNI's)
NAME_COLLISION = "NameCollision"  # Warning: its rows' hashed names collide with another's

WARNING = "Warning"
NORMAL = "Normal"

_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Notice:
    """Something to tell the policy's author, as an Event of this type and reason."""

    type: str  # WARNING or NORMAL
    reason: str
    message: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Requirement:
    """One `matchExpressions` entry; `values` sorted."""

    key: str
    operator: str  # one of OPERATORS
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist

    def key_string(self) -> str:
        """OVN-K's `sortedLSRString`: `LSR{Key:k,Operator:In,Values:[a b],}`."""
        return f"LSR{{Key:{self.key},Operator:{self.operator},Values:[{' '.join(self.values)}],}}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Selector:
    """A label selector; `match_labels` sorted by key, `match_expressions` by `key_string`."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels)
                and all(r.matches(labels) for r in self.match_expressions))

    def key_string(self) -> str:
        """OVN-K's `shortLabelSelectorString` (pod_selector_address_set.go), the same text for
        equivalent spellings: `LS{ML:{app: db,},ME:{LSR{...},},}`; `{}` is `LS{}`. With label
        keys and values valid (checked by `parse`) no `{`, `}`, `,` or `: ` occurs inside
        them, so the text maps back to the selector."""
        text = "LS{"
        if self.match_labels:
            text += "ML:{" + "".join(f"{k}: {v}," for k, v in self.match_labels) + "},"
        if self.match_expressions:
            text += "ME:{" + ",".join(r.key_string() for r in self.match_expressions) + "},"
        return text + "}"


EVERYTHING = Selector()


@dataclasses.dataclass(frozen=True, kw_only=True)
class IpBlock:
    """`cidr` minus `excepts`, all in network form (`10.1.0.0/16`), of one IP version."""

    cidr: str
    excepts: tuple[str, ...] = ()

    @property
    def version(self) -> int:
        return ipaddress.ip_network(self.cidr).version


@dataclasses.dataclass(frozen=True, kw_only=True)
class Peer:
    """A rule's peer: selectors (either may be None) or an ipBlock alone."""

    pod_selector: Selector | None = None
    namespace_selector: Selector | None = None
    ip_block: IpBlock | None = None

    @property
    def is_selector(self) -> bool:
        return self.ip_block is None


@dataclasses.dataclass(frozen=True, kw_only=True)
class PortRange:
    """`protocol` (`tcp`, `udp`, `sctp`); `port` None: the whole protocol; `end_port` None:
    `port` alone."""

    protocol: str
    port: int | None = None
    end_port: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rule:
    """Allowed traffic: from/to `peers` (none: anybody) on `ports` (none: everything)."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PortRange, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Policy:
    """A valid MultiNetworkPolicy. `ingress`/`egress` None: the policy does not isolate that
    direction (not in `policyTypes`); a tuple (maybe empty: deny all) otherwise."""

    namespace: str
    name: str
    nad_keys: tuple[str, ...]  # from policy-for, in order, without duplicates
    pod_selector: Selector
    ingress: tuple[Rule, ...] | None = None
    egress: tuple[Rule, ...] | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: str) -> tuple[Rule, ...] | None:
        return self.ingress if direction == INGRESS else self.egress

    @property
    def has_selector_peers(self) -> bool:
        return any(peer.is_selector for rules in (self.ingress, self.egress) if rules
                   for rule in rules for peer in rule.peers)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Parsed:
    """What `parse` made of an object: the policy, or None when it is ignored or refused;
    `notices` say why, or what of an accepted policy is ignored."""

    namespace: str
    name: str
    policy: Policy | None
    notices: tuple[Notice, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class _Refused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _invalid(where: str, message: str) -> _Refused:
    return _Refused(INVALID_POLICY, f"{where}: {message}")


def parse(obj: Mapping[str, Any]) -> Parsed:
    """A MultiNetworkPolicy object (as the API returns it) in the model."""
    metadata = obj.get("metadata") or {}
    namespace = str(metadata.get("namespace") or "")
    name = str(metadata.get("name") or "")
    what = f"MultiNetworkPolicy {namespace}/{name}"
    annotations = metadata.get("annotations") or {}
    if POLICY_FOR_ANNOTATION not in annotations:
        return Parsed(namespace=namespace, name=name, policy=None, notices=(Notice(
            type=WARNING, reason=POLICY_FOR_MISSING,
            message=f"{what} has no annotation {POLICY_FOR_ANNOTATION} and applies to no "
                    "network: annotate it with <namespace>/<nad name>[,...]"),))
    notices: list[Notice] = []
    try:
        nad_keys = _policy_for(annotations[POLICY_FOR_ANNOTATION], namespace)
        policy = _policy(obj.get("spec"), namespace=namespace, name=name, nad_keys=nad_keys,
                         notices=notices, what=what)
    except _Refused as refused:
        return Parsed(namespace=namespace, name=name, policy=None, notices=(Notice(
            type=WARNING, reason=refused.reason,
            message=f"{what} is not applied: {refused.message}"),))
    return Parsed(namespace=namespace, name=name, policy=policy, notices=tuple(notices))


def _policy_for(value: Any, namespace: str) -> tuple[str, ...]:
    where = f"annotation {POLICY_FOR_ANNOTATION}"
    if not isinstance(value, str):
        raise _invalid(where, "must be a string")
    keys: list[str] = []
    for entry in "".join(value.split()).split(","):
        if not entry:
            continue
        parts = entry.split("/")
        if len(parts) == 1:
            parts = [namespace, *parts]
        if len(parts) != 2 or not all(_DNS_SUBDOMAIN.match(p) for p in parts):
            raise _invalid(where, f"{entry!r} is not <namespace>/<nad name> or <nad name>")
        key = "/".join(parts)
        if key not in keys:
            keys.append(key)
    if not keys:
        raise _invalid(where, "names no NAD; write <namespace>/<nad name>[,...]")
    return tuple(keys)


def _policy(spec: Any, *, namespace: str, name: str, nad_keys: tuple[str, ...],
            notices: list[Notice], what: str) -> Policy:
    if not isinstance(spec, Mapping):
        raise _invalid("spec", "is missing or not an object")
    if "podSelector" not in spec:
        raise _invalid("spec.podSelector", "is required ({} selects every pod)")
    pod_selector = _selector(spec["podSelector"], "spec.podSelector")
    rules = {INGRESS: _rules(spec.get("ingress"), "spec.ingress", "from"),
             EGRESS: _rules(spec.get("egress"), "spec.egress", "to")}
    types = spec.get("policyTypes")
    if not types:  # NetworkPolicy's defaulting (an empty list too)
        wanted = {INGRESS} | ({EGRESS} if rules[EGRESS] else set())
    else:
        if not isinstance(types, list) or any(t not in DIRECTIONS for t in types):
            raise _invalid("spec.policyTypes", f"{types!r}: each must be Ingress or Egress")
        wanted = set(types)
    for direction in DIRECTIONS:
        if direction not in wanted and rules[direction]:
            notices.append(Notice(
                type=WARNING, reason=FIELD_IGNORED,
                message=f"{what}: spec.{direction.lower()} is ignored: spec.policyTypes does "
                        f"not include {direction}; add it there to enforce these rules"))
    return Policy(namespace=namespace, name=name, nad_keys=nad_keys, pod_selector=pod_selector,
                  ingress=rules[INGRESS] if INGRESS in wanted else None,
                  egress=rules[EGRESS] if EGRESS in wanted else None)


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid(where, "must be a list")
    return value


def _rules(value: Any, where: str, peers_key: str) -> tuple[Rule, ...]:
    rules = []
    for i, rule in enumerate(_list(value, where)):
        here = f"{where}[{i}]"
        if not isinstance(rule, Mapping):
            raise _invalid(here, "must be an object")
        peers = tuple(_peer(p, f"{here}.{peers_key}[{j}]")
                      for j, p in enumerate(_list(rule.get(peers_key), f"{here}.{peers_key}")))
        ports = tuple(_port(p, f"{here}.ports[{j}]")
                      for j, p in enumerate(_list(rule.get("ports"), f"{here}.ports")))
        rules.append(Rule(peers=peers, ports=ports))
    return tuple(rules)


def _peer(value: Any, where: str) -> Peer:
    if not isinstance(value, Mapping):
        raise _invalid(where, "must be an object")
    pods, namespaces, block = (value.get(k) for k in ("podSelector", "namespaceSelector",
                                                       "ipBlock"))
    if block is not None:
        if pods is not None or namespaces is not None:
            raise _invalid(where, "ipBlock cannot be combined with podSelector or "
                                  "namespaceSelector; write them as separate peers")
        return Peer(ip_block=_ip_block(block, f"{where}.ipBlock"))
    if pods is None and namespaces is None:
        raise _invalid(where, "needs podSelector, namespaceSelector or ipBlock")
    return Peer(
        pod_selector=None if pods is None else _selector(pods, f"{where}.podSelector"),
        namespace_selector=(None if namespaces is None
                            else _selector(namespaces, f"{where}.namespaceSelector")))


def _ip_block(value: Any, where: str) -> IpBlock:
    if not isinstance(value, Mapping) or not isinstance(value.get("cidr"), str):
        raise _invalid(where, "needs cidr, a CIDR such as 10.1.0.0/16")
    cidr = _network(value["cidr"], f"{where}.cidr")
    excepts = []
    for i, text in enumerate(_list(value.get("except"), f"{where}.except")):
        if not isinstance(text, str):
            raise _invalid(f"{where}.except[{i}]", "must be a CIDR string")
        network = _network(text, f"{where}.except[{i}]")
        if (network.version != cidr.version or not network.subnet_of(cidr)  # type: ignore[arg-type]
                or network == cidr):
            raise _invalid(f"{where}.except[{i}]",
                           f"{text} must be a smaller range inside cidr {cidr}")
        if str(network) not in excepts:
            excepts.append(str(network))
    return IpBlock(cidr=str(cidr), excepts=tuple(excepts))


def _network(text: str, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        # host bits are cleared: OVN compares the masked address either way
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise _invalid(where, f"{text!r} is not a CIDR such as 10.1.0.0/16") from None


def _port(value: Any, where: str) -> PortRange:
    if not isinstance(value, Mapping):
        raise _invalid(where, "must be an object")
    protocol = value.get("protocol", "TCP")
    if protocol not in PROTOCOLS:
        raise _invalid(f"{where}.protocol", f"{protocol!r} must be TCP, UDP or SCTP")
    port, end = value.get("port"), value.get("endPort")
    if isinstance(port, str):
        raise _Refused(UNSUPPORTED_POLICY, (
            f"{where}.port {port!r} is a named port, which is not supported on secondary "
            "networks; use the port number"))
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                             or not 1 <= port <= 65535):
        raise _invalid(f"{where}.port", f"{port!r} must be a number in 1-65535")
    if end is not None:
        if port is None:
            raise _invalid(f"{where}.endPort", "needs port (the start of the range)")
        if isinstance(end, bool) or not isinstance(end, int) or not port <= end <= 65535:
            raise _invalid(f"{where}.endPort", f"{end!r} must be a number in {port}-65535")
        if end == port:
            end = None
    return PortRange(protocol=PROTOCOLS[protocol], port=port, end_port=end)


def _selector(value: Any, where: str) -> Selector:
    if not isinstance(value, Mapping):
        raise _invalid(where, "must be a label selector object")
    labels = value.get("matchLabels") or {}
    if not isinstance(labels, Mapping):
        raise _invalid(f"{where}.matchLabels", "must be a map of label keys to values")
    for key, label in labels.items():
        _label_key(key, f"{where}.matchLabels")
        _label_value(label, f"{where}.matchLabels[{key}]")
    requirements = []
    for i, item in enumerate(_list(value.get("matchExpressions"), f"{where}.matchExpressions")):
        here = f"{where}.matchExpressions[{i}]"
        if not isinstance(item, Mapping):
            raise _invalid(here, "must be an object with key, operator and values")
        key, operator = item.get("key"), item.get("operator")
        _label_key(key, here)
        values = _list(item.get("values"), f"{here}.values")
        if operator not in OPERATORS:
            raise _invalid(f"{here}.operator", f"{operator!r} must be one of "
                                               f"{', '.join(OPERATORS)}")
        if operator in ("In", "NotIn") and not values:
            raise _invalid(f"{here}.values", f"must not be empty with operator {operator}")
        if operator in ("Exists", "DoesNotExist") and values:
            raise _invalid(f"{here}.values", f"must be empty with operator {operator}")
        for value_ in values:
            _label_value(value_, f"{here}.values")
        requirements.append(Requirement(key=str(key), operator=operator,
                                        values=tuple(sorted(values))))
    return Selector(match_labels=tuple(sorted(labels.items())),
                    match_expressions=tuple(sorted(requirements, key=Requirement.key_string)))


def _label_key(key: Any, where: str) -> None:
    """Kubernetes' qualified name: `[<DNS subdomain>/]<name>`, name up to 63 characters."""
    if isinstance(key, str):
        prefix, _, name = key.rpartition("/")
        if (_QUALIFIED_NAME.match(name) and len(name) <= 63
                and (not prefix or (_DNS_SUBDOMAIN.match(prefix) and len(prefix) <= 253))):
            return
    raise _invalid(where, f"{key!r} is not a valid label key")


def _label_value(value: Any, where: str) -> None:
    if isinstance(value, str) and (value == "" or (_QUALIFIED_NAME.match(value)
                                                   and len(value) <= 63)):
        return
    raise _invalid(where, f"{value!r} is not a valid label value")
