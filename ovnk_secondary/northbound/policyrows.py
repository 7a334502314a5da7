"""Policy rows in the IDL: reading ours, and the commands that write a `diff.PolicyDiff`.

The ovsdbapp side of `desired.PolicyState` (port groups, ACLs, address sets), kept apart from
the switch and port code of `client.py`, which calls it. ovsdbapp's own commands are used where
they fit (`address_set_add`, `pg_add`, `pg_del`, `db_set`...); a few of our own, named after
the `ovn-nbctl` verb they resemble, do what those do not:
- `PgSetPorts`: a port group's ports added and removed by logical switch port *name*
  (`pg_add_ports` takes rows or UUIDs); a port that does not exist is skipped (a weak
  reference cannot point at nothing) and reported;
- `PgAclAdd`, `PgAclSet`, `PgAclDel`: an ACL of a port group created with every column we
  manage (`pg_acl_add` has no `options`, so no `apply-after-lb`), updated in place, or removed,
  found by its exact identity `external_ids:k8s.ovn.org/id` (`pg_acl_add`/`pg_acl_del` find
  ACLs by direction, priority and match, which a policy change may alter).
`Converge` reads, diffs and writes inside one transaction, so the policy rows are all written
or none; a port group member whose port is not in NB yet is left out and reported
(`Outcome.missing_ports`): converging again once the port exists adds it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ovsdbapp.backend.ovs_idl import command, idlutils

from ovnk_secondary import naming
from ovnk_secondary.northbound import datums, desired, diff

MAP_COLUMNS = frozenset({"external_ids", "options"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outcome:
    """What `Converge` did: the diff it wrote, and the ports it could not put in their port
    groups because they are not in NB (yet)."""

    change: diff.PolicyDiff
    missing_ports: tuple[str, ...] = ()


def _address_order(text: str) -> tuple[int, int]:
    address = ipaddress.ip_address(text.split("/")[0])
    return address.version, int(address)


def read(api: Any) -> tuple[desired.PolicyState, frozenset[str], list[tuple[Any, Any]]]:
    """Policy rows (called with the IDL locked, or in a transaction): ours, the names of port
    groups and address sets we do not own, and (port group, ACL) rows of owned ACLs whose id
    an earlier ACL already has. An owned ACL counts only in an owned port group (ACLs are not
    roots: one outside our port groups is not ours to manage)."""
    tables = api.tables
    ports = tables["Logical_Switch_Port"].rows
    acl_rows = tables["ACL"].rows
    foreign: set[str] = set()
    groups: dict[str, desired.PortGroup] = {}
    acls: dict[str, desired.Acl] = {}
    duplicates: list[tuple[Any, Any]] = []
    for row in list(tables["Port_Group"].rows.values()):
        if row._data is None:
            continue
        name = datums.scalar(row, "name")
        external_ids = datums.map_(row, "external_ids")
        if not datums.owned(external_ids):
            foreign.add(name)
            continue
        members = (ports.get(uuid) for uuid in datums.uuids(row, "ports"))
        groups[name] = desired.PortGroup(
            name=name, external_ids=external_ids,
            ports=tuple(sorted(datums.scalar(p, "name") for p in members
                               if p is not None and p._data is not None)))
        for uuid in datums.uuids(row, "acls"):
            acl = acl_rows.get(uuid)
            if acl is None or acl._data is None:
                continue
            acl_ids = datums.map_(acl, "external_ids")
            acl_id = acl_ids.get(naming.PRIMARY_ID_KEY)
            if not datums.owned(acl_ids) or acl_id is None:
                continue
            if acl_id in acls:
                duplicates.append((row, acl))
                continue
            acls[acl_id] = desired.Acl(
                id=acl_id, port_group=name, priority=datums.scalar(acl, "priority"),
                direction=datums.scalar(acl, "direction"), match=datums.scalar(acl, "match"),
                action=datums.scalar(acl, "action"), name=datums.scalar(acl, "name"),
                options=datums.map_(acl, "options"), external_ids=acl_ids)
    address_sets: dict[str, desired.AddressSet] = {}
    for row in list(tables["Address_Set"].rows.values()):
        if row._data is None:
            continue
        name = datums.scalar(row, "name")
        external_ids = datums.map_(row, "external_ids")
        if not datums.owned(external_ids):
            foreign.add(name)
            continue
        address_sets[name] = desired.AddressSet(
            name=name, external_ids=external_ids,
            addresses=tuple(sorted(datums.strings(row, "addresses"), key=_address_order)))
    return (desired.PolicyState(port_groups=groups, acls=acls, address_sets=address_sets),
            frozenset(foreign), duplicates)


def commands(api: Any, change: diff.PolicyDiff) -> Iterator[Any]:
    """Commands in the order `diff.PolicyDiff` lists its changes: what an ACL names exists
    before it; deletions last."""
    for address_set in change.create_address_sets:
        yield api.address_set_add(address_set.name, list(address_set.addresses),
                                  external_ids=dict(address_set.external_ids))
    for update in change.update_address_sets:
        yield from _map_updates(api, "Address_Set", update)
    for members in change.address_set_members:
        if members.added:
            yield api.address_set_add_addresses(members.name, list(members.added))
        if members.removed:
            yield api.address_set_remove_addresses(members.name, list(members.removed))
    for group in change.create_port_groups:
        yield api.pg_add(group.name, external_ids=dict(group.external_ids))
    for update in change.update_port_groups:
        yield from _map_updates(api, "Port_Group", update)
    for acl in change.delete_acls:
        yield PgAclDel(api, acl.port_group, acl.id)
    for acl in change.create_acls:
        yield PgAclAdd(api, acl)
    for update in change.update_acls:
        yield PgAclSet(api, update.holder, update.name, update.columns, update.removed_keys)
    for members in change.port_group_members:
        yield PgSetPorts(api, members.name, added=members.added, removed=members.removed)
    for group in change.delete_port_groups:
        yield api.pg_del(group.name, if_exists=True)  # its ACLs go with it
    for address_set in change.delete_address_sets:
        yield api.address_set_del(address_set.name, if_exists=True)


def _map_updates(api: Any, table: str, update: diff.Update) -> Iterator[Any]:
    """A port group's or address set's external_ids: keys set (merged), keys removed."""
    if update.columns:
        yield api.db_set(table, update.name, *((c, dict(v)) for c, v in update.columns.items()),
                         if_exists=False)
    for column, keys in update.removed_keys.items():
        yield api.db_remove(table, update.name, column, *keys, if_exists=False)


class Converge(command.BaseCommand):  # type: ignore[misc]
    """Inside a transaction: read our policy rows (of `networks` only, when given), diff them
    against `want`, write the diff; `result` is an `Outcome`."""

    def __init__(self, api: Any, want: desired.PolicyState,
                 networks: frozenset[str] | None = None) -> None:
        super().__init__(api)
        self.want = want
        self.networks = networks

    def _in_scope(self, row: desired.PortGroup | desired.Acl | desired.AddressSet) -> bool:
        return self.networks is None or row.external_ids.get(naming.NETWORK_KEY) in self.networks

    def run_idl(self, txn: Any) -> None:
        have, foreign, duplicates = read(self.api)
        have = desired.PolicyState(
            port_groups={n: g for n, g in have.port_groups.items() if self._in_scope(g)},
            acls={i: a for i, a in have.acls.items() if self._in_scope(a)},
            address_sets={n: s for n, s in have.address_sets.items() if self._in_scope(s)})
        missing = sorted({name for group in self.want.port_groups.values() for name in group.ports
                          if idlutils.row_by_value(self.api.idl, "Logical_Switch_Port", "name",
                                                   name, None) is None})
        want = self.want
        if missing:
            absent = set(missing)
            want = dataclasses.replace(want, port_groups={
                n: dataclasses.replace(g, ports=tuple(p for p in g.ports if p not in absent))
                for n, g in want.port_groups.items()})
        change = diff.policy_diff(want, have, foreign=foreign)
        for group, acl in duplicates:  # two owned ACLs with one id: the later ones go
            group.delvalue("acls", acl)
            acl.delete()
        for nested in commands(self.api, change):
            nested.run_idl(txn)
        self.result = Outcome(change=change, missing_ports=tuple(missing))


def _acl_by_id(port_group: Any, acl_id: str) -> Any:
    for acl in port_group.acls:
        if acl.external_ids.get(naming.PRIMARY_ID_KEY) == acl_id:
            return acl
    raise RuntimeError(f"port group {port_group.name} has no ACL {acl_id}")


class PgSetPorts(command.BaseCommand):  # type: ignore[misc]
    """Add `added` to and remove `removed` from the ports of `port_group` (by name); `result`
    lists the names of ports that do not exist."""

    def __init__(self, api: Any, port_group: str, *, added: Sequence[str] = (),
                 removed: Sequence[str] = ()) -> None:
        super().__init__(api)
        self.port_group = port_group
        self.added = added
        self.removed = removed

    def run_idl(self, txn: Any) -> None:
        group = self.api.lookup("Port_Group", self.port_group)
        missing = []
        for names, method in ((self.added, group.addvalue), (self.removed, group.delvalue)):
            for name in names:
                port = idlutils.row_by_value(self.api.idl, "Logical_Switch_Port", "name", name,
                                             None)
                if port is None:
                    missing.append(name)
                else:
                    method("ports", port)
        self.result = missing


class PgAclAdd(command.BaseCommand):  # type: ignore[misc]
    """Create `acl` and add it to its port group."""

    def __init__(self, api: Any, acl: desired.Acl) -> None:
        super().__init__(api)
        self.acl = acl

    def run_idl(self, txn: Any) -> None:
        group = self.api.lookup("Port_Group", self.acl.port_group)
        row = txn.insert(self.api.tables["ACL"])
        row.priority = self.acl.priority
        row.direction = self.acl.direction
        row.match = self.acl.match
        row.action = self.acl.action
        row.name = [self.acl.name] if self.acl.name else []
        row.options = dict(self.acl.options)
        row.external_ids = dict(self.acl.external_ids)
        group.addvalue("acls", row)
        self.result = row.uuid


class PgAclSet(command.BaseCommand):  # type: ignore[misc]
    """Set columns of the ACL `acl_id` of `port_group`: plain columns to their value, map
    columns' keys merged, `removed_keys` deleted."""

    def __init__(self, api: Any, port_group: str, acl_id: str, columns: Mapping[str, Any],
                 removed_keys: Mapping[str, Sequence[str]]) -> None:
        super().__init__(api)
        self.port_group = port_group
        self.acl_id = acl_id
        self.columns = columns
        self.removed_keys = removed_keys

    def run_idl(self, txn: Any) -> None:
        acl = _acl_by_id(self.api.lookup("Port_Group", self.port_group), self.acl_id)
        for column, value in self.columns.items():
            if column in MAP_COLUMNS:
                for key, item in value.items():
                    acl.setkey(column, key, item)
            elif column == "name":
                acl.name = [value] if value else []
            else:
                setattr(acl, column, value)
        for column, keys in self.removed_keys.items():
            for key in keys:
                acl.delkey(column, key)


class PgAclDel(command.BaseCommand):  # type: ignore[misc]
    """Remove the ACL `acl_id` from `port_group` (and so from NB: ACLs are not roots)."""

    def __init__(self, api: Any, port_group: str, acl_id: str) -> None:
        super().__init__(api)
        self.port_group = port_group
        self.acl_id = acl_id

    def run_idl(self, txn: Any) -> None:
        group = self.api.lookup("Port_Group", self.port_group)
        acl = _acl_by_id(group, self.acl_id)
        group.delvalue("acls", acl)
        acl.delete()
