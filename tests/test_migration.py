"""`migration.decide`: which of a VM's live pods gets the traffic (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ovnk_secondary import migration


def _pod(name: str, created: str, ready: bool = False, live: bool = True) -> migration.VmPod:
    return migration.VmPod(key=("vms", name), created=created, target_ready=ready, live=live)


def test_one_pod_is_active() -> None:
    decision = migration.decide("vm", [_pod("a", "2026-01-01T00:00:00Z")])
    assert decision.modes == {("vms", "a"): migration.ACTIVE}
    assert decision.source is None and not decision.refused


def test_the_newer_pod_waits_disabled_until_its_domain_is_ready() -> None:
    src, dst = _pod("b-src", "2026-01-01T00:00:00Z"), _pod("a-dst", "2026-01-01T00:00:05Z")
    waiting = migration.decide("vm", [dst, src])  # any order in: by creation time
    assert waiting.modes == {src.key: migration.ACTIVE, dst.key: migration.WAITING}
    assert (waiting.source, waiting.target, waiting.switched) == (src.key, dst.key, False)
    ready = migration.decide("vm", [src, _pod("a-dst", "2026-01-01T00:00:05Z", ready=True)])
    assert ready.modes == {src.key: migration.VACATED, dst.key: migration.ACTIVE}
    assert ready.switched


def test_a_tie_on_creation_time_is_broken_by_name() -> None:
    one, two = _pod("one", "2026-01-01T00:00:00Z"), _pod("two", "2026-01-01T00:00:00Z")
    assert migration.decide("vm", [two, one]).source == one.key


def test_a_third_pod_is_refused_naming_the_two_migrating() -> None:
    pods = [_pod(f"p{i}", f"2026-01-01T00:00:0{i}Z") for i in range(3)]
    decision = migration.decide("vm-x", pods)
    assert set(decision.modes) == {pods[0].key, pods[1].key}
    assert "VM vm-x already has two live pods, p0 (migration source) and p1 (target)" in \
        decision.refused[pods[2].key]


_pods = st.lists(st.builds(
    _pod, st.text("abc", min_size=1, max_size=3),
    st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z"]),
    st.booleans(), st.booleans()), unique_by=lambda p: p.key, max_size=5)


@given(_pods)
def test_exactly_one_pod_gets_traffic_and_every_pod_is_decided_once(
        pods: list[migration.VmPod]) -> None:
    decision = migration.decide("vm", pods)
    live = [p for p in pods if p.live]
    assert set(decision.modes) | set(decision.refused) == {p.key for p in live}
    assert not set(decision.modes) & set(decision.refused)
    assert len(decision.modes) == min(len(live), 2)
    enabled = [k for k, m in decision.modes.items() if m.enabled]
    assert len(enabled) == (1 if live else 0)
    # a pod without addresses is never the one enabled (the vacated source)
    assert all(m.addresses for m in decision.modes.values() if m.enabled)


def test_the_vms_port_is_requested_on_the_source_and_the_target_until_the_source_has_left(
) -> None:
    src, dst = _pod("src", "2026-01-01T00:00:00Z"), _pod("dst", "2026-01-01T00:00:05Z")
    nodes = {src.key: "node-1", dst.key: "node-2"}
    alone = migration.decide("vm", [src])
    assert migration.requested_chassis(alone, nodes) == ("node-1",)
    migrating = migration.decide("vm", [src, dst])
    assert migration.requested_chassis(migrating, nodes) == ("node-1", "node-2")
    ready = _pod("dst", "2026-01-01T00:00:05Z", ready=True)
    switched = migration.decide("vm", [src, ready])
    assert switched.switched
    assert migration.requested_chassis(switched, nodes) == ("node-1", "node-2")
    # the source finished or being deleted, its sandbox still up: it has not left yet
    departing = migration.decide("vm", [_pod("src", "2026-01-01T00:00:00Z", live=False), ready])
    assert departing.departing == src.key and departing.modes == {dst.key: migration.ACTIVE}
    assert migration.requested_chassis(departing, nodes) == ("node-1", "node-2")
    # its sandbox down (the reconciler no longer passes it): the target's alone
    assert migration.requested_chassis(migration.decide("vm", [ready]), nodes) == ("node-2",)
    assert migration.requested_chassis(migration.decide("vm", []), {}) == ()


def test_an_aborted_or_restarted_vms_old_pod_does_not_hold_the_port() -> None:
    """Only a migration's target (TARGET_READY) waits for an older departing pod: a target
    deleted before its domain ran, or a VM's new pod after a restart, does not."""
    src, dst = _pod("src", "2026-01-01T00:00:00Z"), _pod("dst", "2026-01-01T00:00:05Z")
    aborted = migration.decide("vm", [src, _pod("dst", "2026-01-01T00:00:05Z", live=False)])
    assert aborted.departing is None  # the departing pod is newer than the live one
    old = _pod("src", "2026-01-01T00:00:00Z", ready=True, live=False)
    restarted = migration.decide("vm", [old, dst])
    assert restarted.departing is None  # the live pod did not come by migration
    assert migration.requested_chassis(restarted, {dst.key: "node-2"}) == ("node-2",)


@given(_pods, st.lists(st.sampled_from(["n1", "n2", "n3"]), min_size=5, max_size=5))
def test_the_port_is_on_the_node_with_the_traffic_and_the_main_chassis_is_the_source(
        pods: list[migration.VmPod], nodes: list[str]) -> None:
    decision = migration.decide("vm", pods)
    node_of = {p.key: nodes[i] for i, p in enumerate(pods)}
    chassis = migration.requested_chassis(decision, node_of)
    enabled = [k for k, m in decision.modes.items() if m.enabled]
    assert {node_of[k] for k in enabled} <= set(chassis)
    assert len(set(chassis)) == len(chassis) <= 2
    holders = [*decision.modes, *([decision.departing] if decision.departing else [])]
    assert set(chassis) <= {node_of[k] for k in holders}
    if chassis:  # the main chassis: the migration's source, departing or not, or the one pod
        assert chassis[0] == node_of[decision.source or decision.departing or holders[0]]
