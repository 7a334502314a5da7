"""The ovsdbapp adapter against a real NB ovsdb-server, checked the way ovn-nbctl shows it."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import netaddr
import pytest

from ovnk_secondary import errors, nads, naming
from ovnk_secondary.northbound import client, desired, diff, servers

LAYER2 = nads.NetworkConfig(name="l2-network", topology="layer2", nad_key="test/nad-layer2",
                            subnets=(netaddr.IPNetwork("10.100.0.0/16"),))
LOCALNET1 = nads.NetworkConfig(name="localnet1", topology="localnet",
                               nad_key="test/nad-localnet1", vlan_id=34)
LOCALNET2 = nads.NetworkConfig(name="localnet2", topology="localnet",
                               nad_key="test/nad-localnet2", vlan_id=33)


def _pod(network: nads.NetworkConfig, name: str, index: int) -> desired.Attachment:
    ip = f"10.100.{index // 250}.{index % 250 + 2}/16"
    return desired.Attachment(nad_key=network.nad_key, pod_namespace="test", pod_name=name,
                              pod_uid=f"uid-{name}", node="node1",
                              mac=f"0a:58:0a:64:{index // 250:02x}:{index % 250 + 2:02x}",
                              ips=(ip,) if network.has_ipam else None)


def _list(server: servers.NbServer, table: str, record: str) -> dict[str, str]:
    out = server.nbctl("--format=json", "list", table, record)
    data = json.loads(out)
    return dict(zip(data["headings"], (json.dumps(v) for v in data["data"][0]), strict=True))


def _sync(nb: client.Northbound, want: desired.State) -> diff.Diff:
    have, foreign = nb.read()
    change = diff.diff(want, have, foreign=foreign)
    nb.apply(change)
    return change


def test_reference_networks_appear_as_ovn_nbctl_shows_them(
    nb: client.Northbound, nb_server: servers.NbServer
) -> None:
    want = desired.state([LAYER2, LOCALNET1, LOCALNET2],
                         [(LAYER2, _pod(LAYER2, "tinypod", 3)),
                          (LOCALNET2, _pod(LOCALNET2, "vm", 0))])
    _sync(nb, want)
    shown = nb_server.nbctl("show")
    for name in ("l2.network_ovn_layer2_switch", "localnet1_ovn_localnet_switch",
                 "localnet2_ovn_localnet_switch", "test.nad.layer2_test_tinypod",
                 "test.nad.localnet2_test_vm"):
        assert name in shown
    port = _list(nb_server, "Logical_Switch_Port", "localnet2_ovn_localnet_port")
    assert port["type"] == '"localnet"' and port["tag_request"] == "33"
    assert "network_name" in port["options"] and "localnet2" in port["options"]
    assert nb_server.nbctl("lsp-get-addresses", "test.nad.layer2_test_tinypod").strip() == (
        "0a:58:0a:64:00:05 10.100.0.5")
    assert nb_server.nbctl("get", "Logical_Switch_Port", "test.nad.layer2_test_tinypod",
                           "options:requested-chassis").strip() == "node1"
    for table, record in (("Logical_Switch", "l2.network_ovn_layer2_switch"),
                          ("Logical_Switch_Port", "test.nad.layer2_test_tinypod")):
        assert nb_server.nbctl("get", table, record,
                               f'external_ids:"{naming.OWNER_KEY}"').strip() == naming.OWNER_VALUE
    assert _sync(nb, want).empty, "a second sync must find nothing to change"


def test_drift_is_repaired_and_foreign_rows_survive(
    nb: client.Northbound, nb_server: servers.NbServer
) -> None:
    want = desired.state([LOCALNET2], [(LOCALNET2, _pod(LOCALNET2, "vm", 0))])
    _sync(nb, want)
    nb_server.nbctl("set", "Logical_Switch_Port", "localnet2_ovn_localnet_port",
                    "tag_request=99", "options:extra=kept")
    nb_server.nbctl("lsp-del", "test.nad.localnet2_test_vm")
    nb_server.nbctl("ls-add", "admin-switch", "--", "lsp-add", "admin-switch", "admin-port")
    nb_server.nbctl("lsp-add", "localnet2_ovn_localnet_switch", "admin-port-on-ours")
    deadline = time.monotonic() + 10
    while nb.read()[0].ports.get("test.nad.localnet2_test_vm") is not None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    change = _sync(nb, want)
    assert [p.name for p in change.create_ports] == ["test.nad.localnet2_test_vm"]
    assert nb_server.nbctl("get", "Logical_Switch_Port", "localnet2_ovn_localnet_port",
                           "tag_request").strip() == "33"
    assert nb_server.nbctl("get", "Logical_Switch_Port", "localnet2_ovn_localnet_port",
                           "options:extra").strip() == "kept"
    # everything of ours goes; nobody else's row is touched
    _sync(nb, desired.State())
    assert nb_server.nbctl("--bare", "--columns=name", "list", "Logical_Switch").split() == [
        "admin-switch"]
    assert sorted(nb_server.nbctl("--bare", "--columns=name", "list",
                                  "Logical_Switch_Port").split()) == ["admin-port"]


def test_a_foreign_row_with_our_name_is_a_conflict(
    nb: client.Northbound, nb_server: servers.NbServer
) -> None:
    nb_server.nbctl("ls-add", "localnet2_ovn_localnet_switch")
    deadline = time.monotonic() + 10
    while "localnet2_ovn_localnet_switch" not in nb.read()[1]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    change = _sync(nb, desired.network_state(LOCALNET2))
    assert change.conflicts == ("localnet2_ovn_localnet_switch",)
    assert nb_server.nbctl("--bare", "--columns=external_ids", "list",
                           "Logical_Switch").strip() == ""


def test_unreachable_nb_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    northbound = client.Northbound(remote=f"unix:{tmp_path}/nothing.sock", timeout=1)
    with pytest.raises(errors.NorthboundError, match="cannot connect to OVN northbound"):
        northbound.connect()
    assert not northbound.ready()
    with pytest.raises(errors.NorthboundError, match="not connected"):
        northbound.read()


def test_resync_of_many_unchanged_ports_issues_no_command(nb: client.Northbound) -> None:
    # speed is measured in benchmarks/controller_bench.py, never asserted here
    pods = [(LAYER2, _pod(LAYER2, f"pod{i}", i)) for i in range(3_000)]
    want = desired.state([LAYER2], pods)
    nb.apply(diff.diff(want, desired.State()), batch=2_000)
    deadline = time.monotonic() + 30
    while len(nb.read()[0].ports) < 3_000:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    have, foreign = nb.read()
    change = diff.diff(desired.state([LAYER2], pods), have, foreign=foreign)
    assert change.empty
    assert nb.apply(change) == 0


def _port_names(server: servers.NbServer) -> set[str]:
    return set(server.nbctl("--bare", "--columns=name", "list", "Logical_Switch_Port").split())


def test_converge_writes_a_batch_of_pods_and_repairs_what_differs(
    nb: client.Northbound, nb_server: servers.NbServer
) -> None:
    _sync(nb, desired.network_state(LAYER2))
    parts = [client.Part(want=desired.state((), [(LAYER2, _pod(LAYER2, f"p{i}", i))]))
             for i in range(5)]
    outcomes = nb.converge(parts)
    assert [o.error for o in outcomes] == [None] * 5
    assert {f"test.nad.layer2_test_p{i}" for i in range(5)} <= _port_names(nb_server)
    # a port edited behind our back is converged, the others are left as they are
    nb_server.nbctl("lsp-set-addresses", "test.nad.layer2_test_p2", "0a:58:00:00:00:01")
    deadline = time.monotonic() + 10
    while nb.read()[0].ports["test.nad.layer2_test_p2"].addresses != ("0a:58:00:00:00:01",):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    outcomes = nb.converge(parts)
    changes = [o.change for o in outcomes]
    assert all(c is not None for c in changes)
    assert [len(c.update_ports) for c in changes if c is not None] == [0, 0, 1, 0, 0]
    assert nb_server.nbctl("lsp-get-addresses", "test.nad.layer2_test_p2").strip() == (
        "0a:58:0a:64:00:04 10.100.0.4")


def test_one_bad_pod_does_not_fail_its_batch_mates(
    nb: client.Northbound, nb_server: servers.NbServer
) -> None:
    _sync(nb, desired.network_state(LAYER2))
    good = [client.Part(want=desired.state((), [(LAYER2, _pod(LAYER2, f"good{i}", i))]))
            for i in range(4)]
    # each fails the shared transaction: its switch does not exist
    missing = dataclasses.replace(LAYER2, name="missing-network")
    bad = [client.Part(want=desired.state((), [(missing, _pod(missing, f"bad{i}", 10 + i))]))
           for i in range(2)]
    ended: list[tuple[bool, float]] = []  # what the controller's metrics are told

    def observe(*, committed: bool, seconds: float) -> None:
        ended.append((committed, seconds))

    nb.on_transaction = observe
    outcomes = nb.converge([good[0], bad[0], good[1], good[2], bad[1], good[3]])
    failed = [o.error is not None for o in outcomes]
    assert failed == [False, True, False, False, True, False]
    # the shared transaction failed, then each part alone
    assert [committed for committed, _ in ended] == [False, True, False, True, True, False, True]
    assert all(0 <= seconds < 10 for _, seconds in ended)
    assert isinstance(outcomes[1].error, errors.NorthboundError)
    assert "missing.network_ovn_layer2_switch" in str(outcomes[1].error)
    names = _port_names(nb_server)
    assert {f"test.nad.layer2_test_good{i}" for i in range(4)} <= names
    assert not any("bad" in n for n in names)


def test_a_pod_with_two_ports_is_all_or_nothing(
    nb: client.Northbound, nb_server: servers.NbServer
) -> None:
    _sync(nb, desired.network_state(LAYER2))
    first = desired.pod_port(LAYER2, _pod(LAYER2, "twin", 1))
    missing = dataclasses.replace(LAYER2, name="missing-network", nad_key="test/missing")
    second = desired.pod_port(missing, _pod(missing, "twin", 2))
    [outcome] = nb.converge([client.Part(
        want=desired.State(ports={first.name: first, second.name: second}))])
    assert outcome.error is not None
    assert not any("twin" in n for n in _port_names(nb_server))


def test_network_parts_create_and_delete_switches_in_their_own_transaction_only(
    nb: client.Northbound, nb_server: servers.NbServer
) -> None:
    """Issue 13: a switch's creation rode in several batches ("Switch ... exists"). A part
    reads and diffs its rows inside the transaction: the same part committed twice, or after
    another batch created its switch, changes nothing and fails nothing."""
    networks = [dataclasses.replace(LAYER2, name=f"sc{i:04d}") for i in range(50)]
    parts = [client.Part(want=desired.network_state(n),
                         switches=frozenset({desired.switch_name(n)})) for n in networks]
    first = nb.converge(parts[:30])
    second = nb.converge(parts[20:])  # overlaps the first batch: sc0020..sc0029 exist
    assert [o.error for o in first + second] == [None] * 60
    created = [len(o.change.create_switches) for o in second if o.change is not None]
    assert created == [0] * 10 + [1] * 20
    assert {desired.switch_name(n) for n in networks} <= set(
        nb_server.nbctl("--bare", "--columns=name", "list", "Logical_Switch").split())
    # a part without rows deletes its switch; twice is no error
    gone = [client.Part(want=desired.State(), switches=p.switches) for p in parts]
    assert [o.error for o in nb.converge(gone) + nb.converge(gone)] == [None] * 100
    assert not set(nb_server.nbctl("--bare", "--columns=name", "list",
                                   "Logical_Switch").split()) & {p for part in parts
                                                                 for p in part.switches}
