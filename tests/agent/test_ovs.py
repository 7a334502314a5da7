"""Pod ports in a real local OVSDB/ovs-vswitchd (no OVN: nobody sets ovn-installed here)."""

from __future__ import annotations

import asyncio
import concurrent.futures

from ovsdbapp import exceptions as ovsdbapp_exceptions

from ovnk_secondary import naming
from ovnk_secondary.agent import ovs
from tests.agent import conftest, harness


def _ids(iface_id: str, sandbox: str, ifname: str = "net1") -> dict[str, str]:
    return {ovs.IFACE_ID: iface_id, ovs.SANDBOX: sandbox, ovs.IFNAME_KEY: ifname,
            naming.OWNER_KEY: naming.OWNER_VALUE}


def test_plug_replaces_other_interfaces_with_the_same_iface_id(
        local_switch: conftest.LocalSwitch) -> None:
    # somebody else's port with our iface-id (an older sandbox of the same pod), there before
    # the agent connects
    local_switch.vsctl("add-port", "br-int", "oldport", "--", "set", "interface", "oldport",
                       "external_ids:iface-id=ns1.l2_ns1_pod")
    switch = ovs.LocalOvs(remote=local_switch.remote)
    try:
        removed = switch.plug(name="ovkaaaa", external_ids=_ids("ns1.l2_ns1_pod", "s1"))
        assert removed == ["oldport"]
        assert local_switch.vsctl("list-ports", "br-int").split() == ["ovkaaaa"]
        state = switch.interface("ovkaaaa")
        assert state is not None and state.external_ids[ovs.SANDBOX] == "s1"
        assert [s.name for s in switch.our_interfaces()] == ["ovkaaaa"]
        # and one that appears while the agent runs
        local_switch.vsctl("add-port", "br-int", "newer", "--", "set", "interface", "newer",
                           "external_ids:iface-id=ns1.l2_ns1_pod")
        harness.wait_until(lambda: switch.interface("newer"), timeout=5,
                           what="the agent's view of the new port")
        assert switch.plug(name="ovkaaaa", external_ids=_ids("ns1.l2_ns1_pod", "s1")) == [
            "newer"]

        # plugging the same name again (a re-created NIC) keeps exactly one port
        switch.plug(name="ovkaaaa", external_ids=_ids("ns1.l2_ns1_pod", "s1"))
        assert local_switch.vsctl("list-ports", "br-int").split() == ["ovkaaaa"]
    finally:
        switch.close()


def test_unplug_by_name_or_sandbox_is_idempotent(local_switch: conftest.LocalSwitch) -> None:
    switch = ovs.LocalOvs(remote=local_switch.remote)
    try:
        switch.plug(name="ovkbbbb", external_ids=_ids("p1", "sandbox-1"))
        switch.plug(name="ovkcccc", external_ids=_ids("p2", "sandbox-1", ifname="net2"))
        assert switch.unplug(name="renamed", sandbox="sandbox-1", ifname="net1") == ["ovkbbbb"]
        assert switch.unplug(name="ovkbbbb", sandbox="sandbox-1", ifname="net1") == []
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

    def plug(name: str) -> list[str] | Exception:
        bridge = "br-missing" if name == "ovkgrp5" else ovs.INTEGRATION_BRIDGE
        try:
            return switch.plug(name=name, external_ids=_ids(f"grp{name}", name), bridge=bridge)
        except Exception as exc:  # the outcome is what the test looks at
            return exc

    try:
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            outcomes = dict(zip(names, pool.map(plug, names), strict=True))
        assert isinstance(outcomes.pop("ovkgrp5"), RuntimeError)
        assert outcomes == {name: [] for name in outcomes}
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
