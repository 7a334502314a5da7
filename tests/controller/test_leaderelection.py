"""Leader election: the rules (pure), then electors and controllers against a real API server."""

from __future__ import annotations

import asyncio
import datetime
import logging
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import kubernetes
import pytest

from ovnk_secondary.controller import apiclient, leaderelection
from ovnk_secondary.northbound import servers
from tests.controller.harness import Api, Controller, until
from tests.loops import LoopThread

NOW = datetime.datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=datetime.UTC)
LEASE = ("coordination.k8s.io", "v1", "leases")
# short enough for tests, in the same proportions as the defaults; the renew deadline leaves
# room for a leader's loop that starts and syncs NB while the whole suite loads the machine
FAST = {"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.2}


# -- the rules ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("holder", "unchanged_for", "expected"), [
    ("", 0.0, True),  # released (or never held)
    ("me", 0.0, True),  # our own: renew
    ("other", 14.9, False),  # held and fresh
    ("other", 15.0, True),  # held but not renewed for the lease's duration
])
def test_may_take(holder: str, unchanged_for: float, expected: bool) -> None:
    assert leaderelection.may_take(holder=holder, identity="me", unchanged_for=unchanged_for,
                                   duration=15.0) is expected


def test_claimed_spec_counts_transitions_and_keeps_acquire_time_on_renewal() -> None:
    new = leaderelection.claimed_spec({}, identity="a", duration=15, now=NOW)
    assert new == {"holderIdentity": "a", "leaseDurationSeconds": 15,
                   "acquireTime": "2026-11-28T12:00:00.123456Z",
                   "renewTime": "2026-11-28T12:00:00.123456Z", "leaseTransitions": 0}
    later = NOW + datetime.timedelta(seconds=2)
    renewed = leaderelection.claimed_spec(new, identity="a", duration=15, now=later)
    assert renewed["acquireTime"] == new["acquireTime"]
    assert renewed["renewTime"] == "2026-11-28T12:00:02.123456Z"
    assert renewed["leaseTransitions"] == 0
    taken = leaderelection.claimed_spec(renewed, identity="b", duration=15, now=later)
    assert (taken["holderIdentity"], taken["acquireTime"], taken["leaseTransitions"]) == (
        "b", "2026-11-28T12:00:02.123456Z", 1)
    released = leaderelection.released_spec(taken, now=later)
    assert (released["holderIdentity"], released["leaseDurationSeconds"]) == ("", 1)


def test_config_refuses_timings_that_cannot_work() -> None:
    with pytest.raises(ValueError, match="renew deadline"):
        leaderelection.Config(identity="a", lease_duration=10, renew_deadline=10)


# -- electors against the API server --------------------------------------------------------------

def _elector(api: Api, identity: str) -> leaderelection.LeaderElector:
    client = apiclient.ApiClient(apiclient.load_credentials(str(api.kubeconfig)))
    return leaderelection.LeaderElector(
        client, leaderelection.Config(namespace="ovnk-secondary", identity=identity, **FAST))


def _lease(api: Api) -> dict[str, object]:
    lease = api.stored(LEASE, "ovnk-secondary", leaderelection.DEFAULT_NAME)
    assert lease is not None
    spec: dict[str, object] = lease["spec"]
    return spec


def test_one_leader_at_a_time_and_a_release_hands_over_at_once(
        api: Api, loop: LoopThread) -> None:
    a, b = _elector(api, "a"), _elector(api, "b")
    # both race for a Lease that does not exist yet: exactly one wins
    async def race() -> list[bool]:
        return list(await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew()))

    won = loop.run(race())
    assert sorted(won) == [False, True]
    leader, standby = (a, b) if won[0] else (b, a)
    assert _lease(api)["holderIdentity"] == leader.config.identity
    for _ in range(3):  # renewals keep it; the standby keeps standing by
        assert loop.run(leader.try_acquire_or_renew())
        assert not loop.run(standby.try_acquire_or_renew())
    loop.run(leader.release())
    assert _lease(api)["holderIdentity"] == ""
    assert loop.run(standby.try_acquire_or_renew())  # no wait for expiry
    spec = _lease(api)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == (standby.config.identity, 1)
    loop.run(a.api.close())
    loop.run(b.api.close())


def test_an_unrenewed_lease_is_taken_over_and_its_old_holder_knows_it_lost(
        api: Api, loop: LoopThread) -> None:
    a, b = _elector(api, "a"), _elector(api, "b")
    assert loop.run(a.try_acquire_or_renew())
    # a stops renewing (a frozen or cut-off replica); b waits for the lease duration
    stop = asyncio.Event()
    began = loop.run(_now())
    assert loop.run(b.acquire(stop))
    waited = loop.run(_now()) - began
    assert waited >= FAST["lease_duration"] - FAST["retry_period"]
    assert _lease(api)["holderIdentity"] == "b"
    # a, back, must not go on working: its next renewal sees b
    assert loop.run(a.hold(asyncio.Event()), timeout=10) is False
    assert not a.leading
    loop.run(a.api.close())
    loop.run(b.api.close())


async def _now() -> float:
    return asyncio.get_running_loop().time()


def test_a_renewal_that_loses_a_resource_version_race_is_retried(
        api: Api, loop: LoopThread) -> None:
    """Another writer updates the Lease between the leader's read and its write: the API
    server refuses the stale write (409 Conflict); the leader still leads, reads again and
    renews, keeping what the other writer wrote."""
    leader = _elector(api, "a")
    assert loop.run(leader.try_acquire_or_renew())
    real_replace = leader.api.replace
    statuses: list[int] = []

    def annotate() -> None:  # as `kubectl annotate lease ...` would, in between
        kubernetes.client.CoordinationV1Api(api.client).patch_namespaced_lease(
            leaderelection.DEFAULT_NAME, "ovnk-secondary",
            {"metadata": {"annotations": {"example.com/audited": "yes"}}})

    async def racing_replace(path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if not statuses:
            await asyncio.to_thread(annotate)
        try:
            return await real_replace(path, body)
        except apiclient.ApiError as exc:
            statuses.append(exc.status)
            raise

    leader.api.replace = racing_replace  # type: ignore[method-assign]
    try:
        assert not loop.run(leader.try_acquire_or_renew())
        assert statuses == [409], statuses
        assert leader.leading, "a lost race is not a lost Lease"
        assert loop.run(leader.try_acquire_or_renew())
        lease = api.stored(LEASE, "ovnk-secondary", leaderelection.DEFAULT_NAME)
        assert lease is not None and lease["spec"]["holderIdentity"] == "a"
        assert lease["metadata"]["annotations"]["example.com/audited"] == "yes"
    finally:
        loop.run(leader.api.close())


# -- controllers ---------------------------------------------------------------------------------

def test_a_standby_controller_takes_over_when_the_leader_stops(
        api: Api, nb_server: servers.NbServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ovnk_secondary")  # on failure: who led, what ended
    def controller(identity: str) -> Controller:
        return Controller(nb_remote=nb_server.remote, kubeconfig=api.kubeconfig,
                          election=leaderelection.Config(namespace="ovnk-secondary",
                                                         identity=identity, **FAST))

    def switches() -> set[str]:
        return set(nb_server.nbctl("--bare", "--columns=name", "list",
                                   "Logical_Switch").split())

    first, second = controller("first"), controller("second")
    first.start()
    until(lambda: api.stored(LEASE, "ovnk-secondary", leaderelection.DEFAULT_NAME),
          "the first controller did not take the Lease")
    second.start()
    try:
        api.create_nad("test", "nad-a", name="net-a", topology="layer2")
        until(lambda: "net.a_ovn_layer2_switch" in switches(), "the leader did not work")
        assert _lease(api)["holderIdentity"] == "first"
        stopped = first.stop()
        assert stopped is not None and stopped.sync_count >= 1
        until(lambda: _lease(api)["holderIdentity"] == "second",
              "the standby did not take over", timeout=10)
        api.create_nad("test", "nad-b", name="net-b", topology="layer2")
        until(lambda: "net.b_ovn_layer2_switch" in switches(), "the new leader did not work")
    finally:
        first.stop()
        policy = second.stop()
    assert policy is not None and policy.sync_count >= 1


def test_sigterm_stops_the_controller_process_and_releases_its_lease(
        api: Api, nb_server: servers.NbServer) -> None:
    """As a Deployment stops a pod: SIGTERM ends the process, which releases its Lease."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ovnk_secondary", "controller", "--ovn-nb", nb_server.remote,
         "--kubeconfig", str(api.kubeconfig), "--health-port", "0", "--leader-elect",
         "--leader-elect-namespace", "ovnk-secondary"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        until(lambda: api.stored(LEASE, "ovnk-secondary", leaderelection.DEFAULT_NAME),
              "the controller did not take the Lease")
        holder = _lease(api)["holderIdentity"]
        assert holder
        api.create_nad("test", "nad-a", name="net-a", topology="layer2")
        until(lambda: "net.a_ovn_layer2_switch" in nb_server.nbctl(
            "--bare", "--columns=name", "list", "Logical_Switch"), "the controller did not work")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert _lease(api)["holderIdentity"] == "", output
    assert "released Lease" in output


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def test_a_standby_is_ready_and_says_it_stands_by(
        api: Api, nb_server: servers.NbServer) -> None:
    """Leadership is not readiness: a rolling update (maxUnavailable 0) waits for the new pod to
    be ready, and the new pod stands by until the old one releases the Lease."""
    ports = [_free_port(), _free_port()]
    first, second = (Controller(nb_remote=nb_server.remote, kubeconfig=api.kubeconfig,
                                health_port=port, election=leaderelection.Config(
                                    namespace="ovnk-secondary", identity=identity, **FAST))
                     for identity, port in zip(("first", "second"), ports, strict=True))
    first.start()
    try:
        until(lambda: _readyz(ports[0]) == (200, "ready\n"), "the leader never became ready")
        second.start()
        expected = (200, "ready: standby for Lease ovnk-secondary/ovnk-secondary-controller, "
                         "held by first\n")
        until(lambda: _readyz(ports[1]) == expected,
              f"the standby's /readyz is not {expected}: {_readyz(ports[1])}")
    finally:
        second.stop()
        first.stop()
