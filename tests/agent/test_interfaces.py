"""Pod interfaces over netlink, in real network namespaces."""

from __future__ import annotations

import subprocess

import pytest

from ovnk_secondary.agent import interfaces


def test_host_names_are_stable_short_and_distinct() -> None:
    name = interfaces.host_ifname(container_id="c" * 64, ifname="net1")
    assert name == interfaces.host_ifname(container_id="c" * 64, ifname="net1")
    assert len(name) == 15 and name.startswith("ovk")
    assert name != interfaces.host_ifname(container_id="c" * 64, ifname="net2")
    assert name != interfaces.host_ifname(container_id="d" * 64, ifname="net1")


def test_create_observe_delete(pod_netns: str) -> None:
    spec = interfaces.PodInterface(
        netns=pod_netns, ifname="net1", mac="0a:58:0a:64:00:05", mtu=1400,
        addresses=("10.100.0.5/24", "fd00::5/64"),
        routes=(interfaces.RouteSpec(dst="10.200.0.0/16", gateway="10.100.0.1"),
                interfaces.RouteSpec(dst="0.0.0.0/0", gateway="10.100.0.1")))
    host = interfaces.host_ifname(container_id="test-create", ifname="net1")
    try:
        created = interfaces.create(spec, host_name=host)
        assert created.index == interfaces.host_index(host)
        observed = interfaces.observe(netns=pod_netns, ifname="net1")
        assert observed is not None
        assert observed.mac == "0a:58:0a:64:00:05" and observed.mtu == 1400 and observed.up
        assert {"10.100.0.5/24", "fd00::5/64"} <= observed.addresses
        ns = pod_netns.rsplit("/", 1)[1]
        routes = subprocess.run(["ip", "-n", ns, "route"], capture_output=True, text=True,
                                check=True).stdout
        assert "default via 10.100.0.1 dev net1" in routes
        assert "10.200.0.0/16 via 10.100.0.1 dev net1" in routes

        # a retried ADD finds the pair: the caller decides whose it is, and may replace it
        with pytest.raises(interfaces.InterfaceExists) as info:
            interfaces.create(spec, host_name=host)
        assert (info.value.host_side, info.value.pod_side) == (True, "veth")
        again = interfaces.create(spec, host_name=host, replace=True)
        assert again.index != created.index
    finally:
        assert interfaces.delete(host_name=host)
    assert interfaces.host_index(host) is None
    assert interfaces.observe(netns=pod_netns, ifname="net1") is None
    assert not interfaces.delete(host_name=host)  # idempotent


def test_create_never_takes_an_interface_it_did_not_make(pod_netns: str) -> None:
    ns = pod_netns.rsplit("/", 1)[1]
    # another plugin's veth pair, its pod end named net1
    subprocess.run(["ip", "link", "add", "ovkt-fgn0", "type", "veth", "peer", "name", "net1",
                    "netns", ns], check=True)
    spec = interfaces.PodInterface(netns=pod_netns, ifname="net1", mac="0a:58:0a:64:00:08",
                                   mtu=1400)
    host = interfaces.host_ifname(container_id="test-foreign", ifname="net1")
    try:
        for replace in (False, True):  # replacing removes only a pair of this host side
            with pytest.raises(interfaces.InterfaceExists) as info:
                interfaces.create(spec, host_name=host, replace=replace)
            assert (info.value.host_side, info.value.pod_side) == (False, "veth")
        assert interfaces.host_index(host) is None
        assert not interfaces.delete(host_name=host)
        assert interfaces.host_index("ovkt-fgn0") is not None, "the other plugin's pair stays"
    finally:
        subprocess.run(["ip", "link", "del", "ovkt-fgn0"], check=False)


def test_mtu_of_both_ends_is_read_and_changed(pod_netns: str) -> None:
    spec = interfaces.PodInterface(netns=pod_netns, ifname="net1", mac="0a:58:0a:64:00:09",
                                   mtu=1400)
    host = interfaces.host_ifname(container_id="test-mtu", ifname="net1")
    try:
        interfaces.create(spec, host_name=host)
        assert interfaces.mtus(host_name=host, netns=pod_netns, ifname="net1") == (1400, 1400)
        for mtu in (9000, 1280):
            interfaces.set_mtu(host_name=host, netns=pod_netns, ifname="net1", mtu=mtu)
            assert interfaces.mtus(host_name=host, netns=pod_netns, ifname="net1") == (mtu, mtu)
    finally:
        interfaces.delete(host_name=host)
    assert interfaces.mtus(host_name=host, netns=pod_netns, ifname="net1") == (None, None)
    assert interfaces.mtus(host_name=host, netns="/var/run/netns/gone", ifname="net1") == (
        None, None)


def test_missing_namespace_leaves_nothing_behind() -> None:
    spec = interfaces.PodInterface(netns="/var/run/netns/ovnk-no-such-ns", ifname="net1",
                                   mac="0a:58:0a:64:00:06", mtu=1400)
    host = interfaces.host_ifname(container_id="test-missing", ifname="net1")
    try:
        interfaces.create(spec, host_name=host)
    except (FileNotFoundError, OSError):
        pass
    else:
        raise AssertionError("create must fail without the namespace")
    assert interfaces.host_index(host) is None


def test_checksum_offload_can_be_turned_off_for_the_userspace_datapath(pod_netns: str) -> None:
    spec = interfaces.PodInterface(netns=pod_netns, ifname="net1", mac="0a:58:0a:64:00:07",
                                   mtu=1400, addresses=("10.100.0.7/24",),
                                   tx_checksum_offload=False)
    host = interfaces.host_ifname(container_id="test-offload", ifname="net1")
    try:
        interfaces.create(spec, host_name=host)
        ns = pod_netns.rsplit("/", 1)[1]
        features = subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-k", "net1"],
                                  capture_output=True, text=True, check=True).stdout
        assert "tx-checksumming: off" in features
    finally:
        interfaces.delete(host_name=host)


def test_an_interface_can_be_handed_over_down_with_its_addresses(pod_netns: str) -> None:
    spec = interfaces.PodInterface(
        netns=pod_netns, ifname="net1", mac="0a:58:0a:64:00:09", mtu=1400,
        addresses=("10.100.0.9/24", "fd00::9/64"), up=False)
    host = interfaces.host_ifname(container_id="test-down", ifname="net1")
    try:
        interfaces.create(spec, host_name=host)
        observed = interfaces.observe(netns=pod_netns, ifname="net1")
        assert observed is not None and not observed.up
        assert {"10.100.0.9/24", "fd00::9/64"} <= observed.addresses
        ns = pod_netns.rsplit("/", 1)[1]
        routes = subprocess.run(["ip", "-n", ns, "route", "show", "dev", "net1"],
                                capture_output=True, text=True, check=True).stdout
        assert routes == ""  # not even the subnet's: the kernel adds it when the link is up
        # whoever takes it over brings it up: the kernel then routes the subnet through it
        subprocess.run(["ip", "-n", ns, "link", "set", "net1", "up"], check=True)
        routes = subprocess.run(["ip", "-n", ns, "route", "show", "dev", "net1"],
                                capture_output=True, text=True, check=True).stdout
        assert "10.100.0.0/24" in routes
    finally:
        interfaces.delete(host_name=host)
