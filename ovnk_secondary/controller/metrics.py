"""What the controller exports to Prometheus on its health port's `/metrics`.

Two kinds, kept apart on purpose:

- **events** (counters, histograms, the gauges of the event loop and of leadership): recorded
  where they happen, in `REGISTRY`, one per process like any Prometheus client's metrics;
- **the model** (NADs, networks, IP pools, pods waiting for an address): not recorded at all,
  but read from the reconciler at scrape time (`Model`, a collector over `Snapshot`): a value
  cannot go stale, and a deleted network's series disappear with it. Each controller instance
  has its own; it has no samples before the first full sync and on a standby.

Each scrape reads the model on the event loop (aiohttp), like the reconciler, so reading it
needs no lock; the text is rendered from that snapshot in a worker thread (`probes.metrics`).
Every name is listed here and in the README's Metrics section (tests/test_metrics_docs.py
keeps the three equal). Names, types, labels (in braces) and units:

- `ovnk_secondary_nads` gauge {state} (NADs): NADs of type ovn-k8s-cni-overlay by state:
  `accepted` (in force; also one whose change of identity was refused, the accepted config
  staying in force) or `refused` (invalid, or conflicting with another network: the NAD's
  Warning Event says why).
- `ovnk_secondary_networks` gauge {topology} (networks): networks in force, by topology
  (`layer2`, `localnet`).
- `ovnk_secondary_ip_pool_addresses` gauge {network, subnet} (addresses): usable addresses of
  each subnet of a network with subnets (all but the network address, the IPv4 broadcast
  address and excludeSubnets).
- `ovnk_secondary_ip_pool_used_addresses` gauge {network, subnet} (addresses): addresses of
  the subnet held by pods.
- `ovnk_secondary_pods_waiting_for_address` gauge {network} (pods): pods refused an address or
  a MAC on the network (Warning Event IPAMFailed or AddressInUse), served again as soon as one
  is released there; 0 for each network in force without such pods.
- `ovnk_secondary_nb_transaction_seconds` histogram {} (seconds): time to commit one OVN
  northbound transaction of ours, successful ones.
- `ovnk_secondary_nb_transaction_failures_total` counter {} (transactions): OVN northbound
  transactions of ours that failed (refused by NB, or the connection lost meanwhile); writes
  not attempted because NB is disconnected are not counted (`/readyz` says so).
- `ovnk_secondary_full_sync_seconds` histogram {} (seconds): duration of each successful full
  sync (listing, rebuilding the pools, diffing, applying), without the wait for pods in flight
  and the garbage collection after it.
- `ovnk_secondary_full_sync_failures_total` counter {} (full syncs): full syncs that failed
  (NB or the Kubernetes API unreachable); retried with backoff.
- `ovnk_secondary_full_sync_changes_total` counter {table, action} (rows): northbound rows a
  full sync changed, by table (`Logical_Switch`, `Logical_Switch_Port`, and MultiNetworkPolicy
  rows: `Port_Group`, `ACL`, `Address_Set`) and action (`create`, `update`, `delete`; a port
  group or address set whose members changed is updated). After the first sync of a process,
  an increase is drift repaired or work the event path missed.
- `ovnk_secondary_leader` gauge {} (boolean): 1 while this replica works (holds the leader
  Lease, or runs without leader election), 0 while it stands by.
- `ovnk_secondary_event_loop_lag_seconds` histogram {} (seconds): how much later than due a
  10 ms ticker on the event loop woke up.
- `ovnk_secondary_event_loop_lag_worst_seconds` gauge {} (seconds): the worst event-loop lag
  over the last 5 to 10 s.
- `ovnk_secondary_event_loop_busy_worst_seconds` gauge {} (seconds): the most CPU time the
  event-loop thread spent between two ticks, over the last 5 to 10 s.
- `ovnk_secondary_gc_pause_seconds` histogram {generation} (seconds): pauses of CPython's
  cyclic garbage collector, by generation (`0`, `1`, `2`).

Besides these, `/metrics` has prometheus_client's `process_*` and `python_*` of the process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import prometheus_client
from prometheus_client import core

from ovnk_secondary import ipam, nads
from ovnk_secondary.northbound import diff

# the `_created` timestamps of counters and histograms: a series each that nothing here uses
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = prometheus_client.CollectorRegistry(auto_describe=True)

NB_TRANSACTION_SECONDS = prometheus_client.Histogram(
    "ovnk_secondary_nb_transaction_seconds",
    "Time to commit one OVN northbound transaction of ours (successful ones).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY)
NB_TRANSACTION_FAILURES = prometheus_client.Counter(
    "ovnk_secondary_nb_transaction_failures_total",
    "OVN northbound transactions of ours that failed (refused, or the connection lost).",
    registry=REGISTRY)
FULL_SYNC_SECONDS = prometheus_client.Histogram(
    "ovnk_secondary_full_sync_seconds",
    "Duration of each successful full sync (without waiting for pods in flight and the "
    "garbage collection after it).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
    registry=REGISTRY)
FULL_SYNC_FAILURES = prometheus_client.Counter(
    "ovnk_secondary_full_sync_failures_total",
    "Full syncs that failed (NB or the Kubernetes API unreachable).", registry=REGISTRY)
FULL_SYNC_CHANGES = prometheus_client.Counter(
    "ovnk_secondary_full_sync_changes_total",
    "Northbound rows a full sync changed (drift repaired, or work the event path missed).",
    ["table", "action"], registry=REGISTRY)
LEADER = prometheus_client.Gauge(
    "ovnk_secondary_leader",
    "1 while this controller replica works (holds the leader Lease, or runs without leader "
    "election), 0 while it stands by.", registry=REGISTRY)
LOOP_LAG = prometheus_client.Histogram(
    "ovnk_secondary_event_loop_lag_seconds",
    "How much later than due the controller's 10 ms event-loop ticker woke up.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=REGISTRY)
LOOP_LAG_WORST = prometheus_client.Gauge(
    "ovnk_secondary_event_loop_lag_worst_seconds",
    "The worst event-loop lag over the last window (5 s to 10 s).", registry=REGISTRY)
LOOP_BUSY_WORST = prometheus_client.Gauge(
    "ovnk_secondary_event_loop_busy_worst_seconds",
    "The most CPU time the event-loop thread spent between two ticks, over the last window.",
    registry=REGISTRY)
GC_PAUSE = prometheus_client.Histogram(
    "ovnk_secondary_gc_pause_seconds",
    "Pauses of CPython's cyclic garbage collector (any thread; by generation).",
    ["generation"], buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0), registry=REGISTRY)

# diff.Diff field -> (table, action) of FULL_SYNC_CHANGES
_CHANGES = {
    "create_switches": ("Logical_Switch", "create"),
    "update_switches": ("Logical_Switch", "update"),
    "delete_switches": ("Logical_Switch", "delete"),
    "create_ports": ("Logical_Switch_Port", "create"),
    "update_ports": ("Logical_Switch_Port", "update"),
    "delete_ports": ("Logical_Switch_Port", "delete"),
}


# -- events -----------------------------------------------------------------------------------

def nb_transaction(*, committed: bool, seconds: float) -> None:
    """One NB transaction ended (`northbound.client.Northbound`'s `on_transaction`)."""
    if committed:
        NB_TRANSACTION_SECONDS.observe(seconds)
    else:
        NB_TRANSACTION_FAILURES.inc()


def full_sync_done(*, seconds: float, change: diff.Diff) -> None:
    FULL_SYNC_SECONDS.observe(seconds)
    for field, (table, action) in _CHANGES.items():
        rows = len(getattr(change, field))
        if rows:
            FULL_SYNC_CHANGES.labels(table=table, action=action).inc(rows)


def full_sync_policies_done(*, change: diff.PolicyDiff) -> None:
    """The MultiNetworkPolicy rows a full sync changed (`FULL_SYNC_CHANGES`): each row counted
    once per action (a created port group's members are part of its creation)."""
    groups = {g.name for g in change.create_port_groups}
    sets = {s.name for s in change.create_address_sets}
    counts = {
        ("Port_Group", "create"): len(groups),
        ("Port_Group", "update"): len(({u.name for u in change.update_port_groups}
                                       | {m.name for m in change.port_group_members}) - groups),
        ("Port_Group", "delete"): len(change.delete_port_groups),
        ("ACL", "create"): len(change.create_acls),
        ("ACL", "update"): len(change.update_acls),
        ("ACL", "delete"): len(change.delete_acls),
        ("Address_Set", "create"): len(sets),
        ("Address_Set", "update"): len(({u.name for u in change.update_address_sets}
                                        | {m.name for m in change.address_set_members}) - sets),
        ("Address_Set", "delete"): len(change.delete_address_sets),
    }
    for (table, action), rows in counts.items():
        if rows:
            FULL_SYNC_CHANGES.labels(table=table, action=action).inc(rows)


def full_sync_failed() -> None:
    FULL_SYNC_FAILURES.inc()


# -- the model, read at scrape time -----------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class Snapshot:
    """The reconciler's model as `/metrics` reports it (plain values)."""

    accepted_nads: int = 0
    refused_nads: int = 0
    networks: Mapping[str, str] = dataclasses.field(default_factory=dict)  # name -> topology
    pools: Mapping[str, Sequence[ipam.SubnetUsage]] = dataclasses.field(
        default_factory=dict)  # network name -> its subnets
    waiting: Mapping[str, int] = dataclasses.field(default_factory=dict)  # network -> pods


def families(snapshot: Snapshot | None) -> list[core.Metric]:
    """The model's metric families (pure). Every family is there; without a snapshot (before
    the first full sync, on a standby) they have no samples, so that a sum over replicas is
    the leader's. Labels that name a state or topology are there for each one, 0 when none."""
    nad_count = core.GaugeMetricFamily(
        "ovnk_secondary_nads", "NADs of type ovn-k8s-cni-overlay by state (accepted, refused).",
        labels=["state"])
    networks = core.GaugeMetricFamily(
        "ovnk_secondary_networks", "Networks in force, by topology.", labels=["topology"])
    size = core.GaugeMetricFamily(
        "ovnk_secondary_ip_pool_addresses",
        "Usable addresses of each subnet of a network (all but network, IPv4 broadcast and "
        "excludeSubnets).", labels=["network", "subnet"])
    used = core.GaugeMetricFamily(
        "ovnk_secondary_ip_pool_used_addresses", "Addresses of the subnet held by pods.",
        labels=["network", "subnet"])
    waiting = core.GaugeMetricFamily(
        "ovnk_secondary_pods_waiting_for_address",
        "Pods refused an address or a MAC on the network (IPAMFailed, AddressInUse), waiting "
        "for one to be released.", labels=["network"])
    all_families: list[core.Metric] = [nad_count, networks, size, used, waiting]
    if snapshot is None:
        return all_families
    nad_count.add_metric(["accepted"], snapshot.accepted_nads)
    nad_count.add_metric(["refused"], snapshot.refused_nads)
    for topology in nads.TOPOLOGIES:
        networks.add_metric([topology], sum(1 for t in snapshot.networks.values()
                                            if t == topology))
    for network, subnets in sorted(snapshot.pools.items()):
        for usage in subnets:
            size.add_metric([network, usage.subnet], usage.size)
            used.add_metric([network, usage.subnet], usage.used)
    for network, count in sorted(snapshot.waiting.items()):
        waiting.add_metric([network], count)
    return all_families


@dataclasses.dataclass(frozen=True)
class Model:
    """A Prometheus collector of one reconciler's model, as a snapshot taken on the event loop
    (`/metrics` takes one per scrape, and renders it in a worker thread only when it differs
    from the last one: equal snapshots are equal collectors)."""

    snapshot: Snapshot | None

    def collect(self) -> Iterator[core.Metric]:
        yield from families(self.snapshot)
