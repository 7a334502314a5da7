"""The policy ACLs as OVN itself reads them: ovn-northd compiles them into logical flows,
ovn-trace parses every flow with OVN's expression parser and follows packets through them.

This is OVN's logic without a datapath: what reaches which pod under which policy, on the
host, in a second. The cluster tests prove the same with real packets.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import netaddr
import pytest

from ovnk_secondary import nads
from ovnk_secondary.northbound import acls, client, desired, diff, servers
from tests.northbound import northd as northd_
from tests.northbound import policyscenario as world

DUAL = nads.NetworkConfig(name="dual", topology="layer2", nad_key="ns1/dual",
                          subnets=(netaddr.IPNetwork("10.200.0.0/24"),
                                   netaddr.IPNetwork("fd00:200::/64")))
BARE = nads.NetworkConfig(name="bare", topology="localnet", nad_key="ns1/bare", vlan_id=10)


@pytest.fixture
def northd(tmp_path: pathlib.Path, nb_server: servers.NbServer) -> Iterator[northd_.Northd]:
    with northd_.running(tmp_path / "sb", nb_server) as daemon:
        yield daemon


def _flow(source: str, target: str, l4: str) -> str:
    _, _, src = world.PODS[source]
    _, _, dst = world.PODS[target]
    return (f'inport == "{world.attachment(source).port_name}" && '
            f"eth.src == 0a:58:0a:64:00:{src:02x} && eth.dst == 0a:58:0a:64:00:{dst:02x} && "
            f"ip4.src == 10.100.0.{src} && ip4.dst == 10.100.0.{dst} && ip.ttl == 64 && {l4}")


def _reaches(daemon: northd_.Northd, source: str, target: str, l4: str,
             ct: tuple[str, ...] = ("new", "new")) -> bool:
    out, err = daemon.trace(world.SWITCH, _flow(source, target, l4), ct=ct)
    assert "parsing expression failed" not in err, err
    return f'output("{world.attachment(target).port_name}")' in out


def _enforce(nb: client.Northbound, daemon: northd_.Northd, state: desired.PolicyState) -> None:
    assert nb.converge_policies(state).missing_ports == ()
    daemon.sync()


@pytest.fixture
def world_nb(nb: client.Northbound, northd: northd_.Northd) -> client.Northbound:
    nb.apply(diff.diff(world.ports_state("db", "web", "other"), desired.State()))
    northd.sync()
    return nb


def test_every_generated_match_parses_in_ovn(
    world_nb: client.Northbound, nb_server: servers.NbServer, northd: northd_.Northd
) -> None:
    """Every form of rule, on layer2 and localnet, IPv4, dual-stack and IPAM-less networks."""
    rules = {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [
        {},
        {"from": [{"podSelector": {"matchLabels": {"app": "web"}}},
                  {"namespaceSelector": {}},
                  {"namespaceSelector": {"matchExpressions": [
                      {"key": "team", "operator": "NotIn", "values": ["x"]}]},
                   "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}},
                  {"ipBlock": {"cidr": "10.100.0.0/16", "except": ["10.100.1.0/24",
                                                                   "10.100.2.0/24"]}},
                  {"ipBlock": {"cidr": "fd00::/16", "except": ["fd00:1::/32"]}}],
         "ports": [{"port": 80}, {"port": 443}, {"port": 1000, "endPort": 2000},
                   {"protocol": "UDP", "port": 53}, {"protocol": "SCTP"}]}],
        "egress": [{"to": [{"podSelector": {}}], "ports": [{"protocol": "UDP"}]}]}
    blocks_only = {"podSelector": {}, "ingress": [
        {}, {"from": [{"ipBlock": {"cidr": "192.168.0.0/24", "except": ["192.168.0.7/32"]}}],
             "ports": [{"port": 22}]}]}
    configs = [world.NETWORK, world.NETWORK_NS2, DUAL, BARE]
    pods = [*world.pods("db", "web", "other"),
            acls.Pod(namespace="ns1", name="dual", labels={"app": "x"}, ports={
                "ns1/dual": acls.PodPort(name="ns1.dual_ns1_dual",
                                         ips=("10.200.0.5/24", "fd00:200::5/64"))}),
            acls.Pod(namespace="ns1", name="vm", labels={}, ports={
                "ns1/bare": acls.PodPort(name="ns1.bare_ns1_vm")})]
    result = acls.state(
        networks=acls.networks(configs), pods=pods, namespaces=world.NAMESPACES,
        policies=[world.policy(rules, policy_for="ns1/l2,ns1/dual"),
                  world.policy(blocks_only, name="blocks", policy_for="ns1/bare")])
    assert {k: o.networks for k, o in result.outcomes.items()} == {
        "ns1/pol": ("dual", "l2-network"), "ns1/blocks": ("bare",)}
    extra = [(DUAL, desired.Attachment(nad_key="ns1/dual", pod_namespace="ns1", pod_name="dual",
                                       pod_uid="u", node="n", mac="0a:58:0a:c8:00:05",
                                       ips=("10.200.0.5/24", "fd00:200::5/64"))),
             (BARE, desired.Attachment(nad_key="ns1/bare", pod_namespace="ns1", pod_name="vm",
                                       pod_uid="v", node="n", mac="02:00:00:00:00:01",
                                       ips=None))]
    world_nb.apply(diff.diff(desired.state([DUAL, BARE], extra), desired.State()))
    _enforce(world_nb, northd, result.state)
    flows = "".join(northd.lflows(s) for s in (world.SWITCH, "dual_ovn_layer2_switch",
                                               "bare_ovn_localnet_switch"))
    for acl in result.state.acls.values():
        if result.state.port_groups[acl.port_group].ports:  # an empty group applies nowhere
            assert f"({acl.match})" in flows, f"northd made no flow of {acl.id}"
    _, err = northd.trace(world.SWITCH, _flow("web", "db", "tcp.dst == 80"))
    assert "parsing expression failed" not in err, err


def test_isolation_rules_and_their_union(
    world_nb: client.Northbound, nb_server: servers.NbServer, northd: northd_.Northd
) -> None:
    tcp = "tcp.dst == 5432"
    assert _reaches(northd, "web", "db", tcp), "no policy: everything passes"
    deny_db = world.policy({"podSelector": {"matchLabels": {"app": "db"}},
                            "policyTypes": ["Ingress"]}, name="deny")
    _enforce(world_nb, northd, world.rows(deny_db))
    assert not _reaches(northd, "web", "db", tcp)
    assert _reaches(northd, "db", "web", tcp), "egress is not isolated"
    assert _reaches(northd, "web", "other", tcp), "other pods are not isolated"
    # (a request for a known address is answered by the switch: a reply goes to the pod)
    arp = (f'inport == "{world.attachment("web").port_name}" && '
           "eth.src == 0a:58:0a:64:00:06 && eth.dst == 0a:58:0a:64:00:05 && arp.op == 2 && "
           "arp.sha == 0a:58:0a:64:00:06 && arp.spa == 10.100.0.6 && "
           "arp.tha == 0a:58:0a:64:00:05 && arp.tpa == 10.100.0.5")
    out, _ = northd.trace(world.SWITCH, arp)
    assert f'output("{world.attachment("db").port_name}")' in out, "ARP always passes"

    allow_web = world.policy(world.ALLOW_WEB_TO_DB, name="web")
    _enforce(world_nb, northd, world.rows(deny_db, allow_web))
    assert _reaches(northd, "web", "db", tcp)
    assert not _reaches(northd, "web", "db", "tcp.dst == 80"), "only its port"
    assert not _reaches(northd, "web", "db", "udp.dst == 5432"), "only its protocol"
    assert not _reaches(northd, "other", "db", tcp), "a podSelector is the namespace's"
    # db may open connections (its egress is open): web's replies reach it, nothing else
    reply = "tcp.src == 80 && tcp.dst == 40000"
    assert not _reaches(northd, "web", "db", reply)
    assert _reaches(northd, "web", "db", reply, ct=("est,rpl", "est,rpl")), "replies pass"

    team_b = world.policy(world.ALLOW_TEAM_B, name="team-b")
    _enforce(world_nb, northd, world.rows(deny_db, allow_web, team_b))
    assert _reaches(northd, "other", "db", "tcp.dst == 80"), "the union of the rules"
    assert _reaches(northd, "web", "db", tcp)
    # a label flip: web is no longer app=web, ns2 no longer team=b
    flipped = world.rows(deny_db, allow_web, team_b, labels={"web": {"app": "old"}})
    _enforce(world_nb, northd, flipped)
    assert not _reaches(northd, "web", "db", tcp)
    # the last policy deleted: open again
    _enforce(world_nb, northd, desired.PolicyState())
    assert _reaches(northd, "web", "db", "tcp.dst == 80")


def test_ipblock_except_and_port_ranges(
    world_nb: client.Northbound, nb_server: servers.NbServer, northd: northd_.Northd
) -> None:
    blocks = world.policy({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{
        "from": [{"ipBlock": {"cidr": "10.100.0.0/24", "except": ["10.100.0.6/32"]}}],
        "ports": [{"protocol": "UDP", "port": 1000, "endPort": 2000}]}]})
    _enforce(world_nb, northd, world.rows(blocks))
    assert _reaches(northd, "other", "db", "udp.dst == 1500")
    assert _reaches(northd, "other", "db", "udp.dst == 2000")
    assert not _reaches(northd, "other", "db", "udp.dst == 2001")
    assert not _reaches(northd, "web", "db", "udp.dst == 1500"), "10.100.0.6 is excepted"


def test_egress_isolation(
    world_nb: client.Northbound, nb_server: servers.NbServer, northd: northd_.Northd
) -> None:
    egress = world.policy({"podSelector": {"matchLabels": {"app": "web"}},
                           "policyTypes": ["Egress"], "egress": [{
                               "to": [{"podSelector": {"matchLabels": {"app": "db"}}}],
                               "ports": [{"port": 8000, "endPort": 8080}]}]})
    _enforce(world_nb, northd, world.rows(egress))
    assert _reaches(northd, "web", "db", "tcp.dst == 8080")
    assert not _reaches(northd, "web", "db", "tcp.dst == 8081")
    assert not _reaches(northd, "web", "other", "tcp.dst == 8000")
    assert _reaches(northd, "other", "web", "tcp.dst == 22"), "ingress is not isolated"
