"""Differences between desired and actual northbound rows: what to create, update and delete.

Pure: both sides are `desired.State` values (`diff`), or `desired.PolicyState` values
(`policy_diff`). `actual` holds only rows carrying our ownership marker; `foreign` names rows
with a desired name that we do not own: they are reported as conflicts and never touched, and
nothing is written into them (a port whose switch is foreign is a conflict of that switch; an
ACL whose port group, or an address set it names, is foreign, likewise). Map columns are
compared on the keys we manage (`desired.MANAGED_KEYS`, `desired.POLICY_MANAGED_KEYS`) only,
so keys others add to our rows survive a repair; set columns of policy rows (a port group's
ports, an address set's addresses) change by the elements that differ (`Members`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from ovnk_secondary import naming
from ovnk_secondary.northbound import desired

_SWITCH_COLUMNS = ("external_ids", "other_config")
_PORT_COLUMNS = ("type", "addresses", "port_security", "external_ids", "options", "tag_request",
                 "enabled")
_ACL_COLUMNS = ("priority", "direction", "match", "action", "name", "options", "external_ids")
_ADDRESS_SET_REFERENCE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_.]*)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Update:
    """Columns to change on one existing row.

    `columns`: plain columns get their new value; map columns get the keys to set.
    `removed_keys`: map column -> managed keys to delete.
    """

    name: str
    columns: Mapping[str, Any]
    removed_keys: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    holder: str = ""  # the row holding this one, for an ACL (named by its id): its port group


@dataclasses.dataclass(frozen=True, kw_only=True)
class Diff:
    create_switches: tuple[desired.Switch, ...] = ()
    update_switches: tuple[Update, ...] = ()
    delete_switches: tuple[str, ...] = ()
    create_ports: tuple[desired.Port, ...] = ()
    update_ports: tuple[Update, ...] = ()
    delete_ports: tuple[desired.Port, ...] = ()  # actual rows, so the switch is known
    conflicts: tuple[str, ...] = ()  # desired names held by rows we do not own

    @property
    def empty(self) -> bool:
        return not (self.create_switches or self.update_switches or self.delete_switches
                    or self.create_ports or self.update_ports or self.delete_ports)

    def summary(self) -> str:
        parts = [
            f"{len(rows)} {label}"
            for label, rows in (
                ("switches to create", self.create_switches),
                ("switches to update", self.update_switches),
                ("switches to delete", self.delete_switches),
                ("ports to create", self.create_ports),
                ("ports to update", self.update_ports),
                ("ports to delete", self.delete_ports),
                ("conflicts", self.conflicts),
            )
            if rows
        ]
        return ", ".join(parts) or "nothing to change"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Members:
    """Elements to add to and remove from the set column of one row (a port group's ports, by
    name; an address set's addresses)."""

    name: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyDiff:
    """Changes to policy rows, in the order they are written: address sets, port groups,
    ACLs, port group members, then deletions (ACLs of a deleted port group go with it)."""

    create_address_sets: tuple[desired.AddressSet, ...] = ()
    update_address_sets: tuple[Update, ...] = ()
    address_set_members: tuple[Members, ...] = ()
    delete_address_sets: tuple[desired.AddressSet, ...] = ()  # actual rows
    create_port_groups: tuple[desired.PortGroup, ...] = ()
    update_port_groups: tuple[Update, ...] = ()
    port_group_members: tuple[Members, ...] = ()
    delete_port_groups: tuple[desired.PortGroup, ...] = ()  # actual rows
    create_acls: tuple[desired.Acl, ...] = ()
    update_acls: tuple[Update, ...] = ()  # named by ACL id, `holder` its port group
    delete_acls: tuple[desired.Acl, ...] = ()  # actual rows
    conflicts: tuple[str, ...] = ()  # desired names held by rows we do not own

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in dataclasses.fields(self)
                       if f.name != "conflicts")

    def summary(self) -> str:
        parts = [f"{len(rows)} {f.name.replace('_', ' ')}"
                 for f in dataclasses.fields(self) if (rows := getattr(self, f.name))]
        return ", ".join(parts) or "nothing to change"


def describe(change: Diff | PolicyDiff) -> list[str]:
    """One line per row `change` writes, naming what it is for (the log's record of NB changes):
    e.g. `created logical switch port test.nad.layer2_test_pod1 on l2.network_ovn_layer2_switch
    (a pod in namespace test, NAD test/nad-layer2, addresses 0a:58:0a:64:c8:05 10.100.200.5)`."""
    if isinstance(change, PolicyDiff):
        return _describe_policies(change)
    def port_owner(port: desired.Port) -> str:
        ids = port.external_ids
        if port.type == "localnet":
            return f"localnet port of network {ids.get(naming.NETWORK_KEY, '?')}" + (
                f", VLAN {port.tag_request}" if port.tag_request is not None else "")
        return (f"a pod in namespace {ids.get('namespace', '?')}, NAD "
                f"{ids.get(naming.NAD_KEY, '?')}, addresses {' '.join(port.addresses) or 'none'}")

    lines = [f"created logical switch {s.name} (network {s.external_ids.get(naming.NETWORK_KEY)}"
             f", {s.external_ids.get(naming.TOPOLOGY_KEY)})" for s in change.create_switches]
    lines += [f"updated logical switch {u.name}: {_columns(u)}" for u in change.update_switches]
    lines += [f"deleted logical switch {name}" for name in change.delete_switches]
    lines += [f"created logical switch port {p.name} on {p.switch} ({port_owner(p)})"
              for p in change.create_ports]
    lines += [f"updated logical switch port {u.name}: {_columns(u)}" for u in change.update_ports]
    lines += [f"deleted logical switch port {p.name} from {p.switch} ({port_owner(p)})"
              for p in change.delete_ports]
    return lines


def _owner(external_ids: Mapping[str, str]) -> str:
    """What an OVN-K-style policy row is for, from its external_ids."""
    kind = external_ids.get(naming.OWNER_TYPE_KEY, "?")
    name = external_ids.get(naming.OBJECT_NAME_KEY, "?")
    network = external_ids.get(naming.NETWORK_KEY, "?")
    if kind == "NetworkPolicy":
        what = f"MultiNetworkPolicy {name.replace(':', '/', 1)}"
    elif kind == "NetpolNamespace":
        what = f"default deny {external_ids.get('direction', '?')} of namespace {name}"
    elif kind == "PodSelector":
        what = f"peers {name}, {external_ids.get('ip-family', '?')}"
    else:
        what = f"{kind} {name}"
    return f"{what} on network {network}"


def _some(items: Iterable[str], sign: str, limit: int = 5) -> list[str]:
    items = list(items)
    shown = [f"{sign}{item}" for item in items[:limit]]
    return shown + ([f"{sign}{len(items) - limit} more"] if len(items) > limit else [])


def _describe_policies(change: PolicyDiff) -> list[str]:
    def members(name: str, kind: str, rows: Mapping[str, Members]) -> str:
        member = rows.get(name)
        if member is None:
            return ""
        return f"{kind} " + " ".join(_some(member.added, "+") + _some(member.removed, "-"))

    lines = [f"created address set {s.name} ({_owner(s.external_ids)}; "
             f"{len(s.addresses)} addresses)" for s in change.create_address_sets]
    set_members = {m.name: m for m in change.address_set_members}
    updated = {u.name: u for u in change.update_address_sets}
    for name in dict.fromkeys([*updated, *set_members]):
        parts = [_columns(updated[name])] if name in updated else []
        parts += [members(name, "addresses", set_members)] if name in set_members else []
        lines.append(f"updated address set {name}: {'; '.join(parts)}")
    lines += [f"created port group {g.name} ({_owner(g.external_ids)}; {len(g.ports)} ports)"
              for g in change.create_port_groups]
    group_members = {m.name: m for m in change.port_group_members}
    created = {g.name for g in change.create_port_groups}
    updated = {u.name: u for u in change.update_port_groups}
    for name in dict.fromkeys([*updated, *group_members]):
        if name in created:
            continue  # its ports are counted with its creation
        parts = [_columns(updated[name])] if name in updated else []
        parts += [members(name, "ports", group_members)] if name in group_members else []
        lines.append(f"updated port group {name}: {'; '.join(parts)}")
    lines += [f"deleted ACL {a.id} from port group {a.port_group}" for a in change.delete_acls]
    lines += [f"created ACL {a.id} on port group {a.port_group} ({a.direction} {a.priority} "
              f"{a.action} {a.match})" for a in change.create_acls]
    lines += [f"updated ACL {u.name} on port group {u.holder}: {_columns(u)}"
              for u in change.update_acls]
    lines += [f"deleted port group {g.name} ({_owner(g.external_ids)})"
              for g in change.delete_port_groups]
    lines += [f"deleted address set {s.name} ({_owner(s.external_ids)})"
              for s in change.delete_address_sets]
    return lines


def _columns(update: Update) -> str:
    changed = [f"{column}={value}" for column, value in sorted(update.columns.items())]
    removed = [f"{column} -{','.join(keys)}"
               for column, keys in sorted(update.removed_keys.items())]
    return "; ".join(changed + removed)


def _update(name: str, want: Any, have: Any, columns: tuple[str, ...],
            managed: Mapping[str, frozenset[str]] = desired.MANAGED_KEYS,
            holder: str = "") -> Update | None:
    changed: dict[str, Any] = {}
    removed: dict[str, tuple[str, ...]] = {}
    for column in columns:
        wanted, actual = getattr(want, column), getattr(have, column)
        if column in managed:
            keys = {k: v for k, v in wanted.items() if actual.get(k) != v}
            if keys:
                changed[column] = keys
            stale = tuple(sorted(k for k in actual if k in managed[column] and k not in wanted))
            if stale:
                removed[column] = stale
        elif wanted != actual:
            changed[column] = wanted
    if not changed and not removed:
        return None
    return Update(name=name, columns=changed, removed_keys=removed, holder=holder)


def _members(name: str, want: tuple[str, ...], have: tuple[str, ...]) -> Members | None:
    wanted, actual = set(want), set(have)
    if wanted == actual:
        return None
    return Members(name=name, added=tuple(sorted(wanted - actual)),
                   removed=tuple(sorted(actual - wanted)))


def diff(
    want: desired.State,
    have: desired.State,
    *,
    foreign: Collection[str] = frozenset(),
) -> Diff:
    """What turns `have` (our rows in NB) into `want`, leaving `foreign` rows alone."""
    create_switches, update_switches, conflicts = [], [], []
    for name, switch in want.switches.items():
        actual = have.switches.get(name)
        if actual is None:
            if name in foreign:
                conflicts.append(name)
            else:
                create_switches.append(switch)
        elif (update := _update(name, switch, actual, _SWITCH_COLUMNS)) is not None:
            update_switches.append(update)
    delete_switches = [name for name in have.switches if name not in want.switches]
    deleted = set(delete_switches)
    conflicting = set(conflicts)

    create_ports, update_ports, delete_ports = [], [], []
    for name, port in want.ports.items():
        actual_port = have.ports.get(name)
        if port.switch in conflicting:
            continue
        if port.switch in foreign and port.switch not in have.switches:
            # never write into a switch we do not own (e.g. an admin's switch with our name)
            conflicting.add(port.switch)
            conflicts.append(port.switch)
            continue
        if actual_port == port:  # the common case of a resync: one cheap comparison
            continue
        if actual_port is None or actual_port.switch != port.switch:
            if actual_port is not None:
                delete_ports.append(actual_port)  # on the wrong switch: move it
            if name in foreign:
                conflicts.append(name)
            else:
                create_ports.append(port)
        elif (update := _update(name, port, actual_port, _PORT_COLUMNS)) is not None:
            update_ports.append(update)
    for name, actual_port in have.ports.items():
        # ports of a deleted switch go with it (OVSDB garbage-collects non-root rows)
        if name not in want.ports and actual_port.switch not in deleted:
            delete_ports.append(actual_port)

    return Diff(
        create_switches=tuple(create_switches),
        update_switches=tuple(update_switches),
        delete_switches=tuple(delete_switches),
        create_ports=tuple(create_ports),
        update_ports=tuple(update_ports),
        delete_ports=tuple(delete_ports),
        conflicts=tuple(conflicts),
    )


def policy_diff(
    want: desired.PolicyState,
    have: desired.PolicyState,
    *,
    foreign: Collection[str] = frozenset(),
) -> PolicyDiff:
    """What turns `have` (our policy rows in NB) into `want`, leaving `foreign` rows alone."""
    conflicts: list[str] = []
    managed = desired.POLICY_MANAGED_KEYS
    create_sets, update_sets, set_members = [], [], []
    for name, address_set in want.address_sets.items():
        actual_set = have.address_sets.get(name)
        if actual_set is None:
            if name in foreign:
                conflicts.append(name)
            else:
                create_sets.append(address_set)
            continue
        if (update := _update(name, address_set, actual_set, ("external_ids",),
                              managed)) is not None:
            update_sets.append(update)
        if (change := _members(name, address_set.addresses, actual_set.addresses)) is not None:
            set_members.append(change)
    create_groups, update_groups, group_members = [], [], []
    for name, group in want.port_groups.items():
        actual_group = have.port_groups.get(name)
        if actual_group is None:
            if name in foreign:
                conflicts.append(name)
            else:
                create_groups.append(group)
                if group.ports:
                    group_members.append(Members(name=name, added=group.ports))
            continue
        if (update := _update(name, group, actual_group, ("external_ids",),
                              managed)) is not None:
            update_groups.append(update)
        if (change := _members(name, group.ports, actual_group.ports)) is not None:
            group_members.append(change)
    delete_groups = [g for n, g in have.port_groups.items() if n not in want.port_groups]
    gone = {g.name for g in delete_groups}
    conflicting = set(conflicts)

    create_acls, update_acls, delete_acls = [], [], []
    for acl_id, acl in want.acls.items():
        if acl.port_group in conflicting or conflicting.intersection(
                _ADDRESS_SET_REFERENCE.findall(acl.match)):
            continue  # never point at, or write into, a row we do not own
        actual_acl = have.acls.get(acl_id)
        if actual_acl == acl:
            continue
        if actual_acl is None or actual_acl.port_group != acl.port_group:
            if actual_acl is not None and actual_acl.port_group not in gone:
                delete_acls.append(actual_acl)
            create_acls.append(acl)
        elif (update := _update(acl_id, acl, actual_acl, _ACL_COLUMNS, managed,
                                holder=acl.port_group)) is not None:
            update_acls.append(update)
    delete_acls += [a for i, a in have.acls.items()
                    if i not in want.acls and a.port_group not in gone]

    return PolicyDiff(
        create_address_sets=tuple(create_sets),
        update_address_sets=tuple(update_sets),
        address_set_members=tuple(set_members),
        delete_address_sets=tuple(s for n, s in have.address_sets.items()
                                  if n not in want.address_sets),
        create_port_groups=tuple(create_groups),
        update_port_groups=tuple(update_groups),
        port_group_members=tuple(group_members),
        delete_port_groups=tuple(delete_groups),
        create_acls=tuple(create_acls),
        update_acls=tuple(update_acls),
        delete_acls=tuple(delete_acls),
        conflicts=tuple(conflicts),
    )
