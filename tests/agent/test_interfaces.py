"""Pod interfaces over netlink, in real network namespaces."""

from __future__ import annotations

import subprocess

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

        # a retried ADD replaces the pair instead of failing on the existing names
        again = interfaces.create(spec, host_name=host)
        assert again.index != created.index
    finally:
        assert interfaces.delete(host_name=host, netns=pod_netns, ifname="net1")
    assert interfaces.host_index(host) is None
    assert interfaces.observe(netns=pod_netns, ifname="net1") is None
    # idempotent, also with the namespace gone
    assert not interfaces.delete(host_name=host, netns="/var/run/netns/gone", ifname="net1")


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
