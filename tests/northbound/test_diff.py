"""Diffs: only what differs is written, and rows we do not own are never touched."""

from __future__ import annotations

import dataclasses

from ovnk_secondary import nads
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
