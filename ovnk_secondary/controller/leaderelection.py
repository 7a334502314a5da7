"""Leader election on a `coordination.k8s.io/v1` Lease, the way client-go's leaderelection works.

Several controller replicas may run (a rolling update, a node cut off from the cluster while its
pod still runs); only the holder of the Lease reconciles. Each replica names itself
(`holderIdentity`: host name and a random suffix) and:

- **acquires**: takes the Lease when it is free (no holder: released), already its own, or
  expired; it writes with the Lease's `resourceVersion`, so of two replicas racing for it only
  one succeeds (the other gets 409 Conflict and waits);
- **renews** it every `retry_period`; when no renewal succeeded for `renew_deadline` (shorter
  than `lease_duration`), it has lost the Lease and must stop working at once: the controller
  then exits and its Deployment restarts it as a candidate;
- **releases** it on a clean shutdown (empty holder), so that a successor takes over at once
  instead of waiting for the Lease to expire.

Expiry is judged by the local clock from when this replica last saw the record change, never by
comparing the holder's `renewTime` with the local clock: clocks of two nodes may disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from ovnk_secondary.controller import apiclient

logger = logging.getLogger(__name__)

LEASES = "/apis/coordination.k8s.io/v1"
DEFAULT_NAME = "ovnk-secondary-controller"
DEFAULT_NAMESPACE = "ovnk-secondary"
# Where a pod finds its own namespace.
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    namespace: str = DEFAULT_NAMESPACE
    name: str = DEFAULT_NAME
    identity: str = dataclasses.field(
        default_factory=lambda: f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}")
    # client-go's defaults
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                f"leader election needs 0 < retry period ({self.retry_period:g} s) < renew "
                f"deadline ({self.renew_deadline:g} s) < lease duration "
                f"({self.lease_duration:g} s)")


def default_namespace() -> str:
    """The pod's own namespace when running in a cluster, else the manifests' namespace."""
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as file:
            return file.read().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


# -- the pure part -----------------------------------------------------------------------------

def may_take(*, holder: str, identity: str, unchanged_for: float, duration: float) -> bool:
    """Whether `identity` may write itself into a Lease held by `holder`.

    `unchanged_for`: seconds since this replica saw the record change; `duration`: the Lease's
    own `leaseDurationSeconds`.
    """
    return not holder or holder == identity or unchanged_for >= duration


def micro_time(now: datetime.datetime) -> str:
    """A Kubernetes MicroTime."""
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claimed_spec(spec: Mapping[str, Any], *, identity: str, duration: float,
                 now: datetime.datetime) -> dict[str, Any]:
    """The Lease's spec once `identity` has taken or renewed it."""
    holder = spec.get("holderIdentity") or ""
    renewing = holder == identity
    transitions = int(spec.get("leaseTransitions") or 0)
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(duration)),
        "acquireTime": spec.get("acquireTime") if renewing and spec.get("acquireTime")
        else micro_time(now),
        "renewTime": micro_time(now),
        # as client-go: every change of holder counts (a new Lease starts at 0)
        "leaseTransitions": transitions if renewing or not spec else transitions + 1,
    }


def released_spec(spec: Mapping[str, Any], *, now: datetime.datetime) -> dict[str, Any]:
    """The spec of a Lease given up by its holder (as client-go's ReleaseOnCancel)."""
    return {**spec, "holderIdentity": "", "leaseDurationSeconds": 1,
            "renewTime": micro_time(now)}


# -- the adapter ----------------------------------------------------------------------------------

class LeaderElector:
    def __init__(self, api: apiclient.ApiClient, config: Config, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.config = config
        self._clock = clock
        self._seen: tuple[str, str] | None = None  # (resourceVersion, holder) last observed
        self._seen_at = 0.0
        self._last_renewal = 0.0
        self.leading = False

    # (paths written out in full: tests/manifests checks every API call against the RBAC)
    async def _get(self) -> dict[str, Any]:
        namespace, name = self.config.namespace, self.config.name
        return await self.api.get(f"{LEASES}/namespaces/{namespace}/leases/{name}")

    async def _replace(self, lease: Mapping[str, Any]) -> None:
        namespace, name = self.config.namespace, self.config.name
        await self.api.replace(f"{LEASES}/namespaces/{namespace}/leases/{name}", lease)

    def _observe(self, lease: Mapping[str, Any]) -> None:
        spec = lease.get("spec") or {}
        record = (str(lease.get("metadata", {}).get("resourceVersion")),
                  str(spec.get("holderIdentity") or ""))
        if record != self._seen:
            self._seen, self._seen_at = record, self._clock()

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this replica holds the Lease afterwards."""
        now = datetime.datetime.now(datetime.UTC)
        identity = self.config.identity
        try:
            try:
                lease = await self._get()
            except apiclient.ApiError as exc:
                if exc.status != 404:
                    raise
                await self.api.create(f"{LEASES}/namespaces/{self.config.namespace}/leases", {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.config.name, "namespace": self.config.namespace},
                    "spec": claimed_spec({}, identity=identity,
                                         duration=self.config.lease_duration, now=now)})
                return self._won()
            self._observe(lease)
            spec = lease.get("spec") or {}
            holder = str(spec.get("holderIdentity") or "")
            duration = float(spec.get("leaseDurationSeconds") or self.config.lease_duration)
            if not may_take(holder=holder, identity=identity,
                            unchanged_for=self._clock() - self._seen_at, duration=duration):
                self.leading = False
                return False
            await self._replace({
                **lease, "spec": claimed_spec(spec, identity=identity,
                                              duration=self.config.lease_duration, now=now)})
            if holder != identity:
                logger.info("leader election: took Lease %s/%s%s", self.config.namespace,
                            self.config.name, f" from {holder}" if holder else "")
            return self._won()
        except apiclient.ApiError as exc:
            if exc.status != 409:  # 409: another replica wrote first
                logger.warning("leader election: %s", exc)
            return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("leader election: Kubernetes API unreachable: %s", exc)
            return False

    def holder(self) -> str:
        """The holder of the Lease as last observed ("" when none or not yet read)."""
        return self._seen[1] if self._seen else ""

    def _won(self) -> bool:
        self.leading = True
        self._last_renewal = self._clock()
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this replica holds the Lease (True) or `stop` is set (False)."""
        logger.info("leader election: %s is a candidate for Lease %s/%s",
                    self.config.identity, self.config.namespace, self.config.name)
        waiting_for = None
        while not stop.is_set():
            if await self.try_acquire_or_renew():
                logger.info("leader election: %s leads", self.config.identity)
                return True
            holder = self._seen[1] if self._seen else None
            if holder and holder != waiting_for:
                logger.info("leader election: Lease held by %s; standing by", holder)
                waiting_for = holder
            await _sleep_unless(stop, self.config.retry_period)
        return False

    async def hold(self, stop: asyncio.Event) -> bool:
        """Renew until `stop` is set (True) or the Lease is lost (False: stop working now)."""
        while not stop.is_set():
            await _sleep_unless(stop, self.config.retry_period)
            if stop.is_set():
                break
            # an attempt may not outlast the deadline (an API that hangs must not keep a
            # replica working that can no longer prove it leads)
            left = self.config.renew_deadline - (self._clock() - self._last_renewal)
            try:
                if left > 0 and await asyncio.wait_for(self.try_acquire_or_renew(), left):
                    continue
            except TimeoutError:
                logger.warning("leader election: no answer from the Kubernetes API within "
                               "%.1f s", left)
            if not self.leading or \
                    self._clock() - self._last_renewal >= self.config.renew_deadline:
                self.leading = False
                holder = self._seen[1] if self._seen else ""
                why = (f"could not renew it for {self.config.renew_deadline:g} s"
                       if holder in ("", self.config.identity) else f"{holder} holds it now")
                logger.error("leader election: lost Lease %s/%s: %s; stopping",
                             self.config.namespace, self.config.name, why)
                return False
        return True

    async def release(self) -> None:
        """Give the Lease up if this replica holds it, so that a successor need not wait."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = await self._get()
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.config.identity:
                return
            await self._replace({
                **lease, "spec": released_spec(spec, now=datetime.datetime.now(datetime.UTC))})
            logger.info("leader election: released Lease %s/%s", self.config.namespace,
                        self.config.name)
        except (apiclient.ApiError, aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("leader election: could not release the Lease (%s); a successor "
                           "takes it when it expires", exc)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
