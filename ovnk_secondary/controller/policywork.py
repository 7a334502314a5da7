"""MultiNetworkPolicies in the controller: what is known of them, which networks an event
affects, and the convergence of their northbound rows.

`policies.py` parses a policy, `northbound/acls.py` turns policies and pod facts into rows
(pure, not incremental), `Northbound.converge_policies` writes them in one transaction. This
module coordinates: it holds the policies (`k8s.cni.cncf.io/v1beta1` MultiNetworkPolicies, all
namespaces) and the namespaces' labels, both from their informers and from every full sync's
listing, and pulls the rest from the reconciler when it converges: the networks in force (with
their accepted NADs and IP families) and the live pods with recorded addresses on them (labels,
port names, IPs from `k8s.ovn.org/pod-networks`).

Events mark *dirty* what they may change, and a flush converges it:
- a policy created, changed or deleted: the networks it names (through its NADs) and those its
  rows are on (it may have left one);
- a namespace's labels: the networks of the applied policies with a namespaceSelector peer;
- from the reconciler (`touch`): a pod's labels or recorded addresses changed, a pod's ports
  written or released (its NADs' networks), a NAD accepted, changed or deleted (its networks).
A network is converged only while a policy targets it or rows of ours are on it: without
policies, pod events cost nothing here. Flushes are debounced (`DEBOUNCE`) and run one at a
time: what is marked while one runs waits for the next, so a burst of pod events makes one NB
transaction per flush (all dirty networks in it), however many pods. A flush computes the dirty
networks' rows from scratch and converges exactly those networks' rows (`converge_policies(...,
networks=)`); like the reconciler's pod work, it never runs during a full sync (`gate`), and its
NB call goes through the reconciler's NB thread.

Every full sync lists policies and namespaces (events seen meanwhile win over the listing) and,
once the reconciler has applied switches and ports, converges every network's policy rows in
one transaction (`sync_all`): rows of a policy deleted while nobody watched, of a deleted
network, or changed behind our back are repaired or deleted (metrics: `full_sync_changes_total`
of `Port_Group`, `ACL`, `Address_Set`).

A port not in NB yet (the pod's annotation echo arrived before its port was written) is left out
of its port groups by the converge; writing the port touches its network again, so it joins them
then. Events (`events.Events`: each distinct message once) go on the MultiNetworkPolicy:
the parse's notices (PolicyForMissing, InvalidPolicy, UnsupportedPolicy, FieldIgnored), the
rows' (PolicyNotApplied, NameCollision; Normal NoNetworkOfOurs), and NorthboundConflict when a
row it needs has our name but is not ours.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any

import aiohttp

from ovnk_secondary import errors, naming, podnetworks
from ovnk_secondary import policies as mnp
from ovnk_secondary.controller import apiclient, events, informers, metrics
from ovnk_secondary.northbound import acls, client, desired, diff, policyrows

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
API_VERSION = "k8s.cni.cncf.io/v1beta1"
KIND = "MultiNetworkPolicy"
# Seconds a flush waits after the first mark: the events of a burst share its transaction.
DEBOUNCE = 0.1
# A row we need is held by a row without our ownership marker (the reconciler's reason too).
NB_CONFLICT = "NorthboundConflict"


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Policy:
    """A MultiNetworkPolicy as held: its identity and what `policies.parse` made of it."""

    uid: str
    version: str
    parsed: mnp.Parsed

    @property
    def key(self) -> Key:
        return self.parsed.namespace, self.parsed.name

    def involved(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {
            "namespace": self.parsed.namespace, "name": self.parsed.name, "uid": self.uid,
            "resourceVersion": self.version}}


def _policy(body: Mapping[str, Any]) -> _Policy:
    metadata = body.get("metadata") or {}
    return _Policy(uid=str(metadata.get("uid") or ""),
                   version=str(metadata.get("resourceVersion") or ""), parsed=mnp.parse(body))


def _identity(body: Mapping[str, Any]) -> tuple[Key, str, str]:
    metadata = body.get("metadata") or {}
    return ((str(metadata.get("namespace") or ""), str(metadata.get("name") or "")),
            str(metadata.get("uid") or ""), str(metadata.get("resourceVersion") or ""))


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Namespace:
    uid: str
    version: str
    labels: Mapping[str, str]


def pod(namespace: str, name: str, labels: Iterable[tuple[str, str]],
        recorded: Mapping[str, podnetworks.PodNetwork]) -> acls.Pod:
    """A pod as policies see it: its labels, and per NAD its port and recorded addresses."""
    return acls.Pod(namespace=namespace, name=name, labels=dict(labels), ports={
        nad: acls.PodPort(name=podnetworks.port_name(nad, namespace, name, entry),
                          ips=tuple(entry.ip_addresses or ()))
        for nad, entry in recorded.items()})


def _selects_namespaces(policy: mnp.Policy) -> bool:
    return any(peer.namespace_selector is not None for rules in (policy.ingress, policy.egress)
               if rules for rule in rules for peer in rule.peers)


def _networks_with_rows(state: desired.PolicyState) -> set[str]:
    return {group.external_ids.get(naming.NETWORK_KEY, "") for group in
            state.port_groups.values()}


def _conflicting_policies(state: desired.PolicyState, names: Collection[str],
                          keys: Collection[Key]) -> dict[Key, list[str]]:
    """Per policy, the conflicting row names its ACLs are held by or name (a namespace's
    default-deny rows count for each policy of that namespace)."""
    found: dict[Key, list[str]] = collections.defaultdict(list)
    for name in names:
        reference = re.compile(rf"\${re.escape(name)}\b")
        for acl in state.acls.values():
            if acl.port_group != name and not reference.search(acl.match):
                continue
            ids = acl.external_ids
            owner = ids.get(naming.OBJECT_NAME_KEY, "")
            if ids.get(naming.OWNER_TYPE_KEY) == acls.NETWORK_POLICY:  # <ns>:<policy>
                namespace, _, policy = owner.partition(":")
                owners = [(namespace, policy)]
            else:  # a namespace's default deny
                owners = [k for k in keys if k[0] == owner]
            for key in owners:
                if name not in found[key]:
                    found[key].append(name)
    return found


class PolicyWork:
    """The policies and namespaces known, the dirty networks, and their convergence."""

    def __init__(
        self,
        *,
        api: apiclient.ApiClient,
        events: events.Events,
        northbound: client.Northbound,
        nb: Callable[[Callable[[], Any]], Awaitable[Any]],
        gate: Callable[[Callable[[], Awaitable[None]]], Awaitable[None]],
        networks: Callable[[], list[acls.Network]],
        pods: Callable[[frozenset[str]], list[acls.Pod]],
        ready: asyncio.Event,
        failed: Callable[[], None],
        debounce: float = DEBOUNCE,
    ) -> None:
        """`nb(f)` runs blocking `f` in the NB thread; `gate(work)` runs pod work (never during
        a full sync); `networks()` the networks in force; `pods(nad_keys)` the live pods with
        recorded addresses on those NADs; `ready` is set by the first full sync; `failed()`
        asks for a full sync (a flush failed)."""
        self.api = api
        self.events = events
        self.northbound = northbound
        self._nb = nb
        self._gate = gate
        self._networks = networks
        self._pods = pods
        self._ready = ready
        self._failed = failed
        self.debounce = debounce
        self._policies: dict[Key, _Policy] = {}
        self._namespaces: dict[str, _Namespace] = {}
        self._applied: dict[Key, frozenset[str]] = {}  # policy -> networks holding its rows
        self._rows: set[str] = set()  # networks our last converge of each left rows on
        self._dirty_networks: set[str] = set()
        self._dirty_nads: set[str] = set()  # NAD keys, mapped to their networks when flushed
        self._dirty_policies: set[Key] = set()
        # while a full sync lists: the keys of events seen meanwhile (they win over the listing)
        self._touched_policies: set[Key] | None = None
        self._touched_namespaces: set[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.flushes = 0  # converges of dirty networks so far (logs, tests)

    # -- what the reconciler tells --------------------------------------------------------

    def touch(self, *, networks: Iterable[str] = (), nads: Iterable[str] = ()) -> None:
        """Pods or NADs of these networks (or NADs) changed: converge them soon, if policies
        concern them."""
        self._mark(networks=networks, nads=nads)

    def _mark(self, *, networks: Iterable[str] = (), nads: Iterable[str] = (),
              policies: Collection[Key] = ()) -> None:
        if not (self._policies or self._rows or policies):
            return  # no policy, no rows of ours: nothing can change
        self._dirty_networks.update(networks)
        self._dirty_nads.update(nads)
        self._dirty_policies.update(policies)
        if not self._closing and (self._task is None or self._task.done()):
            self._task = asyncio.ensure_future(self._flush_soon())

    # -- informers ------------------------------------------------------------------------

    def policy_sink(self) -> informers.Sink:
        """Where the MultiNetworkPolicy informer reports."""
        async def changed(body: dict[str, Any]) -> None:
            self.policy_changed(body)

        async def deleted(body: dict[str, Any]) -> None:
            self.policy_deleted(body)

        def held() -> dict[Key, tuple[str, str]]:
            return {key: (p.uid, p.version) for key, p in self._policies.items()}

        return informers.Sink(held=held, changed=changed, deleted=deleted)

    def namespace_sink(self) -> informers.Sink:
        """Where the namespace informer reports (keys `("", name)`)."""
        async def changed(body: dict[str, Any]) -> None:
            self.namespace_changed(body)

        async def deleted(body: dict[str, Any]) -> None:
            self.namespace_deleted(body)

        def held() -> dict[Key, tuple[str, str]]:
            return {("", name): (n.uid, n.version) for name, n in self._namespaces.items()}

        return informers.Sink(held=held, changed=changed, deleted=deleted)

    def policy_changed(self, body: Mapping[str, Any]) -> None:
        record = _policy(body)
        key = record.key
        if self._touched_policies is not None:
            self._touched_policies.add(key)
        old = self._policies.get(key)
        self._policies[key] = record
        if old is None or old.parsed != record.parsed or old.uid != record.uid:
            self._mark(policies=[key])

    def policy_deleted(self, body: Mapping[str, Any]) -> None:
        key, uid, _ = _identity(body)
        if self._touched_policies is not None:
            self._touched_policies.add(key)
        old = self._policies.get(key)
        if old is not None and (not uid or old.uid == uid):
            del self._policies[key]
            self._mark(policies=[key])

    def _namespace_networks(self) -> set[str]:
        """The networks whose rows depend on namespaces' labels."""
        return {network for key, networks in self._applied.items()
                if (p := self._policies.get(key)) is not None and p.parsed.policy is not None
                and _selects_namespaces(p.parsed.policy) for network in networks}

    def namespace_changed(self, body: Mapping[str, Any]) -> None:
        (_, name), uid, version = _identity(body)
        if self._touched_namespaces is not None:
            self._touched_namespaces.add(name)
        labels = (body.get("metadata") or {}).get("labels") or {}
        old = self._namespaces.get(name)
        self._namespaces[name] = _Namespace(uid=uid, version=version, labels=dict(labels))
        if old is None or old.labels != labels:
            self._mark(networks=self._namespace_networks())

    def namespace_deleted(self, body: Mapping[str, Any]) -> None:
        (_, name), uid, _ = _identity(body)
        if self._touched_namespaces is not None:
            self._touched_namespaces.add(name)
        old = self._namespaces.get(name)
        if old is not None and (not uid or old.uid == uid):
            del self._namespaces[name]
            self._mark(networks=self._namespace_networks())

    # -- full sync ------------------------------------------------------------------------

    async def relist(self) -> None:
        """List policies and namespaces (the full sync's): what the listing says, except for
        objects with events meanwhile (their state is newer or as new). No policies when the
        API does not serve them (no CRD); any other failure fails the sync."""
        self._touched_policies, self._touched_namespaces = set(), set()
        try:
            policy_list, namespace_list = await asyncio.gather(
                self._list_policies(), self.api.list(apiclient.NAMESPACES_PATH))
            policies = {record.key: record for record in map(_policy, policy_list)}
            namespaces = {}
            for body in namespace_list:
                (_, name), uid, version = _identity(body)
                labels = (body.get("metadata") or {}).get("labels") or {}
                namespaces[name] = _Namespace(uid=uid, version=version, labels=dict(labels))
            for key in self._touched_policies:
                if key in self._policies:
                    policies[key] = self._policies[key]
                else:
                    policies.pop(key, None)
            for name in self._touched_namespaces:
                if name in self._namespaces:
                    namespaces[name] = self._namespaces[name]
                else:
                    namespaces.pop(name, None)
        finally:
            self._touched_policies = self._touched_namespaces = None
        self._policies, self._namespaces = policies, namespaces

    async def _list_policies(self) -> list[dict[str, Any]]:
        try:
            return await self.api.list(apiclient.MULTI_NETWORK_POLICIES_PATH)
        except apiclient.ApiError as exc:
            if exc.status != 404:
                raise
            logger.warning("MultiNetworkPolicies are not served (CRD "
                           "multi-networkpolicies.k8s.cni.cncf.io is not installed: kubectl "
                           "create -k manifests/crds): %s", exc)
            return []

    async def sync_all(self) -> diff.PolicyDiff:
        """Converge every network's policy rows (in a full sync, after its switches and ports
        are applied): our rows of anything else are deleted. NorthboundError propagates."""
        networks = self._networks()
        valid = {k: p.parsed.policy for k, p in self._policies.items()
                 if p.parsed.policy is not None}
        outcome = await self._converge(None, networks, valid, set(self._policies))
        change = outcome.change if outcome is not None else diff.PolicyDiff()
        metrics.full_sync_policies_done(change=change)
        logger.info("full sync of MultiNetworkPolicies: %d known, %d applied, on %d network(s): "
                    "%s", len(self._policies), len(self._applied), len(self._rows),
                    change.summary())
        return change

    # -- flushes --------------------------------------------------------------------------

    async def _flush_soon(self) -> None:
        await self._ready.wait()
        while self._dirty_networks or self._dirty_nads or self._dirty_policies:
            await asyncio.sleep(self.debounce)
            try:
                await self._gate(self._flush)
            except (errors.OvnkSecondaryError, aiohttp.ClientError, TimeoutError) as exc:
                logger.warning("MultiNetworkPolicy rows not converged, a full sync will "
                               "retry: %s", exc)
                self._failed()
            except Exception:  # a bug: logged, and the full sync is the safety net
                logger.exception("MultiNetworkPolicy rows not converged")
                self._failed()

    async def _flush(self) -> None:
        """Converge the dirty networks (and the networks of dirty policies)."""
        networks, self._dirty_networks = self._dirty_networks, set()
        nads, self._dirty_nads = self._dirty_nads, set()
        keys, self._dirty_policies = self._dirty_policies, set()
        in_force = {n.name: n for n in self._networks()}
        by_nad = {nad: n.name for n in in_force.values() for nad in n.nad_keys}
        valid = {k: p.parsed.policy for k, p in self._policies.items()
                 if p.parsed.policy is not None}
        scope = set(networks) | {by_nad[n] for n in nads if n in by_nad}
        for key in keys:
            scope |= self._applied.get(key, frozenset())
            if key in valid:
                scope |= {by_nad[n] for n in valid[key].nad_keys if n in by_nad}
        targeted = {by_nad[n] for p in valid.values() for n in p.nad_keys if n in by_nad}
        scope &= targeted | self._rows
        chosen = {k: p for k, p in valid.items()
                  if k in keys or any(by_nad.get(n) in scope for n in p.nad_keys)}
        self.flushes += 1
        await self._converge(frozenset(scope), [in_force[n] for n in sorted(scope)
                                                if n in in_force], chosen, keys)

    async def _converge(self, scope: frozenset[str] | None, networks: list[acls.Network],
                        chosen: Mapping[Key, mnp.Policy],
                        keys: Collection[Key]) -> policyrows.Outcome | None:
        """Compute the rows of `chosen` on `networks` and converge the rows of `scope` (every
        network: None; no NB transaction when empty); then the bookkeeping and the Events of
        `chosen` and of the policies `keys`."""
        nad_keys = frozenset(nad for network in networks for nad in network.nad_keys)
        pod_facts = self._pods(nad_keys) if nad_keys else []
        namespaces = {name: n.labels for name, n in self._namespaces.items()}
        policy_list = list(chosen.values())

        def work() -> tuple[acls.Result, policyrows.Outcome | None]:
            result = acls.state(networks=networks, pods=pod_facts, namespaces=namespaces,
                                policies=policy_list)
            if scope is not None and not scope:
                return result, None
            return result, self.northbound.converge_policies(result.state, networks=scope)

        done: tuple[acls.Result, policyrows.Outcome | None] = await self._nb(work)
        result, outcome = done
        applied = {_key(k): frozenset(o.networks) for k, o in result.outcomes.items()}
        if scope is None:
            self._applied = {k: v for k, v in applied.items() if v}
            self._rows = _networks_with_rows(result.state)
        else:
            for key in set(self._applied) | set(applied):
                networks_now = ((self._applied.get(key, frozenset()) - scope)
                                | applied.get(key, frozenset()))
                if networks_now:
                    self._applied[key] = networks_now
                else:
                    self._applied.pop(key, None)
            self._rows = (self._rows - scope) | _networks_with_rows(result.state)
        if outcome is not None and outcome.missing_ports:
            logger.debug("MultiNetworkPolicy rows: ports not in NB yet (added once written): %s",
                         " ".join(outcome.missing_ports))
        await self._tell(result, outcome, keys)
        return outcome

    async def _tell(self, result: acls.Result, outcome: policyrows.Outcome | None,
                    keys: Collection[Key]) -> None:
        """The Events: each policy's parse notices (of `keys`), its rows' notices, and the
        conflicts of its rows."""
        for key in sorted(keys):
            record = self._policies.get(key)
            if record is not None:
                for notice in record.parsed.notices:
                    await self.events.post(record.involved(), notice.reason, notice.message,
                                           event_type=notice.type)
        for policy_key, policy_outcome in sorted(result.outcomes.items()):
            record = self._policies.get(_key(policy_key))
            if record is None:
                continue
            for notice in policy_outcome.notices:
                await self.events.post(record.involved(), notice.reason, notice.message,
                                       event_type=notice.type)
        conflicts = outcome.change.conflicts if outcome is not None else ()
        for key, names in sorted(_conflicting_policies(
                result.state, conflicts, [_key(k) for k in result.outcomes]).items()):
            record = self._policies.get(key)
            if record is not None:
                await self.events.post(record.involved(), NB_CONFLICT, (
                    f"MultiNetworkPolicy {key[0]}/{key[1]}: northbound row(s) "
                    f"{', '.join(names)} exist but are not owned by ovnk-secondary (no "
                    f"external_ids:{naming.OWNER_KEY}); the rules needing them are not "
                    "written: remove those rows or rename the policy"))

    async def idle(self) -> None:
        """Wait until nothing is dirty and no flush runs (tests, benchmarks)."""
        while self._task is not None and not self._task.done():
            await asyncio.wait({self._task})

    async def aclose(self) -> None:
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _key(policy_key: str) -> Key:
    namespace, _, name = policy_key.partition("/")
    return namespace, name
