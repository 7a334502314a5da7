"""The controller end to end: NADs and pods in the API, rows in a real NB, as ovn-nbctl shows."""

from __future__ import annotations

import concurrent.futures
import json
import logging

import pytest

from ovnk_secondary import naming
from ovnk_secondary.northbound import servers
from tests.controller.harness import Api, Controller, nb_get, ports, switches, until


def test_reference_scenario_nads_and_pods(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    api.create_nad("test", "nad-layer2", name="l2-network", topology="layer2",
                   subnets="10.100.0.0/24")
    api.create_nad("test", "nad-localnet1", name="localnet1", topology="localnet", vlanID=34)
    api.create_nad("test", "nad-localnet2", name="localnet2", topology="localnet", vlanID=33)
    until(lambda: {"l2.network_ovn_layer2_switch", "localnet1_ovn_localnet_switch",
                   "localnet2_ovn_localnet_switch"} <= switches(nb_server),
          "the three switches did not appear")
    assert nb_get(nb_server, "Logical_Switch_Port", "localnet1_ovn_localnet_port",
                "tag_request") == "34"
    assert nb_get(nb_server, "Logical_Switch_Port", "localnet2_ovn_localnet_port",
                "options:network_name") == "localnet2"

    api.create_pod("test", "text-pod", "test/nad-layer2,nad-localnet2@eth2")
    api.create_pod("test", "json-pod", json.dumps([
        {"name": "nad-layer2", "namespace": "test", "mac": "02:11:22:33:44:55"},
        {"name": "nad-localnet1"}]))
    expected = {"test.nad.layer2_test_text-pod", "test.nad.localnet2_test_text-pod",
                "test.nad.layer2_test_json-pod", "test.nad.localnet1_test_json-pod"}
    until(lambda: expected <= ports(nb_server), "pod ports did not appear")
    annotation = until(lambda: api.pod_networks("test", "text-pod"), "no pod-networks")
    layer2 = annotation["test/nad-layer2"]
    ip = layer2["ip_addresses"][0]
    assert ip.startswith("10.100.0.") and ip.endswith("/24")
    assert layer2["mac_address"] == "0a:58:" + ":".join(
        f"{int(b):02x}" for b in ip.split("/")[0].split("."))
    assert annotation["test/nad-localnet2"]["ip_addresses"] is None
    assert nb_server.nbctl("lsp-get-addresses", "test.nad.layer2_test_text-pod").strip() == (
        f"{layer2['mac_address']} {ip.split('/')[0]}")
    assert nb_get(nb_server, "Logical_Switch_Port", "test.nad.layer2_test_text-pod",
                "options:requested-chassis") == "node1"
    json_pod = until(lambda: api.pod_networks("test", "json-pod"), "no pod-networks")
    assert json_pod["test/nad-layer2"]["mac_address"] == "02:11:22:33:44:55"
    assert json_pod["test/nad-layer2"]["ip_addresses"] != layer2["ip_addresses"]
    for port in expected:
        assert nb_get(nb_server, "Logical_Switch_Port", port,
                    f'external_ids:"{naming.OWNER_KEY}"') == naming.OWNER_VALUE


def test_each_allocation_and_nb_change_is_one_info_line(
    api: Api, nb_server: servers.NbServer, controller: Controller,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What an operator greps for: the pod's addresses, MAC and port, and each NB row written."""
    caplog.set_level(logging.INFO, logger="ovnk_secondary")
    api.create_nad("test", "nad-layer2", name="l2-network", topology="layer2",
                   subnets="10.100.0.0/24")
    api.create_pod("test", "logged-pod", "nad-layer2")
    annotation = until(lambda: api.pod_networks("test", "logged-pod"), "no pod-networks")
    until(lambda: "test.nad.layer2_test_logged-pod" in ports(nb_server), "no port")
    entry = annotation["test/nad-layer2"]
    port_line = ("NB: created logical switch port test.nad.layer2_test_logged-pod on "
                 "l2.network_ovn_layer2_switch (a pod in namespace test, NAD test/nad-layer2, "
                 f"addresses {entry['mac_address']} {entry['ip_addresses'][0].split('/')[0]})")
    until(lambda: port_line in caplog.messages, "no INFO line for the port")
    messages = caplog.messages
    allocations = [m for m in messages if m.startswith("pod test/logged-pod on NAD ")]
    assert allocations == [
        f"pod test/logged-pod on NAD test/nad-layer2: addresses {entry['ip_addresses'][0]}, "
        f"MAC {entry['mac_address']}, port test.nad.layer2_test_logged-pod"]
    assert messages.count(port_line) == 1
    assert ("NB: created logical switch l2.network_ovn_layer2_switch (network l2-network, "
            "layer2)") in messages
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_invalid_and_missing_nads_get_warning_events_and_no_nb_rows(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    api.create_nad("test", "bad-vlan", name="bad", topology="localnet", vlanID=5000)
    events = until(lambda: api.events("bad-vlan"), "no Event on the invalid NAD")
    assert events[0]["type"] == "Warning" and events[0]["reason"] == "InvalidConfig"
    assert "vlanID 5000 out of range 1-4094 in NAD test/bad-vlan" in events[0]["message"]
    api.create_nad("test", "good", name="good", topology="layer2")
    until(lambda: "good_ovn_layer2_switch" in switches(nb_server), "valid NAD not applied")
    assert "bad_ovn_localnet_switch" not in switches(nb_server)

    api.create_pod("test", "p", "test/missing,test/bad-vlan,test/good")
    until(lambda: "test.good_test_p" in ports(nb_server), "the pod's valid network failed")
    reasons = until(lambda: {e["reason"] for e in api.events("p")} >= {
        "NetworkNotFound", "InvalidConfig"} and {e["reason"] for e in api.events("p")},
        "no Events on the pod for its missing and invalid NADs")
    assert reasons >= {"NetworkNotFound", "InvalidConfig"}
    missing = next(e["message"] for e in api.events("p") if e["reason"] == "NetworkNotFound")
    # the networks it does have are named, and only those: bad-vlan is not attached
    assert "NAD test/missing does not exist; create it (the pod's other networks, test/good, " \
        "are attached)" in missing, missing
    api.create_pod("test", "lonely", "test/missing")
    lonely = until(lambda: [e["message"] for e in api.events("lonely")
                            if e["reason"] == "NetworkNotFound"], "no Event on the lonely pod")
    assert lonely[0].endswith("NAD test/missing does not exist; create it"), lonely


def test_fields_accepted_but_not_acted_on_get_a_warning_and_the_rest_applies(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    api.create_nad("test", "claims", name="claims", topology="layer2", subnets="10.7.0.0/24",
                   allowPersistentIPs=True, joinSubnet="100.65.0.0/16")
    until(lambda: "claims_ovn_layer2_switch" in switches(nb_server), "the NAD not applied")
    events = until(lambda: [e for e in api.events("claims") if e["reason"] == "FieldIgnored"],
                   "no FieldIgnored Event on the NAD")
    assert events[0]["type"] == "Warning"
    assert "joinSubnet: not known to ovnk-secondary" in events[0]["message"]
    assert "allowPersistentIPs" not in events[0]["message"]  # acted on: IPAMClaims
    api.create_pod("test", "p", "claims")
    until(lambda: api.pod_networks("test", "p"), "the pod was not annotated")
    assert len(api.events("claims")) == len(events)  # said once, not at each update echo


def test_disagreeing_nad_of_one_network_is_refused(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    api.create_nad("test", "first", name="shared", topology="localnet", vlanID=10)
    until(lambda: "shared_ovn_localnet_switch" in switches(nb_server), "first NAD not applied")
    api.create_nad("other", "second", name="shared", topology="localnet", vlanID=20)
    events = until(lambda: api.events("second"), "no Event on the disagreeing NAD")
    assert events[0]["reason"] == "NetworkConflict" and "vlan_id 20 vs 10" in events[0]["message"]
    assert nb_get(nb_server, "Logical_Switch_Port", "shared_ovn_localnet_port",
                "tag_request") == "10"


def test_pod_and_nad_deletion_remove_rows_and_release_ips(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    api.create_nad("test", "small", name="small", topology="layer2", subnets="10.9.0.0/30")
    api.create_pod("test", "a", "small")
    first = until(lambda: api.pod_networks("test", "a"), "no annotation")["test/small"]
    until(lambda: "test.small_test_a" in ports(nb_server), "no port")
    api.delete_pod("test", "a")
    until(lambda: "test.small_test_a" not in ports(nb_server), "port stayed after pod delete")
    # a /30 has two usable addresses: the released one must be handed out again
    api.create_pod("test", "b", "small")
    api.create_pod("test", "c", "small")
    got = {until(lambda n=n: api.pod_networks("test", n), "no annotation")["test/small"][
        "ip_addresses"][0] for n in ("b", "c")}
    assert first["ip_addresses"][0] in got and len(got) == 2
    api.delete_nad("test", "small")
    until(lambda: "small_ovn_layer2_switch" not in switches(nb_server), "switch stayed")
    assert not {p for p in ports(nb_server) if p.startswith("test.small_")}


def test_vlan_and_mtu_change_in_place_but_subnet_change_refused_with_pods(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    api.create_nad("test", "nad-localnet2", name="localnet2", topology="localnet", vlanID=33,
                   subnets="172.17.33.0/24")
    until(lambda: nb_get(nb_server, "Logical_Switch_Port", "localnet2_ovn_localnet_port",
                       "tag_request") == "33", "no localnet port")
    api.update_nad("test", "nad-localnet2", name="localnet2", topology="localnet", vlanID=35,
                   mtu=1300, subnets="172.17.33.0/24")
    until(lambda: nb_get(nb_server, "Logical_Switch_Port", "localnet2_ovn_localnet_port",
                       "tag_request") == "35", "VLAN change not applied in place")
    api.create_pod("test", "vm", "nad-localnet2")
    until(lambda: api.pod_networks("test", "vm"), "no annotation")
    api.update_nad("test", "nad-localnet2", name="localnet2", topology="localnet", vlanID=35,
                   subnets="172.17.34.0/24")
    events = until(lambda: [e for e in api.events("nad-localnet2")
                            if e["reason"] == "ChangeRefused"], "no ChangeRefused Event")
    assert "delete the pods first" in events[0]["message"]
    assert nb_get(nb_server, "Logical_Switch", "localnet2_ovn_localnet_switch",
                "other_config:subnet") == '"172.17.33.0/24"'


def test_a_burst_of_nad_creations_and_deletions_fails_no_transaction(
    api: Api, nb_server: servers.NbServer, controller: Controller,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 13: concurrent NAD events each read, then wrote, every network: a switch's
    creation rode in several transactions ("Switch ... exists") and only a full sync (300 s
    here) healed it. Every switch must come from the NAD events themselves, with no failure."""
    caplog.set_level(logging.INFO, logger="ovnk_secondary")
    names = [f"sc{i:03d}" for i in range(60)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: api.create_nad("burst", n, name=n, topology="layer2",
                                               subnets="10.77.0.0/24"), names))
    wanted = {f"{n}_ovn_layer2_switch" for n in names}
    until(lambda: wanted <= switches(nb_server), "switches missing after the burst")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: api.delete_nad("burst", n), names))
    until(lambda: not wanted & switches(nb_server), "switches left after the deletions")
    failures = [r.getMessage() for r in caplog.records
                if "failed" in r.getMessage() or r.levelno >= logging.ERROR]
    assert not failures, failures
