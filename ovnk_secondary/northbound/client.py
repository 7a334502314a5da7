"""The ovsdbapp adapter: connect to OVN northbound, read our rows, apply diffs.

Thin on purpose: no policy lives here. What it guarantees:
- nothing is read before the IDL holds a complete copy of the database (the initial dump
  after each (re)connection), because "absent from an empty cache" is not "absent";
- every transaction runs with `check_error=True`, so a refused command raises
  `errors.NorthboundError` instead of being logged and forgotten;
- each `Northbound` has its own connection (ovsdbapp keeps the connection on the backend
  class, so we give every instance its own subclass);
- all calls block: callers in asyncio code run them in an executor.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from ovsdbapp.backend.ovs_idl import connection, idlutils
from ovsdbapp.schema.ovn_northbound import impl_idl

from ovnk_secondary import errors, naming
from ovnk_secondary.northbound import desired, diff

logger = logging.getLogger(__name__)

SCHEMA_NAME = "OVN_Northbound"
# How many commands one full-sync transaction carries (hot-path transactions carry one pod).
SYNC_BATCH = 500


def _owned(external_ids: dict[str, str]) -> bool:
    return external_ids.get(naming.OWNER_KEY) == naming.OWNER_VALUE


class Northbound:
    """A connection to one NB database."""

    def __init__(self, *, remote: str, timeout: float = 10.0) -> None:
        self.remote = remote
        self.timeout = timeout
        self._api: Any = None
        self._lock = threading.Lock()

    # -- connection ---------------------------------------------------------------------

    def connect(self) -> None:
        """Connect and wait for the initial dump; NorthboundError when NB is unreachable."""
        with self._lock:
            if self._api is not None:
                return
            try:
                idl = connection.OvsdbIdl.from_server(self.remote, SCHEMA_NAME)
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
        self, switch_names: set[str] | None, port_names: set[str] | None
    ) -> tuple[desired.State, frozenset[str]]:
        tables = self._api.tables
        foreign: set[str] = set()
        switches: dict[str, desired.Switch] = {}
        port_switch: dict[Any, str] = {}
        for row in tables["Logical_Switch"].rows.values():
            name = row.name
            external_ids = row.external_ids
            if _owned(external_ids):
                if switch_names is None or name in switch_names:
                    switches[name] = desired.Switch(
                        name=name, external_ids=external_ids, other_config=row.other_config
                    )
            elif switch_names is None or name in switch_names:
                foreign.add(name)
            for port in row.ports:
                port_switch[port.uuid] = name
        ports: dict[str, desired.Port] = {}
        port_table = tables["Logical_Switch_Port"]
        rows: Iterator[Any]
        if port_names is None:
            rows = iter(port_table.rows.values())
        else:
            rows = (r for r in (self._port_by_name(n) for n in port_names) if r is not None)
        for row in rows:
            name = row.name
            external_ids = row.external_ids
            if not _owned(external_ids):
                foreign.add(name)
                continue
            tag = row.tag_request
            ports[name] = desired.Port(
                name=name,
                switch=port_switch.get(row.uuid, ""),
                type=row.type,
                addresses=tuple(row.addresses),
                port_security=tuple(row.port_security),
                external_ids=external_ids,
                options=row.options,
                tag_request=tag[0] if tag else None,
            )
        return desired.State(switches=switches, ports=ports), frozenset(foreign)

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
        return len(commands)

    def _commit(self, commands: list[Any]) -> None:
        try:
            with self._api.transaction(check_error=True, nested=False) as txn:
                for command in commands:
                    txn.add(command)
        except Exception as exc:
            raise errors.NorthboundError(
                f"OVN northbound transaction of {len(commands)} commands failed: {exc}"
            ) from exc

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
            yield api.lsp_add(
                port.switch, port.name, may_exist=False,
                type=port.type,
                addresses=list(port.addresses),
                port_security=list(port.port_security),
                external_ids=dict(port.external_ids),
                options=dict(port.options),
                tag_request=[port.tag_request] if port.tag_request is not None else [],
            )
        for update in change.update_ports:
            yield from self._update_commands("Logical_Switch_Port", update)
        for name in change.delete_switches:
            yield api.ls_del(name, if_exists=True)

    def _update_commands(self, table: str, update: diff.Update) -> Iterator[Any]:
        values: list[tuple[str, Any]] = []
        for column, value in update.columns.items():
            if column == "tag_request":
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
