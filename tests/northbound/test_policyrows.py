"""Policy rows in a real NB, checked the way ovn-nbctl shows them: converged in one
transaction, repaired, removed exactly, and nobody else's row touched."""

from __future__ import annotations

import time
from collections.abc import Callable

from ovnk_secondary import naming
from ovnk_secondary.northbound import client, desired, diff, servers
from tests.northbound import policyscenario as world


def _eventually(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def _setup(nb: client.Northbound, *names: str) -> None:
    nb.apply(diff.diff(world.ports_state(*names), desired.State()))
    _eventually(lambda: len(nb.read()[0].ports) == len(names))


def _port_names(server: servers.NbServer) -> dict[str, str]:
    out = server.nbctl("--bare", "--columns=_uuid,name", "list", "Logical_Switch_Port")
    fields = out.split()
    return dict(zip(fields[::2], fields[1::2], strict=True))


def _group_ports(server: servers.NbServer, group: str) -> list[str]:
    names = _port_names(server)
    out = server.nbctl("--bare", "--columns=ports", "list", "Port_Group", group)
    return sorted(names[u] for u in out.split())


def _names(server: servers.NbServer, table: str) -> set[str]:
    return set(server.nbctl("--bare", "--columns=name", "list", table).split())


def _acl_uuids(server: servers.NbServer) -> set[str]:
    return set(server.nbctl("--bare", "--columns=_uuid", "list", "ACL").split())


def _policy_group(name: str, namespace: str = "ns1") -> str:
    return naming.hash_for_ovn(f"l2-network-network-controller:NetworkPolicy:{namespace}:{name}")


def _deny_group(direction: str, namespace: str = "ns1") -> str:
    return naming.hash_for_ovn(
        f"l2-network-network-controller:NetpolNamespace:{namespace}:{direction}")


def test_policy_rows_land_as_ovn_nbctl_shows_them(
    nb: client.Northbound, nb_server: servers.NbServer
) -> None:
    _setup(nb, "db", "web", "other")
    want = world.rows(world.policy(world.ALLOW_WEB_TO_DB))
    outcome = nb.converge_policies(want)
    assert outcome.missing_ports == ()
    assert len(outcome.change.create_acls) == 7
    group = _policy_group("pol")
    web = naming.hash_for_ovn(
        "l2-network-network-controller:PodSelector:ns1_LS{ML:{app: web,},}:v4")
    assert nb_server.nbctl("acl-list", group).splitlines() == [
        f"  to-lport  1001 (ip4.src == {{${web}}} && tcp && tcp.dst==5432 && "
        f"outport == @{group}) allow-related"]
    assert nb_server.nbctl("acl-list", _deny_group("Ingress")).splitlines() == [
        "  to-lport  1001 (0) allow-related",
        f"  to-lport  1001 (outport == @{_deny_group('Ingress')} && (arp || nd)) allow",
        f"  to-lport  1000 (outport == @{_deny_group('Ingress')}) drop"]
    assert nb_server.nbctl("acl-list", _deny_group("Egress")).splitlines() == [
        "from-lport  1001 (0) allow-related [after-lb]",
        f"from-lport  1001 (inport == @{_deny_group('Egress')} && (arp || nd)) allow [after-lb]",
        f"from-lport  1000 (inport == @{_deny_group('Egress')}) drop [after-lb]"]
    assert _group_ports(nb_server, group) == ["ns1.l2_ns1_db"]
    assert _group_ports(nb_server, _deny_group("Ingress")) == ["ns1.l2_ns1_db"]
    assert _group_ports(nb_server, _deny_group("Egress")) == []
    assert nb_server.nbctl("get", "Address_Set", web, "addresses").strip() == '["10.100.0.6"]'
    for table, record in (("Port_Group", group), ("Address_Set", web)):
        assert nb_server.nbctl("get", table, record,
                               f'external_ids:"{naming.OWNER_KEY}"').strip() == naming.OWNER_VALUE
    assert nb_server.nbctl("--bare", "--columns=external_ids", "find", "ACL", "priority=1001",
                           "action=allow-related").count(naming.OWNER_KEY) == 3  # rule+2 stateful
    _eventually(lambda: nb.read_policies()[0] == want)
    assert nb.converge_policies(want).change.empty, "a second converge must change nothing"


def test_deleting_a_policy_removes_exactly_its_rows(
    nb: client.Northbound, nb_server: servers.NbServer
) -> None:
    _setup(nb, "db", "web", "other")
    first = world.policy(world.ALLOW_WEB_TO_DB, name="first")
    second = world.policy(world.ALLOW_TEAM_B, name="second")
    nb.converge_policies(world.rows(first, second))
    _eventually(lambda: len(nb.read_policies()[0].port_groups) == 4)
    before = _acl_uuids(nb_server)
    kept = world.rows(first)
    change = nb.converge_policies(kept).change
    assert [g.name for g in change.delete_port_groups] == [_policy_group("second")]
    assert len(change.delete_address_sets) == 1 and not change.create_acls
    assert _names(nb_server, "Port_Group") == set(kept.port_groups)
    assert _names(nb_server, "Address_Set") == set(kept.address_sets)
    after = _acl_uuids(nb_server)
    assert after < before and len(after) == len(kept.acls)  # the rest untouched, not recreated
    # the last policy gone: nothing of ours is left, open traffic again
    nb.converge_policies(desired.PolicyState())
    assert not _names(nb_server, "Port_Group") and not _acl_uuids(nb_server)
    assert not _names(nb_server, "Address_Set")


def test_foreign_rows_are_untouched_and_a_foreign_name_is_a_conflict(
    nb: client.Northbound, nb_server: servers.NbServer
) -> None:
    _setup(nb, "db", "web")
    want = world.rows(world.policy(world.ALLOW_WEB_TO_DB), names=("db", "web"))
    group = _policy_group("pol")
    nb_server.nbctl("pg-add", "admin-pg", "ns1.l2_ns1_web", "--", "create", "Address_Set",
                    "name=admin-as", 'addresses="192.0.2.1"')
    nb_server.nbctl("--type=port-group", "acl-add", "admin-pg", "to-lport", "2000",
                    "outport == @admin-pg && ip4.src == $admin-as", "drop")
    nb_server.nbctl("pg-add", _deny_group("Egress"))  # someone else's row with our name
    _eventually(lambda: _deny_group("Egress") in nb.read_policies()[1])
    change = nb.converge_policies(want).change
    assert change.conflicts == (_deny_group("Egress"),)
    assert nb_server.nbctl("acl-list", _deny_group("Egress")) == ""  # nothing written in it
    # an admin's ACL on our port group stays through our changes of that group
    nb_server.nbctl("--type=port-group", "acl-add", group, "to-lport", "3000",
                    f"outport == @{group} && icmp4", "allow")
    _eventually(lambda: len(nb.read_policies()[0].acls) == len(want.acls) - 3)
    changed = world.rows(world.policy(world.ALLOW_TEAM_B), names=("db", "web"))
    nb.converge_policies(changed)
    assert "icmp4" in nb_server.nbctl("acl-list", group)
    nb.converge_policies(desired.PolicyState())
    assert _names(nb_server, "Port_Group") == {"admin-pg", _deny_group("Egress")}
    assert _names(nb_server, "Address_Set") == {"admin-as"}
    assert nb_server.nbctl("acl-list", "admin-pg").strip() == (
        "to-lport  2000 (outport == @admin-pg && ip4.src == $admin-as) drop")
    assert _group_ports(nb_server, "admin-pg") == ["ns1.l2_ns1_web"]


def test_drift_is_repaired(nb: client.Northbound, nb_server: servers.NbServer) -> None:
    _setup(nb, "db", "web", "other")
    want = world.rows(world.policy(world.ALLOW_WEB_TO_DB))
    nb.converge_policies(want)
    group = _policy_group("pol")
    web = next(iter(want.address_sets))
    [rule] = [a for a in want.acls.values() if a.port_group == group]
    uuid = nb_server.nbctl("--bare", "--columns=_uuid", "find", "ACL",
                           f'external_ids:"k8s.ovn.org/id"="{rule.id}"').strip()
    nb_server.nbctl("set", "ACL", uuid, 'match="1"', "external_ids:note=kept")
    nb_server.nbctl("remove", "Address_Set", web, "addresses", '"10.100.0.6"')
    nb_server.nbctl("clear", "Port_Group", _deny_group("Ingress"), "ports")
    nb_server.nbctl("acl-del", _deny_group("Egress"), "from-lport", "1000",
                    f"inport == @{_deny_group('Egress')}")
    _eventually(lambda: len(nb.read_policies()[0].acls) == len(want.acls) - 1)
    change = nb.converge_policies(want).change
    assert [u.columns for u in change.update_acls] == [{"match": rule.match}]
    assert [a.id for a in change.create_acls] == [
        "l2-network-network-controller:NetpolNamespace:ns1:Egress:defaultDeny"]
    assert change.address_set_members == (diff.Members(name=web, added=("10.100.0.6",)),)
    assert change.port_group_members == (
        diff.Members(name=_deny_group("Ingress"), added=("ns1.l2_ns1_db",)),)
    assert nb_server.nbctl("get", "ACL", uuid, "external_ids:note").strip() == "kept"
    assert nb.converge_policies(want).change.empty


def test_a_port_not_yet_in_nb_is_left_out_then_added(
    nb: client.Northbound, nb_server: servers.NbServer
) -> None:
    _setup(nb, "web")
    want = world.rows(world.policy({"podSelector": {}}), names=("db", "web"))
    outcome = nb.converge_policies(want)
    assert outcome.missing_ports == ("ns1.l2_ns1_db",)
    assert _group_ports(nb_server, _policy_group("pol")) == ["ns1.l2_ns1_web"]
    nb.apply(diff.diff(world.ports_state("db", "web"), nb.read()[0]))
    _eventually(lambda: "ns1.l2_ns1_db" in nb.read()[0].ports)
    outcome = nb.converge_policies(want)
    assert outcome.missing_ports == ()
    assert _group_ports(nb_server, _policy_group("pol")) == ["ns1.l2_ns1_db", "ns1.l2_ns1_web"]


def test_converging_some_networks_leaves_the_others_alone(
    nb: client.Northbound, nb_server: servers.NbServer
) -> None:
    _setup(nb, "db")
    want = world.rows(world.policy({"podSelector": {}}), names=("db",))
    nb.converge_policies(want)
    change = nb.converge_policies(desired.PolicyState(), networks=["another-network"]).change
    assert change.empty
    assert _names(nb_server, "Port_Group") == set(want.port_groups)
    nb.converge_policies(desired.PolicyState(), networks=["l2-network"])
    assert not _names(nb_server, "Port_Group")


def test_apply_in_small_batches_writes_the_same_rows(
    nb: client.Northbound, nb_server: servers.NbServer
) -> None:
    _setup(nb, "db", "web", "other")
    want = world.rows(world.policy(world.ALLOW_WEB_TO_DB), world.policy(world.ALLOW_TEAM_B,
                                                                        name="b"))
    change = diff.policy_diff(want, desired.PolicyState())
    assert nb.apply_policies(change, batch=3) > 3
    _eventually(lambda: nb.read_policies()[0] == want)
    assert nb.converge_policies(want).change.empty
