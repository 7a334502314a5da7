"""The northbound form of MultiNetworkPolicies: port groups, ACLs and address sets.

Pure: plain facts in (networks, pods with their ports and IPs, namespaces' labels, policies
as `policies.parse` made them), `desired.PolicyState` out, with what became of each policy
(`Outcome`: the networks it is applied to, notices for Events). The caller passes everything
it knows and converges the result; nothing here is incremental, so no event can be missed
(1,000 pods, 100 policies: ~50 ms). In the controller:

    parsed = [policies.parse(obj) for obj in multi_network_policies]
    result = acls.state(networks=acls.networks(nad_configs), pods=[acls.Pod(...)],
                        namespaces={name: labels}, policies=[p.policy for p in parsed if p.policy])
    outcome = northbound.converge_policies(result.state)  # blocking: in the NB executor
    # Events: each parsed.notices and result.outcomes[key].notices, on the policy;
    # outcome.missing_ports: converge again once those pods' ports are written

The rows are OVN-Kubernetes' (go-controller `base_network_controller_policy.go`,
`gress_policy.go`, `pod_selector_address_set.go`, `libovsdb/ops/db_object_types.go`,
`libovsdb/util/acl.go`, and docs/design/acls.md; snapshot of 2024-12), per network N whose
owner-controller is `<N>-network-controller` (`naming.controller_name`); ids are
`k8s.ovn.org/id`, names of port groups and address sets are `naming.hash_for_ovn(id)`:

- per policy, a port group `<ctrl>:NetworkPolicy:<ns>:<policy>` (external_ids `name` =
  `<ns>:<policy>`) of the logical switch ports of the selected pods on N, holding the rule ACLs;
- per namespace with a policy on N, and per direction, a default-deny port group
  `<ctrl>:NetpolNamespace:<ns>:<Ingress|Egress>` (`name`, `direction`) of the ports of the
  pods isolated in that direction, holding three ACLs (`type` defaultDeny, arpAllow or
  stateful, id `<pg id>:<type>`, named `NP:<ns>:<direction>`):
  priority 1000 `drop` on `outport == @<pg>` (Ingress) or `inport == @<pg>` (Egress),
  priority 1001 `allow` on the same `&& (arp || nd)`, and priority 1001 `allow-related` on
  `0` (nothing: it makes the switch stateful, so that replies to the isolated pods' own
  connections pass even when no rule ACL is allow-related; not in OVN-K, whose default
  network's switches always have stateful ACLs);
- per rule (index i of `ingress` or `egress`), per protocol of its ports (`None` without
  ports): one ACL for its selector peers, or for anybody when it has no peers
  (ip-block-index -1), and one per ipBlock peer (ip-block-index j), id
  `<ctrl>:NetworkPolicy:<ns>:<policy>:<direction>:<i>:<protocol>:<j>` (keys `direction`,
  `gress-index`, `port-policy-protocol`, `ip-block-index`), named `NP:<ns>:<policy>:<dir>:<i>`,
  priority 1001, `allow-related` (stateful: replies pass), match
  `<peers> && <ports> && <outport|inport> == @<policy pg>`; peers are
  `ip4.src == {$a.., $a..}` (`ip6`, `dst` for Egress, both families in parentheses joined by
  `||`), `ip4.src == 10.0.0.0/16 && ip4.src != {10.0.1.0/24}` for an ipBlock, `ip4` /
  `ip6` / `(ip4 || ip6)` for anybody; ports are `tcp`, `tcp && tcp.dst==80`,
  `tcp && tcp.dst=={80,443}`, `tcp && 1000<=tcp.dst<=2000`, several joined by `||`;
- per selector peer and IP family of N, an address set `<ctrl>:PodSelector:<key>:<v4|v6>`
  (`name` = key, `ip-family`) of the IPs the matching pods have on N, shared by every rule
  with the same peer; key = `<namespace or namespaceSelector>_<podSelector>` in OVN-K's text
  (`Selector.key_string`);
- Ingress ACLs are `to-lport`; Egress ACLs `from-lport` with `options:apply-after-lb=true`
  (OVN-K applies egress policy after load balancing). The sandbox's OVN (23.03, NB schema
  7.0.0) has no ACL `tier` column, so none is set; no `meter`/`log` (OVN-K sets them for ACL
  logging only).

Every row also carries `naming.NETWORK_KEY` and our ownership marker. So the ACL count grows
with the policies' rules, never with the pods: a pod or label change moves only port group
and address set members. Our choices where OVN-K differs:
- a `namespaceSelector` peer without `podSelector` uses a pod-selector address set with
  podSelector `{}` (OVN-K lists one address set per selected namespace in the ACL): a
  namespace label flip then changes address set members, never an ACL's match;
- a policy's rows exist as soon as it applies to a network, whether it selects pods or not
  (as OVN-K), so they do not come and go with pods; default-deny port groups exist while the
  namespace has a policy on the network;
- a network without subnets has no address sets: there a policy with selector peers is not
  applied (Warning), and "anybody" is `(ip4 || ip6)`.

Names are hashes: before a policy's rows are added, each name (and ACL id) is checked to be
free or held by a row with the very same external_ids (a shared row). A collision refuses
the later policy on that network with a Warning, never merges two policies' rows.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping

from ovnk_secondary import nads, naming
from ovnk_secondary import policies as mnp
from ovnk_secondary.northbound import desired

DEFAULT_DENY_PRIORITY = 1000
DEFAULT_ALLOW_PRIORITY = 1001
# Matches nothing: the ACL exists for its action. OVN sends a switch's traffic through conntrack
# only when one of its ACLs is allow-related (ovn-nb(5), ACL action `allow`); a deny-only policy
# has none, and then the replies to an isolated pod's own (allowed) connections hit the drop.
# OVN-K's default network always has stateful ACLs on its switches; a secondary one may not.
STATEFUL_MATCH = "0"
ARP_ALLOW_MATCH = "(arp || nd)"
NO_PROTOCOL = "None"  # OVN-K's port-policy-protocol of a rule without ports
NETWORK_POLICY = "NetworkPolicy"
NETPOL_NAMESPACE = "NetpolNamespace"
POD_SELECTOR = "PodSelector"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Network:
    """A network as policies see it: its NADs and the IP families of its subnets (none: no
    IPAM)."""

    name: str
    nad_keys: frozenset[str]
    families: frozenset[int] = frozenset()


def networks(configs: Iterable[nads.NetworkConfig]) -> list[Network]:
    """One `Network` per network name from its NADs' configs (which agree on subnets)."""
    nad_keys: dict[str, set[str]] = collections.defaultdict(set)
    families: dict[str, frozenset[int]] = {}
    for config in configs:
        nad_keys[config.name].add(config.nad_key)
        families[config.name] = frozenset(s.version for s in config.subnets)
    return [Network(name=n, nad_keys=frozenset(k), families=families[n])
            for n, k in sorted(nad_keys.items())]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PodPort:
    """A pod's logical switch port on one NAD and its IPs (bare or CIDR; none yet: empty)."""

    name: str
    ips: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Pod:
    namespace: str
    name: str
    labels: Mapping[str, str]
    ports: Mapping[str, PodPort]  # by NAD key


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outcome:
    """What became of one policy: the networks it is applied to, and what to tell."""

    networks: tuple[str, ...] = ()
    notices: tuple[mnp.Notice, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Result:
    state: desired.PolicyState
    outcomes: Mapping[str, Outcome]  # by policy key `<namespace>/<name>`


def state(
    *,
    networks: Iterable[Network],
    pods: Iterable[Pod],
    namespaces: Mapping[str, Mapping[str, str]],
    policies: Iterable[mnp.Policy],
) -> Result:
    """The rows enforcing `policies` over `pods`; `namespaces`: every namespace's labels."""
    by_nad = {nad: network for network in networks for nad in network.nad_keys}
    builder = _Builder(pods=pods, namespaces=namespaces)
    outcomes: dict[str, Outcome] = {}
    for policy in sorted({p.key: p for p in policies}.values(), key=lambda p: p.key):
        targets = sorted({by_nad[k].name: by_nad[k] for k in policy.nad_keys
                          if k in by_nad}.items())
        notices: list[mnp.Notice] = []
        applied: list[str] = []
        if not targets:
            notices.append(mnp.Notice(
                type=mnp.NORMAL, reason=mnp.NO_NETWORK,
                message=f"MultiNetworkPolicy {policy.key}: {mnp.POLICY_FOR_ANNOTATION} "
                        f"names no NAD of an {nads.CNI_TYPE} network "
                        f"({', '.join(policy.nad_keys)}); not applied here"))
        for name, network in targets:
            if not network.families and policy.has_selector_peers:
                notices.append(mnp.Notice(
                    type=mnp.WARNING, reason=mnp.NOT_APPLIED,
                    message=f"MultiNetworkPolicy {policy.key} is not applied to network "
                            f"{name}: the network has no subnets (no IPAM), so its pods' IPs "
                            "are unknown and only ipBlock peers are valid there"))
            elif (clash := builder.add(policy, network)) is not None:
                notices.append(mnp.Notice(
                    type=mnp.WARNING, reason=mnp.NAME_COLLISION,
                    message=f"MultiNetworkPolicy {policy.key} is not applied to network "
                            f"{name}: its row {clash} has the hashed name of another row; "
                            "rename the policy"))
            else:
                applied.append(name)
        outcomes[policy.key] = Outcome(networks=tuple(applied), notices=tuple(notices))
    return Result(state=builder.finish(), outcomes=outcomes)


def _ids(network: str, owner_type: str, *fields: tuple[str, str]) -> dict[str, str]:
    """OVN-K's DbObjectIDs external_ids (id = controller, type, values in key order) and ours."""
    controller = naming.controller_name(network)
    return {
        naming.OWNER_CONTROLLER_KEY: controller,
        naming.OWNER_TYPE_KEY: owner_type,
        **dict(fields),
        naming.PRIMARY_ID_KEY: ":".join([controller, owner_type, *(v for _, v in fields)]),
        naming.NETWORK_KEY: network,
        naming.OWNER_KEY: naming.OWNER_VALUE,
    }


def _port_match(direction: str, port_group: str) -> str:
    return (f"outport == @{port_group}" if direction == mnp.INGRESS
            else f"inport == @{port_group}")


def _acl(port_group: str, direction: str, ids: dict[str, str], *, priority: int, match: str,
         action: str, name: str) -> desired.Acl:
    return desired.Acl(
        id=ids[naming.PRIMARY_ID_KEY], port_group=port_group, priority=priority,
        direction="to-lport" if direction == mnp.INGRESS else "from-lport",
        match=match, action=action, name=name[:63],
        options={} if direction == mnp.INGRESS else {"apply-after-lb": "true"},
        external_ids=ids)


def _all_ips(families: frozenset[int]) -> str:
    return {frozenset({4}): "ip4", frozenset({6}): "ip6"}.get(families, "(ip4 || ip6)")


def _l4_matches(ports: tuple[mnp.PortRange, ...]) -> list[tuple[str, str | None]]:
    """(protocol, match) per protocol (sorted); `(None, None)` for a rule without ports."""
    if not ports:
        return [(NO_PROTOCOL, None)]
    by_protocol: dict[str, list[mnp.PortRange]] = collections.defaultdict(list)
    for port in ports:
        by_protocol[port.protocol].append(port)
    matches: list[tuple[str, str | None]] = []
    for protocol, entries in sorted(by_protocol.items()):
        if any(e.port is None for e in entries):  # the whole protocol
            matches.append((protocol, protocol))
            continue
        singles = list(dict.fromkeys(str(e.port) for e in entries if e.end_port is None))
        parts = []
        if singles:
            listed = singles[0] if len(singles) == 1 else "{" + ",".join(singles) + "}"
            parts.append(f"{protocol}.dst=={listed}")
        parts += dict.fromkeys(f"{e.port}<={protocol}.dst<={e.end_port}"
                               for e in entries if e.end_port is not None)
        joined = parts[0] if len(parts) == 1 else "(" + " || ".join(parts) + ")"
        matches.append((protocol, f"{protocol} && {joined}"))
    return matches


def _block_match(block: mnp.IpBlock, side: str) -> str:
    field = f"ip{block.version}.{side}"
    match = f"{field} == {block.cidr}"
    if block.excepts:
        match += f" && {field} != {{{', '.join(block.excepts)}}}"
    return match


def _bare_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_interface(text).ip


def _clash(table: Mapping[str, desired.PortGroup | desired.Acl | desired.AddressSet],
           rows: list[tuple[str, Mapping[str, str]]]) -> str | None:
    """The first key of `rows` held (in `table` or earlier in `rows`) by a row with other
    external_ids, i.e. by another object: a hash collision."""
    seen: dict[str, Mapping[str, str]] = {}
    for key, external_ids in rows:
        existing = table.get(key)
        other = existing.external_ids if existing is not None else seen.get(key)
        if other is not None and other != external_ids:
            return key
        seen[key] = external_ids
    return None


class _Builder:
    """Accumulates rows policy by policy, refusing a policy whose rows would take a name held
    by a different row."""

    def __init__(self, *, pods: Iterable[Pod], namespaces: Mapping[str, Mapping[str, str]]):
        self.pods_by_namespace: dict[str, list[Pod]] = collections.defaultdict(list)
        for pod in pods:
            self.pods_by_namespace[pod.namespace].append(pod)
        self.namespaces = namespaces
        self.port_groups: dict[str, desired.PortGroup] = {}
        self.acls: dict[str, desired.Acl] = {}
        self.address_sets: dict[str, desired.AddressSet] = {}
        # default-deny port group name -> the ports it isolates
        self.isolated: dict[str, set[str]] = {}
        self._members: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {}

    # -- facts ------------------------------------------------------------------------

    def _ports(self, pod: Pod, network: Network) -> list[PodPort]:
        return [port for nad, port in pod.ports.items() if nad in network.nad_keys]

    def _selected(self, policy: mnp.Policy, network: Network) -> tuple[str, ...]:
        return tuple(sorted({  # once: a KubeVirt VM's pods may share its port (`migration`)
            port.name for pod in self.pods_by_namespace.get(policy.namespace, ())
            if policy.pod_selector.matches(pod.labels) for port in self._ports(pod, network)}))

    def _peer_key(self, peer: mnp.Peer, namespace: str) -> str:
        """OVN-K's getPodSelectorKey; a namespaceSelector alone selects every pod there."""
        space = (namespace if peer.namespace_selector is None
                 else peer.namespace_selector.key_string())
        return f"{space}_{(peer.pod_selector or mnp.EVERYTHING).key_string()}"

    def _peer_ips(self, peer: mnp.Peer, namespace: str,
                  network: Network) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(IPv4, IPv6) addresses of the peer's pods on `network`, computed once per peer."""
        key = (network.name, self._peer_key(peer, namespace))
        if key in self._members:
            return self._members[key]
        selector = peer.namespace_selector
        if selector is None:
            spaces = [namespace]
        else:
            known = set(self.namespaces) | set(self.pods_by_namespace)
            spaces = [n for n in known if selector.matches(self.namespaces.get(n, {}))]
        pod_selector = peer.pod_selector or mnp.EVERYTHING
        found: dict[int, set[str]] = {4: set(), 6: set()}
        for space in spaces:
            for pod in self.pods_by_namespace.get(space, ()):
                if pod_selector.matches(pod.labels):
                    for port in self._ports(pod, network):
                        for ip in port.ips:
                            address = _bare_ip(ip)
                            found[address.version].add(str(address))
        members = (tuple(sorted(found[4], key=ipaddress.ip_address)),
                   tuple(sorted(found[6], key=ipaddress.ip_address)))
        self._members[key] = members
        return members

    # -- rows of one policy on one network ------------------------------------------

    def _rows(self, policy: mnp.Policy, network: Network) -> tuple[
            list[desired.PortGroup], list[desired.Acl], list[desired.AddressSet],
            dict[str, str], tuple[str, ...]]:
        """The policy's rows on `network`, the names of its namespace's default-deny port
        groups by direction, and the ports it selects."""
        net = network.name
        groups, acls, sets = [], [], []
        deny: dict[str, str] = {}
        for direction in mnp.DIRECTIONS:
            ids = _ids(net, NETPOL_NAMESPACE, (naming.OBJECT_NAME_KEY, policy.namespace),
                       ("direction", direction))
            group = desired.PortGroup(name=naming.hash_for_ovn(ids[naming.PRIMARY_ID_KEY]),
                                      external_ids=ids)
            groups.append(group)
            deny[direction] = group.name
            lport = _port_match(direction, group.name)
            for kind, priority, match, action in (
                    ("defaultDeny", DEFAULT_DENY_PRIORITY, lport, "drop"),
                    ("arpAllow", DEFAULT_ALLOW_PRIORITY, f"{lport} && {ARP_ALLOW_MATCH}",
                     "allow"),
                    ("stateful", DEFAULT_ALLOW_PRIORITY, STATEFUL_MATCH, "allow-related")):
                acls.append(_acl(
                    group.name, direction,
                    _ids(net, NETPOL_NAMESPACE, (naming.OBJECT_NAME_KEY, policy.namespace),
                         ("direction", direction), ("type", kind)),
                    priority=priority, match=match, action=action,
                    name=f"NP:{policy.namespace}:{direction}"))
        object_name = f"{policy.namespace}:{policy.name}"
        ids = _ids(net, NETWORK_POLICY, (naming.OBJECT_NAME_KEY, object_name))
        selected = self._selected(policy, network)
        group = desired.PortGroup(name=naming.hash_for_ovn(ids[naming.PRIMARY_ID_KEY]),
                                  ports=selected, external_ids=ids)
        groups.append(group)
        for direction in mnp.DIRECTIONS:
            side = "src" if direction == mnp.INGRESS else "dst"
            lport = _port_match(direction, group.name)
            for index, rule in enumerate(policy.rules(direction) or ()):
                l3 = None
                selectors = [p for p in rule.peers if p.is_selector]
                if not rule.peers:
                    l3 = _all_ips(network.families)
                elif selectors:
                    named: dict[int, list[str]] = {4: [], 6: []}
                    for peer in selectors:
                        found = self._peer_ips(peer, policy.namespace, network)
                        for family, addresses in zip((4, 6), found, strict=True):
                            if family not in network.families:
                                continue
                            ids = _ids(net, POD_SELECTOR,
                                       (naming.OBJECT_NAME_KEY,
                                        self._peer_key(peer, policy.namespace)),
                                       ("ip-family", f"v{family}"))
                            address_set = desired.AddressSet(
                                name=naming.hash_for_ovn(ids[naming.PRIMARY_ID_KEY]),
                                addresses=addresses, external_ids=ids)
                            sets.append(address_set)
                            named[family].append(f"${address_set.name}")
                    parts = [f"ip{family}.{side} == {{{', '.join(sorted(set(names)))}}}"
                             for family, names in named.items() if names]
                    l3 = parts[0] if len(parts) == 1 else f"({' || '.join(parts)})"
                blocks = [p.ip_block for p in rule.peers if p.ip_block is not None]
                for protocol, l4 in _l4_matches(rule.ports):
                    peers = [(-1, l3)] if l3 is not None else []
                    peers += [(j, _block_match(b, side)) for j, b in enumerate(blocks)]
                    for block_index, peer_match in peers:
                        acls.append(_acl(
                            group.name, direction,
                            _ids(net, NETWORK_POLICY, (naming.OBJECT_NAME_KEY, object_name),
                                 ("direction", direction), ("gress-index", str(index)),
                                 ("port-policy-protocol", protocol),
                                 ("ip-block-index", str(block_index))),
                            priority=DEFAULT_ALLOW_PRIORITY,
                            match=" && ".join(m for m in (peer_match, l4, lport) if m),
                            action="allow-related",
                            name=f"NP:{object_name}:{direction}:{index}"))
        return groups, acls, sets, deny, selected

    def add(self, policy: mnp.Policy, network: Network) -> str | None:
        """Add the policy's rows on `network`; or, when a name is held by a different row,
        add nothing and return that name."""
        groups, acls, sets, deny, selected = self._rows(policy, network)
        clash = (_clash(self.port_groups, [(g.name, g.external_ids) for g in groups])
                 or _clash(self.acls, [(a.id, a.external_ids) for a in acls])
                 or _clash(self.address_sets, [(s.name, s.external_ids) for s in sets]))
        if clash is not None:
            return clash
        self.port_groups.update((g.name, g) for g in groups)
        self.acls.update((a.id, a) for a in acls)
        self.address_sets.update((s.name, s) for s in sets)
        for direction, name in deny.items():
            self.isolated.setdefault(name, set())
            if policy.rules(direction) is not None:
                self.isolated[name].update(selected)
        return None

    def finish(self) -> desired.PolicyState:
        groups = {name: (dataclasses.replace(group, ports=tuple(sorted(self.isolated[name])))
                         if name in self.isolated else group)
                  for name, group in self.port_groups.items()}
        return desired.PolicyState(port_groups=groups, acls=dict(self.acls),
                                   address_sets=dict(self.address_sets))
