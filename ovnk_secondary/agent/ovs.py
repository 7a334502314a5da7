"""The node's local Open_vSwitch database: pod ports on br-int, through ovsdbapp.

A pod interface becomes an OVS port on the integration bridge whose Interface carries
`external_ids:iface-id=<logical switch port>`; ovn-controller binds it to the logical port and
then sets `external_ids:ovn-installed=true` (the flows are in place). The keys follow OVN-K
(conventions section 4); ours (`ovnk-secondary.io/...`) let a restarted agent find its ports.

Ports are never merged: a plug replaces only this attachment's own port (a retried ADD, a
re-created NIC) or the port of an older sandbox of the same pod on the same NAD; a port of
another attachment (another NAD, or the same NAD as another interface of the sandbox) makes the
plug fail (`PortInUse`) and stays as it is; a port the agent did not plug that carries the same
iface-id only loses that key, as OVN-K does (OVN binds one interface per logical port). An
unplug for a NAD leaves the ports of other NADs alone.

Transactions do not wait for ovs-vswitchd to reconfigure (like `ovs-vsctl --no-wait`): the
wait for `ovn-installed` covers that and concurrent ADDs do not queue behind each other's
reconfiguration. Deleting a port that is about to be added again is the exception: vswitchd
must have dropped its handle first, or it keeps a stale one (see environment.md).

ovsdbapp commits one transaction at a time, each a round trip to ovsdb-server: during a burst
of ADDs the plugs waiting meanwhile go into the next transaction together (a group commit), so
a burst costs a few round trips instead of one per pod. A failing group is retried one plug
per transaction, so one bad plug never fails the others. Whether an interface exists and
whether it is installed are answered from what the IDL last reported (kept by its change
notifications), without a trip through the connection thread.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from ovs.db import data, types
from ovsdbapp import exceptions as ovsdbapp_exceptions
from ovsdbapp.backend.ovs_idl import command, connection, idlutils, transaction
from ovsdbapp.schema.open_vswitch import impl_idl

from ovnk_secondary import errors, naming
from ovnk_secondary.agent import metrics

LOG = logging.getLogger(__name__)

INTEGRATION_BRIDGE = "br-int"
IFACE_ID = "iface-id"
IFACE_ID_VER = "iface-id-ver"
ATTACHED_MAC = "attached_mac"
SANDBOX = "sandbox"
OVN_INSTALLED = "ovn-installed"
# Ours: enough to re-plug or clean up a port after an agent restart.
POD_KEY = "ovnk-secondary.io/pod"  # "<namespace>/<name>"
NETNS_KEY = "ovnk-secondary.io/netns"
IFNAME_KEY = "ovnk-secondary.io/ifname"
# The kernel ifindex the agent plugged. OVS's own `ifindex` column follows a re-created NIC of
# the same name while vswitchd keeps reading the old one, so only our record tells them apart.
IFINDEX_KEY = "ovnk-secondary.io/ifindex"


# How an existing OVS interface stands to an attachment (see `relation`).
SAME, STALE, OTHER, FOREIGN = "same", "stale", "other", "foreign"


class PortInUse(errors.OvnkSecondaryError):
    """The port name or the iface-id of a plug is held by another attachment's port."""


class Plugged(NamedTuple):
    """What a plug did to other interfaces carrying its iface-id."""

    removed: tuple[str, ...] = ()  # ports of older sandboxes of the same attachment, deleted
    unbound: tuple[str, ...] = ()  # interfaces the agent did not plug: their iface-id removed


class Unplugged(NamedTuple):
    removed: tuple[str, ...] = ()  # ports deleted
    kept: tuple[str, ...] = ()  # found by name or sandbox, but another NAD's or not ours


def relation(existing: Mapping[str, str], *, nad_key: str, sandbox: str, ifname: str) -> str:
    """How an OVS interface (its external_ids) stands to the attachment (NAD, sandbox, ifname).

    SAME: this attachment's own port (a retried ADD, a re-created NIC). STALE: the same NAD's
    port of another sandbox (found by iface-id: the same pod, whose sandbox the runtime
    re-created). OTHER: another attachment's: another NAD, or the same NAD as another interface
    of this sandbox. FOREIGN: not plugged by the agent (no ownership marker).
    """
    if existing.get(naming.OWNER_KEY) != naming.OWNER_VALUE:
        return FOREIGN
    if existing.get(naming.NAD_KEY) != nad_key:
        return OTHER
    if existing.get(SANDBOX) != sandbox:
        return STALE
    if existing.get(IFNAME_KEY) != ifname:
        return OTHER
    return SAME


def describe(name: str, external_ids: Mapping[str, str]) -> str:
    """An OVS interface as the holder of a pod interface, for messages."""
    if external_ids.get(naming.OWNER_KEY) != naming.OWNER_VALUE:
        return f"OVS interface {name}, not plugged by ovnk-secondary"
    return (f"{external_ids.get(IFNAME_KEY, '?')} of pod {external_ids.get(POD_KEY, '?')} on NAD "
            f"{external_ids.get(naming.NAD_KEY, '?')} (logical switch port "
            f"{external_ids.get(IFACE_ID, '?')}, OVS port {name})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PortState:
    """An OVS Interface as plain values (safe to hand to other threads)."""

    name: str
    external_ids: Mapping[str, str]
    ofport: int | None
    ifindex: int | None
    error: str | None

    @property
    def installed(self) -> bool:
        return self.external_ids.get(OVN_INSTALLED) == "true"


def _state(iface: Any) -> PortState:
    def first(value: Any) -> Any:
        return value[0] if isinstance(value, list) and value else (value or None)

    return PortState(name=iface.name, external_ids=dict(iface.external_ids),
                     ofport=first(iface.ofport), ifindex=first(iface.ifindex),
                     error=first(iface.error))


class _Index:
    """Interface names by one key of theirs (iface-id, or sandbox and ifname).

    Kept up to date from the IDL's change notifications on the connection thread and read only
    there (inside commands), so a plug or unplug never scans every interface of the node.
    """

    def __init__(self) -> None:
        self._names: dict[object, set[str]] = {}
        self._key_of: dict[str, object] = {}

    def update(self, name: str, key: object | None) -> None:
        previous = self._key_of.pop(name, None)
        if previous is not None:
            names = self._names.get(previous, set())
            names.discard(name)
            if not names:
                self._names.pop(previous, None)
        if key is not None:
            self._key_of[name] = key
            self._names.setdefault(key, set()).add(name)

    def names(self, key: object) -> set[str]:
        return set(self._names.get(key, ()))


class _NoWaitTransaction(impl_idl.OvsVsctlTransaction):  # type: ignore[misc]
    """An ovs-vsctl style transaction that does not wait for ovs-vswitchd (`--no-wait`)."""

    def pre_commit(self, txn: Any) -> None:
        txn.expected_ifaces = set()  # AddPortCommand records into it

    def post_commit(self, txn: Any) -> None:
        transaction.Transaction.post_commit(self, txn)


class _Api(impl_idl.OvsdbIdl):  # type: ignore[misc]
    def create_transaction(self, check_error: bool = False, log_errors: bool = True,
                           wait_for_vswitchd: bool = False, **kwargs: Any) -> Any:
        if wait_for_vswitchd:
            return impl_idl.OvsVsctlTransaction(self, self.ovsdb_connection,
                                                check_error=check_error, log_errors=log_errors)
        return _NoWaitTransaction(self, self.ovsdb_connection, check_error=check_error,
                                  log_errors=log_errors)


# Only what the agent and the ovsdbapp commands it runs (add_br, del_br, add_port, del_port,
# list_br, list_ports) read or write; a bridge's other_config holds the MAC an uplink's move
# gives it (bridgemappings). vswitchd rewrites Interface statistics and status every few
# seconds for every port, and ovn-controller records a conntrack zone per bound port in br-int's
# external_ids: monitored, each would cost the IDL work per pod (most of the agent's CPU in a
# burst of ADDs).
_INTERFACE_COLUMNS = ("name", "type", "options", "external_ids", "ofport", "ifindex", "error")
_COLUMNS = {
    "Bridge": ("name", "ports", "datapath_type", "other_config"),
    "Port": ("name", "interfaces"),
    "Interface": _INTERFACE_COLUMNS,
}
_FULL_TABLES = ("Open_vSwitch",)  # one row; ovsdbapp's wait for vswitchd reads its cfg columns


class _Idl(connection.OvsdbIdl):  # type: ignore[misc]
    """Calls back on every Interface change (runs on the connection thread)."""

    on_interface: Callable[[str, Any], None] | None = None

    def cooperative_yield(self) -> None:
        """Do not yield per row. ovsdbapp's `time.sleep(0)` here is for green threads; with OS
        threads the interpreter switches every few milliseconds by itself, and a syscall and a
        GIL hand-over per row update was ~8% of the agent's CPU in a burst of ADDs."""

    def notify(self, event: str, row: Any, updates: Any = None) -> None:
        if self.on_interface is not None and row._table.name == "Interface":
            self.on_interface(event, row)


def _delete_ports_of(api: Any, txn: Any, interface_names: Iterable[str]) -> list[str]:
    """Delete the ports holding these interfaces (usually a port has its interface's name)."""
    removed = []
    for name in interface_names:
        iface = idlutils.row_by_value(api.idl, "Interface", "name", name, None)
        if iface is None:
            continue
        port = idlutils.row_by_value(api.idl, "Port", "name", name, None)
        if port is None or iface not in port.interfaces:
            port = next((p for p in api.tables["Port"].rows.values() if iface in p.interfaces),
                        None)
        if port is not None:
            removed.append(port.name)
            _delete_port(api, port)
    return removed


def _delete_port(api: Any, port: Any) -> None:
    """Take `port` off its bridge and delete it with its interfaces (ovsdbapp's del_port).

    ovsdbapp finds the bridge by reading each bridge's `ports`, which builds and sorts a Row for
    every port on br-int: with hundreds of pods, a burst of DELs spent most of the agent's CPU
    there. Membership in the column's raw set of UUIDs is a hash lookup.
    """
    key = data.Atom(types.UuidType, port.uuid)
    for bridge in api.tables["Bridge"].rows.values():
        if key in bridge._data["ports"].values:
            bridge.delvalue("ports", port)
            break
    for iface in port.interfaces:
        iface.delete()
    port.delete()


class _Plug(command.BaseCommand):  # type: ignore[misc]
    """Add (or refresh) a port on a bridge, unless its name or its iface-id is another
    attachment's; replace older sandboxes' ports with the same iface-id (see the module)."""

    def __init__(self, api: Any, *, bridge: str, name: str, external_ids: Mapping[str, str],
                 by_iface_id: _Index):
        super().__init__(api)
        self.bridge = bridge
        self.name = name
        self.external_ids = dict(external_ids)
        self.by_iface_id = by_iface_id  # maintained on the connection thread, where this runs

    def run_idl(self, txn: Any) -> None:
        ids = self.external_ids
        attachment = {"nad_key": ids.get(naming.NAD_KEY, ""), "sandbox": ids.get(SANDBOX, ""),
                      "ifname": ids.get(IFNAME_KEY, "")}
        existing = idlutils.row_by_value(self.api.idl, "Interface", "name", self.name, None)
        if existing is not None and relation(existing.external_ids, **attachment) != SAME:
            raise PortInUse(f"OVS port {self.name} is already "
                            f"{describe(self.name, existing.external_ids)}")
        doomed: list[Any] = []  # rows
        unbound: list[Any] = []
        for name in sorted(self.by_iface_id.names(ids[IFACE_ID]) - {self.name}):
            row = idlutils.row_by_value(self.api.idl, "Interface", "name", name, None)
            if row is None:
                continue
            kind = relation(row.external_ids, **attachment)
            if kind == OTHER:
                raise PortInUse(f"logical switch port {ids[IFACE_ID]} is already plugged as "
                                f"{describe(name, row.external_ids)}")
            (unbound if kind == FOREIGN else doomed).append(row)
        for row in unbound:  # checked them all first: a refused plug changes nothing
            row.delkey("external_ids", IFACE_ID)
        removed = _delete_ports_of(self.api, txn, [row.name for row in doomed])
        if existing is None:
            self.api.add_port(self.bridge, self.name, may_exist=True,
                              external_ids=ids).run_idl(txn)
        else:
            existing.external_ids = ids
        self.result = Plugged(removed=tuple(removed), unbound=tuple(r.name for r in unbound))


class _Unplug(command.BaseCommand):  # type: ignore[misc]
    """Delete a port by name and any of ours left by the same sandbox and interface; with a NAD,
    only ports of that NAD (Multus undoes another NAD's failed ADD under the same names)."""

    def __init__(self, api: Any, *, name: str, sandbox: str, ifname: str, nad_key: str,
                 by_sandbox: _Index):
        super().__init__(api)
        self.name = name
        self.sandbox = sandbox
        self.ifname = ifname
        self.nad_key = nad_key
        self.by_sandbox = by_sandbox  # maintained on the connection thread, where this runs

    def run_idl(self, txn: Any) -> None:
        found = {self.name}
        if self.sandbox:
            found |= self.by_sandbox.names((self.sandbox, self.ifname))
        doomed, kept = [], []
        for name in sorted(found):
            row = idlutils.row_by_value(self.api.idl, "Interface", "name", name, None)
            if row is None:
                continue
            ids = row.external_ids
            if ids.get(naming.OWNER_KEY) != naming.OWNER_VALUE or (
                    self.nad_key and ids.get(naming.NAD_KEY) != self.nad_key):
                kept.append(name)
            else:
                doomed.append(name)
        self.result = Unplugged(removed=tuple(_delete_ports_of(self.api, txn, doomed)),
                                kept=tuple(kept))


class _Read(command.BaseCommand):  # type: ignore[misc]
    """Interfaces by name, or all matching a predicate, as plain values (under the lock)."""

    READ_ONLY = True

    def __init__(self, api: Any, *, names: Iterable[str] | None = None,
                 predicate: Callable[[Any], bool] | None = None):
        super().__init__(api)
        self.names = names
        self.predicate = predicate

    def run_idl(self, txn: Any) -> None:
        if self.names is not None:
            rows = [idlutils.row_by_value(self.api.idl, "Interface", "name", n, None)
                    for n in self.names]
            self.result = [_state(r) for r in rows if r is not None]
        else:
            self.result = [_state(i) for i in self.api.tables["Interface"].rows.values()
                           if self.predicate is None or self.predicate(i)]


_Plugs = list[tuple["_Plug", "concurrent.futures.Future[Plugged]"]]


def _unavailable(exc: Exception) -> bool:
    """The OVSDB did not answer (timeout, no connection), as opposed to a command failing."""
    return isinstance(exc, (ovsdbapp_exceptions.TimeoutException,
                            ovsdbapp_exceptions.OvsdbConnectionUnavailable)) or \
        str(exc) == "OVS transaction timed out"


class _GroupCommit:
    """Plugs submitted from any thread, committed together by one thread of its own."""

    def __init__(self, api: Any) -> None:
        self._api = api
        self._queue: queue.SimpleQueue[tuple[_Plug, concurrent.futures.Future[Plugged]]
                                       | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ovs-plugs", daemon=True)
        self._thread.start()

    def submit(self, plug: _Plug) -> Plugged:
        """Commit `plug` (with whatever else is waiting); its result, or its error."""
        future: concurrent.futures.Future[Plugged] = concurrent.futures.Future()
        self._queue.put((plug, future))
        return future.result()

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while True:  # everything that queued up while the previous group was committed
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._commit(group)
                    return
                group.append(item)
            self._commit(group)

    def _commit(self, group: _Plugs) -> None:
        if len(group) > 1:
            try:
                # not logged here: the ADD reports the error (e.g. PortInUse) to the runtime
                with self._api.transaction(check_error=True, log_errors=False) as txn:
                    for plug, _ in group:
                        txn.add(plug)
            except Exception as exc:
                if _unavailable(exc):  # the database, not a plug: retrying would only wait again
                    for _, future in group:
                        future.set_exception(exc)
                    return
                # retried alone below: only the bad plug fails
                LOG.info("a transaction of %d plugs failed (%s); committing them one by one",
                         len(group), exc)
            else:
                for plug, future in group:
                    future.set_result(plug.result)
                return
        for plug, future in group:
            try:
                future.set_result(plug.execute(check_error=True, log_errors=False))
            except Exception as exc:
                future.set_exception(exc)


class LocalOvs:
    """The local OVSDB (one connection, one IDL) and waiters for `ovn-installed`."""

    def __init__(self, *, remote: str, timeout: float = 30.0) -> None:
        helper = idlutils.get_schema_helper(remote, "Open_vSwitch")
        for table in _FULL_TABLES:
            helper.register_table(table)
        for table, columns in _COLUMNS.items():
            helper.register_columns(table, list(columns))
        idl = _Idl(remote, helper)
        idl.on_interface = self._on_interface
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}
        self._lock = threading.Lock()
        self._by_iface_id = _Index()
        self._by_sandbox = _Index()
        # interface name -> external_ids, as the IDL last reported (read from any thread)
        self._ids: dict[str, Mapping[str, str]] = {}
        # ovsdbapp keeps the connection in a class attribute: a class per instance keeps two
        # LocalOvs (tests, tools) from silently sharing the first one's database.
        api_class = type("_ApiInstance", (_Api,), {"_ovsdb_connection": None})
        self.api = api_class(connection.Connection(idl, timeout))
        self._plugs = _GroupCommit(self.api)

    def connected(self) -> bool:
        """Connected to the local OVSDB, with a complete copy of what the agent monitors."""
        idl = self.api.idl
        return bool(idl._session.is_connected() and idl.state == idl.IDL_S_MONITORING)

    # --- waiting for ovn-controller --------------------------------------------------------

    def _on_interface(self, event: str, row: Any) -> None:
        name = row.name
        ids = {} if event == "delete" else row.external_ids
        self._by_iface_id.update(name, ids.get(IFACE_ID) or None)
        sandbox = ids.get(SANDBOX)
        self._by_sandbox.update(name, (sandbox, ids.get(IFNAME_KEY, "")) if sandbox else None)
        installed = ids.get(OVN_INSTALLED) == "true"
        # before the waiters are looked at: `wait_installed` registers, then reads this
        if event == "delete":
            self._ids.pop(name, None)
        else:
            self._ids[name] = ids
        if name not in self._waiters or not installed:
            return
        with self._lock:
            waiters = self._waiters.pop(name, set())
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    async def wait_installed(self, name: str, *, timeout: float) -> bool:
        """Until ovn-controller marks the interface installed; False on timeout."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (loop, future)
        with self._lock:
            self._waiters.setdefault(name, set()).add(entry)
        try:
            # It may already be installed (before we registered): then no change will come.
            if self._ids.get(name, {}).get(OVN_INSTALLED) == "true":
                return True
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                waiters = self._waiters.get(name)
                if waiters is not None:
                    waiters.discard(entry)
                    if not waiters:
                        del self._waiters[name]

    # --- reads ------------------------------------------------------------------------------

    def plugged_by_nad(self) -> dict[str, int]:
        """NAD key -> interfaces the agent plugged for it, as the IDL last reported (no trip
        through the connection thread: cheap enough for every scrape of /metrics)."""
        return dict(collections.Counter(
            ids.get(naming.NAD_KEY, "") for ids in list(self._ids.values())
            if ids.get(naming.OWNER_KEY) == naming.OWNER_VALUE))

    @metrics.ovs_operation("read")
    def interface(self, name: str) -> PortState | None:
        found: list[PortState] = _Read(self.api, names=[name]).execute(check_error=True)
        return found[0] if found else None

    @metrics.ovs_operation("read")
    def interfaces_with_iface_id(self, iface_id: str) -> list[PortState]:
        found: list[PortState] = _Read(
            self.api, predicate=lambda i: i.external_ids.get(IFACE_ID) == iface_id
        ).execute(check_error=True)
        return found

    @metrics.ovs_operation("read")
    def holders(self, *, name: str, netns: str, ifname: str) -> list[PortState]:
        """The interface `name` and every one whose pod side, by our records, is `ifname` in
        `netns`: who may hold those names (scans every interface: for the error path only)."""
        def holds(iface: Any) -> bool:
            ids = iface.external_ids
            return bool(iface.name == name or (ids.get(NETNS_KEY) == netns
                                               and ids.get(IFNAME_KEY) == ifname))

        found: list[PortState] = _Read(self.api, predicate=holds).execute(check_error=True)
        return found

    @metrics.ovs_operation("read")
    def our_interfaces(self) -> list[PortState]:
        """Every interface the agent plugged (carries our ownership marker)."""
        found: list[PortState] = _Read(
            self.api,
            predicate=lambda i: i.external_ids.get(naming.OWNER_KEY) == naming.OWNER_VALUE,
        ).execute(check_error=True)
        return found

    @metrics.ovs_operation("read")
    def integration_datapath_type(self) -> str:
        """`netdev` (userspace) or `system` (kernel): what ovn-controller gives br-int."""
        ids = self.api.db_get("Open_vSwitch", ".", "external_ids").execute(check_error=True)
        if ids.get("ovn-bridge-datapath-type"):
            return str(ids["ovn-bridge-datapath-type"])
        bridges = self.api.db_find("Bridge", ("name", "=", INTEGRATION_BRIDGE),
                                   columns=["datapath_type"]).execute(check_error=True)
        return str(bridges[0]["datapath_type"] or "system") if bridges else "system"

    @metrics.ovs_operation("read")
    def port_bridges(self) -> dict[str, str]:
        """OVS port name -> its bridge, for every bridge."""
        result: dict[str, str] = {}
        for bridge in self.api.list_br().execute(check_error=True):
            for port in self.api.list_ports(bridge).execute(check_error=True):
                result[port] = bridge
        return result

    # --- writes ------------------------------------------------------------------------------

    @metrics.ovs_operation("plug")
    def plug(self, *, name: str, external_ids: Mapping[str, str],
             bridge: str = INTEGRATION_BRIDGE) -> Plugged:
        """Add the port (see the module for what it replaces); PortInUse when the name or the
        iface-id is another attachment's."""
        previous = self._ids.get(name)
        if previous is not None and relation(
                previous, nad_key=external_ids.get(naming.NAD_KEY, ""),
                sandbox=external_ids.get(SANDBOX, ""),
                ifname=external_ids.get(IFNAME_KEY, "")) == SAME:
            # Same name again means a re-created NIC: drop vswitchd's handle before re-adding.
            # (Another attachment's port of this name is refused by _Plug, untouched.)
            self.api.del_port(name, if_exists=True).execute(check_error=True,
                                                            wait_for_vswitchd=True)
        return self._plugs.submit(_Plug(self.api, bridge=bridge, name=name,
                                        external_ids=external_ids, by_iface_id=self._by_iface_id))

    @metrics.ovs_operation("unplug")
    def unplug(self, *, name: str, sandbox: str = "", ifname: str = "",
               nad_key: str = "") -> Unplugged:
        """Delete the port by name and by sandbox (only ours; with `nad_key`, only that NAD's);
        says which were deleted and which belong to others."""
        done: Unplugged = _Unplug(self.api, name=name, sandbox=sandbox, ifname=ifname,
                                  nad_key=nad_key, by_sandbox=self._by_sandbox
                                  ).execute(check_error=True)
        return done

    @metrics.ovs_operation("replug")
    def replug(self, state: PortState, *, ifindex: int,
               bridge: str = INTEGRATION_BRIDGE) -> None:
        """Delete and add again (drops a stale vswitchd handle), recording the new ifindex."""
        self.api.del_port(state.name, if_exists=True).execute(check_error=True,
                                                              wait_for_vswitchd=True)
        ids = {k: v for k, v in state.external_ids.items() if k != OVN_INSTALLED}
        ids[IFINDEX_KEY] = str(ifindex)
        _Plug(self.api, bridge=bridge, name=state.name, external_ids=ids,
              by_iface_id=self._by_iface_id).execute(check_error=True)

    def close(self) -> None:
        self._plugs.close()
        self.api.ovsdb_connection.stop()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
