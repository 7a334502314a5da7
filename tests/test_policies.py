"""MultiNetworkPolicies as users write them: parsed completely, or refused saying what to fix."""

from __future__ import annotations

import copy
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from ovnk_secondary import policies


def _object(spec: dict[str, Any] | None = None, *, policy_for: str | None = "ns1/l2",
            namespace: str = "ns1", name: str = "pol") -> dict[str, Any]:
    annotations = {} if policy_for is None else {policies.POLICY_FOR_ANNOTATION: policy_for}
    return {"apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy",
            "metadata": {"namespace": namespace, "name": name, "annotations": annotations},
            "spec": {"podSelector": {}} if spec is None else spec}


def _policy(spec: dict[str, Any], **kwargs: Any) -> policies.Policy:
    parsed = policies.parse(_object(spec, **kwargs))
    assert parsed.policy is not None, parsed.notices
    return parsed.policy


def _refusal(spec: dict[str, Any], **kwargs: Any) -> policies.Notice:
    parsed = policies.parse(_object(spec, **kwargs))
    assert parsed.policy is None
    [notice] = parsed.notices
    assert notice.type == policies.WARNING
    return notice


def test_the_ovnk_docs_example() -> None:
    """OVN-K's multi-network-policies doc: port 9000 from trusted namespaces."""
    policy = _policy({
        "podSelector": {"matchLabels": {"app": "stuff-doer"}},
        "ingress": [{"ports": [{"port": 9000, "protocol": "TCP"}],
                     "from": [{"namespaceSelector": {"matchLabels": {"role": "trusted"}}}]}],
        "policyTypes": ["Ingress"],
    }, policy_for="default/tenant-blue", namespace="default", name="allow-ports-same-ns")
    assert policy == policies.Policy(
        namespace="default", name="allow-ports-same-ns", nad_keys=("default/tenant-blue",),
        pod_selector=policies.Selector(match_labels=(("app", "stuff-doer"),)),
        ingress=(policies.Rule(
            peers=(policies.Peer(namespace_selector=policies.Selector(
                match_labels=(("role", "trusted"),))),),
            ports=(policies.PortRange(protocol="tcp", port=9000),)),),
        egress=None)
    assert policy.key == "default/allow-ports-same-ns"


def test_every_peer_and_port_form() -> None:
    policy = _policy({
        "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In",
                                              "values": ["db", "cache"]}]},
        "egress": [{
            "to": [{"podSelector": {"matchLabels": {"app": "web"}}},
                   {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "dns"}}},
                   {"ipBlock": {"cidr": "10.1.2.3/16", "except": ["10.1.9.0/24", "10.1.9.0/24"]}},
                   {"ipBlock": {"cidr": "fd00::/64"}}],
            "ports": [{"port": 53, "protocol": "UDP"}, {"protocol": "SCTP"},
                      {"port": 8000, "endPort": 8080}, {"port": 443, "endPort": 443}],
        }],
    })
    assert policy.ingress == ()  # Ingress is always a type when policyTypes is unset
    [rule] = policy.egress or ()
    web, dns, v4, v6 = rule.peers
    assert web == policies.Peer(pod_selector=policies.Selector(match_labels=(("app", "web"),)))
    assert dns.namespace_selector == policies.EVERYTHING and dns.pod_selector is not None
    assert v4.ip_block == policies.IpBlock(cidr="10.1.0.0/16", excepts=("10.1.9.0/24",))
    assert v6.ip_block is not None and v6.ip_block.version == 6
    assert rule.ports == (policies.PortRange(protocol="udp", port=53),
                          policies.PortRange(protocol="sctp"),
                          policies.PortRange(protocol="tcp", port=8000, end_port=8080),
                          policies.PortRange(protocol="tcp", port=443))
    assert policy.has_selector_peers
    assert policy.pod_selector.match_expressions == (
        policies.Requirement(key="tier", operator="In", values=("cache", "db")),)


@pytest.mark.parametrize(("value", "keys"), [
    ("ns1/l2", ("ns1/l2",)),
    ("l2", ("ns1/l2",)),  # the policy's namespace
    (" other/l2 , l2,other/l2 ,", ("other/l2", "ns1/l2")),  # spaces, duplicates, a trailing comma
])
def test_policy_for_names_nads(value: str, keys: tuple[str, ...]) -> None:
    assert _policy({"podSelector": {}}, policy_for=value).nad_keys == keys


def test_without_policy_for_the_policy_is_ignored_and_said_so() -> None:
    parsed = policies.parse(_object(policy_for=None))
    assert parsed.policy is None and parsed.key == "ns1/pol"
    [notice] = parsed.notices
    assert (notice.type, notice.reason) == (policies.WARNING, policies.POLICY_FOR_MISSING)
    assert policies.POLICY_FOR_ANNOTATION in notice.message and "ns1/pol" in notice.message


@pytest.mark.parametrize("value", ["a/b/c", "/l2", "ns1/", ",", "", "UPPER/l2"])
def test_a_malformed_policy_for_refuses_the_policy(value: str) -> None:
    notice = _refusal({"podSelector": {}}, policy_for=value)
    assert notice.reason == policies.INVALID_POLICY
    assert policies.POLICY_FOR_ANNOTATION in notice.message


@pytest.mark.parametrize(("spec", "ingress", "egress"), [
    ({"podSelector": {}}, (), None),
    ({"podSelector": {}, "policyTypes": []}, (), None),
    ({"podSelector": {}, "egress": [{}]}, (), (policies.Rule(),)),
    ({"podSelector": {}, "egress": []}, (), None),  # an empty egress section isolates nothing
    ({"podSelector": {}, "policyTypes": ["Egress"]}, None, ()),  # deny all egress
    ({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [{}]},
     (policies.Rule(),), ()),
])
def test_policy_types_default_as_network_policy(
    spec: dict[str, Any], ingress: tuple[policies.Rule, ...] | None,
    egress: tuple[policies.Rule, ...] | None,
) -> None:
    policy = _policy(spec)
    assert (policy.ingress, policy.egress) == (ingress, egress)


def test_rules_of_a_direction_not_in_policy_types_are_ignored_with_a_warning() -> None:
    parsed = policies.parse(_object({"podSelector": {}, "policyTypes": ["Ingress"],
                                     "egress": [{"to": [{"podSelector": {}}]}]}))
    assert parsed.policy is not None and parsed.policy.egress is None
    [notice] = parsed.notices
    assert (notice.type, notice.reason) == (policies.WARNING, policies.FIELD_IGNORED)
    assert "spec.egress is ignored" in notice.message and "policyTypes" in notice.message


@pytest.mark.parametrize(("labels", "selector", "matches"), [
    ({}, {}, True),
    ({"app": "db"}, {"matchLabels": {"app": "db"}}, True),
    ({"app": "web"}, {"matchLabels": {"app": "db"}}, False),
    ({}, {"matchLabels": {"app": "db"}}, False),
    ({"app": "db"}, {"matchExpressions": [{"key": "app", "operator": "In",
                                           "values": ["web", "db"]}]}, True),
    ({}, {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]}, False),
    ({"app": "db"}, {"matchExpressions": [{"key": "app", "operator": "NotIn",
                                           "values": ["db"]}]}, False),
    ({}, {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]}, True),
    ({"app": ""}, {"matchExpressions": [{"key": "app", "operator": "Exists"}]}, True),
    ({"x": "y"}, {"matchExpressions": [{"key": "app", "operator": "Exists"}]}, False),
    ({"x": "y"}, {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, True),
    ({"app": "db", "tier": "1"}, {"matchLabels": {"app": "db"}, "matchExpressions": [
        {"key": "tier", "operator": "DoesNotExist"}]}, False),
])
def test_label_selectors_as_kubernetes(labels: dict[str, str], selector: dict[str, Any],
                                       matches: bool) -> None:
    assert _policy({"podSelector": selector}).pod_selector.matches(labels) is matches


def test_selector_text_is_ovnks_and_the_same_for_equivalent_spellings() -> None:
    one = _policy({"podSelector": {
        "matchLabels": {"b": "2", "a": "1"},
        "matchExpressions": [{"key": "z", "operator": "Exists"},
                             {"key": "k.io/x", "operator": "In", "values": ["q", "p"]}]}})
    other = _policy({"podSelector": {
        "matchExpressions": [{"key": "k.io/x", "operator": "In", "values": ["p", "q"]},
                             {"key": "z", "operator": "Exists", "values": []}],
        "matchLabels": {"a": "1", "b": "2"}}})
    assert one.pod_selector == other.pod_selector
    assert one.pod_selector.key_string() == (
        "LS{ML:{a: 1,b: 2,},ME:{LSR{Key:k.io/x,Operator:In,Values:[p q],},"
        "LSR{Key:z,Operator:Exists,Values:[],}},}")
    assert policies.EVERYTHING.key_string() == "LS{}"


def _with(path: str, value: Any) -> dict[str, Any]:
    """A valid spec with `value` put at `path` (dots; [i] for list items)."""
    spec: dict[str, Any] = copy.deepcopy({
        "podSelector": {},
        "ingress": [{"from": [{"podSelector": {}}, {"ipBlock": {"cidr": "10.0.0.0/8"}}],
                     "ports": [{"port": 80}]}],
    })
    target: Any = spec
    steps: list[str | int] = []
    for part in path.split("."):
        name, _, index = part.partition("[")
        steps += [name, int(index[:-1])] if index else [name]
    for step in steps[:-1]:
        target = target[step]
    target[steps[-1]] = value
    return spec


@pytest.mark.parametrize(("path", "value", "reason", "says"), [
    ("ingress[0].ports[0].port", "http", policies.UNSUPPORTED_POLICY, "named port"),
    ("ingress[0].ports[0].port", 0, policies.INVALID_POLICY, "1-65535"),
    ("ingress[0].ports[0].port", 65536, policies.INVALID_POLICY, "1-65535"),
    ("ingress[0].ports[0].port", True, policies.INVALID_POLICY, "1-65535"),
    ("ingress[0].ports[0].endPort", 79, policies.INVALID_POLICY, "80-65535"),
    ("ingress[0].ports[0].protocol", "ICMP", policies.INVALID_POLICY, "TCP, UDP or SCTP"),
    ("ingress[0].ports[0]", {"endPort": 90}, policies.INVALID_POLICY, "needs port"),
    ("ingress[0].from[0]", {}, policies.INVALID_POLICY, "needs podSelector"),
    ("ingress[0].from[1].podSelector", {}, policies.INVALID_POLICY, "separate peers"),
    ("ingress[0].from[1].ipBlock", {"cidr": "10.0.0.0/33"}, policies.INVALID_POLICY,
     "not a CIDR"),
    ("ingress[0].from[1].ipBlock", {}, policies.INVALID_POLICY, "needs cidr"),
    ("ingress[0].from[1].ipBlock.except", ["11.0.0.0/16"], policies.INVALID_POLICY,
     "inside cidr"),
    ("ingress[0].from[1].ipBlock.except", ["10.0.0.0/8"], policies.INVALID_POLICY,
     "inside cidr"),
    ("ingress[0].from[1].ipBlock.except", ["fd00::/64"], policies.INVALID_POLICY,
     "inside cidr"),
    ("ingress[0].from[0].podSelector", {"matchExpressions": [
        {"key": "a", "operator": "Equals", "values": ["b"]}]}, policies.INVALID_POLICY,
     "must be one of In, NotIn"),
    ("ingress[0].from[0].podSelector", {"matchExpressions": [
        {"key": "a", "operator": "In"}]}, policies.INVALID_POLICY, "must not be empty"),
    ("ingress[0].from[0].podSelector", {"matchExpressions": [
        {"key": "a", "operator": "Exists", "values": ["b"]}]}, policies.INVALID_POLICY,
     "must be empty"),
    ("ingress[0].from[0].podSelector", {"matchLabels": {"a b": "c"}}, policies.INVALID_POLICY,
     "not a valid label key"),
    ("ingress[0].from[0].podSelector", {"matchLabels": {"a": "{x}"}}, policies.INVALID_POLICY,
     "not a valid label value"),
    ("ingress[0].from[0].namespaceSelector", "everything", policies.INVALID_POLICY,
     "label selector"),
    ("ingress", {"from": []}, policies.INVALID_POLICY, "must be a list"),
    ("policyTypes", ["ingress"], policies.INVALID_POLICY, "Ingress or Egress"),
])
def test_each_invalid_case_refuses_the_whole_policy_saying_where_and_what(
    path: str, value: Any, reason: str, says: str
) -> None:
    notice = _refusal(_with(path, value))
    assert notice.reason == reason
    assert notice.message.startswith("MultiNetworkPolicy ns1/pol is not applied: spec.")
    assert says in notice.message


def test_a_spec_without_pod_selector_is_refused() -> None:
    assert "spec.podSelector" in _refusal({"ingress": []}).message
    assert "spec" in policies.parse({"metadata": {"namespace": "a", "name": "b", "annotations": {
        policies.POLICY_FOR_ANNOTATION: "l2"}}}).notices[0].message


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.sampled_from(
        ["", "TCP", "UDP", "In", "Exists", "10.0.0.0/8", "fd00::/64", "app", "http"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["podSelector", "namespaceSelector", "ipBlock", "cidr", "except",
                         "ingress", "egress", "from", "to", "ports", "port", "endPort",
                         "protocol", "matchLabels", "matchExpressions", "key", "operator",
                         "values", "policyTypes", "app"]), children, max_size=4),
    max_leaves=20)


@hypothesis.given(spec=_JSON)
@hypothesis.settings(max_examples=300, deadline=None)
def test_any_object_gives_a_policy_or_a_warning_never_an_exception(spec: Any) -> None:
    parsed = policies.parse(_object(spec))
    assert parsed.policy is not None or [n.type for n in parsed.notices] == [policies.WARNING]
