"""The controller's /metrics, scraped over HTTP while the real controller works against a real
API server and a real NB.

The model's gauges (NADs, networks, pools, waiting pods) are read from this controller's
reconciler at each scrape, so the test reads their absolute values. Counters and histograms
belong to the process (as with any Prometheus client) and earlier tests of the session moved
them too: the test compares them before and after what it does.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from ovnk_secondary.controller import metrics as controller_metrics
from ovnk_secondary.northbound import servers
from tests import metrics
from tests.controller.harness import Api, Controller, ports, until


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Scraper:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def now(self) -> metrics.Samples:
        return metrics.scrape(self.url)

    def serving(self) -> metrics.Samples:
        """What /metrics serves, {} while nothing listens yet."""
        try:
            return self.now()
        except OSError:
            return {}

    def until(self, what: str, name: str, expected: float | None, **labels: str) -> None:
        """Poll until the sample has `expected` (None: absent)."""
        until(lambda: metrics.value(self.serving(), name, **labels) == expected or None,
              f"{what}: {name}{labels} never became {expected}")


@pytest.fixture
def running(nb_server: servers.NbServer, api: Api) -> Iterator[tuple[Controller, Scraper]]:
    port = _free_port()
    controller = Controller(nb_remote=nb_server.remote, kubeconfig=api.kubeconfig,
                            health_port=port)
    controller.start()
    try:
        scraper = Scraper(port)
        until(lambda: metrics.value(scraper.serving(), "ovnk_secondary_nads", state="accepted")
              is not None, "no model in /metrics after the first full sync")
        yield controller, scraper
    finally:
        controller.stop()


def test_nads_networks_pools_and_waiting_pods_follow_the_cluster(
        api: Api, nb_server: servers.NbServer, running: tuple[Controller, Scraper]) -> None:
    _, scrape = running
    first = scrape.now()
    assert metrics.value(first, "ovnk_secondary_leader") == 1  # no leader election: it works
    assert metrics.value(first, "ovnk_secondary_networks", topology="layer2") == 0
    assert metrics.series(first, "ovnk_secondary_ip_pool_addresses") == []
    transactions = metrics.value(first, "ovnk_secondary_nb_transaction_seconds_count") or 0

    # a /30 has two usable addresses
    api.create_nad("test", "tiny", name="tiny", topology="layer2", subnets="10.60.0.0/30")
    pool = {"network": "tiny", "subnet": "10.60.0.0/30"}
    scrape.until("a NAD's network", "ovnk_secondary_networks", 1, topology="layer2")
    samples = scrape.now()
    assert metrics.value(samples, "ovnk_secondary_nads", state="accepted") == 1
    assert metrics.value(samples, "ovnk_secondary_ip_pool_addresses", **pool) == 2
    assert metrics.value(samples, "ovnk_secondary_ip_pool_used_addresses", **pool) == 0
    assert metrics.value(samples, "ovnk_secondary_pods_waiting_for_address", network="tiny") == 0

    api.create_pod("test", "p1", "tiny")
    scrape.until("the first pod's address", "ovnk_secondary_ip_pool_used_addresses", 1, **pool)
    until(lambda: "test.tiny_test_p1" in ports(nb_server), "no port for p1")
    api.create_pod("test", "p2", "tiny")
    api.create_pod("test", "p3", "tiny")
    scrape.until("a pod without an address", "ovnk_secondary_pods_waiting_for_address", 1,
                 network="tiny")
    samples = scrape.now()
    assert metrics.value(samples, "ovnk_secondary_ip_pool_used_addresses", **pool) == 2
    assert (metrics.value(samples, "ovnk_secondary_nb_transaction_seconds_count") or 0) \
        >= transactions + 2, "the pods' NB writes are not counted"

    api.delete_pod("test", "p1")  # its address goes to the waiting pod
    scrape.until("the waiting pod served", "ovnk_secondary_pods_waiting_for_address", 0,
                 network="tiny")
    until(lambda: {"test.tiny_test_p2", "test.tiny_test_p3"} <= ports(nb_server),
          "the waiting pod has no port")
    assert metrics.value(scrape.now(), "ovnk_secondary_ip_pool_used_addresses", **pool) == 2

    api.create_nad("test", "bad", name="bad", topology="layer3", subnets="10.61.0.0/24")
    scrape.until("an invalid NAD", "ovnk_secondary_nads", 1, state="refused")

    api.delete_nad("test", "tiny")
    scrape.until("a deleted NAD's network", "ovnk_secondary_networks", 0, topology="layer2")
    samples = scrape.now()
    assert metrics.series(samples, "ovnk_secondary_ip_pool_addresses") == []
    assert metrics.series(samples, "ovnk_secondary_ip_pool_used_addresses") == []
    assert metrics.series(samples, "ovnk_secondary_pods_waiting_for_address") == []
    assert metrics.value(samples, "ovnk_secondary_nads", state="accepted") == 0


def test_a_full_sync_counts_the_rows_it_repairs_and_the_leader_gauge_drops_at_stop(
        api: Api, nb_server: servers.NbServer) -> None:
    def changes(table: str) -> float:
        return controller_metrics.REGISTRY.get_sample_value(
            "ovnk_secondary_full_sync_changes_total",
            {"table": table, "action": "create"}) or 0

    def syncs() -> float:
        return controller_metrics.REGISTRY.get_sample_value(
            "ovnk_secondary_full_sync_seconds_count") or 0

    # made while no controller runs: the first full sync of the next one creates the rows
    api.create_nad("test", "later", name="later", topology="layer2", subnets="10.62.0.0/24")
    api.create_pod("test", "early", "later")
    before = (changes("Logical_Switch"), changes("Logical_Switch_Port"), syncs())
    port = _free_port()
    controller = Controller(nb_remote=nb_server.remote, kubeconfig=api.kubeconfig,
                            health_port=port)
    controller.start()
    try:
        scrape = Scraper(port)
        scrape.until("the first full sync", "ovnk_secondary_full_sync_seconds_count",
                     before[2] + 1)
        assert "test.later_test_early" in ports(nb_server)
        samples = scrape.now()
        assert metrics.value(samples, "ovnk_secondary_full_sync_changes_total",
                             table="Logical_Switch", action="create") == before[0] + 1
        assert metrics.value(samples, "ovnk_secondary_full_sync_changes_total",
                             table="Logical_Switch_Port", action="create") == before[1] + 1
        assert metrics.value(samples, "ovnk_secondary_leader") == 1
    finally:
        controller.stop()
    assert controller_metrics.REGISTRY.get_sample_value("ovnk_secondary_leader") == 0
