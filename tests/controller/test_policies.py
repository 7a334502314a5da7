"""MultiNetworkPolicies end to end on the controller's side: policies, namespaces and pods in the
real API server, the controller allocating and writing ports and policy rows in a real NB, and
OVN itself judging what passes: ovn-northd compiles NB into logical flows and ovn-trace follows
packets through them (`tests/northbound/northd.py`; no chassis: packets cannot run here, the
cluster tests send real ones).

The world: network `polnet` (layer2, 10.80.0.0/24) with a NAD in each of two namespaces,
mnp-a (team=a: db app=db, web app=web) and mnp-b (team=c, flipped to team=b: client app=web).
"""

from __future__ import annotations

import logging
import pathlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from ovnk_secondary import naming
from ovnk_secondary.controller import metrics as controller_metrics
from ovnk_secondary.northbound import servers
from tests import metrics
from tests.controller.harness import Api, Controller, ports, until
from tests.northbound import northd as northd_

NS_A, NS_B = "mnp-a", "mnp-b"
NETWORK = "polnet"
SWITCH = naming.switch_name(NETWORK, "layer2")
PODS = {"db": (NS_A, {"app": "db"}), "web": (NS_A, {"app": "web"}),
        "client": (NS_B, {"app": "web"})}
OWNED = f"external_ids:{naming.OWNER_KEY}={naming.OWNER_VALUE}"
POLICY_TABLES = ("Port_Group", "ACL", "Address_Set")

DENY_DB = {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]}
WEB_TO_DB = {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{
    "from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
    "ports": [{"protocol": "TCP", "port": 5432}]}]}
TEAM_B_TO_DB = {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{
    "from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]}


@pytest.fixture
def northd(tmp_path: pathlib.Path, nb_server: servers.NbServer) -> Iterator[northd_.Northd]:
    with northd_.running(tmp_path / "sb", nb_server) as daemon:
        yield daemon


class World:
    """The pods' interfaces, and verdicts on packets between them."""

    def __init__(self, api: Api, nb: servers.NbServer, daemon: northd_.Northd) -> None:
        self.api = api
        self.nb = nb
        self.daemon = daemon
        api.label_namespace(NS_A, {"team": "a"})
        api.label_namespace(NS_B, {"team": "c"})
        for namespace in (NS_A, NS_B):
            api.create_nad(namespace, "polnet", name=NETWORK, topology="layer2",
                           subnets="10.80.0.0/24")
        for name, (namespace, labels) in PODS.items():
            api.create_pod(namespace, name, "polnet", labels=labels)
        self.endpoints: dict[str, northd_.Endpoint] = {}
        for name, (namespace, _) in PODS.items():
            self.endpoints[name] = self._endpoint(namespace, name)

    def _endpoint(self, namespace: str, name: str) -> northd_.Endpoint:
        """The pod's interface once the controller gave it an address and wrote its port."""
        nad = f"{namespace}/polnet"
        entry = until(lambda: (self.api.pod_networks(namespace, name) or {}).get(nad),
                      f"pod {name} got no address")
        port = naming.pod_port_name(nad, namespace, name)
        until(lambda: port in ports(self.nb), f"no port {port}")
        return northd_.Endpoint(port=port, mac=entry["mac_address"],
                                ip=entry["ip_addresses"][0].split("/")[0])

    def add_pod(self, namespace: str, name: str, labels: dict[str, str]) -> None:
        self.api.create_pod(namespace, name, "polnet", labels=labels)
        self.endpoints[name] = self._endpoint(namespace, name)

    def reaches(self, source: str, target: str, l4: str) -> bool:
        return self.daemon.reaches(SWITCH, self.endpoints[source], self.endpoints[target], l4)

    def until(self, source: str, target: str, l4: str, *, allowed: bool, why: str) -> None:
        """Wait until the controller has made the verdict `allowed` (then the whole converge
        it belongs to is in NB: one transaction)."""
        until(lambda: self.reaches(source, target, l4) == allowed,
              f"{source} -> {target} {l4}: {why}: never {'allowed' if allowed else 'denied'}")


def owned(nb: servers.NbServer, table: str, **external_ids: str) -> list[str]:
    """Names (ACLs: UUIDs) of the rows of `table` of ours with these external_ids."""
    column = "_uuid" if table == "ACL" else "name"
    conditions = [OWNED, *(f'external_ids:"{k}"="{v}"' for k, v in external_ids.items())]
    return nb.nbctl("--bare", f"--columns={column}", "find", table, *conditions).split()


def no_policy_rows(nb: servers.NbServer) -> bool:
    return not any(owned(nb, table) for table in POLICY_TABLES)


def events(api: Api, name: str, reason: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = until(
        lambda: [e for e in api.events(name) if e["reason"] == reason],
        f"no {reason} Event on {name}")
    return found


def test_policies_close_and_open_traffic_as_policies_labels_and_namespaces_change(
    api: Api, nb_server: servers.NbServer, northd: northd_.Northd, controller: Controller
) -> None:
    world = World(api, nb_server, northd)
    tcp = "tcp.dst == 5432"
    assert world.reaches("web", "db", tcp), "no policy: everything passes"
    assert world.reaches("client", "db", "tcp.dst == 80")

    # ingress deny-all on db
    api.create_policy(NS_A, "deny", DENY_DB, policy_for="polnet")
    world.until("web", "db", tcp, allowed=False, why="db isolated for ingress")
    assert not world.reaches("client", "db", "udp.dst == 53")
    assert world.reaches("db", "web", tcp), "db's egress is not isolated"
    assert world.reaches("web", "client", tcp), "only db is selected"
    assert owned(nb_server, "Port_Group", **{naming.OBJECT_NAME_KEY: f"{NS_A}:deny",
                                             naming.NETWORK_KEY: NETWORK})

    # a podSelector rule: web (of db's namespace) on 5432 only
    api.create_policy(NS_A, "web-to-db", WEB_TO_DB, policy_for=f"{NS_A}/polnet")
    world.until("web", "db", tcp, allowed=True, why="podSelector app=web allowed")
    assert not world.reaches("web", "db", "tcp.dst == 80"), "only its port"
    assert not world.reaches("client", "db", tcp), "a podSelector is its namespace's"
    # pods created under the policies: a new peer's address joins the rule once allocated, a
    # new selected pod is isolated once its port is written
    world.add_pod(NS_A, "web2", {"app": "web"})
    world.until("web2", "db", tcp, allowed=True, why="a new app=web pod is a peer")
    world.add_pod(NS_A, "db2", {"app": "db"})
    world.until("client", "db2", tcp, allowed=False, why="a new app=db pod is isolated")
    assert world.reaches("web2", "db2", tcp), "and reached by the peers"

    # a namespaceSelector rule, opened and closed by the namespace's label
    api.create_policy(NS_A, "team-b-to-db", TEAM_B_TO_DB, policy_for="polnet")
    until(lambda: owned(nb_server, "Port_Group", **{
        naming.OBJECT_NAME_KEY: f"{NS_A}:team-b-to-db"}), "team-b-to-db has no rows")
    assert not world.reaches("client", "db", "tcp.dst == 80"), "mnp-b is team=c"
    api.label_namespace(NS_B, {"team": "b"})
    world.until("client", "db", "tcp.dst == 80", allowed=True, why="mnp-b became team=b")
    assert world.reaches("client", "db", "udp.dst == 53"), "no ports: everything"
    api.label_namespace(NS_B, {"team": "c"})
    world.until("client", "db", "tcp.dst == 80", allowed=False, why="mnp-b is team=c again")

    # a pod's label flip closes and opens its way
    api.label_pod(NS_A, "web", {"app": "old"})
    world.until("web", "db", tcp, allowed=False, why="web is no longer app=web")
    api.label_pod(NS_A, "web", {"app": "web"})
    world.until("web", "db", tcp, allowed=True, why="web is app=web again")

    # deleting the policies restores open traffic, and no row of ours is left
    for name in ("deny", "web-to-db", "team-b-to-db"):
        api.delete_policy(NS_A, name)
    world.until("client", "db", "tcp.dst == 80", allowed=True, why="no policy any more")
    assert world.reaches("web", "db", "udp.dst == 53")
    until(lambda: no_policy_rows(nb_server), "policy rows left behind")


def test_ip_blocks_with_except_and_an_egress_port_range(
    api: Api, nb_server: servers.NbServer, northd: northd_.Northd, controller: Controller
) -> None:
    world = World(api, nb_server, northd)
    web = world.endpoints["web"].ip
    stored = api.create_policy(NS_A, "blocks", {
        "podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{
            "from": [{"ipBlock": {"cidr": "10.80.0.0/24", "except": [f"{web}/32"]}}],
            "ports": [{"protocol": "UDP", "port": 1000, "endPort": 2000}]}]},
        policy_for="polnet")
    # the CRD keeps endPort (upstream's v1beta1 schema would prune it)
    assert stored["spec"]["ingress"][0]["ports"][0]["endPort"] == 2000
    world.until("client", "db", "udp.dst == 1500", allowed=True, why="in the block and range")
    world.until("web", "db", "udp.dst == 1500", allowed=False, why="web's IP is excepted")
    assert world.reaches("client", "db", "udp.dst == 2000"), "endPort is inclusive"
    assert not world.reaches("client", "db", "udp.dst == 2001"), "above the range"
    assert not world.reaches("client", "db", "udp.dst == 999"), "below the range"
    assert not world.reaches("client", "db", "tcp.dst == 1500"), "only UDP"
    api.delete_policy(NS_A, "blocks")
    world.until("web", "db", "tcp.dst == 8080", allowed=True, why="db's ingress open again")

    api.create_policy(NS_A, "web-egress", {
        "podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}],
                    "ports": [{"port": 8000, "endPort": 8080}]}]}, policy_for="polnet")
    world.until("web", "client", "tcp.dst == 8000", allowed=False, why="web's egress isolated")
    assert world.reaches("web", "db", "tcp.dst == 8080")
    assert not world.reaches("web", "db", "tcp.dst == 8081")
    assert world.reaches("client", "web", "tcp.dst == 22"), "web's ingress is not isolated"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _changes(table: str, action: str) -> float:
    return controller_metrics.REGISTRY.get_sample_value(
        "ovnk_secondary_full_sync_changes_total", {"table": table, "action": action}) or 0.0


def test_a_full_sync_deletes_the_rows_of_a_policy_deleted_meanwhile_and_repairs_drift(
    api: Api, nb_server: servers.NbServer, northd: northd_.Northd,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ovnk_secondary")
    first = Controller(nb_remote=nb_server.remote, kubeconfig=api.kubeconfig)
    first.start()
    try:
        world = World(api, nb_server, northd)
        api.create_policy(NS_A, "deny", DENY_DB, policy_for="polnet")
        api.create_policy(NS_A, "web-to-db", WEB_TO_DB, policy_for="polnet")
        api.create_policy(NS_A, "web-egress", {"podSelector": {"matchLabels": {"app": "web"}},
                                               "policyTypes": ["Egress"]}, policy_for="polnet")
        world.until("web", "client", "tcp.dst == 80", allowed=False, why="web's egress closed")
        assert not world.reaches("web", "db", "tcp.dst == 5432")
    finally:
        first.stop()
    # while nobody watches: a policy deleted, and rows of another changed behind our back
    api.delete_policy(NS_A, "web-egress")
    [group] = owned(nb_server, "Port_Group", **{naming.OBJECT_NAME_KEY: f"{NS_A}:web-to-db"})
    [acl] = owned(nb_server, "ACL", **{naming.OBJECT_NAME_KEY: f"{NS_A}:web-to-db"})
    nb_server.nbctl("remove", "Port_Group", group, "acls", acl)
    [address_set] = owned(nb_server, "Address_Set", **{"ip-family": "v4"})
    nb_server.nbctl("clear", "Address_Set", address_set, "addresses")
    assert owned(nb_server, "Port_Group", **{naming.OBJECT_NAME_KEY: f"{NS_A}:web-egress"})

    before = {(t, a): _changes(t, a) for t in POLICY_TABLES for a in ("create", "delete",
                                                                        "update")}
    port = _free_port()
    second = Controller(nb_remote=nb_server.remote, kubeconfig=api.kubeconfig, health_port=port)
    second.start()
    try:
        # the first full sync: web-egress's rows gone, web-to-db's ACL and addresses back
        world.until("web", "db", "tcp.dst == 5432", allowed=True, why="repaired by the sync")
        assert world.reaches("web", "client", "tcp.dst == 80"), "web's egress is open again"
        assert not world.reaches("client", "db", "tcp.dst == 5432"), "deny still holds"
        assert not owned(nb_server, "Port_Group", **{
            naming.OBJECT_NAME_KEY: f"{NS_A}:web-egress"})
        samples = until(lambda: metrics.scrape(f"http://127.0.0.1:{port}/metrics"),
                        "no /metrics")

        def increase(table: str, action: str) -> float:
            now = metrics.value(samples, "ovnk_secondary_full_sync_changes_total",
                                table=table, action=action) or 0.0
            return now - before[(table, action)]

        assert increase("Port_Group", "delete") == 1  # web-egress's own (its namespace's stay)
        assert increase("ACL", "create") == 1  # web-to-db's
        assert increase("Address_Set", "update") == 1  # app=web's members
        assert increase("Port_Group", "create") == 0
    finally:
        second.stop()
    logged = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("NB: deleted port group ")
               and f"(MultiNetworkPolicy {NS_A}/web-egress on network {NETWORK})" in line
               for line in logged), "the deletion is not described in the log"
    assert any(line.startswith("NB: created ACL ") and f"{NS_A}:web-to-db" in line
               for line in logged)
    assert any(line.startswith("full sync of MultiNetworkPolicies: 2 known, 2 applied")
               for line in logged), [line for line in logged if "full sync" in line]


def test_refused_and_partly_applied_policies_get_their_events_once_and_no_rows(
    api: Api, nb_server: servers.NbServer, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ovnk_secondary")
    running = Controller(nb_remote=nb_server.remote, kubeconfig=api.kubeconfig,
                         resync_period=1)
    running.start()
    try:
        api.create_nad(NS_A, "polnet", name=NETWORK, topology="layer2", subnets="10.80.0.0/24")
        api.create_nad(NS_A, "bare", name="barenet", topology="layer2")  # no subnets: no IPAM
        everything = {"podSelector": {}}
        api.create_policy(NS_A, "no-for", everything)
        api.create_policy(NS_A, "bad-cidr", {"podSelector": {}, "ingress": [
            {"from": [{"ipBlock": {"cidr": "10.80.0.0/33"}}]}]}, policy_for="polnet")
        api.create_policy(NS_A, "named-port", {"podSelector": {}, "ingress": [
            {"ports": [{"port": "http"}]}]}, policy_for="polnet")
        api.create_policy(NS_A, "ignored", {"podSelector": {}, "policyTypes": ["Ingress"],
                                            "egress": [{}]}, policy_for="polnet")
        api.create_policy(NS_A, "bare-peers", {"podSelector": {}, "ingress": [
            {"from": [{"podSelector": {}}]}]}, policy_for="bare,polnet")
        api.create_policy(NS_A, "elsewhere", everything, policy_for="macvlan")
        expected = {"no-for": ("PolicyForMissing", "Warning"),
                    "bad-cidr": ("InvalidPolicy", "Warning"),
                    "named-port": ("UnsupportedPolicy", "Warning"),
                    "ignored": ("FieldIgnored", "Warning"),
                    "bare-peers": ("PolicyNotApplied", "Warning"),
                    "elsewhere": ("NoNetworkOfOurs", "Normal")}
        for name, (reason, kind) in expected.items():
            [event] = events(api, name, reason)
            assert event["type"] == kind
            assert event["involvedObject"]["kind"] == "MultiNetworkPolicy"
            assert event["involvedObject"]["namespace"] == NS_A
        assert "10.80.0.0/33" in events(api, "bad-cidr", "InvalidPolicy")[0]["message"]
        assert "named port" in events(api, "named-port", "UnsupportedPolicy")[0]["message"]
        # the applied ones have rows (on polnet only), the refused ones none
        applied = {f"{NS_A}:ignored", f"{NS_A}:bare-peers"}
        until(lambda: {n for n in applied if owned(nb_server, "Port_Group", **{
            naming.OBJECT_NAME_KEY: n})} == applied, "the applied policies have no rows")
        for name in ("no-for", "bad-cidr", "named-port", "elsewhere"):
            assert not owned(nb_server, "Port_Group", **{naming.OBJECT_NAME_KEY: f"{NS_A}:{name}"})
        assert not owned(nb_server, "Port_Group", **{naming.NETWORK_KEY: "barenet"})
        # full syncs come and go (every second): each message stays one Event
        until(lambda: sum("full sync of MultiNetworkPolicies" in r.getMessage()
                          for r in caplog.records) >= 3, "fewer than 3 full syncs")
    finally:
        running.stop()
    for name, (reason, _) in expected.items():
        assert len([e for e in api.events(name) if e["reason"] == reason]) == 1, name
