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
- Problems a user can fix are Warning Events on the NAD or pod, each posted once.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import aiohttp

from ovnk_secondary import errors, ipam, nads, naming, podnetworks, selections
from ovnk_secondary.controller import apiclient, batches, workqueues
from ovnk_secondary.northbound import client, desired, diff

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Event reasons
INVALID_CONFIG = "InvalidConfig"
NETWORK_CONFLICT = "NetworkConflict"
CHANGE_REFUSED = "ChangeRefused"
NETWORK_NOT_FOUND = "NetworkNotFound"
IPAM_FAILED = "IPAMFailed"
NB_CONFLICT = "NorthboundConflict"

Key = tuple[str, str]  # (namespace, name)
# At most this many pods per NB transaction of the hot path.
NB_BATCH = 200
# At most this many annotation patches at once during a full sync.
ANNOTATE_CONCURRENCY = 16
# Pods worked on at once: enough to fill NB batches while others wait for their annotation
# patch (the API client keeps at most 32 connections), few enough to cost little memory.
POD_WORKERS = 2 * NB_BATCH
# Pods per page of the full sync's listing: a page of full pod bodies is what it holds at once.
LIST_PAGE = 500


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Pod:
    """What the reconciler keeps of a pod: the fields it uses, in one small object.

    The model holds every pod of the cluster: as dicts (even trimmed ones, with their
    metadata and annotation maps) 10,000 pods cost several times more.
    """

    namespace: str
    name: str
    uid: str
    node: str | None  # spec.nodeName
    phase: str | None  # status.phase
    deleting: bool  # metadata.deletionTimestamp is set
    networks: str | None  # the network selection annotation
    pod_networks: str | None  # our annotation, as the API last showed it

    @property
    def key(self) -> Key:
        return self.namespace, self.name

    @property
    def finished(self) -> bool:
        """Completed pods hold no addresses (released on Succeeded/Failed, as on deletion)."""
        return self.phase in ("Succeeded", "Failed")

    def involved(self) -> dict[str, Any]:
        """The pod as an Event's involved object."""
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid}}


def _pod(body: Mapping[str, Any]) -> _Pod:
    metadata = body.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    node = (body.get("spec") or {}).get("nodeName")
    return _Pod(
        # interned: namespaces and nodes repeat across pods
        namespace=sys.intern(str(metadata.get("namespace") or "")),
        name=str(metadata.get("name") or ""),
        uid=str(metadata.get("uid") or ""),
        node=sys.intern(str(node)) if node else None,
        phase=(body.get("status") or {}).get("phase"),
        deleting=bool(metadata.get("deletionTimestamp")),
        networks=annotations.get(selections.ANNOTATION),
        pod_networks=annotations.get(podnetworks.ANNOTATION),
    )


def _key(body: Mapping[str, Any]) -> Key:
    metadata = body.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def _fingerprint(state: desired.State) -> bytes:
    """A digest of rows, to remember what was written without keeping the rows (~2 kB a pod).

    Equal states give equal digests (the rows are built the same way each time); a state
    that differs gives another digest but with a chance of 2**-128.
    """
    return hashlib.blake2b(repr(state).encode(), digest_size=16).digest()


@dataclasses.dataclass(kw_only=True)
class _Nad:
    body: dict[str, Any]
    config: nads.NetworkConfig | None  # None: not ours or invalid
    problem: str | None = None  # why it is not applied, for pods that select it


class Reconciler:
    def __init__(
        self,
        *,
        northbound: client.Northbound,
        api: apiclient.ApiClient,
        resync_period: float = 300.0,
        retry_period: float = 2.0,
    ) -> None:
        self.northbound = northbound
        self.api = api
        self.resync_period = resync_period
        self.retry_period = retry_period
        self._nb_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ovn-nb")
        self._nads: dict[Key, _Nad] = {}
        self._networks: dict[str, nads.NetworkConfig] = {}  # network name -> effective config
        self._network_nads: dict[str, list[str]] = collections.defaultdict(list)  # accepted
        self._pods: dict[Key, _Pod] = {}
        # per pod key, deleted incarnations whose addresses and ports are still to release
        self._gone: dict[Key, list[_Pod]] = {}
        self._pod_queue: workqueues.WorkQueue[Key] = workqueues.WorkQueue(
            process=self._work_on_pod, workers=POD_WORKERS)
        # while a full sync lists pods: the keys of pod events seen meanwhile (they win)
        self._touched: set[Key] | None = None
        self._nb_writes: batches.Batcher[desired.State, client.Outcome] = batches.Batcher(
            flush=self._flush_nb_writes, limit=NB_BATCH)
        # per pod, a fingerprint of the ports NB holds since we wrote them, valid for one NB
        # session
        self._written: dict[Key, bytes] = {}
        self._written_session = -1
        # per pod, its pod-networks annotation text and what it decodes to (decoding
        # validates every address: a full sync of 10,000 pods paid ~0.7 s for it)
        self._decoded: dict[Key, tuple[str | None, dict[str, podnetworks.PodNetwork]]] = {}
        self._pools: dict[str, ipam.Pool] = {}
        self._posted: collections.OrderedDict[tuple[str, str, str], None] = (
            collections.OrderedDict())
        self._in_flight = 0
        self._idle = asyncio.Condition()
        self._syncing = False
        self._needs_sync = True
        self._last_sync = 0.0
        self.synced = asyncio.Event()  # the first full sync is done: ready
        self.sync_count = 0

    # -- helpers ------------------------------------------------------------------------

    async def _nb(self, function: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._nb_thread, function)

    async def _flush_nb_writes(self, parts: list[desired.State]) -> list[client.Outcome]:
        return await self._nb(functools.partial(self.northbound.converge, parts))

    def _written_now(self) -> dict[Key, bytes]:
        """The memo of written ports, emptied whenever the NB connection changed."""
        session = self.northbound.session()
        if session != self._written_session:
            self._written.clear()
            self._written_session = session
        return self._written

    async def _warn(self, subject: Mapping[str, Any] | _Pod, reason: str, message: str) -> None:
        body = subject.involved() if isinstance(subject, _Pod) else subject
        uid = str((body.get("metadata") or {}).get("uid"))
        marker = (uid, reason, message)
        if marker in self._posted:
            return
        self._posted[marker] = None
        while len(self._posted) > 10_000:
            self._posted.popitem(last=False)
        logger.warning("%s %s/%s: %s: %s", body.get("kind"), *_key(body), reason, message)
        try:
            await self.api.post_event(involved=body, event_type="Warning", reason=reason,
                                      message=message)
        except (apiclient.ApiError, aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("could not post Event %s: %s", reason, exc)

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

    # -- NADs -----------------------------------------------------------------------------

    def _record_nad(self, body: dict[str, Any]) -> tuple[_Nad, str | None]:
        """Parse and store a NAD; returns it and an error message (None when fine)."""
        key = _key(body)
        try:
            config = nads.parse_nad(body)
        except errors.InvalidConfig as exc:
            nad = _Nad(body=body, config=None, problem=str(exc))
            self._forget_nad(key)
            self._nads[key] = nad
            return nad, str(exc)
        nad = _Nad(body=body, config=config)
        if config is None:
            self._forget_nad(key)
            self._nads[key] = nad
            return nad, None
        previous = self._nads.get(key)
        accepted_before = (previous is not None and previous.config is not None
                           and previous.problem is None)
        network = self._networks.get(config.name)
        others = [n for n in self._network_nads.get(config.name, []) if n != config.nad_key]
        if accepted_before and previous is not None and previous.config is not None:
            old = previous.config
            if old.name != config.name or old.topology != config.topology or (
                old.subnets != config.subnets or old.exclude_subnets != config.exclude_subnets
            ):
                attached = self._attached_count(old.nad_key)
                if attached:
                    message = (f"NAD {config.nad_key}: changing the network name, topology, "
                               f"subnets or excludeSubnets is refused while {attached} pod(s) "
                               "are attached; delete the pods first or create a new NAD")
                    self._nads[key] = dataclasses.replace(previous, body=body)
                    return previous, message
        if network is not None and others:
            differing = nads.disagreements(network, config)
            if differing:
                fields = ", ".join(
                    f"{f} {nads.describe(config, f)} vs {nads.describe(network, f)}"
                    for f in differing)
                message = (f"NAD {config.nad_key} disagrees with NAD(s) {', '.join(others)} "
                           f"of network {config.name} on {fields}; make them equal")
                nad.problem = message
                self._forget_nad(key)
                self._nads[key] = nad
                return nad, message
        self._forget_nad(key)
        self._nads[key] = nad
        self._network_nads[config.name].append(config.nad_key)
        if network is None or not others or network != config:
            self._networks[config.name] = dataclasses.replace(
                config, nad_key=(others[0] if others else config.nad_key))
        if config.has_ipam and config.name not in self._pools:
            self._pools[config.name] = ipam.Pool(network=config.name, subnets=config.subnets,
                                                 exclude_subnets=config.exclude_subnets)
        return nad, None

    def _forget_nad(self, key: Key) -> None:
        nad = self._nads.pop(key, None)
        if nad is None or nad.config is None or nad.problem is not None:
            return
        name = nad.config.name
        accepted = self._network_nads.get(name, [])
        if nad.config.nad_key in accepted:
            accepted.remove(nad.config.nad_key)

    def _attached_count(self, nad_key: str) -> int:
        count = 0
        for pod in self._pods.values():
            annotation = pod.pod_networks
            if annotation and f'"{nad_key}"' in annotation and not pod.finished:
                count += 1
        return count

    def _drop_unused_networks(self) -> list[nads.NetworkConfig]:
        gone = [cfg for name, cfg in self._networks.items() if not self._network_nads.get(name)]
        for config in gone:
            del self._networks[config.name]
            self._pools.pop(config.name, None)
            self._network_nads.pop(config.name, None)
        return gone

    async def nad_changed(self, body: dict[str, Any]) -> None:
        key = _key(body)
        self._written.clear()  # rare; the network's rows may change under the pods' ports
        before = self._nads.get(key)
        nad, problem = self._record_nad(body)
        if problem is not None:
            reason = INVALID_CONFIG if nad.config is None else (
                CHANGE_REFUSED if before is not None and nad is before else NETWORK_CONFLICT)
            await self._warn(body, reason, problem)
        gone = self._drop_unused_networks()
        if not self.synced.is_set():
            return  # the first full sync applies everything
        await self._pod_work(lambda: self._apply_networks(gone))
        if nad.config is not None and nad.problem is None:
            for key, pod in self._pods.items():
                if self._selects(pod, nad.config.nad_key):
                    self._pod_queue.add(key)

    async def nad_deleted(self, body: dict[str, Any]) -> None:
        key = _key(body)
        self._written.clear()
        nad = self._nads.get(key)
        self._forget_nad(key)
        gone = self._drop_unused_networks()
        if not self.synced.is_set() or nad is None or nad.config is None:
            return
        nad_key = nad.config.nad_key
        network = nad.config.name
        pool = self._pools.get(network)
        prefix = naming.prefix(nad_key)
        if pool is not None:
            for owner in pool.owners():
                if owner.startswith(prefix):
                    pool.release(owner=owner)

        async def work() -> None:
            await self._apply_networks(gone)
            if network in self._networks:  # other NADs keep the network: drop this NAD's ports
                have, _ = await self._nb(self.northbound.read)
                stale = {n: p for n, p in have.ports.items()
                         if p.external_ids.get(naming.NAD_KEY) == nad_key}
                await self._nb(lambda: self.northbound.apply(
                    diff.diff(desired.State(), desired.State(ports=stale))))

        await self._pod_work(work)

    async def _apply_networks(self, gone: Iterable[nads.NetworkConfig]) -> None:
        """Converge the switches (and localnet ports) of all networks; delete gone ones."""
        want = desired.state(self._networks.values(), [])
        names = set(want.switches) | {desired.switch_name(c) for c in gone}
        port_names = set(want.ports) | {naming.localnet_port_name(c.name) for c in gone}
        have, foreign = await self._nb(
            lambda: self.northbound.read_some(switches=names, ports=port_names))
        change = diff.diff(want, have, foreign=foreign)
        await self._report_conflicts(change)
        try:
            await self._nb(lambda: self.northbound.apply(change))
        except errors.NorthboundError as exc:
            logger.warning("NB write failed, a full sync will retry: %s", exc)
            self._needs_sync = True

    # -- pods -----------------------------------------------------------------------------

    def _selects(self, pod: _Pod, nad_key: str) -> bool:
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
        pod = _pod(body)
        key = pod.key
        previous = self._pods.get(key)
        if previous is not None and previous.uid != pod.uid:
            self._note_gone(key, previous)  # same name, new pod
        self._pods[key] = pod
        self._queue_pod(key)

    def pod_deleted(self, body: Mapping[str, Any]) -> None:
        """Forget the pod and queue the release of its addresses and ports."""
        pod = _pod(body)
        key = pod.key
        current = self._pods.get(key)
        if current is not None and current.uid == pod.uid:
            del self._pods[key]
        self._note_gone(key, pod)
        self._queue_pod(key)

    def _note_gone(self, key: Key, pod: _Pod) -> None:
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

    async def _release_pod(self, pod: _Pod) -> None:
        """Release the pod's addresses and remove its ports."""
        namespace, name = pod.key
        uid = pod.uid
        self._written.pop((namespace, name), None)
        self._decoded.pop((namespace, name), None)
        try:
            recorded = podnetworks.decode(pod.pod_networks)
        except errors.InvalidConfig:
            recorded = {}
        # A pod re-created under the same name has the same port names, hence the same pool
        # owners: what its annotation already records is its own, not to release.
        current = self._pods.get((namespace, name))
        kept = set(self._recorded(current)[1]) if current is not None and \
            current.uid != uid else set()
        port_names = set()
        for nad_key in recorded:
            port = naming.pod_port_name(nad_key, namespace, name)
            port_names.add(port)
            if nad_key in kept:
                continue
            for pool in self._pools.values():
                pool.release(owner=port)
        if not port_names:
            return
        have, _ = await self._nb(
            lambda: self.northbound.read_some(switches=(), ports=port_names))
        # only rows of this pod's incarnation: a pod re-created under the same name is not ours
        stale = {n: p for n, p in have.ports.items() if p.options.get("iface-id-ver") == uid}
        if stale:
            try:
                await self._nb(lambda: self.northbound.apply(
                    diff.diff(desired.State(), desired.State(ports=stale))))
            except errors.NorthboundError as exc:
                logger.warning("NB delete failed, a full sync will retry: %s", exc)
                self._needs_sync = True

    def _reserve_recorded(
        self, pod: _Pod, recorded: dict[str, podnetworks.PodNetwork]
    ) -> None:
        """Reserve the addresses a live pod's annotation records (the rebuild after restart)."""
        if pod.finished or not pod.node:
            return
        namespace, name = pod.key
        for nad_key, entry in recorded.items():
            nad_namespace, _, nad_name = nad_key.partition("/")
            nad = self._nads.get((nad_namespace, nad_name))
            if nad is None or nad.config is None or nad.problem is not None:
                continue
            pool = self._pools.get(nad.config.name)
            if pool is None or not entry.ip_addresses:
                continue
            try:
                pool.reserve(owner=naming.pod_port_name(nad_key, namespace, name),
                             addresses=entry.ip_addresses)
            except errors.IpamError as exc:
                logger.warning("pod %s/%s: %s", namespace, name, exc)

    def _attachments(
        self, pod: _Pod, recorded: dict[str, podnetworks.PodNetwork],
        problems: list[tuple[str, str]],
    ) -> list[tuple[nads.NetworkConfig, desired.Attachment]]:
        """Decide the pod's attachments, allocating what is missing (updates `recorded`)."""
        namespace, name, uid, node = pod.namespace, pod.name, pod.uid, pod.node
        annotation = pod.networks
        if not node or not annotation or pod.finished or pod.deleting:
            return []
        try:
            chosen = selections.parse(annotation, pod_namespace=namespace, pod_name=name)
        except errors.InvalidConfig as exc:
            problems.append((INVALID_CONFIG, str(exc)))
            return []
        result = []
        for selection in chosen:
            nad = self._nads.get((selection.namespace, selection.name))
            if nad is None:
                problems.append((NETWORK_NOT_FOUND, f"NAD {selection.nad_key} does not exist; "
                                 "create it (the pod's other networks are attached)"))
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
            network = self._networks[nad.config.name]
            port = naming.pod_port_name(selection.nad_key, namespace, name)
            entry = recorded.get(selection.nad_key)
            pool = self._pools.get(network.name)
            if entry is None:
                if network.has_ipam and selection.ips:
                    problems.append((INVALID_CONFIG, f"static ips {', '.join(selection.ips)} "
                                     f"are only accepted on networks without subnets; NAD "
                                     f"{selection.nad_key} has subnets: remove ips"))
                    continue
                try:
                    ips = pool.allocate(owner=port) if pool is not None else (
                        selection.ips or None)
                except errors.IpamError as exc:
                    problems.append((IPAM_FAILED, str(exc)))
                    continue
                entry = podnetworks.PodNetwork(
                    ip_addresses=ips,
                    mac_address=podnetworks.mac_address(
                        ips or (), requested=selection.mac, seed=f"{uid}/{selection.nad_key}"),
                    gateway_ips=selection.default_route,
                )
                recorded[selection.nad_key] = entry
            elif pool is not None and entry.ip_addresses:
                try:
                    pool.reserve(owner=port, addresses=entry.ip_addresses)
                except errors.IpamError as exc:
                    problems.append((IPAM_FAILED, f"recorded addresses of {port}: {exc}"))
            result.append((network, desired.Attachment(
                nad_key=selection.nad_key, pod_namespace=namespace, pod_name=name,
                pod_uid=uid, node=str(node), mac=entry.mac_address, ips=entry.ip_addresses,
            )))
        return result

    async def _annotate(
        self, pod: _Pod, recorded: dict[str, podnetworks.PodNetwork],
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
        return True

    def _recorded(self, pod: _Pod) -> tuple[str | None, dict[str, Any]]:
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
        attachments = self._attachments(pod, recorded, problems)
        for reason, message in problems:
            await self._warn(pod, reason, message)
        if not attachments:
            self._written.pop(key, None)
            return
        want = desired.state((), attachments)
        fingerprint = _fingerprint(want)
        written = self._written_now()
        if written.get(key) == fingerprint and podnetworks.encode(recorded) == before:
            return  # nothing changed for this pod (e.g. the echo of our own annotation)
        try:
            if not await self._annotate(pod, recorded, before):
                for _, attachment in attachments:
                    for pool in self._pools.values():
                        pool.release(owner=attachment.port_name)
                return
        except (apiclient.ApiError, aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("could not annotate pod %s/%s, a full sync will retry: %s",
                           *key, exc)
            self._needs_sync = True
            return
        written.pop(key, None)
        outcome = await self._nb_writes.submit(want)  # the pod's ports: all or nothing
        if outcome.error is not None:
            logger.warning("NB write for pod %s/%s failed, a full sync will retry: %s",
                           *key, outcome.error)
            self._needs_sync = True
            return
        if outcome.change is not None:
            await self._report_conflicts(outcome.change, pod)
            if not outcome.change.conflicts:
                written[key] = fingerprint

    async def _report_conflicts(
        self, change: diff.Diff, body: Mapping[str, Any] | _Pod | None = None
    ) -> None:
        for name in change.conflicts:
            message = (f"northbound row {name} exists but is not owned by ovnk-secondary "
                       f"(no external_ids:{naming.OWNER_KEY}); it is left alone: remove it "
                       "or rename the network")
            if body is not None:
                await self._warn(body, NB_CONFLICT, message)
            else:
                logger.warning(message)

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
            summary = await self._full_sync()
        finally:
            async with self._idle:
                self._syncing = False
                self._idle.notify_all()
        self.sync_count += 1
        self._last_sync = time.monotonic()
        logger.info("full sync %d done in %.2fs (after %.2fs waiting for pods in flight): %s",
                    self.sync_count, self._last_sync - started, started - waiting, summary)
        self.synced.set()

    async def _list_pods(self) -> dict[Key, _Pod]:
        """Every pod, trimmed page by page; pod events seen meanwhile win over the listing.

        An event that arrives while the listing is under way may be newer than what the
        listing says (and then nothing newer may follow), or older (and then the newer one
        is still to come, and will be queued): taking the event's state is right both ways.
        """
        self._touched = set()
        try:
            listed: dict[Key, _Pod] = {}
            async for page in self.api.pages(apiclient.PODS_PATH, limit=LIST_PAGE):
                for pod in map(_pod, page):
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

    async def _full_sync(self) -> str:
        """The sync itself; returns a summary of what it changed in NB."""
        nad_list, pods = await asyncio.gather(self.api.list(apiclient.NAD_PATH),
                                              self._list_pods())
        if not self.northbound.ready():
            raise errors.NorthboundError("OVN northbound is not ready")
        self._needs_sync = False
        # NADs in creation order: the first NAD of a network sets its config
        nad_list.sort(key=lambda b: (b.get("metadata", {}).get("creationTimestamp") or "",
                                     _key(b)))
        previous_nads = self._nads
        self._nads, self._networks, self._pools = {}, {}, {}
        self._network_nads = collections.defaultdict(list)
        self._pods = pods
        self._decoded = {k: v for k, v in self._decoded.items() if k in self._pods}
        self._written.clear()
        for body in nad_list:
            nad, problem = self._record_nad(body)
            old = previous_nads.get(_key(body))
            if problem is not None and (old is None or old.problem != problem):
                await self._warn(body, INVALID_CONFIG if nad.config is None else
                                 NETWORK_CONFLICT, problem)
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
        limit = asyncio.Semaphore(ANNOTATE_CONCURRENCY)

        async def annotate(key: Key, pod: _Pod, found: list[Any],
                           recorded: dict[str, Any], before: str | None) -> None:
            try:
                async with limit:
                    if await self._annotate(pod, recorded, before):
                        pod_attachments[key] = found
            except (apiclient.ApiError, aiohttp.ClientError, TimeoutError) as exc:
                logger.warning("could not annotate pod %s/%s: %s", *key, exc)
                self._needs_sync = True

        writes = []
        for key, (pod, before, recorded) in recorded_by_pod.items():
            problems: list[tuple[str, str]] = []
            found = self._attachments(pod, recorded, problems)
            for reason, message in problems:
                await self._warn(pod, reason, message)
            if not found:
                continue
            if podnetworks.encode(recorded) == before:
                pod_attachments[key] = found
            else:
                writes.append(annotate(key, pod, found, recorded, before))
        await asyncio.gather(*writes)
        for found in pod_attachments.values():
            attachments.extend(found)
        want = desired.state(self._networks.values(), attachments)
        have, foreign = await self._nb(self.northbound.read)
        change = diff.diff(want, have, foreign=foreign)
        await self._report_conflicts(change)
        session = self.northbound.session()
        await self._nb(lambda: self.northbound.apply(change))
        # NB now holds every pod's ports, but for conflicts (never remembered as written)
        conflicting = set(change.conflicts)
        written = self._written_now()
        if session == self._written_session:
            for key, found in pod_attachments.items():
                ports = {a.port_name: want.ports[a.port_name] for _, a in found}
                if conflicting.isdisjoint(ports):
                    written[key] = _fingerprint(desired.State(ports=ports))
        return change.summary()

    async def run_background(self, *, stop: asyncio.Event) -> None:
        """Connect to NB (with backoff), full-sync at start, on reconnection and periodically.

        Also runs the workers of queued pods, until `aclose`.
        """
        self._pod_queue.start()
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
        await self._pod_queue.close()
        await self._nb_writes.close()
        self.close()

