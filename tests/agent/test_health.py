"""The node agent's readiness: what keeps it from serving ADDs, in words (pure)."""

from __future__ import annotations

from ovnk_secondary.agent import health


def test_ready_only_when_nothing_is_wrong_and_each_problem_is_named() -> None:
    assert health.problems(ovs_connected=True, socket_serving=True, mappings_error=None) == []
    found = health.problems(ovs_connected=False, socket_serving=False,
                            mappings_error="bridge ovs-br1: uplink enp2s0 does not exist")
    assert found == [
        "not connected to the local OVSDB (is ovsdb-server running?)",
        "the CNI socket is not serving",
        "bridge mappings not applied: bridge ovs-br1: uplink enp2s0 does not exist",
    ]
