"""NAD mtu edits applied to plugged interfaces: which MTU each NAD wants, and the keeper against
a real (emulated) API, a real local OVSDB and a real veth pair in a pod namespace."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from ovnk_secondary import naming
from ovnk_secondary.agent import interfaces, mtus, ovs
from tests import kube
from tests.agent import conftest, harness


def _nad(namespace: str, name: str, network: str, mtu: int | None = None,
         **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"cniVersion": "0.3.1", "name": network,
                              "type": "ovn-k8s-cni-overlay", "topology": "layer2",
                              "netAttachDefName": f"{namespace}/{name}", **extra}
    if mtu is not None:
        config["mtu"] = mtu
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"namespace": namespace, "name": name},
            "spec": {"config": json.dumps(config)}}


def test_each_nad_wants_its_mtu_unless_its_network_disagrees() -> None:
    configs = mtus.parse([
        _nad("a", "one", "net-a", 9000),
        _nad("b", "two", "net-b"),  # default
        _nad("c", "three", "net-c", 1500), _nad("c", "four", "net-c", 1450),  # disagree
        _nad("d", "five", "net-d", 5000, topology="layer3"),  # invalid: ignored
        {"metadata": {"namespace": "e", "name": "six"},
         "spec": {"config": json.dumps({"cniVersion": "0.3.1", "type": "macvlan"})}},
        _nad("f", "seven", "net-f", 1300), _nad("f", "eight", "net-f", 1300),
    ])
    assert sorted(configs) == ["a/one", "b/two", "c/four", "c/three", "f/eight", "f/seven"]
    assert mtus.desired_mtus(configs.values()) == {"a/one": 9000, "b/two": 1400,
                                                   "f/eight": 1300, "f/seven": 1300}


def test_a_change_affects_every_nad_of_its_networks_before_and_after() -> None:
    before = {"a/one": "n1", "a/two": "n1", "b/three": "n2", "c/four": "n3"}
    after = {"a/one": "n2", "a/two": "n1", "b/three": "n2", "c/four": "n3"}
    assert mtus.affected({"a/one"}, before=before, after=after) == {"a/one", "a/two", "b/three"}
    assert mtus.affected({"x/gone"}, before={}, after={}) == {"x/gone"}


def test_the_keeper_applies_edits_to_both_ends_and_rereads_a_nad_after_a_racing_add(
        api: kube.KubeApi, local_switch: conftest.LocalSwitch, pod_netns: str,
        tmp_path: pathlib.Path) -> None:
    custom: Any = api.custom()
    group = (harness.NAD_GROUP, harness.NAD_VERSION)

    def edit(mtu: int) -> None:
        custom.patch_namespaced_custom_object(*group, "ns1", harness.NAD_PLURAL, "l2",
                                              {"spec": _nad("ns1", "l2", "l2-net", mtu)["spec"]})

    custom.create_namespaced_custom_object(*group, "ns1", harness.NAD_PLURAL,
                                           _nad("ns1", "l2", "l2-net", 1300))
    host = interfaces.host_ifname(container_id="test-keeper", ifname="net1")
    switch = ovs.LocalOvs(remote=local_switch.remote)
    keeper = mtus.MtuKeeper(api_client=api.identity_client(), switch=switch)
    try:
        interfaces.create(interfaces.PodInterface(netns=pod_netns, ifname="net1",
                                                  mac="0a:58:0a:64:00:0a", mtu=1400),
                          host_name=host)
        switch.plug(name=host, external_ids={
            ovs.IFACE_ID: "ns1.l2_ns1_pod", ovs.SANDBOX: "test-keeper", ovs.IFNAME_KEY: "net1",
            ovs.NETNS_KEY: pod_netns, ovs.POD_KEY: "ns1/pod", naming.NAD_KEY: "ns1/l2",
            naming.OWNER_KEY: naming.OWNER_VALUE})

        def current() -> tuple[int | None, int | None]:
            return interfaces.mtus(host_name=host, netns=pod_netns, ifname="net1")

        keeper.start()  # the NAD was edited (1400 -> 1300) while the keeper was not running
        harness.wait_until(lambda: current() == (1300, 1300), timeout=10,
                           what="the first list to converge the interface")
        edit(1450)
        harness.wait_until(lambda: current() == (1450, 1450), timeout=10,
                           what="the edit to reach both ends")

        # an ADD built from a config older than what the watch saw: nothing trusts either,
        # the NAD is read again
        interfaces.set_mtu(host_name=host, netns=pod_netns, ifname="net1", mtu=1300)
        keeper.plugged(nad_key="ns1/l2", mtu=1300)
        harness.wait_until(lambda: current() == (1450, 1450), timeout=10,
                           what="the NAD's MTU after re-reading it")
        # an invalid edit changes nothing (the controller reports it)
        custom.patch_namespaced_custom_object(*group, "ns1", harness.NAD_PLURAL, "l2", {
            "spec": _nad("ns1", "l2", "l2-net", 99999)["spec"]})
        harness.wait_until(lambda: "ns1/l2" not in keeper._desired, timeout=10,
                           what="the keeper to see the invalid edit")
        assert current() == (1450, 1450)
        edit(1500)
        harness.wait_until(lambda: current() == (1500, 1500), timeout=10,
                           what="the next valid edit")
    finally:
        keeper.stop()
        switch.close()
        interfaces.delete(host_name=host)
