"""The controller's policy: NADs and pods in, IP allocations, pod annotations and NB rows out.

It keeps a model of the NADs and pods it has seen, one IPAM pool per network, and turns
them into northbound rows (`northbound.desired`), applying only differences
(`northbound.diff`) through the ovsdbapp adapter. Everything here runs on the asyncio loop,
so the model and the pools need no locks; blocking NB calls go to one worker thread.

- Hot path (a pod event): the event only records the pod (only the fields used here)
  and queues its key (`workqueues`); a few hundred workers take the keys in turn and, from
  the pod's latest recorded state: allocate, write `k8s.ovn.org/pod-networks`, then the
  pod's ports in NB, all-or-nothing. A pod waiting for its turn thus costs a key and its
  small record, however many events it had: no event handler stays suspended per pod
  (thousands of them held most of the memory during bursts of creations). The annotation
  goes first: after a crash, IPAM is rebuilt from annotations, so an address is never
  handed out twice. NB writes go through a `Batcher`:
  alone when idle, several pods to a transaction under load (a failing pod is retried
  alone, so it never fails its batch-mates). The reads happen inside that transaction, in
  the NB thread: one hop to the NB thread per batch, none per pod.
- What was last written per pod in this NB session is remembered, so an event that changes
  nothing of a pod's ports costs no NB work; most such events are the echo of our own
  annotation patch. Drift made behind our back is the full sync's job.
- Full sync (start-up once NB holds its initial copy, after every NB reconnection, every
  `resync_period`): list NADs and pods from the API (pods page by page, each trimmed as it
  arrives; pod events that arrive meanwhile win over the listing), rebuild the pools from
  annotations, allocate what is missing, compute everything desired, diff against our rows
  in NB, apply.
  Pod work waits while a full sync runs, and a full sync waits for pods in flight (the log
  gives the sync's own duration and that wait apart).
- Persistent IPs (`persistentips`): IPAMClaims are listed with NADs and pods by every full
  sync, and their addresses reserved before any pod is allocated; a watch keeps them current.
  A pod's addresses from a claim are held by the claim, not the pod, and written to the
  claim's status before the pod's annotation: after a crash between the two writes the claim
  holds them and the pod gets them from it. Claims are deleted by others (the VM's owner);
  their addresses return to the pool then, once no live pod uses them.
- MultiNetworkPolicies live in `policywork`: hooks here tell it what changed (a pod's labels
  or recorded addresses, its ports written or released, a NAD's network), and it pulls the
  networks and pods it needs from this model; every full sync lists policies and namespaces
  with the rest and converges every network's policy rows once its ports are applied.
- Problems a user can fix are Warning Events on the NAD or pod, each posted once (`events`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import gc
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import aiohttp

from ovnk_secondary import (
    errors,
    ipam,
    migration,
    nads,
    naming,
    persistentips,
    podnetworks,
    selections,
)
from ovnk_secondary.controller import (
    apiclient,
    batches,
    events,
    informers,
    metrics,
    model,
    policywork,
    workqueues,
)
from ovnk_secondary.controller.model import Key, Nad, Pod
from ovnk_secondary.northbound import acls, client, desired, diff

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Event reasons
INVALID_CONFIG = "InvalidConfig"
NETWORK_CONFLICT = "NetworkConflict"
CHANGE_REFUSED = "ChangeRefused"
NETWORK_NOT_FOUND = "NetworkNotFound"
IPAM_FAILED = "IPAMFailed"
ADDRESS_IN_USE = "AddressInUse"
NB_CONFLICT = "NorthboundConflict"
FIELD_IGNORED = "FieldIgnored"  # accepted, not acted on (yet): said rather than silently ignored
# At most this many pods per NB transaction of the hot path.
NB_BATCH = 200
# At most this many annotation patches at once during a full sync.
ANNOTATE_CONCURRENCY = 16
# Pods worked on at once: enough to fill NB batches while others wait for their annotation
# patch (the API client keeps at most 32 connections), few enough to cost little memory.
POD_WORKERS = 2 * NB_BATCH
# NAD events are worked on concurrently across NADs, in order for each one: a burst of 1,000
# NADs handled one at a time waited for 1,000 NB commits and annotation patches in a row. A
# NAD's turn lasts its switch's commit and its ACCEPTED_CONFIG patch (hundreds of ms while the
# API server is busy accepting the burst): with 64 workers, a burst of 1,000 NADs queued up to
# 600 of them and the last switch came 0.8-1.2 s after the API's last accept (network_bench);
# an idle worker costs a task waiting on the queue
NAD_WORKERS = 512
# NB row changes (`_drift`) handled per turn of the event loop: a burst of deletions (10,000
# ports going with their switches) is handled in slices, other work running in between
DRIFT_SLICE = 1000
# Pods per page of the full sync's listing: a page of full pod bodies is what it holds at once.
LIST_PAGE = 500


class Reconciler:
    def __init__(
        self,
        *,
        northbound: client.Northbound,
        api: apiclient.ApiClient,
        resync_period: float = 300.0,
        retry_period: float = 2.0,
        migration_strategy: str = migration.DEFAULT_STRATEGY,
    ) -> None:
        if migration_strategy not in migration.STRATEGIES:
            raise ValueError(f"migration strategy {migration_strategy!r}: one of "
                             f"{', '.join(migration.STRATEGIES)}")
        self.migration_strategy = migration_strategy
        self.northbound = northbound
        self.api = api
        self.resync_period = resync_period
        self.retry_period = retry_period
        self._nb_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ovn-nb")
        self._nads: dict[Key, Nad] = {}
        # the NADs refused for a NETWORK_CONFLICT, in the order refused (values unused): decided
        # again when a network goes, without a pass over every NAD per deletion
        self._conflicted: dict[Key, None] = {}
        self._networks: dict[str, nads.NetworkConfig] = {}  # network name -> effective config
        self._network_nads: dict[str, list[str]] = collections.defaultdict(list)  # accepted
        self._pods: dict[Key, Pod] = {}
        # per pod key, deleted incarnations whose addresses and ports are still to release
        self._gone: dict[Key, list[Pod]] = {}
        self._pod_queue: workqueues.WorkQueue[Key] = workqueues.WorkQueue(
            process=self._work_on_pod, workers=POD_WORKERS)
        # NAD events from the informer, per NAD key in arrival order: (deleted, body)
        self._nad_events: dict[Key, list[tuple[bool, dict[str, Any]]]] = {}
        self._nad_queue: workqueues.WorkQueue[Key] = workqueues.WorkQueue(
            process=self._work_on_nad, workers=NAD_WORKERS)
        # while a full sync lists pods: the keys of pod events seen meanwhile (they win)
        self._touched: set[Key] | None = None
        self._nb_writes: batches.Batcher[client.Part, client.Outcome] = batches.Batcher(
            flush=self._flush_nb_writes, limit=NB_BATCH)
        # switch names whose network rows (switch, localnet port) are to converge
        self._switch_writes: batches.Batcher[str, client.Outcome] = batches.Batcher(
            flush=self._flush_switch_writes, limit=NB_BATCH)
        # NAD key -> the pods whose selection names it
        self._selecting: dict[str, set[Key]] = collections.defaultdict(set)
        # per pod, a fingerprint of the ports NB holds since we wrote them, valid for one NB
        # session
        self._written: dict[Key, bytes] = {}
        self._written_session = -1
        # per pod, its pod-networks annotation text and what it decodes to (decoding
        # validates every address: a full sync of 10,000 pods paid ~0.7 s for it)
        self._decoded: dict[Key, tuple[str | None, dict[str, podnetworks.PodNetwork]]] = {}
        self._pools: dict[str, ipam.Pool] = {}  # network name -> its IPs (networks with subnets)
        # network name -> MACs (and static IPs, without subnets) in use on it
        self._holders: dict[str, ipam.Holders] = {}
        # logical switch name -> the network using it: names are lossy (OVN-K maps '-' and '/'
        # to '.'), so two networks may derive one name; the first keeps it, others are refused
        self._switch_owner: dict[str, str] = {}
        # network name -> pods waiting for an address or a MAC there (IPAMFailed, AddressInUse)
        self._waiting: dict[str, set[Key]] = collections.defaultdict(set)
        # IPAMClaims and the live pods using them; per pod naming claims, NAD key -> claim name;
        # per claim (namespace, name), the pods naming it (queued when it changes or is freed)
        self._claims = persistentips.Book()
        self._claim_refs: dict[Key, dict[str, str]] = {}
        self._claim_selecting: dict[Key, set[Key]] = collections.defaultdict(set)
        # claim status writes in flight: a second pod of the VM waits for the first one's
        self._claim_writes: dict[persistentips.ClaimOwner, asyncio.Future[None]] = {}
        # (namespace, VM name) -> its pods (label vm.kubevirt.io/name): live migrations
        self._vms: dict[Key, set[Key]] = collections.defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._repair_networks: asyncio.Task[None] | None = None
        self._closing = False  # set by aclose: no new repair then
        self._drifted: set[str] = set()  # switch names whose network rows changed behind us
        # owned rows changed in NB, from the NB connection thread to the loop (`_drift`)
        self._row_changes: collections.deque[client.RowChange] = collections.deque()
        self._row_changes_scheduled = False
        self._tasks: set[asyncio.Future[None]] = set()
        northbound.on_change = self._nb_row_changed
        self.events = events.Events(api)
        self._in_flight = 0
        self._idle = asyncio.Condition()
        self._syncing = False
        self._needs_sync = True
        self._last_sync = 0.0
        self.synced = asyncio.Event()  # the first full sync is done: ready
        self.sync_count = 0
        self._snapshot: metrics.Snapshot | None = None  # the model as last reported
        # MultiNetworkPolicies: their own module; it pulls networks and pods from the model
        self.policies = policywork.PolicyWork(
            api=api, events=self.events, northbound=northbound, nb=self._nb, gate=self._pod_work,
            networks=self._policy_networks, pods=self._policy_pods, ready=self.synced,
            failed=self._sync_later)

    # -- helpers ------------------------------------------------------------------------

    async def _nb(self, function: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._nb_thread, function)

    async def _flush_nb_writes(self, parts: list[client.Part]) -> list[client.Outcome]:
        return await self._nb(functools.partial(self.northbound.converge, parts))

    def _written_now(self) -> dict[Key, bytes]:
        """The memo of written ports, emptied whenever the NB connection changed."""
        session = self.northbound.session()
        if session != self._written_session:
            self._written.clear()
            self._written_session = session
        return self._written

    async def _warn(self, subject: Mapping[str, Any] | Pod, reason: str, message: str) -> None:
        """A Warning Event on a NAD, pod or IPAMClaim (each distinct message once)."""
        await self.events.post(subject.involved() if isinstance(subject, Pod) else subject,
                               reason, message)

    async def _pod_work(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run pod work unless a full sync runs (then wait for it)."""
        async with self._idle:
            await self._idle.wait_for(lambda: not self._syncing)
            self._in_flight += 1
        try:
            await work()
        finally:
            async with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _sync_later(self) -> None:
        self._needs_sync = True

    # -- MultiNetworkPolicies: the model's facts `policywork` pulls ------------------------

    def _policy_networks(self) -> list[acls.Network]:
        """The networks in force, with their accepted NADs and IP families."""
        return [acls.Network(name=name, nad_keys=frozenset(self._network_nads.get(name, ())),
                             families=frozenset(s.version for s in config.subnets))
                for name, config in self._networks.items()]

    def _policy_pods(self, nad_keys: frozenset[str]) -> list[acls.Pod]:
        """The live pods with addresses recorded on any of `nad_keys`, as policies see them."""
        found = []
        for pod in self._pods.values():
            if pod.pod_networks and not pod.finished:
                recorded = {k: e for k, e in self._recorded(pod)[1].items() if k in nad_keys}
                if recorded:
                    found.append(policywork.pod(pod.namespace, pod.name, pod.labels, recorded))
        return found

    # -- NADs -----------------------------------------------------------------------------

    async def _warn_ignored(self, body: dict[str, Any], nad: Nad, before: Nad | None) -> None:
        """A Warning Event naming what the NAD's config says that is not acted on, when that
        is new (not again on every full sync or echo of our own annotation)."""
        ignored = nad.config.ignored if nad.config is not None else ()
        was = before.config.ignored if before is not None and before.config is not None else ()
        if ignored and ignored != was:
            await self._warn(body, FIELD_IGNORED,
                             f"NAD {'/'.join(model.key_of(body))}: {'; '.join(ignored)}")

    def _decide_nad(self, body: dict[str, Any]) -> tuple[Nad, str | None]:
        """Record a NAD; returns it and the message of a refused change (else None)."""
        key = model.key_of(body)
        try:
            config = nads.parse_nad(body)
        except errors.InvalidConfig as exc:
            return self._store_nad(key, Nad(body=body, config=None, problem=str(exc),
                                             reason=INVALID_CONFIG)), None
        if config is None:
            return self._store_nad(key, Nad(body=body, config=None)), None
        text = model.spec_config(body)
        refused = None
        accepted, accepted_text = self._accepted_before(key, body)
        if accepted is not None and model.identity_changed(accepted, config):
            attached = self._attached_count(accepted.nad_key)
            if attached:
                refused = (f"NAD {config.nad_key}: changing the network name, topology, "
                           f"subnets or excludeSubnets is refused while {attached} pod(s) "
                           f"are attached; the accepted config stays in force (annotation "
                           f"{model.ACCEPTED_CONFIG}); delete the pods first or create a new NAD")
                # the identity stays; what may change in place (mtu, vlanID) follows the NAD
                config = dataclasses.replace(
                    config, **{f: getattr(accepted, f) for f in model.IDENTITY_FIELDS})
                text = accepted_text
        network = self._networks.get(config.name)
        others = [n for n in self._network_nads.get(config.name, []) if n != config.nad_key]
        if network is not None and others:
            differing = nads.disagreements(network, config)
            if differing:
                fields = ", ".join(
                    f"{f} {nads.describe(config, f)} vs {nads.describe(network, f)}"
                    for f in differing)
                message = (f"NAD {config.nad_key} disagrees with NAD(s) {', '.join(others)} "
                           f"of network {config.name} on {fields}; make them equal")
                return self._store_nad(key, Nad(body=body, config=config, problem=message,
                                                 reason=NETWORK_CONFLICT)), refused
        switch = desired.switch_name(config)
        holder = self._switch_owner.get(switch)
        if holder is not None and holder != config.name:
            message = (f"network {config.name!r} of NAD {config.nad_key} would use logical "
                       f"switch {switch}, which network {holder!r} (NAD(s) "
                       f"{', '.join(self._network_nads.get(holder, [])) or 'none'}) already "
                       "uses: OVN-Kubernetes' names map '-' and '/' to '.', so OVN cannot "
                       "tell the two networks apart; rename one of them")
            return self._store_nad(key, Nad(body=body, config=config, problem=message,
                                             reason=NETWORK_CONFLICT)), refused
        nad = self._store_nad(key, Nad(
            body=body, config=config, reason=CHANGE_REFUSED if refused else None,
            accepted_text=text, pending=text != model.accepted_text(body)))
        self._network_nads[config.name].append(config.nad_key)
        effective = dataclasses.replace(config, nad_key=(others[0] if others else config.nad_key))
        if network != effective and (network is None or not others):
            self._set_network(effective)
        return nad, refused

    def _accepted_before(
        self, key: Key, body: Mapping[str, Any]
    ) -> tuple[nads.NetworkConfig | None, str | None]:
        """The config in force for this NAD before this event: ours in memory, else the one
        its `model.ACCEPTED_CONFIG` annotation records (after a restart); (None, None) when none."""
        previous = self._nads.get(key)
        if previous is not None and previous.applied:
            return previous.config, previous.accepted_text
        text = model.accepted_text(body)
        if text is None:
            return None, None
        try:
            return nads.parse_config(json.loads(text), nad_key=f"{key[0]}/{key[1]}"), text
        except (errors.InvalidConfig, ValueError, RecursionError):
            return None, None

    def _store_nad(self, key: Key, nad: Nad) -> Nad:
        self._forget_nad(key)
        self._nads[key] = nad
        if nad.reason == NETWORK_CONFLICT:
            self._conflicted[key] = None
        return nad

    def _set_network(self, config: nads.NetworkConfig) -> None:
        """Make `config` the network's config in force: its switch name, pool and MAC book."""
        name = config.name
        old = self._networks.get(name)
        self._networks[name] = config
        if old is not None:
            old_switch = desired.switch_name(old)
            if self._switch_owner.get(old_switch) == name:
                del self._switch_owner[old_switch]
        self._switch_owner[desired.switch_name(config)] = name
        self._holders.setdefault(name, ipam.Holders(network=name))
        pool = self._pools.get(name)
        if not config.has_ipam:
            self._pools.pop(name, None)
        elif pool is None or old is None or (old.subnets, old.exclude_subnets) != (
                config.subnets, config.exclude_subnets):
            # a new pool: the next pod gets an address of the subnets now in force
            self._pools[name] = ipam.Pool(network=name, subnets=config.subnets,
                                          exclude_subnets=config.exclude_subnets)
            self._reserve_claims(name)  # claims first: their addresses are nobody else's
            if pool is not None:
                for pod in self._pods.values():
                    self._reserve_recorded(pod, self._recorded(pod)[1], network=name)
        elif old.allow_persistent_ips != config.allow_persistent_ips:
            self._reserve_claims(name)

    def _reserve_claims(self, network: str) -> None:
        """Hold the addresses of every IPAMClaim of `network` in its pool."""
        for claim in self._claims.claims(network):
            try:
                self._reserve_claim(claim)
            except errors.IpamError as exc:
                logger.warning("IPAMClaim %s/%s: %s", claim.namespace, claim.name, exc)

    def _reserve_claim(self, claim: persistentips.Claim, *, for_pod: Key | None = None) -> None:
        """Hold the claim's status.ips in its network's pool (IpamError when another holds
        one). What the claim records wins over an allocation of ours not yet written to it,
        never over addresses live pods (but `for_pod`, about to be attached) use: a status
        written behind our back."""
        wanted = persistentips.reserved(claim, self._networks.get(claim.network))
        pool = self._pools.get(claim.network)
        if not wanted or pool is None:
            return
        held = pool.addresses_of(claim.owner)
        if held is not None and set(held) != set(wanted):
            users = [u for u in self._claims.users(claim.owner) if u.key != for_pod]
            if users:
                raise errors.IpamError(
                    f"IPAMClaim {claim.namespace}/{claim.name} now says {', '.join(wanted)}, "
                    f"but {users[0]} uses {', '.join(held)}; they stay held until it is gone")
            pool.release(owner=claim.owner)
        pool.reserve(owner=claim.owner, addresses=wanted)

    def _forget_nad(self, key: Key) -> None:
        nad = self._nads.pop(key, None)
        self._conflicted.pop(key, None)
        if nad is None or not nad.applied or nad.config is None:
            return
        accepted = self._network_nads.get(nad.config.name, [])
        if nad.config.nad_key in accepted:
            accepted.remove(nad.config.nad_key)

    def _attached_count(self, nad_key: str) -> int:
        return sum(1 for pod in self._pods.values()
                   if not pod.finished and pod.pod_networks and f'"{nad_key}"' in
                   pod.pod_networks and nad_key in self._recorded(pod)[1])

    def _drop_unused_networks(self, names: Iterable[str | None]) -> list[nads.NetworkConfig]:
        """Forget the networks among `names` that no accepted NAD names any more."""
        gone = [self._networks[n] for n in set(names)
                if n is not None and n in self._networks and not self._network_nads.get(n)]
        for config in gone:
            del self._networks[config.name]
            self._pools.pop(config.name, None)
            self._holders.pop(config.name, None)
            self._network_nads.pop(config.name, None)
            self._waiting.pop(config.name, None)
            switch = desired.switch_name(config)
            if self._switch_owner.get(switch) == config.name:
                del self._switch_owner[switch]
        return gone

    async def _write_accepted(self, nad: Nad) -> bool:
        """Record the config in force on the NAD (`model.ACCEPTED_CONFIG`); False when it failed."""
        namespace, name = model.key_of(nad.body)
        try:
            await self.api.annotate_nad(namespace=namespace, name=name, key=model.ACCEPTED_CONFIG,
                                        value=nad.accepted_text or "")
        except apiclient.ApiError as exc:
            if exc.status == 404:
                return False  # deleted meanwhile: its deletion event follows
            logger.warning("could not annotate NAD %s/%s, a full sync will retry: %s",
                           namespace, name, exc)
            self._needs_sync = True
            return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("could not annotate NAD %s/%s, a full sync will retry: %s",
                           namespace, name, exc)
            self._needs_sync = True
            return False
        nad.pending = False
        return True

    async def nad_changed(self, body: dict[str, Any]) -> None:
        # after the first full sync: an event of a NAD it did not list must not be lost
        await self.synced.wait()
        key = model.key_of(body)
        before = self._nads.get(key)
        old_network = (self._networks.get(before.config.name)
                       if before is not None and before.config is not None else None)
        nad, refused = self._decide_nad(body)
        if refused is not None:
            await self._warn(body, CHANGE_REFUSED, refused)
        if nad.problem is not None and nad.reason is not None:
            await self._warn(body, nad.reason, nad.problem)
        await self._warn_ignored(body, nad, before)
        if (before is not None and before.config == nad.config and before.problem ==
                nad.problem and not nad.pending and old_network is not None
                and nad.config is not None and self._networks.get(nad.config.name)
                == old_network):
            return  # nothing of ours changed (e.g. the echo of our own annotation)
        names = {c.name for c in (old_network, before and before.config, nad.config) if c}
        gone = self._drop_unused_networks(names)
        switches = {desired.switch_name(c) for c in (old_network, *gone) if c is not None}
        if nad.config is not None and nad.config.name in self._networks:
            switches.add(desired.switch_name(self._networks[nad.config.name]))
        await self._converge_switches(switches)
        self.policies.touch(networks=names)
        # a network gone, or one now on another switch (its topology changed), frees a
        # switch name a NAD refused for a conflict may take
        moved = old_network is not None and old_network.name in self._networks and \
            desired.switch_name(self._networks[old_network.name]) != \
            desired.switch_name(old_network)
        if gone or moved:
            await self._retry_conflicted()
        # pods are allocated on the config in force only once it is recorded on the NAD
        if nad.pending and not await self._write_accepted(nad):
            return
        if nad.applied and nad.config is not None:
            self._queue_selecting({nad.config.nad_key})

    def _soon(self, work: Awaitable[None]) -> None:
        """Run `work` as a task of its own (outside the caller's pod work), logging failures."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)

        def done(finished: asyncio.Future[None]) -> None:
            self._tasks.discard(task)
            if not finished.cancelled() and finished.exception() is not None:
                logger.warning("%s failed, a full sync will retry: %s", work,
                               finished.exception())
                self._needs_sync = True

        task.add_done_callback(done)

    def _queue_selecting(self, nad_keys: set[str]) -> None:
        """Queue the pods that select any of the NADs (their ports may have to change)."""
        for nad_key in nad_keys:
            for key in self._selecting.get(nad_key, ()):
                self._written.pop(key, None)
                self._pod_queue.add(key)

    async def _retry_conflicted(self) -> None:
        """NADs refused for a conflict with another network: decide again (it may be gone)."""
        # in the order they were refused, as `_nads` holds them (dicts keep insertion order)
        for key, nad in [(k, self._nads[k]) for k in self._conflicted]:
            if self._nads.get(key) is nad:
                await self.nad_changed(nad.body)

    async def nad_deleted(self, body: dict[str, Any]) -> None:
        await self.synced.wait()
        key = model.key_of(body)
        nad = self._nads.get(key)
        self._forget_nad(key)
        gone = self._drop_unused_networks([nad.config.name if nad and nad.config else None])
        if nad is None or nad.config is None or not nad.applied:
            return
        nad_key = nad.config.nad_key
        network = nad.config.name
        self.policies.touch(networks=[network])
        # release by the exact NAD key (owners are exact: never by a derived name's prefix)
        pool = self._pools.get(network)
        holders = self._holders.get(network)
        for owner in [*(pool.owners() if pool else ()), *(holders.owners() if holders else ())]:
            if isinstance(owner, ipam.Owner) and owner.nad_key == nad_key:
                self._release_owner(network, owner)

        await self._converge_switches({desired.switch_name(c) for c in gone})
        if network in self._networks:  # other NADs keep the network: drop this NAD's ports
            async def work() -> None:
                have, _ = await self._nb(self.northbound.read)
                stale = {n: p for n, p in have.ports.items()
                         if p.external_ids.get(naming.NAD_KEY) == nad_key}
                await self._nb(lambda: self.northbound.apply(
                    diff.diff(desired.State(), desired.State(ports=stale))))

            await self._pod_work(work)
        if gone:
            await self._retry_conflicted()

    def _release_owner(
        self, network: str, owner: ipam.Owner | persistentips.ClaimOwner
    ) -> None:
        """Give back what `owner` holds on `network`; pods waiting there get another turn."""
        pool = self._pools.get(network)
        released = bool(pool.release(owner=owner)) if pool is not None else False
        holders = self._holders.get(network)
        if holders is not None and holders.release(owner):
            released = True
        if released:
            for key in self._waiting.pop(network, ()):
                self._pod_queue.add(key)

    async def _converge_switches(self, switches: Iterable[str]) -> None:
        """Make NB hold, for each switch name, the rows of the network holding it now
        (`_switch_owner`), or nothing. Names of one burst share transactions (`Batcher`); a
        name's rows are read, compared and written inside its transaction, so a name is
        created in exactly one transaction and a retried batch repeats nothing."""
        outcomes = await asyncio.gather(*(self._switch_writes.submit(n) for n in switches))
        for outcome in outcomes:
            if outcome.error is not None:
                logger.warning("NB write of a network failed, a full sync will retry: %s",
                               outcome.error)
                self._needs_sync = True
            elif outcome.change is not None:
                await self._report_conflicts(outcome.change)

    async def _flush_switch_writes(self, names: list[str]) -> list[client.Outcome]:
        unique = list(dict.fromkeys(names))  # one part per name: never two creations of one
        parts = []
        for name in unique:
            network = self._networks.get(self._switch_owner.get(name, ""))
            want = desired.network_state(network) if network is not None else desired.State()
            parts.append(client.Part(want=want, switches=frozenset({name})))
        outcomes: list[client.Outcome] = []

        async def write() -> None:
            outcomes.extend(await self._nb(functools.partial(self.northbound.converge, parts)))

        await self._pod_work(write)  # never while a full sync computes its diff
        by_name = dict(zip(unique, outcomes, strict=True))
        return [by_name[n] for n in names]

    # -- pods -----------------------------------------------------------------------------

    def _selects(self, pod: Pod, nad_key: str) -> bool:
        if not pod.networks:
            return False
        try:
            chosen = selections.parse(pod.networks, pod_namespace=pod.namespace,
                                      pod_name=pod.name)
        except errors.InvalidConfig:
            return False
        return any(s.nad_key == nad_key for s in chosen)

    def pod_changed(self, body: Mapping[str, Any]) -> None:
        """Record the pod and queue it: the work happens in the queue's workers."""
        pod = model.pod(body)
        key = pod.key
        previous = self._pods.get(key)
        if previous is not None and previous.uid != pod.uid:
            self._note_gone(key, previous)  # same name, new pod
        self._pods[key] = pod
        self._index(previous, pod)
        self._index_vm(previous, pod)
        self._queue_pod(key)
        if pod.vm is not None and (previous is None or model.migration_facts(previous)
                                   != model.migration_facts(pod)):
            self._queue_vm(pod)  # the VM's other pods' ports may change with this one
        if pod.pod_networks and (previous is None or (previous.labels, previous.pod_networks)
                                 != (pod.labels, pod.pod_networks)):
            self.policies.touch(nads=self._recorded(pod)[1])  # policies' selectors, address sets

    def pod_deleted(self, body: Mapping[str, Any]) -> None:
        """Forget the pod and queue the release of its addresses and ports.

        `body` may hold only the pod's namespace, name and uid (a deletion a re-list found):
        what is held of that pod then stands for it.
        """
        pod = model.pod(body)
        key = pod.key
        current = self._pods.get(key)
        if current is not None and current.uid == pod.uid:
            del self._pods[key]
            self._index(current, None)
            self._index_vm(current, None)
            if not body.get("spec"):
                pod = current
        self._note_gone(key, pod)
        self._queue_pod(key)
        if pod.vm is not None:
            self._queue_vm(pod)  # a migration's source alone again, or the switch-over done

    def _nad_event(self, body: dict[str, Any], *, deleted: bool) -> None:
        key = model.key_of(body)
        self._nad_events.setdefault(key, []).append((deleted, body))
        self._nad_queue.add(key)

    async def _work_on_nad(self, key: Key) -> None:
        """A NAD's turn: its events since its last turn, in order."""
        for deleted, body in self._nad_events.pop(key, []):
            try:
                await (self.nad_deleted(body) if deleted else self.nad_changed(body))
            except (errors.OvnkSecondaryError, aiohttp.ClientError, TimeoutError) as exc:
                logger.warning("NAD %s/%s: %s; a full sync will retry", *key, exc)
                self._needs_sync = True

    def informer_sinks(self) -> tuple[informers.Sink, informers.Sink]:
        """Where the NAD and pod informers report (`informers.run`)."""
        async def nad_changed(body: dict[str, Any]) -> None:
            self._nad_event(body, deleted=False)

        async def nad_deleted(body: dict[str, Any]) -> None:
            self._nad_event(body, deleted=True)

        async def pod_changed(body: dict[str, Any]) -> None:
            self.pod_changed(body)

        async def pod_deleted(body: dict[str, Any]) -> None:
            self.pod_deleted(body)

        def pods_held() -> dict[Key, tuple[str, str]]:
            return {key: (pod.uid, pod.version) for key, pod in self._pods.items()}

        def nads_held() -> dict[Key, tuple[str, str]]:
            return {key: (str(nad.body["metadata"].get("uid") or ""),
                          str(nad.body["metadata"].get("resourceVersion") or ""))
                    for key, nad in self._nads.items()}

        return (informers.Sink(held=nads_held, changed=nad_changed, deleted=nad_deleted),
                informers.Sink(held=pods_held, changed=pod_changed, deleted=pod_deleted))

    def claim_sink(self) -> informers.Sink:
        """Where the IPAMClaim informer reports; each event is handled as pod work (never
        while a full sync rebuilds the pools)."""
        async def changed(body: dict[str, Any]) -> None:
            await self._pod_work(functools.partial(self.claim_changed, body))

        async def deleted(body: dict[str, Any]) -> None:
            await self._pod_work(functools.partial(self.claim_deleted, body))

        def held() -> dict[Key, tuple[str, str]]:
            return {c.key: (c.uid, c.version) for c in self._claims.claims()}

        return informers.Sink(held=held, changed=changed, deleted=deleted)

    async def claim_changed(self, body: Mapping[str, Any]) -> None:
        """An IPAMClaim was created or changed: hold its addresses; queue the pods naming it."""
        claim = persistentips.parse(body)
        freed = self._claims.put(claim)  # another claim of that name, deleted unseen
        if freed is not None:
            self._release_owner(freed.network, freed.owner)
        try:
            self._reserve_claim(claim)
        except errors.IpamError as exc:
            await self._warn(claim.involved(), persistentips.CONFLICT,
                             f"{exc}; pods using the claim wait until those addresses are free")
        self._queue_claimants(claim.key)

    async def claim_deleted(self, body: Mapping[str, Any]) -> None:
        """An IPAMClaim was deleted: its addresses return to the pool, at once or with the last
        live pod using them; the pods naming it wait for a claim of that name."""
        claim = persistentips.parse(body)
        freed = self._claims.delete(claim.key, claim.uid)
        if freed is not None:
            logger.info("IPAMClaim %s/%s deleted: addresses %s released on network %s",
                        freed.namespace, freed.name, " ".join(freed.ips) or "(none)",
                        freed.network)
            self._release_owner(freed.network, freed.owner)
        self._queue_claimants(claim.key)

    def _queue_claimants(self, claim: Key) -> None:
        """Queue the pods naming the claim (those waiting for it among them)."""
        for key in self._claim_selecting.get(claim, ()):
            self._pod_queue.add(key)

    def _index(self, before: Pod | None, after: Pod | None) -> None:
        """Keep `_selecting` (NAD key -> pods naming it), `_claim_refs` and `_claim_selecting`
        (the IPAMClaims pods name) up to date for one pod."""
        if before is not None and after is not None and before.networks == after.networks:
            return
        for pod, adding in ((before, False), (after, True)):
            if pod is None:
                continue
            change = set.add if adding else set.discard
            self._claim_refs.pop(pod.key, None)
            if not pod.networks:
                continue
            try:
                chosen = selections.parse(pod.networks, pod_namespace=pod.namespace,
                                          pod_name=pod.name)
            except errors.InvalidConfig:
                continue
            for selection in chosen:
                change(self._selecting[selection.nad_key], pod.key)
                claim = persistentips.reference(selection, pod_namespace=pod.namespace)
                if claim is not None:
                    change(self._claim_selecting[claim], pod.key)
                    if adding:
                        self._claim_refs.setdefault(pod.key, {})[selection.nad_key] = claim[1]

    def _index_vm(self, before: Pod | None, after: Pod | None) -> None:
        """Keep `_vms` (the pods of each VM) up to date for one pod."""
        if before is not None and before.vm is not None:
            members = self._vms.get((before.namespace, before.vm))
            if members is not None:
                members.discard(before.key)
                if not members:
                    del self._vms[(before.namespace, before.vm)]
        if after is not None and after.vm is not None:
            self._vms[(after.namespace, after.vm)].add(after.key)

    def _queue_vm(self, pod: Pod) -> None:
        for key in self._vms.get((pod.namespace, pod.vm or ""), ()):
            if key != pod.key:
                self._queue_pod(key)

    def _migration(self, pod: Pod) -> migration.Decision | None:
        """The port modes of the live pods of the pod's VM (its departing pods considered);
        None for a pod of no VM."""
        if pod.vm is None:
            return None
        members = (self._pods.get(k) for k in self._vms.get((pod.namespace, pod.vm), ()))
        return migration.decide(pod.vm, (
            migration.VmPod(key=p.key, created=p.created, target_ready=p.target_ready,
                            live=p.live)
            for p in members if p is not None and (p.live or p.departing)))

    def _vm_chassis(self, pod: Pod, decision: migration.Decision | None) -> tuple[str, ...]:
        """The chassis of the VM's own ports (`migration.requested_chassis`; the decision's
        pods, live or departing, are scheduled); the pod's node outside a VM."""
        if decision is None:
            return (str(pod.node),)
        keys = [*decision.modes, *([decision.departing] if decision.departing else [])]
        return migration.requested_chassis(
            decision, {key: str(self._pods[key].node) for key in keys})

    def _note_gone(self, key: Key, pod: Pod) -> None:
        gone = self._gone.setdefault(key, [])
        if all(g.uid != pod.uid for g in gone):
            gone.append(pod)

    def _queue_pod(self, key: Key) -> None:
        if self._touched is not None:
            self._touched.add(key)
        self._pod_queue.add(key)

    async def _work_on_pod(self, key: Key) -> None:
        """A queued pod's turn: release its deleted incarnations, then converge the current."""
        await self.synced.wait()  # the first full sync covers everything seen before it

        async def work() -> None:
            for pod in self._gone.pop(key, []):
                await self._release_pod(pod)
            await self._sync_pod(key)

        try:
            await self._pod_work(work)
        except (errors.OvnkSecondaryError, aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("pod %s/%s: %s; a full sync will retry", *key, exc)
            self._needs_sync = True

    async def _release_pod(self, pod: Pod) -> None:
        """Release the pod's addresses (not those of IPAMClaims: they stay the claims') and
        remove its ports."""
        namespace, name = pod.key
        uid = pod.uid
        self._written.pop((namespace, name), None)
        self._decoded.pop((namespace, name), None)
        used, freed = self._claims.release(pod.key, uid)
        for claim in freed:  # deleted claims whose last user this pod was
            self._release_owner(claim.network, claim.owner)
        for owner in used:  # pods refused the claim while this one used it
            self._queue_claimants((owner.namespace, owner.name))
        try:
            recorded = podnetworks.decode(pod.pod_networks)
        except errors.InvalidConfig:
            recorded = {}
        self.policies.touch(nads=recorded)  # its IPs leave policies' address sets
        # A pod re-created under the same name has the same port names, hence the same pool
        # owners: what its annotation already records is its own, not to release.
        current = self._pods.get((namespace, name))
        kept = set(self._recorded(current)[1]) if current is not None and \
            current.uid != uid else set()
        port_names = set()
        vm_ports = set()  # the VM's own ports: they go with its last live pod
        vm_live = pod.vm is not None and any(
            (p := self._pods.get(k)) is not None and p.live and p.uid != uid
            for k in self._vms.get((namespace, pod.vm), ()))
        for nad_key, entry in recorded.items():
            port_name = podnetworks.port_name(nad_key, namespace, name, entry)
            port_names.add(port_name)
            if entry.logical_switch_port is not None and not vm_live:
                vm_ports.add(port_name)
            nad = self._nads.get(model.split_nad_key(nad_key))
            if nad_key in kept or nad is None or not nad.applied or nad.config is None:
                continue  # a deleted NAD released its owners already
            self._release_owner(nad.config.name, ipam.Owner(nad_key=nad_key,
                                                            namespace=namespace, name=name))
            if nad.reason == CHANGE_REFUSED:  # maybe its last pod: decide the change again
                self._soon(self.nad_changed(nad.body))
        if not port_names:
            return
        have, _ = await self._nb(
            lambda: self.northbound.read_some(switches=(), ports=port_names))
        # only rows of this pod's incarnation: a pod re-created under the same name is not ours
        stale = {n: p for n, p in have.ports.items()
                 if p.options.get("iface-id-ver") == uid or n in vm_ports}
        if stale:
            try:
                await self._nb(lambda: self.northbound.apply(
                    diff.diff(desired.State(), desired.State(ports=stale))))
            except errors.NorthboundError as exc:
                logger.warning("NB delete failed, a full sync will retry: %s", exc)
                self._needs_sync = True

    def _reserve_recorded(
        self, pod: Pod, recorded: dict[str, podnetworks.PodNetwork], *,
        network: str | None = None,
    ) -> None:
        """Reserve what a live pod's annotation records: its IPs, its MAC and static IPs
        (the rebuild after a restart); only on `network` when given."""
        if pod.finished or not pod.node:
            return
        for nad_key, entry in recorded.items():
            nad = self._nads.get(model.split_nad_key(nad_key))
            if nad is None or not nad.applied or nad.config is None:
                continue
            config = self._networks.get(nad.config.name)
            if config is None or (network is not None and config.name != network):
                continue
            try:
                self._reserve(config.name, self._recorded_owner(pod, nad_key, config, entry),
                              entry, group=model.vm_group(pod))
            except errors.IpamError as exc:
                logger.warning("pod %s/%s: %s", pod.namespace, pod.name, exc)

    def _recorded_owner(
        self, pod: Pod, nad_key: str, network: nads.NetworkConfig,
        entry: podnetworks.PodNetwork,
    ) -> ipam.Owner | persistentips.ClaimOwner:
        """Who holds a live pod's recorded addresses on a NAD: the IPAMClaim its element names
        when they are that claim's (the pod is then recorded as a user of it), else the pod."""
        reference = self._claim_refs.get(pod.key, {}).get(nad_key)
        pool = self._pools.get(network.name)
        if (reference is not None and pool is not None and entry.ip_addresses
                and network.allow_persistent_ips):
            key = (pod.namespace, reference)
            for claim in (self._claims.get(key), self._claims.deleted(key)):
                if claim is not None and claim.network == network.name and persistentips.holds(
                        claim, recorded=entry.ip_addresses,
                        held=pool.addresses_of(claim.owner)):
                    self._claims.use(claim.owner, pod.user())
                    return claim.owner
        return ipam.Owner(nad_key=nad_key, namespace=pod.namespace, name=pod.name)

    def _new_owner(
        self, pod: Pod, network: nads.NetworkConfig, selection: selections.NetworkSelection,
        problems: list[tuple[str, str]],
    ) -> ipam.Owner | persistentips.ClaimOwner | None:
        """Who is to hold the addresses of a new attachment: the IPAMClaim the element names
        when it applies, the pod may use it and its addresses are held, else the pod; None
        when the pod gets nothing there for now (`problems` say why)."""
        key = persistentips.reference(selection, pod_namespace=pod.namespace)
        resolution = persistentips.resolve(network, selection, pod_namespace=pod.namespace,
                                           claim=self._claims.get(key) if key else None)
        if resolution.problem is not None:
            problems.append(resolution.problem)
        claim = resolution.claim
        if claim is None:
            owner = ipam.Owner(nad_key=selection.nad_key, namespace=pod.namespace, name=pod.name)
            return owner if resolution.attach else None
        holder = persistentips.blocking_user(pod.user(), self._claims.users(claim.owner))
        if holder is not None:
            problems.append((persistentips.IN_USE, persistentips.in_use_message(
                claim, nad_key=selection.nad_key, holder=holder)))
            return None  # queued again when the holder is released
        try:
            self._reserve_claim(claim, for_pod=pod.key)
        except errors.IpamError as exc:
            self._waiting[network.name].add(pod.key)
            problems.append((persistentips.CONFLICT, (
                f"IPAMClaim {claim.namespace}/{claim.name} of {selection.nad_key}: {exc}; the "
                "pod waits until they are free (or delete the claim)")))
            return None
        return claim.owner

    def _reserve(self, network: str, owner: ipam.Owner | persistentips.ClaimOwner,
                 entry: podnetworks.PodNetwork, *, group: migration.Vm | None = None) -> None:
        """Mark a recorded entry's addresses as `owner`'s (shared with the owners of `group`:
        a VM's pods); IpamError when another holds one."""
        pool = self._pools.get(network)
        if pool is not None and entry.ip_addresses:
            pool.reserve(owner=owner, addresses=entry.ip_addresses)
        holders = self._holders.get(network)
        if holders is not None:
            holders.claim(owner, macs=[entry.mac_address],
                          ips=() if pool is not None else entry.ip_addresses or (), group=group)

    def _attachments(
        self, pod: Pod, recorded: dict[str, podnetworks.PodNetwork],
        problems: list[tuple[str, str]],
        claimed: dict[str, tuple[persistentips.ClaimOwner, bool]] | None = None,
    ) -> list[tuple[nads.NetworkConfig, desired.Attachment]]:
        """Decide the pod's attachments, allocating what is missing (updates `recorded`).

        Refused, each with a problem for a Warning Event: an invalid selection annotation
        (nothing is attached), and per element a missing, invalid, conflicting or pending
        NAD, two NADs giving the pod one port name, static ips on a network with subnets, a
        gateway outside the network's subnets, no free address (IPAMFailed), a MAC or static
        IP held by another pod of the network (AddressInUse), and an IPAMClaim that is
        missing, of another network, used by a pod of another VM or whose addresses another
        holds (`persistentips`). Pods refused for an address wait for one to be released on
        that network; pods refused a claim, for the claim to change or its user to go.
        `claimed` receives, per NAD attached with a claim's addresses, the claim and whether
        the addresses are new (to be written to the claim before the annotation).
        """
        namespace, name, uid, node = pod.namespace, pod.name, pod.uid, pod.node
        annotation = pod.networks
        if not annotation or not pod.live:
            return []
        decision = self._migration(pod)
        mode = migration.ACTIVE
        if decision is not None:
            if pod.key in decision.refused:
                problems.append((migration.CONFLICT, decision.refused[pod.key]))
                return []
            mode = decision.modes.get(pod.key, migration.ACTIVE)
        try:
            chosen = selections.parse(annotation, pod_namespace=namespace, pod_name=name)
        except errors.InvalidConfig as exc:
            problems.append((INVALID_CONFIG, str(exc)))
            return []
        result = []
        ports: dict[str, str] = {}  # port name -> NAD key, within this pod
        missing: list[str] = []  # NADs that do not exist
        for selection in chosen:
            nad = self._nads.get((selection.namespace, selection.name))
            if nad is None:
                missing.append(selection.nad_key)
                continue
            if nad.config is None:
                if nad.problem is not None:
                    problems.append((INVALID_CONFIG, f"NAD {selection.nad_key} is invalid: "
                                                     f"{nad.problem}"))
                continue  # another CNI's NAD: not ours to attach
            if nad.problem is not None:
                problems.append((NETWORK_CONFLICT, f"NAD {selection.nad_key} is not applied: "
                                                   f"{nad.problem}"))
                continue
            if nad.pending:
                continue  # queued again once its accepted config is recorded
            network = self._networks[nad.config.name]
            port = naming.pod_port_name(selection.nad_key, namespace, name)
            if port in ports:
                problems.append((NETWORK_CONFLICT, f"NADs {ports[port]} and {selection.nad_key} "
                                 f"would both give the pod logical switch port {port} "
                                 "(OVN-Kubernetes' names map '-' and '/' to '.'); select only "
                                 f"one of them: {selection.nad_key} is not attached"))
                continue
            ports[port] = selection.nad_key
            entry = recorded.get(selection.nad_key)
            new = entry is None
            if entry is None:
                owner = self._new_owner(pod, network, selection, problems)
                if owner is None:
                    continue
                problem = self._allocate(pod, network, selection, owner)
                if isinstance(problem, tuple):
                    problems.append(problem)
                    continue
                entry = recorded[selection.nad_key] = problem
                if isinstance(owner, persistentips.ClaimOwner):
                    self._claims.use(owner, pod.user())
            else:
                owner = self._recorded_owner(pod, selection.nad_key, network, entry)
                try:
                    self._reserve(network.name, owner, entry, group=model.vm_group(pod))
                except errors.IpamError as exc:
                    problems.append((IPAM_FAILED, f"recorded addresses of {owner}: {exc}"))
            if isinstance(owner, persistentips.ClaimOwner) and claimed is not None:
                claimed[selection.nad_key] = (owner, new)
            vm_port = entry.logical_switch_port
            result.append((network, desired.Attachment(
                nad_key=selection.nad_key, pod_namespace=namespace, pod_name=name,
                pod_uid=uid, node=str(node), mac=entry.mac_address, ips=entry.ip_addresses,
                mode=mode, vm_port=vm_port,
                chassis=self._vm_chassis(pod, decision) if vm_port else (),
            )))
        # said once the others are known: attached ones are named, never assumed
        attached = ", ".join(a.nad_key for _, a in result)
        others = f" (the pod's other networks, {attached}, are attached)" if attached else ""
        for nad_key in missing:
            problems.append((NETWORK_NOT_FOUND, f"NAD {nad_key} does not exist; "
                             f"create it{others}"))
        return result

    def _allocate(
        self, pod: Pod, network: nads.NetworkConfig, selection: selections.NetworkSelection,
        owner: ipam.Owner | persistentips.ClaimOwner,
    ) -> podnetworks.PodNetwork | tuple[str, str]:
        """A new entry for the pod on a NAD, or the (reason, message) of why there is none.

        With a claim's owner, the claim's addresses (held by `_new_owner`), else new ones
        that stay the claim's: never released here."""
        if network.has_ipam and selection.ips:
            return (INVALID_CONFIG, f"static ips {', '.join(selection.ips)} are only accepted "
                    f"on networks without subnets; NAD {selection.nad_key} has subnets: "
                    "remove ips")
        try:
            nads.check_gateways(network, selection.default_route, static_ips=selection.ips)
        except errors.InvalidConfig as exc:
            return INVALID_CONFIG, f"NAD {selection.nad_key}: {exc}"
        pool = self._pools.get(network.name)
        try:
            ips = pool.allocate(owner=owner) if pool is not None else (selection.ips or None)
        except errors.IpamError as exc:
            self._waiting[network.name].add(pod.key)
            return IPAM_FAILED, str(exc)
        # a VM's pods derive one MAC (without IPs to derive it from): a migration keeps it
        seed = f"{pod.namespace}/{pod.vm}" if pod.vm else pod.uid
        # the VM's own port when its addresses are the VM's for good (`migration`)
        vm_port = naming.vm_port_name(selection.nad_key, pod.namespace, pod.vm) if (
            pod.vm is not None and self.migration_strategy == migration.MULTI_CHASSIS
            and (pool is None or isinstance(owner, persistentips.ClaimOwner))) else None
        mac = podnetworks.mac_address(ips or (), requested=selection.mac,
                                      seed=f"{seed}/{selection.nad_key}")
        try:
            self._holders[network.name].claim(
                owner, macs=[mac], ips=() if pool is not None else ips or (),
                group=model.vm_group(pod))
        except errors.IpamError as exc:
            if pool is not None and isinstance(owner, ipam.Owner):
                pool.release(owner=owner)
            self._waiting[network.name].add(pod.key)
            return ADDRESS_IN_USE, f"{exc}; the pod waits until it is released"
        return podnetworks.PodNetwork(ip_addresses=ips, mac_address=mac,
                                      gateway_ips=selection.default_route,
                                      logical_switch_port=vm_port)

    async def _annotate(
        self, pod: Pod, recorded: dict[str, podnetworks.PodNetwork],
        before: str | None,
    ) -> bool:
        """Write the annotation if it changed; False when the pod is gone."""
        text = podnetworks.encode(recorded)
        if recorded and text != before:
            namespace, name = pod.key
            try:
                await self.api.annotate_pod(namespace=namespace, name=name,
                                            key=podnetworks.ANNOTATION, value=text)
            except apiclient.ApiError as exc:
                if exc.status == 404:
                    return False
                raise
            self._wrote_annotation(pod, before, text)
            previous = self._decoded.get(pod.key, (None, {}))[1] if before else {}
            for nad_key, entry in recorded.items():
                if previous.get(nad_key) != entry:
                    logger.info("pod %s/%s on NAD %s: %s, MAC %s, port %s", namespace, name,
                                nad_key, "addresses " + " ".join(entry.ip_addresses)
                                if entry.ip_addresses else "no addresses (no IPAM)",
                                entry.mac_address,
                                podnetworks.port_name(nad_key, namespace, name, entry))
        return True

    def _wrote_annotation(self, pod: Pod, before: str | None, text: str) -> None:
        """Hold the annotation just written as the pod's, in the model and in its deleted
        incarnations waiting for release, unless a newer one was seen meanwhile.

        Its echo may never come: a pod deleted before any watch showed it annotated (the
        first full sync annotates, the pod goes before the informer's first list) is reported
        by name and uid only, and released as held; held without the annotation, its port and
        addresses stayed (tests/controller/test_consistency.py).
        """
        key = pod.key
        current = self._pods.get(key)
        if current is not None and current.uid == pod.uid and current.pod_networks == before:
            held = self._pods[key] = dataclasses.replace(current, pod_networks=text)
            # the echo no longer differs from what is held: policies hear of it now
            self.policies.touch(nads=self._recorded(held)[1])
        gone = self._gone.get(key, [])
        for i, old in enumerate(gone):
            if old.uid == pod.uid and old.pod_networks == before:
                gone[i] = dataclasses.replace(old, pod_networks=text)

    def _recorded(self, pod: Pod) -> tuple[str | None, dict[str, Any]]:
        """The pod's annotation text and a fresh dict of its entries (callers add to it)."""
        text = pod.pod_networks
        key = pod.key
        cached = self._decoded.get(key)
        if cached is not None and cached[0] == text:
            return text, dict(cached[1])
        try:
            decoded = podnetworks.decode(text)
        except errors.InvalidConfig:
            decoded = {}
        self._decoded[key] = (text, decoded)
        return text, dict(decoded)

    async def _sync_pod(self, key: Key) -> None:
        pod = self._pods.get(key)
        if pod is None:
            return
        if pod.finished:
            await self._release_pod(pod)
            return
        before, recorded = self._recorded(pod)
        problems: list[tuple[str, str]] = []
        claimed: dict[str, tuple[persistentips.ClaimOwner, bool]] = {}
        attachments = self._attachments(pod, recorded, problems, claimed)
        for reason, message in problems:
            await self._warn(pod, reason, message)
        if not attachments:
            self._written.pop(key, None)
            return
        if not await self._persist_claims(pod, recorded, claimed):
            return  # not annotated: the claim's change (or a full sync) queues the pod again
        # at a live migration's switch-over, the target's ports are enabled and the source's
        # disabled in one transaction (the source's only if still there: `client.Part`)
        vacated = self._vacated_source_ports(pod)
        want = desired.state((), [*attachments, *vacated])
        fingerprint = model.fingerprint(want)
        written = self._written_now()
        if written.get(key) == fingerprint and podnetworks.encode(recorded) == before:
            return  # nothing changed for this pod (e.g. the echo of our own annotation)
        try:
            if not await self._annotate(pod, recorded, before):  # the pod is gone
                for network, attachment in attachments:
                    self._release_owner(network.name, ipam.Owner(
                        nad_key=attachment.nad_key, namespace=attachment.pod_namespace,
                        name=attachment.pod_name))
                return
        except (apiclient.ApiError, aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("could not annotate pod %s/%s, a full sync will retry: %s",
                           *key, exc)
            self._needs_sync = True
            return
        written.pop(key, None)
        outcome = await self._nb_writes.submit(client.Part(
            want=want, existing=frozenset(a.port_name for _, a in vacated)))  # all or nothing
        if outcome.error is not None:
            logger.warning("NB write for pod %s/%s failed, a full sync will retry: %s",
                           *key, outcome.error)
            self._needs_sync = True
            return
        if outcome.change is not None:
            await self._report_conflicts(outcome.change, pod)
            if not outcome.change.conflicts:
                written[key] = fingerprint
            if not outcome.change.empty:  # new ports join policies' port groups
                self.policies.touch(networks=[network.name for network, _ in attachments])

    def _vacated_source_ports(
            self, pod: Pod) -> list[tuple[nads.NetworkConfig, desired.Attachment]]:
        """For the target of a live migration whose domain is ready: the source's ports, as
        its annotation records them, VACATED (`migration`); else nothing."""
        decision = self._migration(pod)
        if decision is None or not decision.switched or decision.target != pod.key \
                or decision.source is None:
            return []
        source = self._pods.get(decision.source)
        if source is None or source.node is None:
            return []
        found = []
        for nad_key, entry in self._recorded(source)[1].items():
            if entry.logical_switch_port is not None:
                continue  # the VM's own port: the target's attachment writes it
            nad = self._nads.get(model.split_nad_key(nad_key))
            network = self._networks.get(nad.config.name) if nad is not None and \
                nad.applied and nad.config is not None else None
            if network is None:
                continue
            found.append((network, desired.Attachment(
                nad_key=nad_key, pod_namespace=source.namespace, pod_name=source.name,
                pod_uid=source.uid, node=source.node, mac=entry.mac_address,
                ips=entry.ip_addresses, mode=migration.VACATED)))
        return found

    async def _persist_claims(
        self, pod: Pod, recorded: Mapping[str, podnetworks.PodNetwork],
        claimed: Mapping[str, tuple[persistentips.ClaimOwner, bool]],
    ) -> bool:
        """Write to each IPAMClaim the pod is attached with the addresses it got there, unless
        the claim holds them already; False when new addresses could not be written (then
        the pod must not be annotated with them: a claim's addresses outlive the pod, so the
        claim records them first; after a crash between the two writes the claim holds them
        and the pod gets them from it).

        A claim of a VM's second pod written meanwhile by its first pod's work is waited for;
        the write is a compare-and-swap on the claim's resourceVersion (a 409 or 404 means a
        newer claim or its deletion is on its way: its event queues the pod again).
        """
        for nad_key, (owner, new) in claimed.items():
            entry = recorded.get(nad_key)
            if entry is None or not entry.ip_addresses:
                continue
            while (pending := self._claim_writes.get(owner)) is not None:
                await pending
            claim = self._claims.get((owner.namespace, owner.name))
            if claim is None or claim.uid != owner.uid:
                if new:
                    return False  # deleted meanwhile: the pod waits for a claim
                continue  # a running pod's addresses of a deleted claim: nothing to write
            try:
                patch = persistentips.status_patch(claim, ips=entry.ip_addresses, pod=pod.name)
            except errors.IpamError as exc:
                logger.warning("pod %s/%s: %s", pod.namespace, pod.name, exc)
                if new:
                    return False
                continue
            if patch is None:
                continue
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._claim_writes[owner] = done
            try:
                stored = await self.api.patch_ipamclaim_status(
                    namespace=owner.namespace, name=owner.name, patch=patch)
            except (apiclient.ApiError, aiohttp.ClientError, TimeoutError) as exc:
                if not (isinstance(exc, apiclient.ApiError) and exc.status in (404, 409)):
                    self._needs_sync = True
                logger.warning("could not write IPAMClaim %s/%s for pod %s/%s, retrying: %s",
                               owner.namespace, owner.name, pod.namespace, pod.name, exc)
                if new:
                    return False
                continue
            finally:
                del self._claim_writes[owner]
                done.set_result(None)
            self._claims.put(persistentips.parse(stored))
            logger.info("IPAMClaim %s/%s: addresses %s (pod %s, NAD %s)", owner.namespace,
                        owner.name, " ".join(entry.ip_addresses), pod.name, nad_key)
        return True

    async def _report_conflicts(
        self, change: diff.Diff, pod: Pod | None = None
    ) -> None:
        """A Warning Event per conflicting row: on the NADs of the network whose switch it
        is, and on the pod whose ports it blocks (a log line when neither is known)."""
        for name in change.conflicts:
            message = (f"northbound row {name} exists but is not owned by ovnk-secondary "
                       f"(no external_ids:{naming.OWNER_KEY}); nothing is written into it: "
                       "remove it or rename the network")
            network = self._switch_owner.get(name)
            subjects: list[Mapping[str, Any] | Pod] = [
                nad.body for nad_key in self._network_nads.get(network or "", [])
                if (nad := self._nads.get(model.split_nad_key(nad_key))) is not None]
            if pod is not None:
                subjects.append(pod)
            for subject in subjects:
                await self._warn(subject, NB_CONFLICT, message)
            if not subjects:
                logger.warning(message)

    # -- drift: owned NB rows changed behind our back ----------------------------------------

    def _nb_row_changed(self, change: client.RowChange) -> None:
        """In the NB connection thread: hand the change to the loop.

        Changes are queued and the loop woken once for all those queued meanwhile: deleting
        NADs whose switches hold 10,000 ports reports 10,000 port deletions, and a wake-up
        each (a write to the loop's self-pipe) cost the NB thread more than the IDL's update
        itself."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        self._row_changes.append(change)  # deque: appends and pops are thread-safe
        if not self._row_changes_scheduled:
            self._row_changes_scheduled = True
            loop.call_soon_threadsafe(self._drain_row_changes)

    def _drain_row_changes(self) -> None:
        """On the loop: the queued row changes, at most DRIFT_SLICE per turn of the loop."""
        self._row_changes_scheduled = False  # before popping: a change queued later wakes us
        for _ in range(min(DRIFT_SLICE, len(self._row_changes))):
            self._drift(self._row_changes.popleft())
        if self._row_changes and not self._row_changes_scheduled:
            self._row_changes_scheduled = True
            asyncio.get_running_loop().call_soon(self._drain_row_changes)

    def _drift(self, change: client.RowChange) -> None:
        """An owned row was updated or deleted: converge what it belongs to within moments.

        A pod's port: its pod is queued (and what we remember having written for it is
        forgotten, so the queue compares with NB again). A switch or a localnet port: the
        networks are converged, once for a burst of changes. Our own updates and deletions
        come back here too; converging them finds nothing to do.
        """
        if not self.synced.is_set():
            return  # the first full sync will look at everything
        ids = change.external_ids
        if change.table == "Logical_Switch_Port" and ids.get("pod") == "true":
            nad = self._nads.get(model.split_nad_key(ids.get(naming.NAD_KEY, "")))
            if nad is None or not nad.applied:
                return  # the port went with its NAD (or will): nothing to repair
            key = model.pod_of_port(change.name, ids)
            if key is not None and key in self._pods:
                self._written.pop(key, None)
                self._pod_queue.add(key)
            return
        if (change.table == "Logical_Switch" and change.event == "delete"
                and change.name not in self._switch_owner):
            return  # a switch no network holds is gone, as wanted (our own deletions)
        network = self._networks.get(ids.get(naming.NETWORK_KEY, ""))
        switch = change.name if change.table == "Logical_Switch" else (
            desired.switch_name(network) if network is not None else None)
        if switch is not None:
            self._drifted.add(switch)
        if self._drifted and not self._closing and (
                self._repair_networks is None or self._repair_networks.done()):
            self._repair_networks = asyncio.ensure_future(self._repair_networks_soon())

    async def _repair_networks_soon(self) -> None:
        await asyncio.sleep(0.1)  # one convergence for a burst of changes
        switches, self._drifted = self._drifted, set()
        await self._converge_switches(switches)

    # -- full sync ------------------------------------------------------------------------

    async def full_sync(self) -> None:
        """List, rebuild, allocate, diff, apply. NorthboundError/ApiError propagate."""
        waiting = time.monotonic()
        async with self._idle:
            await self._idle.wait_for(lambda: not self._syncing)
            self._syncing = True
            await self._idle.wait_for(lambda: self._in_flight == 0)
        started = time.monotonic()
        try:
            change = await self._full_sync()
        except Exception:
            metrics.full_sync_failed()
            raise
        finally:
            async with self._idle:
                self._syncing = False
                self._idle.notify_all()
        self.sync_count += 1
        # the full garbage collection, when it disturbs least (the controller's main turns off
        # the automatic one: its pauses grow with the heap)
        collected_in = time.monotonic()
        gc.collect()
        collected_in = time.monotonic() - collected_in
        self._last_sync = time.monotonic()
        took = self._last_sync - started - collected_in
        metrics.full_sync_done(seconds=took, change=change)
        logger.info("full sync %d done in %.2fs (after %.2fs waiting for pods in flight; "
                    "garbage collection %.2fs): %s", self.sync_count, took, started - waiting,
                    collected_in, change.summary())
        self.synced.set()

    def snapshot(self) -> metrics.Snapshot | None:
        """The model as `/metrics` reports it: None before the first full sync (and on a
        standby); while a full sync rebuilds the model, the one from before it."""
        if self.synced.is_set() and not self._syncing:
            self._snapshot = metrics.Snapshot(
                accepted_nads=sum(1 for n in self._nads.values() if n.applied),
                refused_nads=sum(1 for n in self._nads.values() if n.problem is not None),
                networks={name: config.topology for name, config in self._networks.items()},
                pools={name: pool.usage() for name, pool in self._pools.items()},
                waiting={name: sum(1 for key in self._waiting.get(name, ()) if key in self._pods)
                         for name in self._networks})
        return self._snapshot

    async def _list_pods(self) -> dict[Key, Pod]:
        """Every pod, trimmed page by page; pod events seen meanwhile win over the listing.

        An event that arrives while the listing is under way may be newer than what the
        listing says (and then nothing newer may follow), or older (and then the newer one
        is still to come, and will be queued): taking the event's state is right both ways.
        """
        self._touched = set()
        try:
            listed: dict[Key, Pod] = {}
            async for page, _ in self.api.pages(apiclient.PODS_PATH, limit=LIST_PAGE):
                for pod in map(model.pod, page):
                    listed[pod.key] = pod
                del page  # not kept while the next page arrives
            for key in self._touched:
                seen = self._pods.get(key)
                if seen is None:
                    listed.pop(key, None)  # deleted meanwhile
                else:
                    listed[key] = seen
        finally:
            self._touched = None
        return listed

    async def _list_claims(self) -> list[dict[str, Any]]:
        """Every IPAMClaim; none when the API does not serve them (no CRD: pods naming claims
        wait for them). Any other failure fails the sync: allocating without knowing the
        claims could hand out their addresses."""
        try:
            return await self.api.list(apiclient.IPAMCLAIMS_PATH)
        except apiclient.ApiError as exc:
            if exc.status != 404:
                raise
            logger.warning("IPAMClaims are not served (CRD ipamclaims.k8s.cni.cncf.io is not "
                           "installed: kubectl create -k manifests/crds): %s", exc)
            return []

    async def _full_sync(self) -> diff.Diff:
        """The sync itself; returns what it changed in NB."""
        # IPAMClaims with the rest: their addresses are reserved before any allocation
        nad_list, pods, claim_list, _ = await asyncio.gather(
            self.api.list(apiclient.NAD_PATH), self._list_pods(), self._list_claims(),
            self.policies.relist())
        if not self.northbound.ready():
            raise errors.NorthboundError("OVN northbound is not ready")
        # pod work waits while this sync runs: nothing of ours writes NB until it applies
        have, foreign = await self._nb(self.northbound.read)
        self._needs_sync = False
        # NADs in creation order (the first NAD of a network sets its config), those of the
        # networks NB already has a switch of first: when two networks derive one switch
        # name, the one holding the switch keeps it, whatever the order of their NADs
        in_nb = {s.external_ids.get(naming.NETWORK_KEY) for s in have.switches.values()}
        nad_list.sort(key=lambda b: (model.network_name(b) not in in_nb,
                                     b.get("metadata", {}).get("creationTimestamp") or "",
                                     model.key_of(b)))
        previous_nads = self._nads
        self._nads, self._networks, self._pools, self._holders = {}, {}, {}, {}
        self._conflicted = {}
        self._switch_owner = {}
        self._network_nads = collections.defaultdict(list)
        self._waiting = collections.defaultdict(set)
        self._pods = pods
        self._selecting = collections.defaultdict(set)
        # claims before the networks: a network's new pool holds its claims' addresses first
        self._claims = persistentips.Book(persistentips.parse(b) for b in claim_list)
        self._claim_refs = {}
        self._claim_selecting = collections.defaultdict(set)
        self._vms = collections.defaultdict(set)
        for pod in pods.values():
            self._index(None, pod)
            self._index_vm(None, pod)
        self._decoded = {k: v for k, v in self._decoded.items() if k in self._pods}
        self._written.clear()
        for body in nad_list:
            nad, refused = self._decide_nad(body)
            old = previous_nads.get(model.key_of(body))
            if refused is not None:
                await self._warn(body, CHANGE_REFUSED, refused)
            if nad.problem is not None and nad.reason is not None and (
                    old is None or old.problem != nad.problem):
                await self._warn(body, nad.reason, nad.problem)
            await self._warn_ignored(body, nad, old)
        # the accepted configs are recorded on their NADs before any pod is allocated on them
        limit = asyncio.Semaphore(ANNOTATE_CONCURRENCY)

        async def accept(nad: Nad) -> None:
            async with limit:
                await self._write_accepted(nad)

        await asyncio.gather(*(accept(n) for n in self._nads.values() if n.pending))
        # rebuild the pools from what the annotations record, before allocating anything
        # (pods as listed: events during the sync change `self._pods` and are queued)
        recorded_by_pod = {key: (pod, *self._recorded(pod)) for key, pod in pods.items()}
        for pod, _, recorded in recorded_by_pod.values():
            self._reserve_recorded(pod, recorded)
        attachments: list[tuple[nads.NetworkConfig, desired.Attachment]] = []
        pod_attachments: dict[Key, list[tuple[nads.NetworkConfig, desired.Attachment]]] = {}
        # Pods whose annotation must be written (new since the listing started, e.g. during
        # a burst of creations) are annotated concurrently: one by one, a sync landing in a
        # burst spent seconds on round trips. Allocation stays sequential (above).

        async def annotate(key: Key, pod: Pod, found: list[Any], recorded: dict[str, Any],
                           before: str | None, claimed: dict[str, Any]) -> None:
            try:
                async with limit:
                    if not await self._persist_claims(pod, recorded, claimed):
                        # only what the annotation already records: new addresses wait
                        known = self._recorded(pod)[1]
                        pod_attachments[key] = [f for f in found if f[1].nad_key in known]
                    elif await self._annotate(pod, recorded, before):
                        pod_attachments[key] = found
            except (apiclient.ApiError, aiohttp.ClientError, TimeoutError) as exc:
                logger.warning("could not annotate pod %s/%s: %s", *key, exc)
                self._needs_sync = True

        writes = []
        for key, (pod, before, recorded) in recorded_by_pod.items():
            problems: list[tuple[str, str]] = []
            claimed: dict[str, tuple[persistentips.ClaimOwner, bool]] = {}
            found = self._attachments(pod, recorded, problems, claimed)
            for reason, message in problems:
                await self._warn(pod, reason, message)
            if not found:
                continue
            if podnetworks.encode(recorded) == before and not claimed:
                pod_attachments[key] = found
            else:
                writes.append(annotate(key, pod, found, recorded, before, claimed))
        await asyncio.gather(*writes)
        for found in pod_attachments.values():
            attachments.extend(found)
        want = desired.state(self._networks.values(), attachments)
        change = diff.diff(want, have, foreign=foreign)
        await self._report_conflicts(change)
        session = self.northbound.session()
        await self._nb(lambda: self.northbound.apply(change))
        await self.policies.sync_all()  # every network's policy rows, over these ports
        # NB now holds every pod's ports, but for conflicts (never remembered as written)
        conflicting = set(change.conflicts)
        written = self._written_now()
        if session == self._written_session:
            for key, found in pod_attachments.items():
                ports = {a.port_name: want.ports[a.port_name] for _, a in found}
                if conflicting.isdisjoint(ports):
                    written[key] = model.fingerprint(desired.State(ports=ports))
        return change

    async def run_background(self, *, stop: asyncio.Event) -> None:
        """Connect to NB (with backoff), full-sync at start, on reconnection and periodically.

        Also runs the workers of queued pods, until `aclose`.
        """
        self._loop = asyncio.get_running_loop()
        self._pod_queue.start()
        self._nad_queue.start()
        delay = 0.5
        session = -1
        while not stop.is_set():
            try:
                if not self.northbound.ready() and session == -1:
                    await self._nb(self.northbound.connect)
                current = self.northbound.session()
                due = time.monotonic() - self._last_sync >= self.resync_period
                if self.northbound.ready() and (current != session or self._needs_sync or due):
                    if current != session and session != -1:
                        logger.info("OVN northbound reconnected: full sync")
                    await self.full_sync()
                    session = current
                delay = 0.5
                wait = self.retry_period if self._needs_sync else 0.5
            except (errors.OvnkSecondaryError, aiohttp.ClientError, TimeoutError) as exc:
                logger.warning("sync failed, retrying in %.1fs: %s", delay, exc)
                self._needs_sync = True
                wait, delay = delay, min(delay * 2, 30.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)

    def close(self) -> None:
        self._nb_thread.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        self._closing = True
        await self.policies.aclose()
        if self._repair_networks is not None:  # before the NB thread goes: it writes through it
            self._repair_networks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._repair_networks
        await self._pod_queue.close()
        await self._nad_queue.close()
        await self._nb_writes.close()
        await self._switch_writes.close()
        self.close()

