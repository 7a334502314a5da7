"""The ovsdbapp adapter: connect to OVN northbound, read our rows, apply diffs.

Thin on purpose: no policy lives here. What it guarantees:
- nothing is read before the IDL holds a complete copy of the database (the initial dump
  after each (re)connection), because "absent from an empty cache" is not "absent";
- every transaction runs with `check_error=True`, so a refused command raises
  `errors.NorthboundError` instead of being logged and forgotten;
- each `Northbound` has its own connection (ovsdbapp keeps the connection on the backend
  class, so we give every instance its own subclass);
- all calls block: callers in asyncio code run them in an executor;
- reads cost O(rows read), never O(ports of a switch) per port: the IDL's `Row.__getattr__`
  turns a switch's `ports` column into a sorted list of row objects on every access, which
  made each one-port read O(N log N) at N ports (quadratic pod creation). Reads here take the
  committed values (`Row._data`) instead and look ports up by their name index;
- the IDL copies only the tables and columns we read or write (`MONITORED`): the copy of
  a whole NB (every column of every table: OVN-Kubernetes' own switches, ports, ACLs...)
  cost ~5 kB per port, the largest part of the controller's memory at 10,000 pods;
- `converge` writes several pods at once under load (one transaction, fewer round trips),
  each pod's rows all-or-nothing: when the shared transaction fails, every pod is retried in
  its own, so one bad pod never fails its batch-mates;
- policy rows (port groups, ACLs, address sets: `desired.PolicyState`) are read and written
  apart from switches and ports (`read_policies`, `converge_policies`), all of them in one
  transaction: a policy is never half written. Only owned switches and ports are reported as
  drift (`on_change`); policy rows are repaired by converging them again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import ovs.stream
from ovsdbapp.backend.ovs_idl import command, connection, idlutils
from ovsdbapp.schema.ovn_northbound import impl_idl

from ovnk_secondary import errors, naming
from ovnk_secondary.northbound import datums, desired, diff, policyrows

logger = logging.getLogger(__name__)

SCHEMA_NAME = "OVN_Northbound"
# How many commands one full-sync transaction carries (hot-path transactions carry one pod).
SYNC_BATCH = 500
# What the IDL copies: the columns of `desired.Switch`/`desired.Port` plus the switch's
# `ports` (and nothing that our ovsdbapp commands would touch beyond these: ls_add, ls_del,
# lsp_add without a parent, lsp_del, db_set, db_remove on these columns); likewise for the
# policy rows (pg_add, pg_del, address_set_*, and `policyrows`' own commands). Where
# OVN-Kubernetes is the primary network, its own port groups, ACLs and address sets are
# copied too: the price of telling our names from theirs.
MONITORED: dict[str, tuple[str, ...]] = {
    "Logical_Switch": ("name", "ports", "external_ids", "other_config"),
    "Logical_Switch_Port": ("name", "type", "addresses", "port_security", "external_ids",
                            "options", "tag_request", "enabled"),
    # policy rows: the columns of desired.PortGroup/Acl/AddressSet and their references
    "Port_Group": ("name", "ports", "acls", "external_ids"),
    "ACL": ("name", "priority", "direction", "match", "action", "options", "external_ids"),
    "Address_Set": ("name", "addresses", "external_ids"),
}
# The tables whose owned rows `on_change` reports.
DRIFT_TABLES = frozenset({"Logical_Switch", "Logical_Switch_Port"})


def _log(change: diff.Diff | diff.PolicyDiff | None) -> None:
    """One INFO line per committed row change (a changed row is a fact an operator may need)."""
    if change is not None:
        for line in diff.describe(change):
            logger.info("NB: %s", line)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outcome:
    """What `converge` did for one part: the diff it applied, or why it failed."""

    change: diff.Diff | None = None
    error: errors.NorthboundError | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class RowChange:
    """An owned row of ours was updated or deleted in NB (by anybody, us included)."""

    table: str  # "Logical_Switch" or "Logical_Switch_Port"
    event: str  # "update" or "delete"
    name: str
    external_ids: dict[str, str]  # the row's (for a deletion: its last)


class _Idl(connection.OvsdbIdl):  # type: ignore[misc]
    """ovsdbapp's IDL without its per-row `time.sleep(0)`, telling us of changed owned rows.

    python-ovs calls `cooperative_yield` for every row of every update (ovsdbapp makes it
    `time.sleep(0)`, for eventlet). With threads it only drops the GIL: while the asyncio
    thread is busy, the connection thread then waits a whole switch interval (5 ms) to get
    it back, per row, and NB replies and updates crawl. Python's own switch interval keeps
    the threads fair without it.

    `on_change` (called in the connection thread) hears of every update and deletion of a
    switch or port (`DRIFT_TABLES`) that carries, or carried, our ownership marker: drift to
    repair within seconds.
    Creations are not reported (a row appearing is never drift of ours), nor a switch's
    `ports` changing alone (every pod's port creation does that; ports report themselves).
    """

    on_change: Callable[[RowChange], None] | None = None

    def cooperative_yield(self) -> None:
        pass

    def notify(self, event: str, row: Any, updates: Any = None) -> None:
        super().notify(event, row, updates)
        if self.on_change is None or event not in ("update", "delete"):
            return
        table = row._table.name
        if table not in DRIFT_TABLES:
            return
        if event == "update" and set(getattr(updates, "_data", None) or ()) <= {"ports"}:
            return  # a port added to or removed from a switch: the port's own event tells
        external_ids = datums.map_(row, "external_ids")
        before = getattr(updates, "_data", {}).get("external_ids") if updates else None
        owned_before = before is not None and any(
            k.value == naming.OWNER_KEY and v.value == naming.OWNER_VALUE
            for k, v in before.values.items())
        if datums.owned(external_ids) or owned_before:
            self.on_change(RowChange(table=table, event=event, name=datums.scalar(row, "name"),
                                     external_ids=external_ids))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Part:
    """What `converge` makes NB hold: the rows of `want`; and rows of ours among `switches`
    that `want` lacks are deleted (with their ports). Ports of `want` named in `existing` are
    only updated, never created: another pod's ports changed with this one's (a live
    migration's switch-over), which must not come back if that pod was removed meanwhile."""

    want: desired.State
    switches: frozenset[str] = frozenset()
    existing: frozenset[str] = frozenset()


class _Converge(command.BaseCommand):  # type: ignore[misc]
    """Inside a transaction: read the part's rows, diff them against `want`, write the diff.

    Reading in the transaction (the connection thread holds the IDL lock while it runs)
    keeps read and write consistent, and a transaction retried on TRY_AGAIN recomputes it.
    """

    def __init__(self, northbound: Northbound, part: Part) -> None:
        super().__init__(northbound._api)
        self.northbound = northbound
        self.want = part.want
        self.scope = part.switches
        self.existing = part.existing

    def run_idl(self, txn: Any) -> None:
        # the ports' switches too: a port is never written into a switch we do not own
        wanted = set(self.want.switches) | self.scope
        have, foreign = self.northbound._read_locked(
            wanted | {p.switch for p in self.want.ports.values()}, set(self.want.ports),
            {p.name: p.switch for p in self.want.ports.values()})
        have = desired.State(
            switches={n: s for n, s in have.switches.items() if n in wanted}, ports=have.ports)
        want = self.want
        if self.existing - set(have.ports):
            want = dataclasses.replace(want, ports={
                n: p for n, p in want.ports.items() if n not in self.existing or n in have.ports})
        change = diff.diff(want, have, foreign=foreign)
        for nested in self.northbound._commands(change):
            nested.run_idl(txn)
        self.result = change


class TransactionObserver(Protocol):
    """Told of each transaction's end: whether it committed, and how long it took."""

    def __call__(self, *, committed: bool, seconds: float) -> None: ...


@dataclasses.dataclass(frozen=True)
class Tls:
    """The files of an `ssl:` connection to NB (PEM): this client's private key and
    certificate, and the CA certificate that signed the server's (ovn-nbctl's `-p`, `-c`,
    `-C`)."""

    private_key: str
    certificate: str
    ca_cert: str


def check_remote(remote: str, tls: Tls | None) -> list[str]:
    """The remotes of `remote` (comma-separated: the members of a clustered NB), checked.

    Each is `tcp:HOST:PORT`, `ssl:HOST:PORT` or `unix:PATH` (ovsdb's active remotes; IPv6
    hosts in brackets). `ssl:` needs `tls`, with files that can be read. InvalidConfig says
    what to fix.
    """
    remotes = [r.strip() for r in remote.split(",")]
    for one in remotes:
        kind, _, rest = one.partition(":")
        if kind == "unix" and rest:
            continue
        host, _, port = rest.rpartition(":")
        if kind not in ("tcp", "ssl") or not host or not port.isdigit():
            raise errors.InvalidConfig(
                f"--ovn-nb: {one!r} is not an OVSDB remote; use tcp:HOST:PORT, ssl:HOST:PORT or "
                "unix:PATH, comma-separated for the members of a clustered NB")
    if any(r.startswith("ssl:") for r in remotes):
        if tls is None:
            raise errors.InvalidConfig(
                "--ovn-nb: an ssl: remote needs --ovn-nb-private-key, --ovn-nb-certificate and "
                "--ovn-nb-ca-cert (PEM files: this client's key and certificate, and the CA "
                "that signed the NB server's certificate)")
        for flag, path in (("--ovn-nb-private-key", tls.private_key),
                           ("--ovn-nb-certificate", tls.certificate),
                           ("--ovn-nb-ca-cert", tls.ca_cert)):
            if not os.access(path, os.R_OK):
                raise errors.InvalidConfig(f"{flag} {path}: no such readable file")
    return remotes


class Northbound:
    """A connection to one NB database."""

    def __init__(self, *, remote: str, timeout: float = 10.0,
                 on_change: Callable[[RowChange], None] | None = None,
                 tls: Tls | None = None,
                 on_transaction: TransactionObserver | None = None) -> None:
        """`remote`: see `check_remote` (InvalidConfig when wrong); `tls` for `ssl:` remotes
        (python-ovs keeps one key, certificate and CA per process). `on_change`: see `_Idl`;
        called in the connection thread, so it must be quick. `on_transaction(committed=,
        seconds=)` after each transaction of ours (the controller's metrics), in the thread
        that ran it."""
        check_remote(remote, tls)
        if tls is not None:
            ovs.stream.Stream.ssl_set_private_key_file(tls.private_key)
            ovs.stream.Stream.ssl_set_certificate_file(tls.certificate)
            ovs.stream.Stream.ssl_set_ca_cert_file(tls.ca_cert)
        self.remote = remote
        self.timeout = timeout
        self.on_change = on_change
        self.on_transaction = on_transaction
        self._api: Any = None
        self._lock = threading.Lock()

    # -- connection ---------------------------------------------------------------------

    def connect(self) -> None:
        """Connect and wait for the initial dump; NorthboundError when NB is unreachable."""
        with self._lock:
            if self._api is not None:
                return
            try:
                helper = idlutils.get_schema_helper(self.remote, SCHEMA_NAME)
                for table, columns in MONITORED.items():
                    helper.register_columns(table, list(columns))
                idl = _Idl(self.remote, helper)
                idl.on_change = self.on_change
                conn = connection.Connection(idl=idl, timeout=self.timeout)
                # a class per instance: ovsdbapp stores the connection on the class
                api_class = type("OvnNbApi", (impl_idl.OvnNbApiIdlImpl,),
                                 {"_ovsdb_connection": None})
                self._api = api_class(conn)
            except Exception as exc:  # ovsdbapp raises bare Exception("Timeout") and others
                raise errors.NorthboundError(
                    f"cannot connect to OVN northbound at {self.remote} within "
                    f"{self.timeout:g}s ({exc}); check --ovn-nb and that ovsdb-server runs"
                ) from exc
            logger.info("connected to OVN northbound at %s", self.remote)

    def close(self) -> None:
        with self._lock:
            api, self._api = self._api, None
        if api is not None:
            api.ovsdb_connection.stop(timeout=5)

    @property
    def _idl(self) -> Any:
        if self._api is None:
            raise errors.NorthboundError("not connected to OVN northbound: call connect() first")
        return self._api.ovsdb_connection.idl

    def ready(self) -> bool:
        """Connected, and the IDL holds a complete copy of the database."""
        if self._api is None:
            return False
        idl = self._idl
        return bool(idl._session.is_connected() and idl.state == idl.IDL_S_MONITORING
                    and idl.has_ever_connected())

    def session(self) -> int:
        """Changes whenever the connection drops or is established again."""
        return int(self._idl._session.get_seqno()) if self._api is not None else -1

    # -- reading ------------------------------------------------------------------------

    def _require_ready(self) -> None:
        if not self.ready():
            raise errors.NorthboundError(
                f"OVN northbound at {self.remote} is not connected or its initial copy is "
                "not complete; retrying later"
            )

    def read(self) -> tuple[desired.State, frozenset[str]]:
        """(our rows, names of rows we do not own) — the actual side of a full sync."""
        self._require_ready()
        with self._api.ovsdb_connection.lock:  # the connection thread mutates rows under it
            return self._read_locked(None, None)

    def read_some(
        self, *, switches: Iterable[str], ports: Iterable[str]
    ) -> tuple[desired.State, frozenset[str]]:
        """Like `read`, limited to the named rows (the hot path: one pod's ports)."""
        self._require_ready()
        with self._api.ovsdb_connection.lock:
            return self._read_locked(set(switches), set(ports))

    def _read_locked(
        self, switch_names: set[str] | None, port_names: set[str] | None,
        port_switches: Mapping[str, str] | None = None,
    ) -> tuple[desired.State, frozenset[str]]:
        """Our rows among the named ones (all when None) and the names of foreign ones.

        Cost: O(rows named) by the IDL's name indexes, not O(rows in NB). `port_switches`
        (port name -> the switch expected to hold it) spares the search for each named port's
        switch among all switches. Rows inserted earlier in the same transaction (by another
        part of a batch; they have no committed `_data` yet) are skipped: parts of one
        transaction never share a name, and rows deleted earlier are gone from the table.
        """
        tables = self._api.tables
        foreign: set[str] = set()
        switches: dict[str, desired.Switch] = {}
        if switch_names is None:
            switch_rows = list(tables["Logical_Switch"].rows.values())
        else:
            switch_rows = [r for n in switch_names
                           for r in idlutils.rows_by_value(self._idl, "Logical_Switch", "name", n)]
        switch_rows = [r for r in switch_rows if r._data is not None]
        for row in switch_rows:
            name = datums.scalar(row, "name")
            external_ids = datums.map_(row, "external_ids")
            if datums.owned(external_ids):
                switches[name] = desired.Switch(name=name, external_ids=external_ids,
                                                other_config=datums.map_(row, "other_config"))
            else:
                foreign.add(name)
        port_switch: dict[Any, str] = {}
        rows: Iterable[Any]
        if port_names is None:  # everything: one pass over every switch's references
            for row in switch_rows:
                name = datums.scalar(row, "name")
                for port in datums.uuids(row, "ports"):
                    port_switch[port] = name
            rows = [r for r in tables["Logical_Switch_Port"].rows.values()
                    if r._data is not None]
        else:  # a few ports: by name index, each switch found by an O(1) membership test
            rows = [r for r in (self._port_by_name(n) for n in port_names)
                    if r is not None and r._data is not None]
            everything: list[Any] | None = None
            for port_row in rows:
                hint = (port_switches or {}).get(datums.scalar(port_row, "name"))
                candidates = ([r for r in switch_rows if datums.scalar(r, "name") == hint]
                              if hint else [])
                holder = next((s for s in candidates
                               if datums.references(s, "ports", port_row.uuid)), None)
                if holder is None:  # moved, or no hint: look at every switch
                    if everything is None:
                        everything = [r for r in tables["Logical_Switch"].rows.values()
                                      if r._data is not None]
                    holder = next((s for s in everything
                                   if datums.references(s, "ports", port_row.uuid)), None)
                port_switch[port_row.uuid] = datums.scalar(holder, "name") if holder else ""
        ports: dict[str, desired.Port] = {}
        for row in rows:
            name = datums.scalar(row, "name")
            external_ids = datums.map_(row, "external_ids")
            if not datums.owned(external_ids):
                foreign.add(name)
                continue
            ports[name] = desired.Port(
                name=name,
                switch=port_switch.get(row.uuid, ""),
                type=datums.scalar(row, "type"),
                addresses=datums.strings(row, "addresses"),
                port_security=datums.strings(row, "port_security"),
                external_ids=external_ids,
                options=datums.map_(row, "options"),
                tag_request=datums.scalar(row, "tag_request"),
                enabled=datums.scalar(row, "enabled"),
            )
        return desired.State(switches=switches, ports=ports), frozenset(foreign)

    def read_policies(self) -> tuple[desired.PolicyState, frozenset[str]]:
        """(our port groups, ACLs and address sets, names of port groups and address sets we
        do not own)."""
        self._require_ready()
        with self._api.ovsdb_connection.lock:
            state, foreign, _ = policyrows.read(self._api)
            return state, foreign

    def _port_by_name(self, name: str) -> Any:
        try:
            return self._api.lookup("Logical_Switch_Port", name)
        except idlutils.RowNotFound:
            return None

    # -- writing ------------------------------------------------------------------------

    def apply(self, change: diff.Diff, *, batch: int = SYNC_BATCH) -> int:
        """Apply a diff: switches first, then ports; at most `batch` commands a transaction.

        Returns how many commands ran. Raises NorthboundError when a transaction fails; the
        transactions before it stay committed (a later sync converges the rest).
        """
        if change.empty:
            return 0
        self._require_ready()
        commands = list(self._commands(change))
        for start in range(0, len(commands), batch):
            self._commit(commands[start:start + batch])
        _log(change)
        return len(commands)

    def converge(self, parts: Sequence[Part]) -> list[Outcome]:
        """Make NB hold each part's rows (a pod's ports, a network's switch); one `Outcome`
        per part, in order.

        Rows are read and diffed inside the transaction. All parts go in one transaction;
        if it fails, each part is tried again in its own transaction so that only the
        failing parts fail (a part is all-or-nothing either way). Not connected or not
        ready: every part fails with that error.
        """
        if not parts:
            return []
        try:
            self._require_ready()
        except errors.NorthboundError as exc:
            return [Outcome(error=exc) for _ in parts]
        commands = [_Converge(self, part) for part in parts]
        try:
            self._commit(commands)
            for command in commands:
                _log(command.result)
            return [Outcome(change=c.result) for c in commands]
        except errors.NorthboundError as exc:
            if len(parts) == 1:
                return [Outcome(error=exc)]
            logger.info("NB transaction of %d pods failed (%s): retrying each alone",
                        len(parts), exc)
        outcomes = []
        for part in parts:
            single = _Converge(self, part)
            try:
                self._commit([single])
                _log(single.result)
                outcomes.append(Outcome(change=single.result))
            except errors.NorthboundError as exc:
                outcomes.append(Outcome(error=exc))
        return outcomes

    def converge_policies(self, want: desired.PolicyState, *,
                          networks: Iterable[str] | None = None) -> policyrows.Outcome:
        """Make NB hold exactly `want` among our policy rows (of `networks` only, when given:
        the others are left as they are), in one transaction read, diffed and written.
        NorthboundError when not ready or when the transaction fails (nothing is written)."""
        self._require_ready()
        command_ = policyrows.Converge(self._api, want,
                                       None if networks is None else frozenset(networks))
        self._commit([command_])
        outcome: policyrows.Outcome = command_.result
        _log(outcome.change)
        return outcome

    def apply_policies(self, change: diff.PolicyDiff, *, batch: int = SYNC_BATCH) -> int:
        """Apply a policy diff in order, at most `batch` commands a transaction (the
        transactions before a failing one stay committed); returns how many commands ran."""
        if change.empty:
            return 0
        self._require_ready()
        policy_commands = list(policyrows.commands(self._api, change))
        for start in range(0, len(policy_commands), batch):
            self._commit(policy_commands[start:start + batch])
        _log(change)
        return len(policy_commands)

    def _commit(self, commands: list[Any]) -> None:
        started = time.monotonic()
        committed = False
        try:
            with self._api.transaction(check_error=True, nested=False) as txn:
                for command in commands:
                    txn.add(command)
            committed = True
        except Exception as exc:
            raise errors.NorthboundError(
                f"OVN northbound transaction of {len(commands)} commands failed: {exc}"
            ) from exc
        finally:
            if self.on_transaction is not None:
                self.on_transaction(committed=committed, seconds=time.monotonic() - started)

    def _commands(self, change: diff.Diff) -> Iterator[Any]:
        api = self._api
        for switch in change.create_switches:
            # Logical_Switch names are not unique in the schema: ls_add checks the cache
            yield api.ls_add(switch.name, may_exist=False, external_ids=dict(switch.external_ids),
                             other_config=dict(switch.other_config))
        for update in change.update_switches:
            yield from self._update_commands("Logical_Switch", update)
        for port in change.delete_ports:
            yield api.lsp_del(port.name, switch=port.switch or None, if_exists=True)
        for port in change.create_ports:
            # `enabled` only when set (a migration target's): unset is OVN's enabled
            enabled = {"enabled": [port.enabled]} if port.enabled is not None else {}
            yield api.lsp_add(
                port.switch, port.name, may_exist=False,
                type=port.type,
                addresses=list(port.addresses),
                port_security=list(port.port_security),
                external_ids=dict(port.external_ids),
                options=dict(port.options),
                tag_request=[port.tag_request] if port.tag_request is not None else [],
                **enabled,
            )
        for update in change.update_ports:
            yield from self._update_commands("Logical_Switch_Port", update)
        for name in change.delete_switches:
            yield api.ls_del(name, if_exists=True)

    def _update_commands(self, table: str, update: diff.Update) -> Iterator[Any]:
        values: list[tuple[str, Any]] = []
        for column, value in update.columns.items():
            if column in ("tag_request", "enabled"):  # optional: a set of 0 or 1
                value = [value] if value is not None else []
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)  # db_set merges map keys
            values.append((column, value))
        if values:
            yield self._api.db_set(table, update.name, *values, if_exists=False)
        for column, keys in update.removed_keys.items():
            yield self._api.db_remove(table, update.name, column, *keys, if_exists=False)
