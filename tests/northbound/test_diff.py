"""Diffs: only what differs is written, and rows we do not own are never touched."""

from __future__ import annotations

import dataclasses

from ovnk_secondary import nads, naming
from ovnk_secondary.northbound import desired, diff

NETWORK = nads.NetworkConfig(name="localnet2", topology="localnet", nad_key="test/nad",
                             vlan_id=33)


def _attachment(name: str) -> desired.Attachment:
    return desired.Attachment(nad_key="test/nad", pod_namespace="test", pod_name=name,
                              pod_uid=f"uid-{name}", node="node1", mac="02:00:00:00:00:01",
                              ips=None)


def _state(*pods: str) -> desired.State:
    return desired.state([NETWORK], [(NETWORK, _attachment(p)) for p in pods])


def test_equal_states_give_an_empty_diff() -> None:
    assert diff.diff(_state("a", "b"), _state("a", "b")).empty


def test_missing_rows_are_created_and_orphans_deleted() -> None:
    change = diff.diff(_state("a", "b"), _state("b", "c"))
    assert [p.name for p in change.create_ports] == ["test.nad_test_a"]
    assert [p.name for p in change.delete_ports] == ["test.nad_test_c"]
    assert not change.create_switches and not change.delete_switches


def test_drifted_columns_are_repaired_and_foreign_map_keys_kept() -> None:
    want = _state()
    port = next(iter(want.ports.values()))
    drifted = dataclasses.replace(port, tag_request=99, options={"network_name": "localnet2",
                                                                 "someone-else": "x"})
    have = desired.State(switches=want.switches, ports={port.name: drifted})
    change = diff.diff(want, have)
    assert change.update_ports == (diff.Update(name=port.name, columns={"tag_request": 33}),)


def test_removed_managed_keys_are_deleted() -> None:
    want = _state()
    switch = next(iter(want.switches.values()))
    stale = dataclasses.replace(switch, other_config={"subnet": "10.0.0.0/24"})
    change = diff.diff(want, desired.State(switches={switch.name: stale}, ports=want.ports))
    assert change.update_switches == (diff.Update(name=switch.name, columns={},
                                                  removed_keys={"other_config": ("subnet",)}),)


def test_deleting_a_switch_takes_its_ports_along() -> None:
    change = diff.diff(desired.State(), _state("a"))
    assert change.delete_switches == ("localnet2_ovn_localnet_switch",)
    assert change.delete_ports == ()


def test_foreign_rows_are_conflicts_and_never_touched() -> None:
    want = _state("a")
    change = diff.diff(want, desired.State(), foreign={"localnet2_ovn_localnet_switch"})
    assert change.conflicts == ("localnet2_ovn_localnet_switch",)
    assert change.empty


def test_a_port_on_the_wrong_switch_is_moved() -> None:
    want = _state("a")
    port = want.ports["test.nad_test_a"]
    have = desired.State(switches=want.switches,
                         ports={**want.ports, port.name: dataclasses.replace(port, switch="x")})
    change = diff.diff(want, have)
    assert [p.switch for p in change.delete_ports] == ["x"]
    assert [p.name for p in change.create_ports] == [port.name]


def test_every_row_change_is_described_with_what_it_is_for() -> None:
    """The log's record of NB changes: one line per row, naming pod, NAD, addresses, VLAN."""
    created = diff.diff(_state("a"), desired.State())
    lines = diff.describe(created)
    assert lines == [
        "created logical switch localnet2_ovn_localnet_switch (network localnet2, localnet)",
        "created logical switch port localnet2_ovn_localnet_port on "
        "localnet2_ovn_localnet_switch (localnet port of network localnet2, VLAN 33)",
        "created logical switch port test.nad_test_a on localnet2_ovn_localnet_switch "
        "(a pod in namespace test, NAD test/nad, addresses 02:00:00:00:00:01)",
    ]
    deleted = diff.diff(desired.State(), _state("a"))  # its ports go with the switch
    assert diff.describe(deleted) == ["deleted logical switch localnet2_ovn_localnet_switch"]
    assert diff.describe(diff.diff(_state(), _state("a"))) == [
        "deleted logical switch port test.nad_test_a from localnet2_ovn_localnet_switch "
        "(a pod in namespace test, NAD test/nad, addresses 02:00:00:00:00:01)"]
    moved = diff.diff(desired.state([dataclasses.replace(NETWORK, vlan_id=34)], []),
                      desired.state([NETWORK], []))
    assert diff.describe(moved) == [
        "updated logical switch port localnet2_ovn_localnet_port: tag_request=34"]
    assert diff.describe(diff.diff(_state("a"), _state("a"))) == []


# -- policy rows ---------------------------------------------------------------------------

def _policy_state(*, ports: tuple[str, ...] = ("p1",), addresses: tuple[str, ...] = ("10.0.0.1",),
                  match: str = "ip4.src == {$as1} && outport == @pg1") -> desired.PolicyState:
    ids = {naming.OWNER_KEY: naming.OWNER_VALUE, naming.NETWORK_KEY: "n",
           naming.OWNER_TYPE_KEY: "NetworkPolicy", naming.OBJECT_NAME_KEY: "ns1:pol"}
    group = desired.PortGroup(name="pg1", ports=ports, external_ids=ids)
    acl = desired.Acl(id="c:NetworkPolicy:ns1:pol:Ingress:0:None:-1", port_group="pg1",
                      priority=1001, direction="to-lport", match=match, action="allow-related",
                      name="NP:ns1:pol:Ingress:0", external_ids=ids)
    address_set = desired.AddressSet(name="as1", addresses=addresses, external_ids={
        **ids, naming.OWNER_TYPE_KEY: "PodSelector", naming.OBJECT_NAME_KEY: "ns1_LS{}",
        "ip-family": "v4"})
    return desired.PolicyState(port_groups={"pg1": group}, acls={acl.id: acl},
                               address_sets={"as1": address_set})


def test_policy_rows_are_created_in_order_and_a_second_diff_is_empty() -> None:
    want = _policy_state()
    change = diff.policy_diff(want, desired.PolicyState())
    assert [s.name for s in change.create_address_sets] == ["as1"]
    assert [g.name for g in change.create_port_groups] == ["pg1"]
    assert change.port_group_members == (diff.Members(name="pg1", added=("p1",)),)
    assert [a.id for a in change.create_acls] == list(want.acls)
    assert diff.policy_diff(want, want).empty


def test_members_change_by_element_and_acls_in_place() -> None:
    want = _policy_state(ports=("p1", "p3"), addresses=("10.0.0.2",), match="ip4 && x")
    change = diff.policy_diff(want, _policy_state(ports=("p1", "p2")))
    assert change.port_group_members == (diff.Members(name="pg1", added=("p3",),
                                                      removed=("p2",)),)
    assert change.address_set_members == (diff.Members(name="as1", added=("10.0.0.2",),
                                                       removed=("10.0.0.1",)),)
    [update] = change.update_acls
    assert (update.name, update.holder, update.columns) == (
        "c:NetworkPolicy:ns1:pol:Ingress:0:None:-1", "pg1", {"match": "ip4 && x"})
    assert not change.create_acls and not change.delete_acls


def test_deleting_a_port_group_takes_its_acls_and_foreign_keys_survive() -> None:
    have = _policy_state()
    change = diff.policy_diff(desired.PolicyState(), have)
    assert [g.name for g in change.delete_port_groups] == ["pg1"]
    assert change.delete_acls == ()  # not roots: they go with their port group
    assert [s.name for s in change.delete_address_sets] == ["as1"]
    group = have.port_groups["pg1"]
    extra = dataclasses.replace(group, external_ids={**group.external_ids, "someone": "x"})
    assert diff.policy_diff(have, dataclasses.replace(have, port_groups={"pg1": extra})).empty


def test_an_acl_moved_to_another_port_group_is_recreated() -> None:
    want = _policy_state()
    acl = next(iter(want.acls.values()))
    have = dataclasses.replace(want, acls={acl.id: dataclasses.replace(acl, port_group="pg0")})
    change = diff.policy_diff(want, have)
    assert [(a.port_group) for a in change.delete_acls] == ["pg0"]
    assert [(a.port_group) for a in change.create_acls] == ["pg1"]


def test_foreign_policy_rows_are_conflicts_and_nothing_points_at_them() -> None:
    want = _policy_state()
    change = diff.policy_diff(want, desired.PolicyState(), foreign={"as1"})
    assert change.conflicts == ("as1",)
    assert change.create_acls == ()  # its match names the foreign address set
    assert [g.name for g in change.create_port_groups] == ["pg1"]
    change = diff.policy_diff(want, desired.PolicyState(), foreign={"pg1"})
    assert change.conflicts == ("pg1",) and change.create_acls == ()
    assert change.create_port_groups == () and change.port_group_members == ()


def test_every_policy_row_change_is_described() -> None:
    lines = diff.describe(diff.policy_diff(_policy_state(), desired.PolicyState()))
    assert lines == [
        "created address set as1 (peers ns1_LS{}, v4 on network n; 1 addresses)",
        "created port group pg1 (MultiNetworkPolicy ns1/pol on network n; 1 ports)",
        "created ACL c:NetworkPolicy:ns1:pol:Ingress:0:None:-1 on port group pg1 (to-lport "
        "1001 allow-related ip4.src == {$as1} && outport == @pg1)"]
    moved = diff.policy_diff(_policy_state(ports=("p2",), addresses=()), _policy_state())
    assert diff.describe(moved) == ["updated address set as1: addresses -10.0.0.1",
                                    "updated port group pg1: ports +p2 -p1"]
    assert diff.describe(diff.policy_diff(desired.PolicyState(), _policy_state())) == [
        "deleted port group pg1 (MultiNetworkPolicy ns1/pol on network n)",
        "deleted address set as1 (peers ns1_LS{}, v4 on network n)"]
