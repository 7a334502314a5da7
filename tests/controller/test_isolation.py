"""Issue 12, controller side: no two networks or ports merge, no address or MAC handed out twice.

Each test is one of the issue's failing inputs, run through the real controller (kopf) against
a real kube-apiserver and a real NB ovsdb-server.
"""

from __future__ import annotations

import json
from typing import Any

from ovnk_secondary import naming
from ovnk_secondary.northbound import servers
from tests.controller.harness import Api, Controller, nb_get, ports, switches, until


def _switch_ports(nb: servers.NbServer, switch: str) -> set[str]:
    return {word.strip("()") for word in nb.nbctl("lsp-list", switch).split()[1::2]}


def _reasons(api: Api, name: str) -> list[tuple[str, str]]:
    return [(e["reason"], e["message"]) for e in api.events(name)]


def _event(api: Api, name: str, reason: str) -> str:
    found = until(lambda: [m for r, m in _reasons(api, name) if r == reason],
                  f"no {reason} Event on {name}; Events: {_reasons(api, name)}")
    return str(found[0])


def _element(name: str, **more: Any) -> dict[str, Any]:
    return {"name": name, **more}


def test_networks_whose_names_mangle_alike_never_share_a_switch(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    api.create_nad("t", "a", name="blue-x", topology="layer2")
    until(lambda: "blue.x_ovn_layer2_switch" in switches(nb_server), "first network not applied")
    api.create_nad("t", "b", name="blue.x", topology="layer2")
    message = _event(api, "b", "NetworkConflict")
    assert "blue-x" in message and "blue.x_ovn_layer2_switch" in message
    api.create_pod("t", "p1", json.dumps([_element("a", ips=["192.0.2.1/24"])]), node="n1")
    api.create_pod("t", "p2", json.dumps([_element("b", ips=["192.0.2.2/24"])]), node="n2")
    until(lambda: "t.a_t_p1" in ports(nb_server), "p1's port missing")
    _event(api, "p2", "NetworkConflict")
    assert _switch_ports(nb_server, "blue.x_ovn_layer2_switch") == {"t.a_t_p1"}
    assert "t.b_t_p2" not in ports(nb_server)
    assert nb_get(nb_server, "Logical_Switch", "blue.x_ovn_layer2_switch",
                f'external_ids:"{naming.NETWORK_KEY}"').strip('"') == "blue-x"
    # the winner is the network the switch belongs to: it survives a full sync
    api.delete_pod("t", "p2")
    controller.stop()
    controller.start()
    until(lambda: "t.a_t_p1" in ports(nb_server), "p1's port lost after a restart")
    assert nb_get(nb_server, "Logical_Switch", "blue.x_ovn_layer2_switch",
                f'external_ids:"{naming.NETWORK_KEY}"').strip('"') == "blue-x"
    # once the holder is gone, the other network may have the name
    api.delete_pod("t", "p1")
    api.delete_nad("t", "a")
    until(lambda: nb_get(nb_server, "Logical_Switch", "blue.x_ovn_layer2_switch",
                       f'external_ids:"{naming.NETWORK_KEY}"').strip('"') == "blue.x",
          "the refused network did not get its switch once the other was deleted")


def test_deleting_a_nad_releases_only_its_own_addresses(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    # NAD keys q-m/x and q/m-x mangle alike (q.m.x_): pool owners must not
    api.create_nad("q-m", "x", name="s", topology="layer2", subnets="10.253.2.0/29")
    api.create_nad("q", "m-x", name="s", topology="layer2", subnets="10.253.2.0/29")
    api.create_pod("q", "q1", "q-m/x")
    q1 = until(lambda: api.pod_networks("q", "q1"), "no annotation on q1")["q-m/x"]
    api.create_pod("q", "q2", "q/m-x")
    until(lambda: api.pod_networks("q", "q2"), "no annotation on q2")
    api.delete_nad("q", "m-x")
    until(lambda: not any(p.endswith("_q_q2") for p in ports(nb_server)), "q2's port stayed")
    for i in range(5):
        api.create_pod("q", f"n{i}", "q-m/x")
    got = {}
    for i in range(5):
        entry = until(lambda i=i: (api.pod_networks("q", f"n{i}") or {}).get("q-m/x")
                      or [m for r, m in _reasons(api, f"n{i}") if r == "IPAMFailed"],
                      f"n{i} got neither an address nor IPAMFailed")
        if isinstance(entry, dict):
            got[f"n{i}"] = entry
    addresses = [e["ip_addresses"][0] for e in got.values()]
    assert q1["ip_addresses"][0] not in addresses, "q1's address was handed out again"
    assert q1["mac_address"] not in [e["mac_address"] for e in got.values()]
    assert len(set(addresses)) == len(addresses)
    assert len(got) == 5, "the /29 has 6 addresses: q1 holds one, q2's is free again"


def test_an_interface_named_like_a_generated_one_is_refused(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    api.create_nad("t", "l2a", name="l2a", topology="layer2")
    api.create_nad("t", "l2b", name="l2b", topology="layer2")
    api.create_pod("t", "p", json.dumps([_element("l2a"), _element("l2b", interface="net1")]))
    message = _event(api, "p", "InvalidConfig")
    assert "net1" in message and "t/l2a" in message
    assert not {p for p in ports(nb_server) if p.endswith("_t_p")}
    assert api.pod_networks("t", "p") is None


def test_a_mac_or_static_ip_in_use_on_the_network_is_refused(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    api.create_nad("t", "flat", name="flat", topology="layer2")
    mac = "02:00:00:00:be:ef"
    api.create_pod("t", "first", json.dumps([_element("flat", mac=mac, ips=["10.254.6.1/24"])]),
                   node="n1")
    until(lambda: "t.flat_t_first" in ports(nb_server), "first pod not attached")
    api.create_pod("t", "second", json.dumps([_element("flat", mac=mac,
                                                       ips=["10.254.6.2/24"])]), node="n2")
    message = _event(api, "second", "AddressInUse")
    assert mac in message and "t/first" in message
    api.create_pod("t", "third", json.dumps([_element("flat", ips=["10.254.6.1/16"])]))
    message = _event(api, "third", "AddressInUse")
    assert "10.254.6.1" in message and "t/first" in message
    assert not {"t.flat_t_second", "t.flat_t_third"} & ports(nb_server)
    # a requested MAC equal to one the controller derived for another pod (IPAM network)
    api.create_nad("t", "ipam", name="ipam", topology="layer2", subnets="10.254.7.0/24")
    api.create_pod("t", "derived", "ipam")
    derived = until(lambda: api.pod_networks("t", "derived"), "no annotation")["t/ipam"]
    api.create_pod("t", "copycat", json.dumps([_element("ipam", mac=derived["mac_address"])]))
    assert derived["mac_address"] in _event(api, "copycat", "AddressInUse")
    assert api.pod_networks("t", "copycat") is None
    # once the holder is gone, the MAC is free again
    api.delete_pod("t", "first")
    until(lambda: "t.flat_t_second" in ports(nb_server) or "t.flat_t_third" in
          ports(nb_server), "a freed MAC/IP did not go to a waiting pod")


def test_default_route_twice_or_outside_the_subnets_is_refused(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    api.create_nad("t", "a", name="a", topology="layer2", subnets="10.254.4.0/24")
    api.create_nad("t", "b", name="b", topology="layer2", subnets="10.254.5.0/24")
    api.create_pod("t", "two", json.dumps([_element("a", **{"default-route": ["10.254.4.254"]}),
                                           _element("b", **{"default-route": ["10.254.5.254"]})]))
    assert "default-route" in _event(api, "two", "InvalidConfig")
    api.create_pod("t", "outside", json.dumps([
        _element("a", **{"default-route": ["10.254.5.254"]})]))
    message = _event(api, "outside", "InvalidConfig")
    assert "10.254.5.254" in message and "10.254.4.0/24" in message
    api.create_pod("t", "good", json.dumps([_element("a", **{"default-route": ["10.254.4.254"]}),
                                            _element("b")]))
    good = until(lambda: api.pod_networks("t", "good"), "the valid pod got no annotation")
    assert good["t/a"]["gateway_ips"] == ["10.254.4.254"]
    for pod in ("two", "outside"):
        assert api.pod_networks("t", pod) is None
        assert not {p for p in ports(nb_server) if p.endswith(f"_t_{pod}")}


def test_nad_edits_without_pods_are_in_force_for_the_next_pod(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    api.create_nad("t", "n", name="n", topology="layer2", subnets="10.254.13.0/24")
    until(lambda: "n_ovn_layer2_switch" in switches(nb_server), "no switch")
    api.update_nad("t", "n", name="n", topology="layer2", subnets="10.254.14.0/24")
    until(lambda: nb_get(nb_server, "Logical_Switch", "n_ovn_layer2_switch",
                       "other_config:subnet") == '"10.254.14.0/24"', "subnet not updated")
    api.create_pod("t", "p", "n")
    entry = until(lambda: api.pod_networks("t", "p"), "no annotation")["t/n"]
    assert entry["ip_addresses"][0].startswith("10.254.14.")
    api.delete_pod("t", "p")
    until(lambda: "t.n_t_p" not in ports(nb_server), "port stayed")
    # layer2 with subnets -> localnet without: static ips are now in force, the old switch goes
    api.update_nad("t", "n", name="n", topology="localnet", vlanID=7)
    until(lambda: "n_ovn_localnet_switch" in switches(nb_server), "no localnet switch")
    until(lambda: "n_ovn_layer2_switch" not in switches(nb_server), "old layer2 switch stayed")
    api.create_pod("t", "q", json.dumps([_element("n", ips=["192.0.2.9/24"])]))
    entry = until(lambda: api.pod_networks("t", "q"), "no annotation")["t/n"]
    assert entry["ip_addresses"] == ["192.0.2.9/24"]


def test_a_waiting_pod_gets_a_freed_address_and_nb_drift_is_repaired_within_seconds(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    # resync_period is 300 s: everything here must be event-driven
    api.create_nad("t", "tiny", name="tiny", topology="layer2", subnets="10.254.9.0/30")
    api.create_pod("t", "a", "tiny")
    api.create_pod("t", "b", "tiny")
    until(lambda: api.pod_networks("t", "a") and api.pod_networks("t", "b"), "no annotations")
    api.create_pod("t", "c", "tiny")
    _event(api, "c", "IPAMFailed")
    api.delete_pod("t", "a")
    until(lambda: api.pod_networks("t", "c"), "the waiting pod did not get the freed address",
          timeout=10)
    until(lambda: "t.tiny_t_c" in ports(nb_server), "no port for c")
    nb_server.nbctl("lsp-del", "t.tiny_t_b")
    until(lambda: "t.tiny_t_b" in ports(nb_server), "a deleted port was not repaired",
          timeout=10)
    nb_server.nbctl("lsp-set-addresses", "t.tiny_t_c", "02:00:00:00:00:01")
    until(lambda: nb_get(nb_server, "Logical_Switch_Port", "t.tiny_t_c", "addresses")
          != '["02:00:00:00:00:01"]', "an edited port was not repaired", timeout=10)
    nb_server.nbctl("remove", "Logical_Switch", "tiny_ovn_layer2_switch", "other_config",
                    "subnet")
    until(lambda: nb_get(nb_server, "Logical_Switch", "tiny_ovn_layer2_switch",
                       "other_config:subnet") == '"10.254.9.0/30"',
          "an edited switch was not repaired", timeout=10)


def test_a_refused_change_stays_refused_across_full_syncs_and_restarts(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    api.create_nad("t", "n", name="n", topology="layer2", subnets="10.254.15.0/24")
    api.create_pod("t", "p", "n")
    until(lambda: "t.n_t_p" in ports(nb_server), "no port")
    api.update_nad("t", "n", name="n", topology="layer2", subnets="10.254.16.0/24")
    _event(api, "n", "ChangeRefused")
    controller.stop()
    controller.start()  # its first full sync runs before any pod work
    api.create_pod("t", "r", "n")
    entry = until(lambda: api.pod_networks("t", "r"), "no annotation")["t/n"]
    assert entry["ip_addresses"][0].startswith("10.254.15."), "the refused change was applied"
    assert nb_get(nb_server, "Logical_Switch", "n_ovn_layer2_switch",
                "other_config:subnet") == '"10.254.15.0/24"'
    # once the pods are gone, the change takes effect
    api.delete_pod("t", "p")
    api.delete_pod("t", "r")
    until(lambda: nb_get(nb_server, "Logical_Switch", "n_ovn_layer2_switch",
                       "other_config:subnet") == '"10.254.16.0/24"',
          "the change was not applied once the pods were gone")


def test_nothing_is_written_into_a_row_we_do_not_own(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    nb_server.nbctl("ls-add", "admin_ovn_layer2_switch")
    api.create_nad("t", "admin", name="admin", topology="layer2")
    message = _event(api, "admin", "NorthboundConflict")
    assert "admin_ovn_layer2_switch" in message
    api.create_pod("t", "p", "admin")
    _event(api, "p", "NorthboundConflict")
    assert _switch_ports(nb_server, "admin_ovn_layer2_switch") == set()
    assert "t.admin_t_p" not in ports(nb_server)


def test_a_network_moving_to_another_topology_frees_its_switch_for_a_refused_one(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    api.create_nad("t", "a", name="red-x", topology="layer2")
    until(lambda: "red.x_ovn_layer2_switch" in switches(nb_server), "first network not applied")
    api.create_nad("t", "b", name="red.x", topology="layer2")
    _event(api, "b", "NetworkConflict")
    api.update_nad("t", "a", name="red-x", topology="localnet")  # no pods: the change is taken
    until(lambda: "red.x_ovn_localnet_switch" in switches(nb_server), "red-x did not move")
    until(lambda: "red.x_ovn_layer2_switch" in switches(nb_server) and nb_get(
        nb_server, "Logical_Switch", "red.x_ovn_layer2_switch",
        f'external_ids:"{naming.NETWORK_KEY}"').strip('"') == "red.x",
          "the refused network did not get the switch the other left")
