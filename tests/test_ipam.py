"""IPAM: every pod gets unique, usable addresses, fast, and the pool survives a restart."""

from __future__ import annotations

import ipaddress

import hypothesis
import netaddr
import pytest
from hypothesis import strategies as st

from ovnk_secondary import errors, ipam, migration


def _pool(subnets: str, excludes: str = "") -> ipam.Pool:
    return ipam.Pool(
        network="net",
        subnets=[netaddr.IPNetwork(s) for s in subnets.split(",")],
        exclude_subnets=[netaddr.IPNetwork(e) for e in excludes.split(",") if e],
    )


def test_one_address_per_subnet_skipping_network_broadcast_and_excludes() -> None:
    pool = _pool("10.0.0.0/29,fd00::/64", "10.0.0.1,10.0.0.4/31")
    got = [pool.allocate(owner=f"p{i}") for i in range(3)]
    assert got == [("10.0.0.2/29", "fd00::1/64"), ("10.0.0.3/29", "fd00::2/64"),
                   ("10.0.0.6/29", "fd00::3/64")]
    with pytest.raises(errors.IpamError, match=r"no free address left in subnet 10\.0\.0\.0/29"):
        pool.allocate(owner="p3")
    assert pool.addresses_of("p3") is None, "a failed allocation must not hold any address"


def test_usage_counts_usable_and_held_addresses_per_subnet() -> None:
    pool = _pool("10.0.0.0/29,fd00::/64", "10.0.0.1,10.0.0.4/31")
    assert pool.usage() == [ipam.SubnetUsage("10.0.0.0/29", 3, 0),
                            ipam.SubnetUsage("fd00::/64", 2**64 - 1, 0)]
    for i in range(3):
        pool.allocate(owner=f"p{i}")
    with pytest.raises(errors.IpamError):
        pool.allocate(owner="p3")  # takes an IPv6 address, then gives it back
    pool.release(owner="p0")
    assert [(u.size, u.used) for u in pool.usage()] == [(3, 2), (2**64 - 1, 2)]


def test_usage_is_current_after_each_change_between_reads() -> None:
    """`usage()` is kept between changes (every scrape of /metrics reads every pool)."""
    pool = _pool("10.0.0.0/29", "")

    def used() -> int:
        return pool.usage()[0].used

    assert used() == 0
    pool.allocate(owner="a")
    assert used() == 1
    pool.reserve(owner="b", addresses=["10.0.0.5/29"])
    assert used() == 2
    pool.allocate(owner="a")  # holds one already: nothing changes
    assert used() == 2
    pool.release(owner="a")
    assert used() == 1
    pool.release(owner="nobody")
    assert used() == 1
    for owner in "cdefg":
        pool.allocate(owner=owner)
    assert used() == 6
    with pytest.raises(errors.IpamError):
        pool.allocate(owner="full")
    assert used() == 6 and pool.usage()[0].size == 6


def test_allocation_is_idempotent_per_owner_and_release_recycles() -> None:
    pool = _pool("10.0.0.0/30")
    assert pool.allocate(owner="a") == pool.allocate(owner="a") == ("10.0.0.1/30",)
    assert pool.release(owner="a") == ("10.0.0.1/30",)
    assert pool.allocate(owner="b") == ("10.0.0.2/30",)
    assert pool.allocate(owner="c") == ("10.0.0.1/30",)


def test_rebuild_from_annotations_then_allocate_around_them() -> None:
    pool = _pool("10.0.0.0/24")
    pool.reserve(owner="old-1", addresses=["10.0.0.1/24"])
    pool.reserve(owner="old-3", addresses=["10.0.0.3/24"])
    assert pool.allocate(owner="new") == ("10.0.0.2/24",)
    assert pool.allocate(owner="new2") == ("10.0.0.4/24",)
    with pytest.raises(errors.IpamError, match="already held by old-1"):
        pool.reserve(owner="x", addresses=["10.0.0.1/24"])
    with pytest.raises(errors.IpamError, match="not a usable address"):
        pool.reserve(owner="x", addresses=["10.0.0.255/24"])


def test_ten_thousand_pods_get_distinct_addresses_and_a_rebuild_agrees() -> None:
    pool = _pool("10.128.0.0/16,fd00:10::/64", "10.128.0.0/24")
    held = {f"p{i}": pool.allocate(owner=f"p{i}") for i in range(10_000)}
    rebuilt = _pool("10.128.0.0/16,fd00:10::/64", "10.128.0.0/24")
    for owner, addresses in held.items():
        rebuilt.reserve(owner=owner, addresses=addresses)
    extra = rebuilt.allocate(owner="one-more")
    everything = {a for addresses in held.values() for a in addresses}
    assert len(everything) == 20_000
    assert not everything & set(extra)  # the rebuilt pool knows every address is taken


_operations = st.lists(st.tuples(st.sampled_from(["allocate", "release", "reserve"]),
                                 st.integers(0, 40)), max_size=120)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    prefix=st.integers(26, 30),
    exclude=st.lists(st.tuples(st.integers(0, 63), st.integers(28, 32)), max_size=3),
    operations=_operations,
)
def test_never_a_duplicate_nor_an_excluded_network_or_broadcast_address(
    prefix: int, exclude: list[tuple[int, int]], operations: list[tuple[str, int]]
) -> None:
    subnet = ipaddress.ip_network(f"10.9.0.0/{prefix}")
    excludes = [ipaddress.ip_network(f"10.9.0.{offset % subnet.num_addresses}/{length}",
                                     strict=False) for offset, length in exclude]
    excludes = [e for e in excludes if e.subnet_of(subnet)]
    pool = _pool(str(subnet), ",".join(str(e) for e in excludes))
    usable = subnet.num_addresses - 2 - len(
        {a for e in excludes for a in e} - {subnet.network_address, subnet.broadcast_address})
    holders: dict[str, str] = {}
    for operation, number in operations:
        owner = f"pod{number}"
        if operation == "allocate":
            try:
                (address,) = pool.allocate(owner=owner)
            except errors.IpamError:
                assert len(pool) >= usable, "exhausted while addresses were free"
                continue
            holders[owner] = address
        elif operation == "release":
            pool.release(owner=owner)
            holders.pop(owner, None)
        elif holders:
            # a restart: rebuild a fresh pool from what is recorded
            pool = _pool(str(subnet), ",".join(str(e) for e in excludes))
            for holder, address in holders.items():
                pool.reserve(owner=holder, addresses=[address])
        addresses = [ipaddress.ip_interface(a).ip for a in holders.values()]
        assert len(addresses) == len(set(addresses)), "duplicate address handed out"
        assert pool.usage() == [ipam.SubnetUsage(str(subnet), usable, len(holders))]
        for address in addresses:
            assert address not in (subnet.network_address, subnet.broadcast_address)
            assert not any(address in e for e in excludes), f"{address} is excluded"


def test_owners_are_exact_even_when_port_names_collide() -> None:
    # NADs q-m/x and q/m-x give one port name prefix (q.m.x_): their owners stay distinct
    pool = ipam.Pool(network="s", subnets=[netaddr.IPNetwork("10.253.2.0/29")])
    first = ipam.Owner(nad_key="q-m/x", namespace="q", name="q1")
    second = ipam.Owner(nad_key="q/m-x", namespace="q", name="q1")
    assert pool.allocate(owner=first) != pool.allocate(owner=second)
    pool.release(owner=second)
    assert pool.addresses_of(first) == ("10.253.2.1/29",)
    assert str(first) == "pod q/q1 (NAD q-m/x)"


def test_holders_refuse_a_value_held_by_another_owner_and_claim_all_or_nothing() -> None:
    holders = ipam.Holders(network="flat")
    holders.claim("a", macs=["02:00:00:00:BE:EF"], ips=["10.254.6.1/24"])
    with pytest.raises(errors.IpamError, match=r"MAC 02:00:00:00:be:ef is already used by a"):
        holders.claim("b", macs=["02:00:00:00:be:ef"], ips=["10.254.6.2/24"])
    with pytest.raises(errors.IpamError, match=r"IP 10\.254\.6\.1 is already used by a"):
        holders.claim("b", macs=["02:00:00:00:00:02"], ips=["10.254.6.1/16"])
    assert holders.holder("IP", "10.254.6.2") is None  # nothing of a refused claim is kept
    holders.claim("a", macs=["02:00:00:00:be:ef"], ips=["10.254.6.1/24"])  # idempotent
    holders.release("a")
    holders.claim("b", macs=["02:00:00:00:be:ef"], ips=["10.254.6.1/24"])
    assert holders.holder("MAC", "02:00:00:00:BE:EF") == "b"
    assert holders.owners() == ["b"]


def test_holders_of_one_group_share_values_until_the_last_releases_them() -> None:
    holders = ipam.Holders(network="flat")
    vm = migration.Vm("vms", "vm-a")
    value = {"macs": ["02:00:00:00:00:0a"], "ips": ["10.254.7.1/24"]}
    holders.claim("source", group=vm, **value)
    holders.claim("target", group=vm, **value)  # a live migration: both pods hold them
    with pytest.raises(errors.IpamError, match=r"already used by source of VM vms/vm-a"):
        holders.claim("other", **value)  # a pod of no VM
    with pytest.raises(errors.IpamError, match=r"already used by source of VM vms/vm-a"):
        holders.claim("other", group=migration.Vm("vms", "vm-b"), **value)  # another VM
    holders.release("source")  # the migration done: the target keeps them
    assert holders.holder("IP", "10.254.7.1") == "target"
    with pytest.raises(errors.IpamError, match=r"already used by target of VM vms/vm-a"):
        holders.claim("other", **value)
    holders.release("target")
    holders.claim("other", **value)  # free once the last holder went
    assert holders.owners() == ["other"]
