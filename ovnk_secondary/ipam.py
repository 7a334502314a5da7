"""IP address management: one pool per network, cluster-wide, never a duplicate.

A network's pool is every address of its `subnets` minus `excludeSubnets`, minus the network
address of each subnet and the broadcast address of IPv4 subnets. A pod on a NAD (an
`Owner`: the exact namespace/name of both, never a name derived from them: OVN-K's port names
map `-` and `/` to `.` and two NADs can share one) gets one address from each subnet.
`Holders` keeps what else must be unique on a network: MACs, and static IPs on networks
without subnets.

Allocation must stay cheap at tens of thousands of pods: each subnet hands out fresh
addresses from a cursor that only moves forward (skipping excluded ranges by bisection and
addresses already reserved), and reuses released addresses from a heap once the fresh ones
run out. No allocation scans the pool. After a restart the pools are rebuilt by
`reserve`-ing what the pod annotations record.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import heapq
import ipaddress
import socket
from collections.abc import Hashable, Iterable, Sequence
from typing import NamedTuple

import netaddr

from ovnk_secondary import errors

_ADDRESS_CLASSES: dict[int, type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]] = {
    4: ipaddress.IPv4Address,
    6: ipaddress.IPv6Address,
}


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Owner:
    """Who holds addresses: a pod on a NAD, by their exact keys."""

    nad_key: str  # "<nad namespace>/<nad name>"
    namespace: str  # the pod's
    name: str

    def __str__(self) -> str:
        return f"pod {self.namespace}/{self.name} (NAD {self.nad_key})"


class SubnetUsage(NamedTuple):
    """How full one subnet of a pool is, in addresses."""

    subnet: str  # CIDR
    size: int  # usable addresses: all but network, broadcast and excludeSubnets
    used: int  # held by owners


@dataclasses.dataclass(kw_only=True)
class _Subnet:
    """One subnet of a pool, with integer addresses."""

    cidr: str
    version: int
    prefixlen: int
    first: int  # first usable address
    last: int  # last usable address
    excluded_starts: list[int]
    excluded_ends: list[int]
    cursor: int = 0
    used: set[int] = dataclasses.field(default_factory=set)
    released: list[int] = dataclasses.field(default_factory=list)  # heap; may hold stale entries

    def __post_init__(self) -> None:
        self.cursor = self.first

    def text(self, address: int) -> str:
        return f"{_ADDRESS_CLASSES[self.version](address)}/{self.prefixlen}"

    def excluded_until(self, address: int) -> int | None:
        """The end of the excluded range holding `address`, or None when it is not excluded."""
        index = bisect.bisect_right(self.excluded_starts, address) - 1
        if index >= 0 and self.excluded_ends[index] >= address:
            return self.excluded_ends[index]
        return None

    @functools.cached_property
    def size(self) -> int:
        """Usable addresses (excluded ranges are clipped to the subnet and merged); the
        bounds never change, and `/metrics` asks for every subnet's at each scrape."""
        excluded = sum(end - start + 1
                       for start, end in zip(self.excluded_starts, self.excluded_ends, strict=True))
        return max(0, self.last - self.first + 1 - excluded)

    def available(self, address: int) -> bool:
        return (self.first <= address <= self.last and address not in self.used
                and self.excluded_until(address) is None)

    def take(self) -> int | None:
        while self.cursor <= self.last:
            address = self.cursor
            end = self.excluded_until(address)
            if end is not None:
                self.cursor = end + 1
                continue
            self.cursor += 1
            if address not in self.used:
                self.used.add(address)
                return address
        while self.released:
            address = heapq.heappop(self.released)
            if address not in self.used:  # stale when reserved again since its release
                self.used.add(address)
                return address
        return None

    def free(self, address: int) -> None:
        self.used.discard(address)
        if address < self.cursor:  # the cursor will not come back to it
            heapq.heappush(self.released, address)


def _parse_interface(text: str) -> tuple[int, int, int]:
    """'10.0.0.5/24' -> (version, address as int, prefix length); ValueError when invalid.

    `ipaddress.ip_interface` builds network objects and costs tens of microseconds, which a
    full sync pays for every address of every pod; `inet_pton` is strict and fast.
    """
    address, slash, prefix = text.partition("/")
    if not slash or not prefix.isdigit():
        raise ValueError(text)
    for family, version, bits in ((socket.AF_INET, 4, 32), (socket.AF_INET6, 6, 128)):
        try:
            packed = socket.inet_pton(family, address)
        except OSError:
            continue
        if int(prefix) > bits:
            raise ValueError(text)
        return version, int.from_bytes(packed, "big"), int(prefix)
    raise ValueError(text)


def _subnet(network: netaddr.IPNetwork, excludes: Iterable[netaddr.IPNetwork]) -> _Subnet:
    first, last = int(network.first), int(network.last)
    if network.version == 4 and network.prefixlen <= 30:
        first, last = first + 1, last - 1  # network and broadcast addresses
    elif network.version == 6 and network.prefixlen <= 126:
        first += 1  # the subnet-router anycast address
    ranges = sorted(
        (max(int(e.first), first), min(int(e.last), last))
        for e in excludes
        if e.version == network.version and int(e.first) <= last and int(e.last) >= first
    )
    merged: list[list[int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return _Subnet(
        cidr=str(network.cidr),
        version=network.version,
        prefixlen=network.prefixlen,
        first=first,
        last=last,
        excluded_starts=[m[0] for m in merged],
        excluded_ends=[m[1] for m in merged],
    )


class Pool:
    """The addresses of one network, and who holds which."""

    def __init__(
        self,
        *,
        network: str,
        subnets: Sequence[netaddr.IPNetwork],
        exclude_subnets: Sequence[netaddr.IPNetwork] = (),
    ) -> None:
        self.network = network
        self._subnets = [_subnet(s, exclude_subnets) for s in subnets]
        self._owners: dict[Hashable, tuple[tuple[int, int], ...]] = {}  # -> (subnet, address)
        self._holders: dict[tuple[int, int], Hashable] = {}  # (subnet, address) -> owner
        # `usage()` as last computed; None once an address was taken or freed since
        self._usage: tuple[SubnetUsage, ...] | None = None

    def __len__(self) -> int:
        """How many owners hold addresses."""
        return len(self._owners)

    def addresses_of(self, owner: Hashable) -> tuple[str, ...] | None:
        held = self._owners.get(owner)
        if held is None:
            return None
        return tuple(self._subnets[index].text(address) for index, address in held)

    def allocate(self, *, owner: Hashable) -> tuple[str, ...]:
        """One address from each subnet for `owner` (the same ones again if it holds some)."""
        held = self.addresses_of(owner)
        if held is not None:
            return held
        self._usage = None
        taken: list[tuple[int, int]] = []
        for index, subnet in enumerate(self._subnets):
            address = subnet.take()
            if address is None:
                for taken_index, taken_address in taken:
                    self._subnets[taken_index].free(taken_address)
                raise errors.IpamError(
                    f"network {self.network}: no free address left in subnet {subnet.cidr} "
                    f"for {owner}; the pod gets one as soon as another pod on the network "
                    "releases its own (delete pods there), or use a network with a larger subnet"
                )
            taken.append((index, address))
        self._record(owner, taken)
        return tuple(self._subnets[index].text(address) for index, address in taken)

    def reserve(self, *, owner: Hashable, addresses: Sequence[str]) -> None:
        """Mark `addresses` (CIDR strings) as `owner`'s, e.g. from a pod annotation."""
        if self._owners.get(owner) is not None:
            if set(self.addresses_of(owner) or ()) == set(addresses):
                return
            raise errors.IpamError(f"network {self.network}: {owner} already holds "
                                   f"{', '.join(self.addresses_of(owner) or ())}")
        wanted: list[tuple[int, int]] = []
        for text in addresses:
            try:
                version, address, prefixlen = _parse_interface(text)
            except ValueError as exc:
                raise errors.IpamError(f"network {self.network}: {text!r} of {owner} is not "
                                       "an address in CIDR notation") from exc
            index = next((i for i, s in enumerate(self._subnets)
                          if s.version == version and s.prefixlen == prefixlen
                          and s.first <= address <= s.last), None)
            if index is None:
                raise errors.IpamError(f"network {self.network}: {text} of {owner} is not a "
                                       "usable address of any of its subnets")
            holder = self._holders.get((index, address))
            if holder is not None:
                raise errors.IpamError(f"network {self.network}: {text} of {owner} is already "
                                       f"held by {holder}")
            if self._subnets[index].excluded_until(address) is not None:
                raise errors.IpamError(f"network {self.network}: {text} of {owner} is in "
                                       "excludeSubnets")
            if any(i == index for i, _ in wanted):
                raise errors.IpamError(f"network {self.network}: {owner} has two addresses in "
                                       "one subnet")
            wanted.append((index, address))
        self._usage = None
        for index, address in wanted:
            self._subnets[index].used.add(address)
        self._record(owner, wanted)

    def release(self, *, owner: Hashable) -> tuple[str, ...]:
        """Give `owner`'s addresses back; returns them (empty when it held none)."""
        held = self._owners.pop(owner, ())
        if held:
            self._usage = None
        for index, address in held:
            self._holders.pop((index, address), None)
            self._subnets[index].free(address)
        return tuple(self._subnets[index].text(address) for index, address in held)

    def owners(self) -> list[Hashable]:
        return list(self._owners)

    def usage(self) -> list[SubnetUsage]:
        """Size and use of each subnet, in the order of `subnets`: computed again only after
        addresses were taken or freed (each scrape of `/metrics` asks every pool, on the
        event loop: 1,000 networks cost 10-30 ms a scrape when computed each time)."""
        if self._usage is None:
            self._usage = tuple(SubnetUsage(s.cidr, s.size, len(s.used)) for s in self._subnets)
        return list(self._usage)

    def _record(self, owner: Hashable, held: Sequence[tuple[int, int]]) -> None:
        self._owners[owner] = tuple(held)
        for key in held:
            self._holders[key] = owner


def _address(text: str) -> str:
    """'10.0.0.5/24' or '10.0.0.5' -> '10.0.0.5' (canonical text); ValueError when invalid."""
    return ipaddress.ip_interface(text).ip.compressed


class Holders:
    """Values that must be unique on one network (MACs, static IPs) and who holds each.

    A claim is all or nothing: when any value is held by another owner, `claim` raises
    `errors.IpamError` naming that holder and records nothing. Static IPs are compared as
    addresses, whatever their prefix length (10.0.0.1/24 and 10.0.0.1/16 are one address).

    Owners claiming with the same `group` share values: the pods of one KubeVirt VM (the
    source and target of a live migration carry the VM's MAC and static IPs at once). A value
    is free again when the last owner holding it releases it.
    """

    def __init__(self, *, network: str) -> None:
        self.network = network
        self._held: dict[tuple[str, str], list[Hashable]] = {}  # (kind, value) -> owners
        self._by_owner: dict[Hashable, tuple[tuple[str, str], ...]] = {}
        self._group: dict[Hashable, Hashable] = {}  # owner -> its group, when it has one

    def holder(self, kind: str, value: str) -> Hashable | None:
        owners = self._held.get((kind, _canonical(kind, value)))
        return owners[0] if owners else None

    def claim(self, owner: Hashable, *, macs: Iterable[str] = (),
              ips: Iterable[str] = (), group: Hashable | None = None) -> None:
        wanted = tuple([("MAC", _canonical("MAC", m)) for m in macs]
                       + [("IP", _canonical("IP", i)) for i in ips])
        held = self._by_owner.get(owner)
        if held is not None and set(held) == set(wanted) and self._group.get(owner) == group:
            return
        for key in wanted:
            for holder in self._held.get(key, ()):
                if holder != owner and (group is None or self._group.get(holder) != group):
                    shared = self._group.get(holder)
                    of = f" of {shared}" if shared is not None else ""
                    raise errors.IpamError(
                        f"network {self.network}: {key[0]} {key[1]} is already used by "
                        f"{holder}{of}; choose another {key[0]}")
        self.release(owner)
        for key in wanted:
            self._held.setdefault(key, []).append(owner)
        self._by_owner[owner] = wanted
        if group is not None:
            self._group[owner] = group

    def release(self, owner: Hashable) -> bool:
        """Free what `owner` holds (values shared with its group stay the others'); False
        when it held nothing."""
        held = self._by_owner.pop(owner, None)
        self._group.pop(owner, None)
        for key in held or ():
            owners = self._held.get(key)
            if owners is not None and owner in owners:
                owners.remove(owner)
                if not owners:
                    del self._held[key]
        return held is not None

    def owners(self) -> list[Hashable]:
        return list(self._by_owner)


def _canonical(kind: str, value: str) -> str:
    return value.lower() if kind == "MAC" else _address(value)
