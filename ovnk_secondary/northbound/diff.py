"""Differences between desired and actual northbound rows: what to create, update and delete.

Pure: both sides are `desired.State` values. `actual` holds only rows carrying our ownership
marker; `foreign` names rows with a desired name that we do not own: they are reported as
conflicts and never touched, and nothing is written into them (a port whose switch is
foreign is a conflict of that switch). Map columns are compared on the keys we manage
(`desired.MANAGED_KEYS`) only, so keys others add to our rows survive a repair.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any

from ovnk_secondary import naming
from ovnk_secondary.northbound import desired

_SWITCH_COLUMNS = ("external_ids", "other_config")
_PORT_COLUMNS = ("type", "addresses", "port_security", "external_ids", "options", "tag_request")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Update:
    """Columns to change on one existing row.

    `columns`: plain columns get their new value; map columns get the keys to set.
    `removed_keys`: map column -> managed keys to delete.
    """

    name: str
    columns: Mapping[str, Any]
    removed_keys: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


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


def describe(change: Diff) -> list[str]:
    """One line per row `change` writes, naming what it is for (the log's record of NB changes):
    e.g. `created logical switch port test.nad.layer2_test_pod1 on l2.network_ovn_layer2_switch
    (a pod in namespace test, NAD test/nad-layer2, addresses 0a:58:0a:64:c8:05 10.100.200.5)`."""
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


def _columns(update: Update) -> str:
    changed = [f"{column}={value}" for column, value in sorted(update.columns.items())]
    removed = [f"{column} -{','.join(keys)}"
               for column, keys in sorted(update.removed_keys.items())]
    return "; ".join(changed + removed)


def _update(name: str, want: Any, have: Any, columns: tuple[str, ...]) -> Update | None:
    changed: dict[str, Any] = {}
    removed: dict[str, tuple[str, ...]] = {}
    for column in columns:
        wanted, actual = getattr(want, column), getattr(have, column)
        if column in desired.MANAGED_KEYS:
            keys = {k: v for k, v in wanted.items() if actual.get(k) != v}
            if keys:
                changed[column] = keys
            stale = tuple(sorted(k for k in actual
                                 if k in desired.MANAGED_KEYS[column] and k not in wanted))
            if stale:
                removed[column] = stale
        elif wanted != actual:
            changed[column] = wanted
    if not changed and not removed:
        return None
    return Update(name=name, columns=changed, removed_keys=removed)


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
