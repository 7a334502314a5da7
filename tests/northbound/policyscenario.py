"""A small world for policy tests against a real NB: one layer2 network in two namespaces.

ns1 (team=a): db (app=db, 10.100.0.5), web (app=web, 10.100.0.6); ns2 (team=b): other
(app=web, 10.100.0.7); all on the switch `l2.network_ovn_layer2_switch`.
"""

from __future__ import annotations

from typing import Any

import netaddr

from ovnk_secondary import nads, policies
from ovnk_secondary.northbound import acls, desired

NETWORK = nads.NetworkConfig(name="l2-network", topology="layer2", nad_key="ns1/l2",
                             subnets=(netaddr.IPNetwork("10.100.0.0/24"),))
NETWORK_NS2 = nads.NetworkConfig(name="l2-network", topology="layer2", nad_key="ns2/l2",
                                 subnets=NETWORK.subnets)
SWITCH = desired.switch_name(NETWORK)
NAMESPACES = {"ns1": {"team": "a"}, "ns2": {"team": "b"}}
PODS = {  # name: (namespace, labels, last IP byte)
    "db": ("ns1", {"app": "db"}, 5),
    "web": ("ns1", {"app": "web"}, 6),
    "other": ("ns2", {"app": "web"}, 7),
}


def attachment(name: str) -> desired.Attachment:
    namespace, _, byte = PODS[name]
    return desired.Attachment(nad_key=f"{namespace}/l2", pod_namespace=namespace, pod_name=name,
                              pod_uid=f"uid-{name}", node="node1", mac=f"0a:58:0a:64:00:{byte:02x}",
                              ips=(f"10.100.0.{byte}/24",))


def ports_state(*names: str) -> desired.State:
    """The network's switch and the named pods' ports."""
    network = {"ns1": NETWORK, "ns2": NETWORK_NS2}
    return desired.state([NETWORK], [(network[PODS[n][0]], attachment(n)) for n in names])


def policy(spec: dict[str, Any], *, name: str = "pol", namespace: str = "ns1",
           policy_for: str = "ns1/l2") -> policies.Policy:
    parsed = policies.parse({"metadata": {
        "namespace": namespace, "name": name,
        "annotations": {policies.POLICY_FOR_ANNOTATION: policy_for}}, "spec": spec})
    assert parsed.policy is not None, parsed.notices
    return parsed.policy


def pods(*names: str, labels: dict[str, dict[str, str]] | None = None) -> list[acls.Pod]:
    found = []
    for name in names:
        namespace, default, _ = PODS[name]
        port = attachment(name)
        found.append(acls.Pod(namespace=namespace, name=name,
                              labels=(labels or {}).get(name, default),
                              ports={port.nad_key: acls.PodPort(name=port.port_name,
                                                                ips=port.ips or ())}))
    return found


def rows(*policy_list: policies.Policy, names: tuple[str, ...] = ("db", "web", "other"),
         labels: dict[str, dict[str, str]] | None = None) -> desired.PolicyState:
    """The policy rows for the pods `names`; every policy must apply."""
    result = acls.state(networks=acls.networks([NETWORK, NETWORK_NS2]),
                        pods=pods(*names, labels=labels), namespaces=NAMESPACES,
                        policies=policy_list)
    assert all(o.networks for o in result.outcomes.values()), result.outcomes
    return result.state


ALLOW_WEB_TO_DB = {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{
    "from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}]}]}
ALLOW_TEAM_B = {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{
    "from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]}
