"""Pod ports in a real local OVSDB/ovs-vswitchd (no OVN: nobody sets ovn-installed here)."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest
from ovsdbapp import exceptions as ovsdbapp_exceptions

from ovnk_secondary import naming
from ovnk_secondary.agent import ovs
from tests.agent import conftest, harness


def _ids(iface_id: str, sandbox: str, ifname: str = "net1",
         nad: str = "ns1/l2") -> dict[str, str]:
    return {ovs.IFACE_ID: iface_id, ovs.SANDBOX: sandbox, ovs.IFNAME_KEY: ifname,
            naming.NAD_KEY: nad, naming.OWNER_KEY: naming.OWNER_VALUE}


def _ports(local_switch: conftest.LocalSwitch) -> list[str]:
    return sorted(local_switch.vsctl("list-ports", "br-int").split())


def test_plug_replaces_a_stale_sandbox_and_unbinds_foreign_ports_with_the_same_iface_id(
        local_switch: conftest.LocalSwitch) -> None:
    # somebody else's port with our iface-id, there before the agent connects: OVN binds one
    # interface per logical port, so it loses the iface-id (as OVN-K does), but stays
    local_switch.vsctl("add-port", "br-int", "oldport", "--", "set", "interface", "oldport",
                       "external_ids:iface-id=ns1.l2_ns1_pod")
    switch = ovs.LocalOvs(remote=local_switch.remote)
    try:
        plugged = switch.plug(name="ovkaaaa", external_ids=_ids("ns1.l2_ns1_pod", "s1"))
        assert plugged == ovs.Plugged(removed=(), unbound=("oldport",))
        assert _ports(local_switch) == ["oldport", "ovkaaaa"]
        assert "iface-id" not in local_switch.vsctl("get", "interface", "oldport",
                                                    "external_ids")
        state = switch.interface("ovkaaaa")
        assert state is not None and state.external_ids[ovs.SANDBOX] == "s1"
        assert [s.name for s in switch.our_interfaces()] == ["ovkaaaa"]
        # and one that appears while the agent runs
        local_switch.vsctl("add-port", "br-int", "newer", "--", "set", "interface", "newer",
                           "external_ids:iface-id=ns1.l2_ns1_pod")
        harness.wait_until(lambda: switch.interface("newer"), timeout=5,
                           what="the agent's view of the new port")
        assert switch.plug(name="ovkaaaa", external_ids=_ids("ns1.l2_ns1_pod", "s1")) == \
            ovs.Plugged(removed=(), unbound=("newer",))

        # plugging the same name again (a re-created NIC) keeps exactly one port
        switch.plug(name="ovkaaaa", external_ids=_ids("ns1.l2_ns1_pod", "s1"))
        assert _ports(local_switch) == ["newer", "oldport", "ovkaaaa"]

        # a newer sandbox of the same pod on the same NAD: the old sandbox's port goes
        assert switch.plug(name="ovkbbbb", external_ids=_ids("ns1.l2_ns1_pod", "s2")) == \
            ovs.Plugged(removed=("ovkaaaa",), unbound=())
        assert _ports(local_switch) == ["newer", "oldport", "ovkbbbb"]
    finally:
        switch.close()


def test_plug_never_takes_the_port_of_another_attachment(
        local_switch: conftest.LocalSwitch) -> None:
    switch = ovs.LocalOvs(remote=local_switch.remote)
    port, nad = "ns1.l2.net_ns1_pod", "ns1/l2-net"
    try:
        switch.plug(name="ovka1", external_ids=_ids(port, "s1", nad=nad))
        attempts = {
            # one logical switch port for two interfaces of one pod
            "the same NAD again as net2": ("ovka2", _ids(port, "s1", "net2", nad)),
            # ns1/l2-net and ns1/l2.net have the same port name (OVN-K's naming)
            "another NAD with the same port name": ("ovka2", _ids(port, "s1", "net2",
                                                                  "ns1/l2.net")),
            # Multus giving two NADs the same CNI_IFNAME: the same host side name
            "another NAD as the same interface": ("ovka1", _ids("ns1.l3_ns1_pod", "s1", "net1",
                                                                "ns1/l3")),
        }
        for what, (name, ids) in attempts.items():
            with pytest.raises(ovs.PortInUse, match="ovka1"):
                switch.plug(name=name, external_ids=ids)
            assert _ports(local_switch) == ["ovka1"], what
            state = switch.interface("ovka1")
            assert state is not None and state.external_ids == _ids(port, "s1", nad=nad), what
    finally:
        switch.close()


def test_unplug_leaves_the_port_of_another_nad(local_switch: conftest.LocalSwitch) -> None:
    switch = ovs.LocalOvs(remote=local_switch.remote)
    try:
        switch.plug(name="ovka1", external_ids=_ids("ns1.l2_ns1_pod", "s1"))
        # the DEL Multus makes after another NAD's ADD with the same CNI_IFNAME failed
        assert switch.unplug(name="ovka1", sandbox="s1", ifname="net1", nad_key="ns1/l3") == \
            ovs.Unplugged(kept=("ovka1",))
        assert _ports(local_switch) == ["ovka1"]
        assert switch.unplug(name="ovka1", sandbox="s1", ifname="net1", nad_key="ns1/l2") == \
            ovs.Unplugged(removed=("ovka1",))
        assert _ports(local_switch) == []
    finally:
        switch.close()


def test_unplug_by_name_or_sandbox_is_idempotent(local_switch: conftest.LocalSwitch) -> None:
    switch = ovs.LocalOvs(remote=local_switch.remote)
    try:
        switch.plug(name="ovkbbbb", external_ids=_ids("p1", "sandbox-1"))
        switch.plug(name="ovkcccc", external_ids=_ids("p2", "sandbox-1", ifname="net2"))
        assert switch.unplug(name="renamed", sandbox="sandbox-1", ifname="net1") == \
            ovs.Unplugged(removed=("ovkbbbb",))
        assert switch.unplug(name="ovkbbbb", sandbox="sandbox-1", ifname="net1") == \
            ovs.Unplugged()
        assert local_switch.vsctl("list-ports", "br-int").split() == ["ovkcccc"]
    finally:
        switch.close()


def test_wait_installed_times_out_then_sees_ovn_controllers_mark(
        local_switch: conftest.LocalSwitch) -> None:
    switch = ovs.LocalOvs(remote=local_switch.remote)
    try:
        switch.plug(name="ovkdddd", external_ids=_ids("p3", "s3"))

        async def scenario() -> tuple[bool, bool]:
            missed = await switch.wait_installed("ovkdddd", timeout=0.3)
            waiting = asyncio.ensure_future(switch.wait_installed("ovkdddd", timeout=10))
            await asyncio.sleep(0.1)
            # what ovn-controller writes once the port's flows are in place
            await asyncio.get_running_loop().run_in_executor(None, lambda: local_switch.vsctl(
                "set", "interface", "ovkdddd", "external_ids:ovn-installed=true"))
            return missed, await waiting

        assert asyncio.run(scenario()) == (False, True)
    finally:
        switch.close()


def test_integration_datapath_type_follows_ovn_controllers_setting(
        local_switch: conftest.LocalSwitch) -> None:
    switch = ovs.LocalOvs(remote=local_switch.remote)
    try:
        assert switch.integration_datapath_type() == "netdev"
        local_switch.vsctl("remove", "open", ".", "external_ids", "ovn-bridge-datapath-type")
        harness.wait_until(lambda: switch.integration_datapath_type() == "netdev", timeout=5,
                           what="br-int's own datapath_type to be used")
    finally:
        switch.close()


def test_concurrent_plugs_are_committed_together_and_a_bad_one_fails_alone(
        local_switch: conftest.LocalSwitch) -> None:
    switch = ovs.LocalOvs(remote=local_switch.remote)
    names = [f"ovkgrp{i}" for i in range(12)]

    def plug(name: str) -> ovs.Plugged | Exception:
        bridge = "br-missing" if name == "ovkgrp5" else ovs.INTEGRATION_BRIDGE
        try:
            return switch.plug(name=name, external_ids=_ids(f"grp{name}", name), bridge=bridge)
        except Exception as exc:  # the outcome is what the test looks at
            return exc

    try:
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            outcomes = dict(zip(names, pool.map(plug, names), strict=True))
        assert isinstance(outcomes.pop("ovkgrp5"), RuntimeError)
        assert outcomes == {name: ovs.Plugged() for name in outcomes}
        assert sorted(local_switch.vsctl("list-ports", "br-int").split()) == sorted(outcomes)
        # the installed state comes from the IDL's notifications, not from a read
        local_switch.vsctl("set", "interface", "ovkgrp0", "external_ids:ovn-installed=true")
        assert asyncio.run(switch.wait_installed("ovkgrp0", timeout=5))
    finally:
        switch.close()


def test_a_group_is_retried_plug_by_plug_only_when_a_command_failed() -> None:
    # a timeout may still commit later, and retrying N plugs alone would wait N times
    assert ovs._unavailable(ovsdbapp_exceptions.TimeoutException(
        commands=[], timeout=30, cause="Result queue is empty"))
    assert ovs._unavailable(RuntimeError("OVS transaction timed out"))
    assert not ovs._unavailable(RuntimeError("Bridge br-missing does not exist"))
