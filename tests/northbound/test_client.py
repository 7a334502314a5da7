"""The ovsdbapp adapter against a real NB ovsdb-server, checked the way ovn-nbctl shows it."""

from __future__ import annotations

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
