"""The controller's coordination of MultiNetworkPolicies (`policywork`) with its collaborators
faked: which networks an event makes it converge, and how many NB transactions a burst costs.
The real thing, against the API server, NB and OVN's own logic: test_policies.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

from ovnk_secondary import naming, policies
from ovnk_secondary.controller import apiclient, events, policywork
from ovnk_secondary.northbound import acls, client, desired, diff, policyrows

NETWORKS = [acls.Network(name="net1", nad_keys=frozenset({"ns/n1"}), families=frozenset({4})),
            acls.Network(name="net2", nad_keys=frozenset({"ns/n2"}), families=frozenset({4}))]
PODS = [acls.Pod(namespace="ns", name=f"p{i}", labels={"app": "db" if i == 0 else "web"},
                 ports={nad: acls.PodPort(name=naming.pod_port_name(nad, "ns", f"p{i}"),
                                          ips=(f"10.{j}.0.{i + 1}/24",))
                        for j, nad in enumerate(("ns/n1", "ns/n2"))})
        for i in range(3)]


def _policy(name: str, policy_for: str, spec: dict[str, Any] | None = None,
            uid: str = "u1") -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "uid": uid, "resourceVersion": "1",
                         "annotations": {policies.POLICY_FOR_ANNOTATION: policy_for}},
            "spec": spec or {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]}]}}


class Northbound:
    def __init__(self) -> None:
        self.calls: list[tuple[desired.PolicyState, frozenset[str] | None]] = []

    def converge_policies(self, want: desired.PolicyState, *,
                          networks: frozenset[str] | None = None) -> policyrows.Outcome:
        self.calls.append((want, networks))
        return policyrows.Outcome(change=diff.PolicyDiff())

    def networks_of(self, index: int = -1) -> set[str]:
        want, _ = self.calls[index]
        return {g.external_ids[naming.NETWORK_KEY] for g in want.port_groups.values()}


class Events:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str]] = []

    async def post(self, involved: dict[str, Any], reason: str, message: str, *,
                   event_type: str = "Warning") -> None:
        self.posted.append((involved["metadata"]["name"], reason, event_type))


class Api:
    """Lists what it holds; `during` runs while a list is under way."""

    def __init__(self) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {
            apiclient.MULTI_NETWORK_POLICIES_PATH: [], apiclient.NAMESPACES_PATH: []}
        self.during: Callable[[], None] | None = None

    async def list(self, path: str) -> list[dict[str, Any]]:
        listed = list(self.objects[path])
        await asyncio.sleep(0)
        if self.during is not None:
            self.during()
        return listed


class Harness:
    def __init__(self) -> None:
        self.nb = Northbound()
        self.events = Events()
        self.api = Api()
        self.failed = 0
        self.pod_queries: list[frozenset[str]] = []
        ready = asyncio.Event()
        ready.set()

        async def run_nb(function: Callable[[], Any]) -> Any:
            return function()

        async def gate(work: Callable[[], Awaitable[None]]) -> None:
            await work()

        def pods(nad_keys: frozenset[str]) -> list[acls.Pod]:
            self.pod_queries.append(nad_keys)
            return PODS

        def failed() -> None:
            self.failed += 1

        self.work = policywork.PolicyWork(
            api=cast(apiclient.ApiClient, self.api), events=cast(events.Events, self.events),
            northbound=cast(client.Northbound, self.nb), nb=run_nb, gate=gate,
            networks=lambda: NETWORKS, pods=pods, ready=ready, failed=failed, debounce=0.01)


@pytest.fixture
async def harness() -> Harness:
    return Harness()


async def test_without_policies_pod_and_nad_events_cost_nothing(harness: Harness) -> None:
    for _ in range(10):
        harness.work.touch(nads=["ns/n1"], networks=["net2"])
    await harness.work.idle()
    assert harness.nb.calls == [] and harness.pod_queries == []


async def test_a_burst_of_events_is_one_transaction_of_the_networks_concerned(
        harness: Harness) -> None:
    work = harness.work
    work.policy_changed(_policy("p", "n1"))
    await work.idle()
    assert [networks for _, networks in harness.nb.calls] == [frozenset({"net1"})]
    assert harness.nb.networks_of() == {"net1"}
    flushes = work.flushes
    for _ in range(50):  # a burst of pod events on both networks: net2 has no policy
        work.touch(nads=["ns/n1", "ns/n2"])
        work.touch(networks=["net2"])
    await work.idle()
    assert work.flushes == flushes + 1
    assert [networks for _, networks in harness.nb.calls[1:]] == [frozenset({"net1"})]


async def test_a_policy_leaving_a_network_and_the_last_policy_deleted_leave_no_rows(
        harness: Harness) -> None:
    work = harness.work
    work.policy_changed(_policy("p", "n1"))
    await work.idle()
    work.policy_changed(_policy("p", "n2") | {"metadata": {
        **_policy("p", "n2")["metadata"], "resourceVersion": "2"}})
    await work.idle()
    want, scope = harness.nb.calls[-1]
    assert scope == {"net1", "net2"} and harness.nb.networks_of() == {"net2"}
    work.policy_deleted({"metadata": {"namespace": "ns", "name": "p", "uid": "u1"}})
    await work.idle()
    want, scope = harness.nb.calls[-1]
    assert scope == {"net2"} and want == desired.PolicyState()
    calls = len(harness.nb.calls)
    work.touch(nads=["ns/n1", "ns/n2"])  # no policy, no rows any more
    await work.idle()
    assert len(harness.nb.calls) == calls


async def test_namespace_labels_matter_only_to_namespace_selectors(harness: Harness) -> None:
    work = harness.work
    work.policy_changed(_policy("pods-only", "n2", {"podSelector": {}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}))
    work.policy_changed(_policy("spaces", "n1"))
    await work.idle()
    calls = len(harness.nb.calls)
    work.namespace_changed({"metadata": {"name": "ns", "uid": "n", "labels": {"team": "a"}}})
    await work.idle()
    assert [networks for _, networks in harness.nb.calls[calls:]] == [frozenset({"net1"})]
    want, _ = harness.nb.calls[-1]
    assert sorted(a for s in want.address_sets.values() for a in s.addresses) == [
        "10.0.0.1", "10.0.0.2", "10.0.0.3"], "every pod of the team=a namespace"
    work.namespace_changed({"metadata": {"name": "ns", "uid": "n", "resourceVersion": "2",
                                         "labels": {"team": "a"}}})
    await work.idle()
    assert len(harness.nb.calls) == calls + 1, "the same labels: nothing to do"


async def test_events_on_the_policy_each_once(harness: Harness) -> None:
    work = harness.work
    work.policy_changed({"metadata": {"namespace": "ns", "name": "unbound", "uid": "u2"},
                         "spec": {"podSelector": {}}})
    work.policy_changed(_policy("elsewhere", "macvlan", uid="u3"))
    await work.idle()
    assert harness.nb.calls == [], "nothing of ours to converge"
    assert sorted(harness.events.posted) == [("elsewhere", "NoNetworkOfOurs", "Normal"),
                                             ("unbound", "PolicyForMissing", "Warning")]
    await work.sync_all()  # tells them again (`events.Events` drops repeats: test_policies)
    assert harness.nb.calls[-1][1] is None, "the full sync converges every network"


async def test_events_seen_during_a_relist_win_over_it(harness: Harness) -> None:
    work = harness.work
    api = harness.api
    api.objects[apiclient.MULTI_NETWORK_POLICIES_PATH] = [_policy("old", "n1"),
                                                          _policy("kept", "n1", uid="u4")]
    api.objects[apiclient.NAMESPACES_PATH] = [{"metadata": {"name": "ns", "uid": "n",
                                                            "labels": {"team": "b"}}}]

    def meanwhile() -> None:  # newer than the listing
        work.policy_deleted({"metadata": {"namespace": "ns", "name": "old", "uid": "u1"}})
        work.namespace_changed({"metadata": {"name": "ns", "uid": "n", "resourceVersion": "9",
                                             "labels": {"team": "a"}}})

    work.policy_changed(_policy("old", "n1"))
    api.during = meanwhile
    await work.relist()
    assert set(work.policy_sink().held()) == {("ns", "kept")}
    assert work.namespace_sink().held() == {("", "ns"): ("n", "9")}
