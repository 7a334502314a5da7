"""What the node agent exports to Prometheus on its health port's `/metrics`.

As the controller's (`controller.metrics`): events (CNI requests, waits for `ovn-installed`,
OVS errors) are recorded where they happen, in `REGISTRY`, one per process; the node's state
(attachments plugged, bridge mappings applied) is read at scrape time (`State`, a collector
over `Snapshot`), so it cannot go stale. Every name is listed here and in the README's Metrics
section (tests/test_metrics_docs.py keeps the three equal). Names, types, labels (in braces)
and units:

- `ovnk_secondary_cni_request_seconds` histogram {command, result} (seconds): time to answer
  one CNI request, from its arrival on the socket to its answer, by command (`ADD`, `DEL`,
  `CHECK`; `unknown` for anything else, e.g. a request that could not be read) and result
  (`success`, or the CNI error code: `100` annotation timeout, `101` binding timeout, ... as in
  the README's table of error codes).
- `ovnk_secondary_ovn_installed_wait_seconds` histogram {result} (seconds): how long an ADD
  waited for ovn-controller to mark its port `ovn-installed`, by result (`installed`,
  `timeout`).
- `ovnk_secondary_ovs_errors_total` counter {operation} (errors): operations on the local
  OVSDB that failed (timeout, connection lost, transaction refused), by operation (`plug`,
  `unplug`, `replug`, `read`, `bridge_mappings`); not the agent's own refusals (a port of
  another attachment).
- `ovnk_secondary_pod_attachments` gauge {nad} (interfaces): pod interfaces the agent has
  plugged into br-int on this node, by NAD (`namespace/name`).
- `ovnk_secondary_bridge_mappings_applied` gauge {} (boolean): 1 when the bridge-mappings file
  is applied, 0 when not (the Node's `ovnk-secondary.io/bridge-mappings` annotation and
  `/readyz` say why); no sample without `--bridge-mappings`.

Besides these, `/metrics` has prometheus_client's `process_*` and `python_*` of the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping

import prometheus_client
from prometheus_client import core

from ovnk_secondary import errors
from ovnk_secondary.cni import protocol

# the `_created` timestamps of counters and histograms: a series each that nothing here uses
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = prometheus_client.CollectorRegistry(auto_describe=True)

CNI_REQUEST_SECONDS = prometheus_client.Histogram(
    "ovnk_secondary_cni_request_seconds",
    "Time to answer one CNI request, by command and result (success or the CNI error code).",
    ["command", "result"],
    # an ADD waits up to --annotation-timeout (120 s) and then --binding-timeout (60 s)
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 180.0),
    registry=REGISTRY)
OVN_INSTALLED_WAIT_SECONDS = prometheus_client.Histogram(
    "ovnk_secondary_ovn_installed_wait_seconds",
    "How long an ADD waited for ovn-controller to mark its port ovn-installed, by result.",
    ["result"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY)
OVS_ERRORS = prometheus_client.Counter(
    "ovnk_secondary_ovs_errors_total",
    "Operations on the local OVSDB that failed, by operation.", ["operation"],
    registry=REGISTRY)
SERVED = ("ADD", "DEL", "CHECK")  # the commands the agent serves (the shim answers VERSION)


# -- events -----------------------------------------------------------------------------------

def cni_request(*, command: str | None, error: protocol.CniError | None,
                seconds: float) -> None:
    """One CNI request answered; `command` as the runtime gave it (None: unreadable)."""
    label = command if command in SERVED else "unknown"  # a bounded set, whatever comes in
    result = "success" if error is None else str(error.code)
    CNI_REQUEST_SECONDS.labels(command=label, result=result).observe(seconds)


def ovn_installed_wait(*, installed: bool, seconds: float) -> None:
    OVN_INSTALLED_WAIT_SECONDS.labels(
        result="installed" if installed else "timeout").observe(seconds)


@contextlib.contextmanager
def ovs_operation(operation: str) -> Iterator[None]:
    """Count an exception out of the block (or the decorated function) as an OVS error of
    `operation`, unless it is the agent's own refusal (an `errors.OvnkSecondaryError`)."""
    try:
        yield
    except errors.OvnkSecondaryError:
        raise
    except Exception:
        OVS_ERRORS.labels(operation=operation).inc()
        raise


# -- the node's state, read at scrape time ----------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class Snapshot:
    """The node as `/metrics` reports it (plain values)."""

    attachments: Mapping[str, int]  # NAD key -> pod interfaces plugged
    bridge_mappings_applied: bool | None  # None: no bridge-mappings file given


def families(snapshot: Snapshot) -> list[core.Metric]:
    """The node's metric families (pure); every family is there, with or without samples."""
    attachments = core.GaugeMetricFamily(
        "ovnk_secondary_pod_attachments",
        "Pod interfaces the agent has plugged into br-int on this node, by NAD.", labels=["nad"])
    for nad_key, count in sorted(snapshot.attachments.items()):
        attachments.add_metric([nad_key], count)
    mappings = core.GaugeMetricFamily(
        "ovnk_secondary_bridge_mappings_applied",
        "1 when the bridge-mappings file is applied, 0 when not (/readyz says why).")
    if snapshot.bridge_mappings_applied is not None:
        mappings.add_metric([], 1 if snapshot.bridge_mappings_applied else 0)
    return [attachments, mappings]


@dataclasses.dataclass(frozen=True)
class State:
    """A Prometheus collector of the node's state, as a snapshot taken on the event loop
    (`/metrics` takes one per scrape, and renders it in a worker thread only when it differs
    from the last one: equal snapshots are equal collectors)."""

    snapshot: Snapshot

    def collect(self) -> Iterator[core.Metric]:
        yield from families(self.snapshot)
