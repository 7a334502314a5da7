"""MultiNetworkPolicies as NB rows: OVN-K's port groups, ACLs and address sets, whose number
depends on the policies alone, never on the pods."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import hypothesis
import netaddr
import pytest
from hypothesis import strategies as st

from ovnk_secondary import nads, naming, policies
from ovnk_secondary.northbound import acls, desired

L2 = acls.Network(name="l2-network", nad_keys=frozenset({"ns1/l2", "ns2/l2"}),
                  families=frozenset({4}))
DUAL = acls.Network(name="dual", nad_keys=frozenset({"ns1/dual"}), families=frozenset({4, 6}))
BARE = acls.Network(name="bare", nad_keys=frozenset({"ns1/bare"}))  # no subnets: no IPAM
NETWORKS = (L2, DUAL, BARE)
NAMESPACES = {"ns1": {"team": "a"}, "ns2": {"team": "b"}}


def _policy(spec: dict[str, Any], *, policy_for: str = "ns1/l2", namespace: str = "ns1",
            name: str = "pol") -> policies.Policy:
    parsed = policies.parse({"metadata": {
        "namespace": namespace, "name": name,
        "annotations": {policies.POLICY_FOR_ANNOTATION: policy_for}}, "spec": spec})
    assert parsed.policy is not None, parsed.notices
    return parsed.policy


def _pod(namespace: str, name: str, labels: dict[str, str], index: int,
         nads_: Sequence[str] = ("ns1/l2",)) -> acls.Pod:
    ports = {}
    for nad in nads_:
        ips = {"ns1/l2": (f"10.100.0.{index}/24",), "ns2/l2": (f"10.100.0.{index}/24",),
               "ns1/dual": (f"10.200.0.{index}/24", f"fd00::{index:x}/64"),
               "ns1/bare": ()}[nad]
        ports[nad] = acls.PodPort(name=naming.pod_port_name(nad, namespace, name), ips=ips)
    return acls.Pod(namespace=namespace, name=name, labels=labels, ports=ports)


def _state(pods: Sequence[acls.Pod], *policy_list: policies.Policy) -> acls.Result:
    return acls.state(networks=NETWORKS, pods=pods, namespaces=NAMESPACES,
                      policies=policy_list)


def _kind(rows: dict[str, Any], owner_type: str) -> list[Any]:
    return [r for r in rows.values() if r.external_ids[naming.OWNER_TYPE_KEY] == owner_type]


DB = _pod("ns1", "db", {"app": "db"}, 5)
WEB = _pod("ns1", "web", {"app": "web"}, 6)
OTHER = _pod("ns2", "other", {"app": "web"}, 7, ("ns2/l2",))


def test_rows_have_ovnks_names_ids_priorities_and_matches() -> None:
    policy = _policy({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{
        "from": [{"podSelector": {"matchLabels": {"app": "web"}}},
                 {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}],
        "ports": [{"port": 5432}]}]})
    result = _state([DB, WEB, OTHER], policy)
    assert result.outcomes == {"ns1/pol": acls.Outcome(networks=("l2-network",))}
    state = result.state
    controller = "l2-network-network-controller"
    pg_id = f"{controller}:NetworkPolicy:ns1:pol"
    pg = state.port_groups[naming.hash_for_ovn(pg_id)]
    assert pg.ports == ("ns1.l2_ns1_db",)
    assert pg.external_ids == {
        "k8s.ovn.org/owner-controller": controller, "k8s.ovn.org/owner-type": "NetworkPolicy",
        "k8s.ovn.org/name": "ns1:pol", "k8s.ovn.org/id": pg_id,
        "k8s.ovn.org/network": "l2-network", naming.OWNER_KEY: naming.OWNER_VALUE}
    web_id = f"{controller}:PodSelector:ns1_LS{{ML:{{app: web,}},}}:v4"
    web = state.address_sets[naming.hash_for_ovn(web_id)]
    assert web.addresses == ("10.100.0.6",)  # not ns2's pod: a podSelector is the namespace's
    assert web.external_ids["k8s.ovn.org/name"] == "ns1_LS{ML:{app: web,},}"
    assert web.external_ids["ip-family"] == "v4"
    selectors = state.acls[f"{pg_id}:Ingress:0:tcp:-1"]
    assert (selectors.priority, selectors.direction, selectors.action, selectors.options) == (
        1001, "to-lport", "allow-related", {})
    assert selectors.match == (f"ip4.src == {{${web.name}}} && tcp && tcp.dst==5432 && "
                               f"outport == @{pg.name}")
    assert selectors.name == "NP:ns1:pol:Ingress:0"
    assert selectors.external_ids["gress-index"] == "0"
    assert selectors.external_ids["ip-block-index"] == "-1"
    assert selectors.external_ids["port-policy-protocol"] == "tcp"
    block = state.acls[f"{pg_id}:Ingress:0:tcp:0"]
    assert block.match == ("ip4.src == 192.168.0.0/16 && ip4.src != {192.168.1.0/24} && "
                           f"tcp && tcp.dst==5432 && outport == @{pg.name}")
    for direction, lport, options in (("Ingress", "outport", {}),
                                      ("Egress", "inport", {"apply-after-lb": "true"})):
        deny_id = f"{controller}:NetpolNamespace:ns1:{direction}"
        deny = state.port_groups[naming.hash_for_ovn(deny_id)]
        assert deny.external_ids["direction"] == direction
        drop = state.acls[f"{deny_id}:defaultDeny"]
        arp = state.acls[f"{deny_id}:arpAllow"]
        assert (drop.priority, drop.action, drop.match, drop.options) == (
            1000, "drop", f"{lport} == @{deny.name}", options)
        assert (arp.priority, arp.action, arp.match) == (
            1001, "allow", f"{lport} == @{deny.name} && (arp || nd)")
        stateful = state.acls[f"{deny_id}:stateful"]  # turns conntrack on: replies pass
        assert (stateful.priority, stateful.action, stateful.match) == (
            1001, "allow-related", "0")
        assert drop.name == arp.name == stateful.name == f"NP:ns1:{direction}"
    isolated = {d: state.port_groups[naming.hash_for_ovn(
        f"{controller}:NetpolNamespace:ns1:{d}")].ports for d in ("Ingress", "Egress")}
    assert isolated == {"Ingress": ("ns1.l2_ns1_db",), "Egress": ()}
    assert len(state.acls) == 8 and len(state.port_groups) == 3
    assert len(state.address_sets) == 1
    assert all(r.external_ids[naming.OWNER_KEY] == naming.OWNER_VALUE
               for rows in (state.port_groups, state.acls, state.address_sets)
               for r in rows.values())


def test_a_policy_selecting_no_pod_still_has_its_rows() -> None:
    """Decided as OVN-K: rows exist as long as the policy applies, so pods and labels coming
    and going move members only."""
    policy = _policy({"podSelector": {"matchLabels": {"app": "nobody"}},
                      "ingress": [{"from": [{"podSelector": {}}]}]})
    state = _state([DB, WEB], policy).state
    assert _counts(state) == _counts(_state([], policy).state) == (3, 7, 1)
    assert all(not g.ports for g in state.port_groups.values())
    assert [s.addresses for s in state.address_sets.values()] == [("10.100.0.5", "10.100.0.6")]


@pytest.mark.parametrize(("ports", "match"), [
    ([], None),
    ([{"port": 80}], "tcp && tcp.dst==80"),
    ([{"port": 80}, {"port": 443}, {"port": 80}], "tcp && tcp.dst=={80,443}"),
    ([{"port": 1000, "endPort": 2000}], "tcp && 1000<=tcp.dst<=2000"),
    ([{"port": 53}, {"port": 1000, "endPort": 2000}],
     "tcp && (tcp.dst==53 || 1000<=tcp.dst<=2000)"),
    ([{"port": 80}, {"protocol": "TCP"}], "tcp"),  # the whole protocol wins
    ([{"protocol": "SCTP", "port": 9}], "sctp && sctp.dst==9"),
])
def test_ports_become_l4_matches(ports: list[dict[str, Any]], match: str | None) -> None:
    policy = _policy({"podSelector": {}, "ingress": [{"ports": ports}]})
    [acl] = _kind(dict(_state([DB], policy).state.acls), "NetworkPolicy")
    pg = acl.port_group
    assert acl.match == " && ".join(m for m in ("ip4", match, f"outport == @{pg}") if m)


def test_one_acl_per_protocol_and_peer_kind() -> None:
    policy = _policy({"podSelector": {}, "egress": [{
        "to": [{"podSelector": {}}, {"namespaceSelector": {}},
               {"ipBlock": {"cidr": "1.0.0.0/8"}}, {"ipBlock": {"cidr": "2.0.0.0/8"}}],
        "ports": [{"protocol": "UDP", "port": 53}, {"port": 53}]}]})
    rules = _kind(dict(_state([DB], policy).state.acls), "NetworkPolicy")
    assert sorted(a.id.split(":", 4)[-1] for a in rules) == [
        f"Egress:0:{protocol}:{index}" for protocol in ("tcp", "udp")
        for index in ("-1", "0", "1")]
    selectors = next(a for a in rules if a.id.endswith(":tcp:-1"))
    assert selectors.match.startswith("ip4.dst == {$a") and ", $a" in selectors.match
    assert selectors.direction == "from-lport"
    assert selectors.options == {"apply-after-lb": "true"}


def test_a_namespace_selector_takes_every_pod_of_the_selected_namespaces() -> None:
    policy = _policy({"podSelector": {}, "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]},
        {"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}},
                   "podSelector": {"matchLabels": {"app": "db"}}}]}]})
    state = _state([DB, WEB, OTHER], policy).state
    by_key = {s.external_ids["k8s.ovn.org/name"]: s.addresses
              for s in state.address_sets.values()}
    assert by_key == {"LS{ML:{team: b,},}_LS{}": ("10.100.0.7",),
                      "LS{ML:{team: b,},}_LS{ML:{app: db,},}": ()}


def test_dual_stack_networks_get_a_set_per_family_and_both_in_the_match() -> None:
    policy = _policy({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}, {}]},
                     policy_for="ns1/dual")
    pods = [_pod("ns1", "a", {}, 5, ("ns1/dual",))]
    state = _state(pods, policy).state
    v4, v6 = sorted(state.address_sets.values(), key=lambda s: s.external_ids["ip-family"])
    assert (v4.addresses, v6.addresses) == (("10.200.0.5",), ("fd00::5",))
    rules = sorted(_kind(dict(state.acls), "NetworkPolicy"), key=lambda a: a.id)
    assert rules[0].match.startswith(f"(ip4.src == {{${v4.name}}} || ip6.src == {{${v6.name}}})")
    assert rules[1].match.startswith("(ip4 || ip6) && outport")  # the rule without peers


def test_only_the_pods_interfaces_on_the_policys_networks_are_in_its_port_groups() -> None:
    both = _pod("ns1", "both", {"app": "db"}, 9, ("ns1/l2", "ns1/dual"))
    result = _state([both], _policy({"podSelector": {}}, policy_for="ns1/dual"))
    ports = {p for g in result.state.port_groups.values() for p in g.ports}
    assert ports == {"ns1.dual_ns1_both"}
    assert {g.external_ids[naming.NETWORK_KEY]
            for g in result.state.port_groups.values()} == {"dual"}


def test_a_policy_for_two_networks_gets_rows_on_each() -> None:
    both = _pod("ns1", "both", {}, 9, ("ns1/l2", "ns1/dual"))
    result = _state([both], _policy({"podSelector": {}}, policy_for="ns1/l2, dual"))
    assert result.outcomes["ns1/pol"].networks == ("dual", "l2-network")
    assert len(result.state.port_groups) == 6


def test_ipam_less_networks_take_ipblock_peers_only() -> None:
    selectors = _policy({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]},
                        policy_for="ns1/bare, ns1/l2", name="selectors")
    blocks = _policy({"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "192.168.0.0/24"}}]}, {}]}, policy_for="ns1/bare", name="blocks")
    pod = _pod("ns1", "vm", {}, 1, ("ns1/bare",))
    result = _state([pod], selectors, blocks)
    refused = result.outcomes["ns1/selectors"]
    assert refused.networks == ("l2-network",)  # applied where there are IPs
    [notice] = refused.notices
    assert (notice.type, notice.reason) == (policies.WARNING, policies.NOT_APPLIED)
    assert "network bare" in notice.message and "only ipBlock peers" in notice.message
    assert result.outcomes["ns1/blocks"] == acls.Outcome(networks=("bare",))
    matches = sorted(a.match.split(" && outport")[0] for a in result.state.acls.values()
                     if a.external_ids[naming.NETWORK_KEY] == "bare"
                     and a.external_ids[naming.OWNER_TYPE_KEY] == "NetworkPolicy")
    assert matches == ["(ip4 || ip6)", "ip4.src == 192.168.0.0/24"]


def test_a_policy_for_no_network_of_ours_says_so() -> None:
    result = _state([DB], _policy({"podSelector": {}}, policy_for="ns1/sriov"))
    assert result.state == desired.PolicyState()
    [notice] = result.outcomes["ns1/pol"].notices
    assert (notice.type, notice.reason) == (policies.NORMAL, policies.NO_NETWORK)
    assert "ns1/sriov" in notice.message


def test_a_hash_collision_refuses_the_later_policy_and_keeps_the_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Names are hashes (as OVN-K's): two policies whose port groups would share a name are
    never merged; the later one is refused with a Warning."""
    first, second = (_policy({"podSelector": {}}, name=n) for n in ("first", "second"))
    alone = _state([DB], first).state
    real = naming.hash_for_ovn
    taken = real("l2-network-network-controller:NetworkPolicy:ns1:first")
    monkeypatch.setattr(naming, "hash_for_ovn", lambda text: taken if text.endswith(
        ":NetworkPolicy:ns1:second") else real(text))
    result = _state([DB], first, second)
    assert result.state == alone
    assert result.outcomes["ns1/first"] == acls.Outcome(networks=("l2-network",))
    [notice] = result.outcomes["ns1/second"].notices
    assert result.outcomes["ns1/second"].networks == ()
    assert (notice.type, notice.reason) == (policies.WARNING, policies.NAME_COLLISION)
    assert taken in notice.message


def test_networks_are_built_from_nad_configs() -> None:
    configs = [
        nads.NetworkConfig(name="n", topology="layer2", nad_key="a/n",
                           subnets=(netaddr.IPNetwork("10.0.0.0/24"),
                                    netaddr.IPNetwork("fd00::/64"))),
        nads.NetworkConfig(name="n", topology="layer2", nad_key="b/n",
                           subnets=(netaddr.IPNetwork("10.0.0.0/24"),
                                    netaddr.IPNetwork("fd00::/64"))),
        nads.NetworkConfig(name="m", topology="localnet", nad_key="a/m")]
    assert acls.networks(configs) == [
        acls.Network(name="m", nad_keys=frozenset({"a/m"})),
        acls.Network(name="n", nad_keys=frozenset({"a/n", "b/n"}), families=frozenset({4, 6}))]


# -- properties ----------------------------------------------------------------------------

_DNS_LABEL = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z", fullmatch=True)
_DNS_SUBDOMAIN = st.from_regex(r"\A[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z", fullmatch=True)
_LABELS = st.dictionaries(st.sampled_from(["app", "tier", "k8s.io/role"]),
                          st.sampled_from(["a", "b", ""]), max_size=3)
_SELECTOR = st.one_of(
    st.just({}),
    st.builds(lambda labels: {"matchLabels": labels}, _LABELS),
    st.builds(lambda key, op, values: {"matchExpressions": [
        {"key": key, "operator": op, **({"values": values} if op in ("In", "NotIn") else {})}]},
        st.sampled_from(["app", "tier"]), st.sampled_from(policies.OPERATORS),
        st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=2)))
_PEER = st.one_of(
    st.builds(lambda s: {"podSelector": s}, _SELECTOR),
    st.builds(lambda s: {"namespaceSelector": s}, _SELECTOR),
    st.builds(lambda p, n: {"podSelector": p, "namespaceSelector": n}, _SELECTOR, _SELECTOR),
    st.sampled_from([{"ipBlock": {"cidr": "10.100.0.0/16", "except": ["10.100.0.0/28"]}},
                     {"ipBlock": {"cidr": "fd00::/8"}}]))
_PORT = st.sampled_from([{"port": 80}, {"protocol": "UDP", "port": 53}, {"protocol": "SCTP"},
                         {"port": 1000, "endPort": 2000}])
_RULE = st.builds(lambda peers, ports: {"peers": peers, "ports": ports},
                  st.lists(_PEER, max_size=3), st.lists(_PORT, max_size=2))


@st.composite
def _policies(draw: st.DrawFn, count: int = 3) -> list[policies.Policy]:
    found = []
    for i in range(draw(st.integers(1, count))):
        ingress = draw(st.lists(_RULE, max_size=2))
        egress = draw(st.lists(_RULE, max_size=2))
        spec = {"podSelector": draw(_SELECTOR),
                "ingress": [{"from": r["peers"], "ports": r["ports"]} for r in ingress],
                "egress": [{"to": r["peers"], "ports": r["ports"]} for r in egress],
                "policyTypes": draw(st.sampled_from([["Ingress"], ["Egress"],
                                                     ["Ingress", "Egress"]]))}
        found.append(_policy(spec, name=f"p{i}", namespace=draw(st.sampled_from(["ns1", "ns2"])),
                             policy_for=draw(st.sampled_from(["ns1/l2", "ns1/dual",
                                                              "ns1/l2,ns1/dual"]))))
    return found


@st.composite
def _pods(draw: st.DrawFn) -> list[acls.Pod]:
    pods = []
    for i in range(draw(st.integers(0, 12))):
        namespace = draw(st.sampled_from(["ns1", "ns2"]))
        attached = draw(st.sets(st.sampled_from(["ns1/l2", "ns1/dual"]), min_size=1))
        pods.append(_pod(namespace, f"pod{i}", draw(_LABELS), i + 1, sorted(attached)))
    return pods


def _counts(state: desired.PolicyState) -> tuple[int, int, int]:
    return len(state.port_groups), len(state.acls), len(state.address_sets)


@hypothesis.given(policy_list=_policies(), pods=_pods())
@hypothesis.settings(max_examples=150, deadline=None)
def test_row_counts_do_not_depend_on_the_pods(policy_list: list[policies.Policy],
                                             pods: list[acls.Pod]) -> None:
    with_pods = _state(pods, *policy_list).state
    without = _state([], *policy_list).state
    assert _counts(with_pods) == _counts(without)
    assert with_pods.acls.keys() == without.acls.keys()
    # and a pod's labels changing moves members only: every ACL stays as it is
    flipped = [acls.Pod(namespace=p.namespace, name=p.name, labels={"app": "b"}, ports=p.ports)
               for p in pods]
    assert _state(flipped, *policy_list).state.acls == with_pods.acls


@hypothesis.given(policy_list=_policies(), pods=_pods(), data=st.data())
@hypothesis.settings(max_examples=100, deadline=None)
def test_the_state_is_a_function_of_the_facts_not_of_their_order(
    policy_list: list[policies.Policy], pods: list[acls.Pod], data: st.DataObject,
) -> None:
    state = _state(pods, *policy_list)
    again = _state(data.draw(st.permutations(pods)), *data.draw(st.permutations(policy_list)))
    assert again == state


@hypothesis.given(policy_list=_policies(), pods=_pods())
@hypothesis.settings(max_examples=150, deadline=None)
def test_a_pod_is_isolated_exactly_when_a_policy_for_that_direction_selects_it(
    policy_list: list[policies.Policy], pods: list[acls.Pod],
) -> None:
    state = _state(pods, *policy_list).state
    isolated = {(g.external_ids[naming.NETWORK_KEY], g.external_ids["direction"], p)
                for g in _kind(dict(state.port_groups), "NetpolNamespace") for p in g.ports}
    expected = set()
    for policy, pod, network, direction in itertools.product(
            policy_list, pods, (L2, DUAL), policies.DIRECTIONS):
        if (policy.namespace == pod.namespace and policy.rules(direction) is not None
                and policy.pod_selector.matches(pod.labels)
                and network.nad_keys & set(policy.nad_keys)):
            expected |= {(network.name, direction, port.name)
                         for nad, port in pod.ports.items() if nad in network.nad_keys}
    assert isolated == expected


_SPEC = {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{
    "from": [{"podSelector": {}}, {"ipBlock": {"cidr": "10.0.0.0/8"}}],
    "ports": [{"port": 80}]}], "egress": [{"to": [{"namespaceSelector": {}}]}]}


@hypothesis.given(first=st.tuples(_DNS_LABEL, _DNS_SUBDOMAIN),
                  second=st.tuples(_DNS_LABEL, _DNS_SUBDOMAIN))
@hypothesis.settings(max_examples=300, deadline=None)
def test_distinct_policies_get_distinct_rows(first: tuple[str, str],
                                             second: tuple[str, str]) -> None:
    hypothesis.assume(first != second)
    one, two = (_policy(_SPEC, namespace=ns, name=name, policy_for="default/l2")
                for ns, name in (first, second))
    network = acls.Network(name="l2-network", nad_keys=frozenset({"default/l2"}),
                           families=frozenset({4}))

    def rows(*policy_list: policies.Policy) -> acls.Result:
        return acls.state(networks=[network], pods=[], namespaces={}, policies=policy_list)

    alone = [rows(p).state for p in (one, two)]
    both = rows(one, two)
    assert all(o.networks == ("l2-network",) for o in both.outcomes.values())
    owned = [{k for k, a in s.acls.items() if a.external_ids[naming.OWNER_TYPE_KEY]
              == "NetworkPolicy"} for s in alone]
    assert not owned[0] & owned[1]
    groups = [{n for n, g in s.port_groups.items() if g.external_ids[naming.OWNER_TYPE_KEY]
               == "NetworkPolicy"} for s in alone]
    assert not groups[0] & groups[1]
    # together: each policy's rows as alone, shared rows (namespace's, peers') identical
    assert both.state.acls == {**alone[0].acls, **alone[1].acls}
    names = [s.port_groups.keys() for s in alone]
    assert both.state.port_groups.keys() == names[0] | names[1]
    if first[0] != second[0]:  # other namespaces: no port group is shared
        assert not names[0] & names[1]
