"""/metrics text: the controller's model written directly, the same as prometheus_client's."""

from __future__ import annotations

import asyncio

import prometheus_client

from ovnk_secondary import ipam, probes
from ovnk_secondary.controller import metrics


def _snapshot(networks: int) -> metrics.Snapshot:
    names = [f"net-{i}" for i in range(networks)] + ['odd"name\\with\nbreaks', ""]
    return metrics.Snapshot(
        accepted_nads=networks, refused_nads=2,
        networks={n: "layer2" if i % 2 else "localnet" for i, n in enumerate(names)},
        pools={n: [ipam.SubnetUsage(subnet=f"10.{i // 250}.{i % 250}.0/24", size=253, used=i),
                   ipam.SubnetUsage(subnet="fd00::/64", size=2**64 - 2, used=0)]
               for i, n in enumerate(names) if i % 3},
        waiting={n: i % 4 for i, n in enumerate(names)})


def test_the_model_text_is_generate_latest_s() -> None:
    for snapshot in (None, metrics.Snapshot(), _snapshot(1), _snapshot(1200)):
        model = metrics.Model(lambda s=snapshot: s)  # type: ignore[misc]
        assert model.exposition() == prometheus_client.generate_latest(model)


def test_the_handler_uses_a_collector_s_own_text() -> None:
    snapshot = _snapshot(3)
    handler = probes.metrics(metrics.REGISTRY, metrics.Model(lambda: snapshot))

    async def scrape() -> bytes:
        response = await handler(None)  # type: ignore[arg-type]
        return bytes(response.body)  # type: ignore[arg-type]

    body = asyncio.run(scrape())
    assert body == b"".join((
        prometheus_client.generate_latest(metrics.REGISTRY),
        prometheus_client.generate_latest(metrics.Model(lambda: snapshot)),
        body[body.index(b"# HELP python_gc"):]))  # the default registry's, last
    assert b'ovnk_secondary_ip_pool_used_addresses{network="net-2",subnet="10.0.2.0/24"} 2.0\n' \
        in body
