"""Live migration on the controller's side: a VM's source and target virt-launcher pods in the
real API server, their logical switch ports in a real NB (OVN-Kubernetes' strategy, see
`ovnk_secondary/migration.py`). The switch-over is checked in NB's own transaction log."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from ovnk_secondary import migration, persistentips
from ovnk_secondary.northbound import servers
from tests.controller.harness import Api, Controller, nb_get, ports, until

NS = "vms"
NAD = "vmnet"
READY = {migration.TARGET_READY: "2026-12-01T03:00:00Z"}


def _launcher(api: Api, name: str, *, node: str, vm: str = "vm-a",
              claim: str | None = "vm-a.vmnet") -> None:
    element: dict[str, Any] = {"name": NAD}
    if claim is not None:
        element["ipam-claim-reference"] = claim
    api.create_pod(NS, name, json.dumps([element]), node=node,
                   labels={persistentips.VM_LABEL: vm, "kubevirt.io": "virt-launcher"})
    time.sleep(1.1)  # creationTimestamp has a resolution of one second: the order is by it


def _port(name: str) -> str:
    return f"{NS}.{NAD}_{NS}_{name}"


def _row(nb: servers.NbServer, pod: str) -> tuple[str, str, str]:
    """(enabled, addresses, port_security) of the pod's port, as ovn-nbctl prints them."""
    name = _port(pod)
    return (nb_get(nb, "Logical_Switch_Port", name, "enabled"),
            nb_get(nb, "Logical_Switch_Port", name, "addresses"),
            nb_get(nb, "Logical_Switch_Port", name, "port_security"))


def _annotate(api: Api, name: str, annotations: dict[str, str | None]) -> None:
    api.core_api.patch_namespaced_pod(name, NS, {"metadata": {"annotations": annotations}})


def _transactions(nb: servers.NbServer) -> list[dict[str, Any]]:
    """NB's committed transactions, from its database file (a log of JSON records)."""
    records = []
    for line in nb.database.read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


@pytest.fixture
def vmnet(api: Api) -> None:
    api.create_nad(NS, NAD, name=NAD, topology="layer2", subnets="10.70.0.0/24",
                   allowPersistentIPs=True)
    api.create_claim(NS, "vm-a.vmnet", NAD)


def test_the_target_waits_disabled_and_the_switch_over_is_one_transaction(
    api: Api, nb_server: servers.NbServer, controller: Controller, vmnet: None
) -> None:
    _launcher(api, "launcher-src", node="node1")
    source = until(lambda: (api.pod_networks(NS, "launcher-src") or {}).get(f"{NS}/{NAD}"),
                   "the source got no addresses")
    address = f"{source['mac_address']} {source['ip_addresses'][0].split('/')[0]}"
    _launcher(api, "launcher-dst", node="node2")
    until(lambda: _port("launcher-dst") in ports(nb_server), "no target port")
    target = api.pod_networks(NS, "launcher-dst") or {}
    assert target[f"{NS}/{NAD}"] == source  # the claim's IPs, hence the MAC
    # until the domain is ready on the target, traffic goes to the source
    assert _row(nb_server, "launcher-dst") == ("false", f'["{address}"]', f'["{address}"]')
    assert _row(nb_server, "launcher-src") == ("[]", f'["{address}"]', f'["{address}"]')
    options = nb_get(nb_server, "Logical_Switch_Port", _port("launcher-dst"), "options")
    assert 'requested-chassis=node2' in options

    _annotate(api, "launcher-dst", READY)
    until(lambda: _row(nb_server, "launcher-dst")[0] == "[]", "the target stayed disabled")
    # the source disabled and without addresses: off the switch's L2 lookup (localnet learns)
    assert _row(nb_server, "launcher-src") == ("false", "[]", f'["{address}"]')
    uuids = {pod: nb_server.nbctl("--bare", "--columns=_uuid", "find", "Logical_Switch_Port",
                                  f"name={_port(pod)}").strip()
             for pod in ("launcher-src", "launcher-dst")}
    switch_over = [t for t in _transactions(nb_server)
                   if uuids["launcher-dst"] in t.get("Logical_Switch_Port", {})
                   and "enabled" in t["Logical_Switch_Port"][uuids["launcher-dst"]]
                   and t["Logical_Switch_Port"][uuids["launcher-dst"]]["enabled"] == ["set", []]]
    assert len(switch_over) == 1, switch_over
    assert set(switch_over[0]["Logical_Switch_Port"]) == set(uuids.values())

    # the migration completes: the source pod goes, the target is alone and as usual
    api.delete_pod(NS, "launcher-src")
    until(lambda: _port("launcher-src") not in ports(nb_server), "the source's port stayed")
    assert _row(nb_server, "launcher-dst") == ("[]", f'["{address}"]', f'["{address}"]')
    assert api.pod_networks(NS, "launcher-dst") == target


def test_a_failed_or_aborted_migration_leaves_the_source_as_it_was(
    api: Api, nb_server: servers.NbServer, controller: Controller, vmnet: None
) -> None:
    _launcher(api, "launcher-src", node="node1")
    until(lambda: _port("launcher-src") in ports(nb_server), "no source port")
    before = _row(nb_server, "launcher-src")
    _launcher(api, "launcher-dst", node="node2")
    until(lambda: _row(nb_server, "launcher-dst")[0] == "false", "no disabled target port")
    # the target fails (virt-launcher exits before the domain is ready)
    api.core_api.patch_namespaced_pod_status("launcher-dst", NS, {"status": {"phase": "Failed"}})
    until(lambda: _port("launcher-dst") not in ports(nb_server), "the failed target's port")
    assert _row(nb_server, "launcher-src") == before
    # a second attempt, aborted (its pod deleted) after it was created
    _launcher(api, "launcher-dst2", node="node2")
    until(lambda: _row(nb_server, "launcher-dst2")[0] == "false", "no disabled target port")
    api.delete_pod(NS, "launcher-dst2")
    until(lambda: _port("launcher-dst2") not in ports(nb_server), "the aborted target's port")
    assert _row(nb_server, "launcher-src") == before


def test_a_third_live_pod_of_a_vm_is_refused_with_an_event(
    api: Api, nb_server: servers.NbServer, controller: Controller, vmnet: None
) -> None:
    _launcher(api, "launcher-1", node="node1")
    _launcher(api, "launcher-2", node="node2")
    until(lambda: _port("launcher-2") in ports(nb_server), "no target port")
    _launcher(api, "launcher-3", node="node1")
    events = until(lambda: [e for e in api.events("launcher-3")
                            if e["reason"] == migration.CONFLICT], "no LiveMigrationConflict")
    assert events[0]["type"] == "Warning"
    assert "launcher-1 (migration source) and launcher-2 (target)" in events[0]["message"]
    assert api.pod_networks(NS, "launcher-3") is None
    assert _port("launcher-3") not in ports(nb_server)
    # once the target is gone, the third pod is the new target (waiting, disabled)
    api.delete_pod(NS, "launcher-2")
    until(lambda: _row(nb_server, "launcher-3")[0] == "false", "the third pod stayed out")


def test_a_controller_restart_mid_migration_keeps_each_port_as_it_was(
    api: Api, nb_server: servers.NbServer, vmnet: None
) -> None:
    first = Controller(nb_remote=nb_server.remote, kubeconfig=api.kubeconfig)
    first.start()
    try:
        _launcher(api, "launcher-src", node="node1")
        _launcher(api, "launcher-dst", node="node2")
        until(lambda: _row(nb_server, "launcher-dst")[0] == "false", "no disabled target")
    finally:
        first.stop()
    waiting = {pod: _row(nb_server, pod) for pod in ("launcher-src", "launcher-dst")}
    _annotate(api, "launcher-dst", READY)  # while no controller runs
    second = Controller(nb_remote=nb_server.remote, kubeconfig=api.kubeconfig)
    second.start()
    try:
        until(lambda: _row(nb_server, "launcher-dst")[0] == "[]", "the switch-over was lost")
        assert _row(nb_server, "launcher-src") == ("false", "[]", waiting["launcher-src"][2])
        assert _row(nb_server, "launcher-dst")[1] == waiting["launcher-src"][1]
        time.sleep(1)  # the full sync and the pods' own turns agree: nothing flips back
        assert _row(nb_server, "launcher-src") == ("false", "[]", waiting["launcher-src"][2])
        assert _row(nb_server, "launcher-dst")[0] == "[]"
    finally:
        second.stop()


def test_on_an_ipamless_network_both_pods_of_a_vm_carry_its_static_addresses(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    """The talk's cloud-init case: no subnets, the VM's pods name the same static IP and MAC;
    only the pods of that VM may."""
    api.create_nad(NS, "flat", name="flat", topology="layer2")
    static = json.dumps([{"name": "flat", "ips": ["192.0.2.10/24"], "mac": "02:00:00:00:00:10"}])
    labels = {persistentips.VM_LABEL: "vm-s", "kubevirt.io": "virt-launcher"}
    api.create_pod(NS, "static-src", static, node="node1", labels=labels)
    time.sleep(1.1)
    api.create_pod(NS, "static-dst", static, node="node2", labels=labels)
    port = f"{NS}.flat_{NS}_static-dst"
    until(lambda: nb_get(nb_server, "Logical_Switch_Port", port, "enabled") == "false",
          "no disabled target port")
    entries = [(api.pod_networks(NS, p) or {}).get(f"{NS}/flat") for p in ("static-src",
                                                                          "static-dst")]
    assert entries[0] == entries[1] and entries[0] is not None
    assert entries[0]["mac_address"] == "02:00:00:00:00:10"
    api.create_pod(NS, "not-the-vm", static, node="node1")
    events = until(lambda: [e for e in api.events("not-the-vm")
                            if e["reason"] == "AddressInUse"], "no AddressInUse")
    assert "of VM vms/vm-s" in events[0]["message"]
    assert api.pod_networks(NS, "not-the-vm") is None
    # the VM migrated away and gone: the addresses are free for the other pod
    _annotate(api, "static-dst", READY)
    until(lambda: nb_get(nb_server, "Logical_Switch_Port", port, "enabled") == "[]",
          "the target stayed disabled")
    api.delete_pod(NS, "static-src")
    api.delete_pod(NS, "static-dst")
    until(lambda: api.pod_networks(NS, "not-the-vm"), "the addresses stayed held")


# -- the multi-chassis strategy: one port of the VM, bound on both nodes during a migration --

VM_PORT = f"{NS}.{NAD}_{NS}_vm_vm-a"


@pytest.fixture
def multichassis(nb_server: servers.NbServer, api: Api) -> Any:
    running = Controller(nb_remote=nb_server.remote, kubeconfig=api.kubeconfig,
                         migration_strategy=migration.MULTI_CHASSIS)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _options(nb: servers.NbServer, port: str) -> str:
    return nb_get(nb, "Logical_Switch_Port", port, "options")


def test_multichassis_one_vm_port_follows_the_migration_in_requested_chassis(
    api: Api, nb_server: servers.NbServer, multichassis: Controller, vmnet: None
) -> None:
    _launcher(api, "launcher-src", node="node1")
    source = until(lambda: (api.pod_networks(NS, "launcher-src") or {}).get(f"{NS}/{NAD}"),
                   "the source got no addresses")
    assert source["logical_switch_port"] == VM_PORT  # the node agent plugs into it
    until(lambda: VM_PORT in ports(nb_server), "no VM port")
    assert _options(nb_server, VM_PORT) == "{requested-chassis=node1}"  # no iface-id-ver
    address = f"{source['mac_address']} {source['ip_addresses'][0].split('/')[0]}"
    assert nb_get(nb_server, "Logical_Switch_Port", VM_PORT, "addresses") == f'["{address}"]'

    _launcher(api, "launcher-dst", node="node2")
    until(lambda: "node1,node2" in _options(nb_server, VM_PORT), "the target's node not added")
    assert _options(nb_server, VM_PORT) == (
        '{activation-strategy=rarp, requested-chassis="node1,node2"}')
    assert (api.pod_networks(NS, "launcher-dst") or {})[f"{NS}/{NAD}"] == source
    assert {p for p in ports(nb_server) if p.startswith(f"{NS}.{NAD}_")} == {VM_PORT}

    _annotate(api, "launcher-dst", READY)  # the switch-over: the source is still there
    time.sleep(1)
    assert _options(nb_server, VM_PORT) == (
        '{activation-strategy=rarp, requested-chassis="node1,node2"}')
    api.delete_pod(NS, "launcher-src")  # the migration completes: the port is the target's
    until(lambda: _options(nb_server, VM_PORT) == "{requested-chassis=node2}",
          "the port stayed on both nodes")
    assert nb_get(nb_server, "Logical_Switch_Port", VM_PORT, "addresses") == f'["{address}"]'
    api.delete_pod(NS, "launcher-dst")  # the VM stopped: its port goes, its claim stays
    until(lambda: VM_PORT not in ports(nb_server), "the VM's port outlived its pods")
    _launcher(api, "launcher-again", node="node1")  # the VM started again: the same port
    until(lambda: VM_PORT in ports(nb_server), "no VM port after the restart")
    assert (api.pod_networks(NS, "launcher-again") or {})[f"{NS}/{NAD}"] == source
    assert _options(nb_server, VM_PORT) == "{requested-chassis=node1}"


def _sandbox(api: Api, name: str, up: bool, phase: str | None = None) -> None:
    """What the kubelet reports of the pod's sandbox (`migration.SANDBOX_READY`)."""
    status: dict[str, Any] = {"conditions": [{"type": migration.SANDBOX_READY,
                                              "status": str(up)}]}
    if phase is not None:
        status["phase"] = phase
    api.core_api.patch_namespaced_pod_status(name, NS, {"status": status})


@pytest.mark.parametrize("leaves", ["completes", "is deleted"])
def test_multichassis_the_port_stays_on_the_sources_node_until_its_sandbox_is_down(
    api: Api, nb_server: servers.NbServer, multichassis: Controller, vmnet: None, leaves: str
) -> None:
    """After the switch-over the source's pod goes as KubeVirt's does (Succeeded, or deleted
    and terminating), its interface still plugged until the kubelet reports its sandbox
    down: only then is the port narrowed to the target's node (`migration`)."""
    both = '{activation-strategy=rarp, requested-chassis="node1,node2"}'
    _launcher(api, "launcher-src", node="node1")
    _sandbox(api, "launcher-src", True, phase="Running")
    _launcher(api, "launcher-dst", node="node2")
    _sandbox(api, "launcher-dst", True, phase="Running")
    until(lambda: _options(nb_server, VM_PORT) == both, "the target's node not added")
    _annotate(api, "launcher-dst", READY)
    if leaves == "completes":
        _sandbox(api, "launcher-src", True, phase="Succeeded")
    else:  # no kubelet here confirms the deletion: the pod stays terminating
        api.core_api.delete_namespaced_pod("launcher-src", NS, grace_period_seconds=30)
    time.sleep(1)
    assert _options(nb_server, VM_PORT) == both
    _sandbox(api, "launcher-src", False, phase="Succeeded" if leaves == "completes" else
             "Failed")
    until(lambda: _options(nb_server, VM_PORT) == "{requested-chassis=node2}",
          "the port stayed on the source's node after its sandbox went")
    assert {p for p in ports(nb_server) if p.startswith(f"{NS}.{NAD}_")} == {VM_PORT}


def test_multichassis_an_aborted_migration_returns_the_port_to_the_source(
    api: Api, nb_server: servers.NbServer, multichassis: Controller, vmnet: None
) -> None:
    _launcher(api, "launcher-src", node="node1")
    until(lambda: VM_PORT in ports(nb_server), "no VM port")
    _launcher(api, "launcher-dst", node="node2")
    until(lambda: "node1,node2" in _options(nb_server, VM_PORT), "the target's node not added")
    api.delete_pod(NS, "launcher-dst")
    until(lambda: _options(nb_server, VM_PORT) == "{requested-chassis=node1}",
          "the port stayed on the target's node")
    time.sleep(1)
    assert VM_PORT in ports(nb_server)


def test_multichassis_a_nic_without_persistent_addresses_keeps_per_pod_ports(
    api: Api, nb_server: servers.NbServer, multichassis: Controller
) -> None:
    """Dynamic addresses without a claim differ between the VM's pods: no shared port."""
    api.create_nad(NS, NAD, name=NAD, topology="layer2", subnets="10.70.0.0/24")
    _launcher(api, "launcher-src", node="node1", claim=None)
    until(lambda: _port("launcher-src") in ports(nb_server), "no per-pod port")
    entry = (api.pod_networks(NS, "launcher-src") or {})[f"{NS}/{NAD}"]
    assert "logical_switch_port" not in entry
    assert VM_PORT not in ports(nb_server)


def test_multichassis_a_controller_restart_mid_migration_loses_nothing(
    api: Api, nb_server: servers.NbServer, vmnet: None
) -> None:
    def run() -> Controller:
        running = Controller(nb_remote=nb_server.remote, kubeconfig=api.kubeconfig,
                             migration_strategy=migration.MULTI_CHASSIS)
        running.start()
        return running

    first = run()
    try:
        _launcher(api, "launcher-src", node="node1")
        _launcher(api, "launcher-dst", node="node2")
        until(lambda: VM_PORT in ports(nb_server)
              and "node1,node2" in _options(nb_server, VM_PORT), "not on both nodes")
    finally:
        first.stop()
    _annotate(api, "launcher-dst", READY)  # while no controller runs
    api.delete_pod(NS, "launcher-src")
    second = run()
    try:
        until(lambda: _options(nb_server, VM_PORT) == "{requested-chassis=node2}",
              "the switch-over was lost")
        time.sleep(1)  # the full sync and the pods' own turns agree: nothing flips back
        assert _options(nb_server, VM_PORT) == "{requested-chassis=node2}"
        assert {p for p in ports(nb_server) if p.startswith(f"{NS}.{NAD}_")} == {VM_PORT}
    finally:
        second.stop()


@pytest.mark.parametrize("strategy", migration.STRATEGIES)
def test_only_a_vms_own_port_on_localnet_is_announced_by_the_guest_not_by_ovn(
    api: Api, nb_server: servers.NbServer, strategy: str
) -> None:
    """`disable_garp_rarp` on a VM's own localnet port (multi-chassis), before and during a
    migration; per-pod's ports and a plain pod's keep OVN's announces (`desired.pod_port`)."""
    running = Controller(nb_remote=nb_server.remote, kubeconfig=api.kubeconfig,
                         migration_strategy=strategy)
    running.start()
    try:
        api.create_nad(NS, "vlan", name="vlan", topology="localnet", subnets="10.71.0.0/24",
                       vlanID=33, allowPersistentIPs=True)
        api.create_claim(NS, "vm-g.vlan", "vlan")
        element = json.dumps([{"name": "vlan", "ipam-claim-reference": "vm-g.vlan"}])
        labels = {persistentips.VM_LABEL: "vm-g", "kubevirt.io": "virt-launcher"}
        api.create_pod(NS, "garp-src", element, node="node1", labels=labels)
        api.create_pod(NS, "plain", json.dumps([{"name": "vlan"}]), node="node1")
        time.sleep(1.1)
        api.create_pod(NS, "garp-dst", element, node="node2", labels=labels)
        if strategy == migration.MULTI_CHASSIS:
            port = f"{NS}.vlan_{NS}_vm_vm-g"
            until(lambda: "node1,node2" in _options(nb_server, port), "no migration")
            assert 'disable_garp_rarp="true"' in _options(nb_server, port)
            others = [f"{NS}.vlan_{NS}_plain"]
        else:
            until(lambda: f"{NS}.vlan_{NS}_garp-dst" in ports(nb_server), "no target port")
            others = [f"{NS}.vlan_{NS}_{pod}" for pod in ("plain", "garp-src", "garp-dst")]
        for port in others:
            until(lambda port=port: port in ports(nb_server), f"no {port}")
            assert "disable_garp_rarp" not in _options(nb_server, port), port
    finally:
        running.stop()
