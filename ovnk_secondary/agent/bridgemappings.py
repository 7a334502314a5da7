"""Bridge mappings: which OVS bridge carries each localnet physical network on this node.

OVN reads `external_ids:ovn-bridge-mappings` (`physnet1:br1,physnet2:br2`) on the node's
Open_vSwitch row to connect a localnet port to a bridge. OVN-K leaves that to the admin; here a
declarative per-node file (the equivalent of an nmstate policy) lists the mappings, and the agent
converges the node to it:

    # /etc/ovnk-secondary/bridge-mappings.yaml (YAML or JSON)
    bridgeMappings:
      - physicalNetworkName: localnet1    # a NAD's physicalNetworkName (or name)
        bridge: br-ex                     # an existing bridge (created empty when missing)
      - physicalNetworkName: localnet2
        bridge: ovs-br1                   # created when missing
        uplinks: [enp2s0]                 # NICs added as ports when missing
        moveAddresses: true               # optional, default false: see below

An uplink NIC that carries the node's address or a route (its default route, say) would cut
the node off once it is a port: it is refused, unless its entry says `moveAddresses: true`;
then its addresses and routes move to the bridge's own interface first (see `uplinks`), as
nmstate moves the IP configuration to the OVS interface when a policy says so.

The merge is entry by entry: entries the agent did not write are never dropped or overwritten
(a conflicting file is refused); the agent remembers what it wrote in
`external_ids:ovnk-secondary.io/bridge-mappings` and removes exactly those entries when they
leave the file. Bridges and uplink ports are never deleted (an uplink may carry the node's own
traffic). Parsing, validation and the merge are pure; `apply` is the thin OVSDB adapter, which
also runs the uplinks' moves (all or nothing).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import yaml
from ovsdbapp.backend.ovs_idl import command, idlutils

from ovnk_secondary import errors
from ovnk_secondary.agent import metrics, ovs, uplinks

LOG = logging.getLogger(__name__)

MAPPINGS_KEY = "ovn-bridge-mappings"
OWNED_KEY = "ovnk-secondary.io/bridge-mappings"  # on Open_vSwitch external_ids: what we wrote
NODE_ANNOTATION = "ovnk-secondary.io/bridge-mappings"
REFUSED = "BridgeMappingsRefused"  # the reason of the Warning Event on the Node
EVENT_NAMESPACE = "default"  # where Events about Nodes go (cluster-scoped objects)
AGENT_COMPONENT = "ovnk-secondary-node-agent"
BRIDGE_INTERFACE_TIMEOUT = 10.0  # seconds for ovs-vswitchd to make a new bridge's interface
_FIELDS = {"physicalNetworkName", "bridge", "uplinks", "moveAddresses"}
# Names end up inside `a:b,c:d` and as kernel interface names (internal ports): keep them plain.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,14}$")
_PHYSNET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BridgeMapping:
    physical_network: str
    bridge: str
    uplinks: tuple[str, ...] = ()
    move_addresses: bool = False  # an uplink's addresses and routes move to the bridge

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"physicalNetworkName": self.physical_network,
                                 "bridge": self.bridge, "uplinks": list(self.uplinks)}
        if self.move_addresses:
            found["moveAddresses"] = True
        return found


def parse_file(text: str, *, source: str) -> tuple[BridgeMapping, ...]:
    """The file's entries, validated on their own (no node facts needed)."""
    try:
        document = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise errors.InvalidConfig(f"{source} is not valid YAML/JSON: {exc}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise errors.InvalidConfig(f"{source} must hold a mapping with a 'bridgeMappings' list")
    unknown_top = set(document) - {"bridgeMappings"}
    if unknown_top:
        raise errors.InvalidConfig(f"{source}: unknown key(s) {', '.join(sorted(unknown_top))};"
                                   " only 'bridgeMappings' is allowed at the top level")
    entries = document.get("bridgeMappings") or []
    if not isinstance(entries, list):
        raise errors.InvalidConfig(f"{source}: 'bridgeMappings' must be a list of entries")
    mappings = tuple(_parse_entry(entry, where=f"{source} entry {i + 1}")
                     for i, entry in enumerate(entries))
    validate(mappings, source=source)
    return mappings


def _parse_entry(entry: object, *, where: str) -> BridgeMapping:
    if not isinstance(entry, dict):
        raise errors.InvalidConfig(f"{where} must be a mapping with physicalNetworkName and bridge")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise errors.InvalidConfig(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                                   f"allowed: {', '.join(sorted(_FIELDS))}")
    physnet = entry.get("physicalNetworkName")
    bridge = entry.get("bridge")
    if physnet is None:
        raise errors.InvalidConfig(f"{where}: physicalNetworkName is missing")
    if not isinstance(physnet, str) or not _PHYSNET.match(physnet):
        raise errors.InvalidConfig(f"{where}: physicalNetworkName {physnet!r} is not a plain "
                                   "name (letters, digits, _ . -)")
    if bridge is None:
        raise errors.InvalidConfig(f"{where} (physicalNetworkName {physnet}): bridge is missing")
    if not isinstance(bridge, str) or not _NAME.match(bridge):
        raise errors.InvalidConfig(f"{where}: bridge {bridge!r} is not a valid bridge name "
                                   "(at most 15 letters, digits, _ . -)")
    uplinks = entry.get("uplinks") or []
    if isinstance(uplinks, str):
        uplinks = [uplinks]
    if not isinstance(uplinks, list) or not all(
            isinstance(u, str) and _NAME.match(u) for u in uplinks):
        raise errors.InvalidConfig(f"{where}: uplinks {uplinks!r} must be a list of NIC names")
    move = entry.get("moveAddresses", False)
    if not isinstance(move, bool):
        raise errors.InvalidConfig(f"{where}: moveAddresses {move!r} must be true or false")
    if move and not uplinks:
        raise errors.InvalidConfig(f"{where}: moveAddresses moves an uplink NIC's addresses to "
                                   f"bridge {bridge}, but the entry lists no uplinks; add the "
                                   "NIC to uplinks or remove moveAddresses")
    return BridgeMapping(physical_network=physnet, bridge=bridge, uplinks=tuple(uplinks),
                         move_addresses=move)


def validate(mappings: Iterable[BridgeMapping], *, source: str) -> None:
    """Refuse what OVN cannot honour: a physical network listed twice, an uplink on two bridges."""
    bridge_of: dict[str, str] = {}
    uplink_of: dict[str, str] = {}
    for mapping in mappings:
        if mapping.physical_network in bridge_of:
            raise errors.InvalidConfig(
                f"{source}: physical network {mapping.physical_network} is mapped twice "
                f"({bridge_of[mapping.physical_network]} and {mapping.bridge}); keep one entry "
                "per physicalNetworkName")
        bridge_of[mapping.physical_network] = mapping.bridge
        for uplink in mapping.uplinks:
            owner = uplink_of.setdefault(uplink, mapping.bridge)
            if owner != mapping.bridge:
                raise errors.InvalidConfig(f"{source}: uplink {uplink} is listed for bridges "
                                           f"{owner} and {mapping.bridge}; a NIC joins one bridge")


def validate_on_node(mappings: Iterable[BridgeMapping], *, links: Iterable[str],
                     port_bridges: Mapping[str, str], source: str) -> None:
    """Check the file against the node: uplink NICs exist and are not ports of other bridges.

    `links`: kernel interface names on the node; `port_bridges`: OVS port name -> its bridge.
    """
    known = set(links) | set(port_bridges)
    for mapping in mappings:
        for uplink in mapping.uplinks:
            if uplink not in known:
                raise errors.InvalidConfig(
                    f"{source}: uplink NIC {uplink} of bridge {mapping.bridge} does not exist on "
                    "this node; fix the NIC name or remove it from uplinks")
            bridge = port_bridges.get(uplink)
            if bridge is not None and bridge != mapping.bridge:
                raise errors.InvalidConfig(
                    f"{source}: uplink NIC {uplink} is already a port of bridge {bridge}, not "
                    f"{mapping.bridge}; move it with ovs-vsctl or change the file")


def parse_value(text: str) -> dict[str, str]:
    """`physnet1:br1,physnet2:br2` -> {physnet1: br1, ...} (malformed entries are kept verbatim)."""
    parsed: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        physnet, _, bridge = item.partition(":")
        parsed[physnet] = bridge
    return parsed


def format_value(mappings: Mapping[str, str]) -> str:
    return ",".join(f"{physnet}:{bridge}" for physnet, bridge in mappings.items())


def merge(*, current: Mapping[str, str], owned: Mapping[str, str],
          desired: Mapping[str, str]) -> dict[str, str]:
    """The new ovn-bridge-mappings: ours converged to `desired`, everybody else's untouched.

    `owned` is what we wrote last time. An entry we wrote that somebody has since changed is
    theirs now: it is neither removed nor overwritten (a conflict is refused instead).
    """
    merged = dict(current)
    for physnet, bridge in owned.items():
        if physnet not in desired and merged.get(physnet) == bridge:
            del merged[physnet]
    for physnet, bridge in desired.items():
        present = merged.get(physnet)
        ours = owned.get(physnet) == present
        if present is not None and present != bridge and not ours:
            raise errors.InvalidConfig(
                f"physical network {physnet} is already mapped to bridge {present} in "
                f"ovn-bridge-mappings by someone else; remove that entry from the node or map "
                f"{physnet} to {present} in the bridge-mappings file")
        merged[physnet] = bridge
    return merged


def owned_after(*, merged: Mapping[str, str], desired: Mapping[str, str]) -> dict[str, str]:
    """What we own after a merge: the desired entries (all present in `merged`)."""
    return {physnet: merged[physnet] for physnet in desired}


def annotation(*, mappings: Iterable[BridgeMapping], value: str | None,
               error: str | None) -> str:
    """The Node annotation reporting what the agent applied (or why it applied nothing)."""
    return json.dumps({"applied": [m.to_json() for m in mappings],
                       "ovnBridgeMappings": value, "error": error}, sort_keys=True)


def refusal_event(*, node: str, message: str, now: datetime.datetime,
                  suffix: str) -> dict[str, Any]:
    """The core/v1 Warning Event on the Node for a refused file (what `kubectl describe node`
    lists); `suffix` makes its name unique. As the kubelet's Node Events: in namespace
    "default", the Node's name as its uid (the agent cannot read its Node: kubectl looks for
    both uids)."""
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{node}.{suffix}", "namespace": EVENT_NAMESPACE},
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node},
        "type": "Warning", "reason": REFUSED, "message": message[:1024],
        "source": {"component": AGENT_COMPONENT, "host": node},
        "reportingComponent": AGENT_COMPONENT, "reportingInstance": node,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
    }


# --- the thin adapter: converge the local OVSDB ------------------------------------------------

class _MergeCommand(command.BaseCommand):  # type: ignore[misc]
    """Read-modify-write of ovn-bridge-mappings inside the transaction (a retry recomputes it)."""

    def __init__(self, api: Any, desired: Mapping[str, str]) -> None:
        super().__init__(api)
        self.desired = dict(desired)

    def run_idl(self, txn: Any) -> None:
        row = self.api._ovs
        row.verify("external_ids")  # a concurrent writer makes the commit fail and retry
        ids = dict(row.external_ids)
        merged = merge(current=parse_value(ids.get(MAPPINGS_KEY, "")),
                       owned=parse_value(ids.get(OWNED_KEY, "")), desired=self.desired)
        value = format_value(merged)
        if value:
            row.setkey("external_ids", MAPPINGS_KEY, value)
        elif MAPPINGS_KEY in ids:
            row.delkey("external_ids", MAPPINGS_KEY)
        owned = format_value(owned_after(merged=merged, desired=self.desired))
        if owned:
            row.setkey("external_ids", OWNED_KEY, owned)
        elif OWNED_KEY in ids:
            row.delkey("external_ids", OWNED_KEY)
        self.result = value


class _EnsureBridge(command.BaseCommand):  # type: ignore[misc]
    """Create a bridge when missing (with br-int's datapath type); never alter an existing one."""

    def __init__(self, api: Any, name: str) -> None:
        super().__init__(api)
        self.name = name

    def run_idl(self, txn: Any) -> None:
        if idlutils.row_by_value(self.api.idl, "Bridge", "name", self.name, None) is not None:
            self.result = False
            return
        ids = self.api._ovs.external_ids
        datapath_type = ids.get("ovn-bridge-datapath-type")
        if not datapath_type:
            br_int = idlutils.row_by_value(self.api.idl, "Bridge", "name", "br-int", None)
            datapath_type = br_int.datapath_type if br_int is not None else ""
        self.api.add_br(self.name, may_exist=False,
                        datapath_type=datapath_type or None).run_idl(txn)
        self.result = True


class _PrepareBridge(command.BaseCommand):  # type: ignore[misc]
    """Create a bridge when missing and set its MAC (`other_config:hwaddr`); the result is
    (created, the previous hwaddr or None), what undoing it needs."""

    def __init__(self, api: Any, name: str, mac: str) -> None:
        super().__init__(api)
        self.name = name
        self.mac = mac

    def run_idl(self, txn: Any) -> None:
        ensure = _EnsureBridge(self.api, self.name)
        ensure.run_idl(txn)
        row = idlutils.row_by_value(self.api.idl, "Bridge", "name", self.name)
        # a row inserted in this transaction has no other_config to read yet
        previous = None if ensure.result else row.other_config.get("hwaddr")
        row.setkey("other_config", "hwaddr", self.mac)
        self.result = (bool(ensure.result), previous)


@metrics.ovs_operation("read")
def read(switch: ovs.LocalOvs) -> str:
    """The node's ovn-bridge-mappings value as OVN reads it (whoever wrote it); "" if unset."""
    ids = switch.api.db_get("Open_vSwitch", ".", "external_ids").execute(check_error=True)
    return str(ids.get(MAPPINGS_KEY) or "")


def apply(switch: ovs.LocalOvs, mappings: Sequence[BridgeMapping], *, source: str,
          netns: str | None = None) -> str:
    """Converge bridges, uplink ports and ovn-bridge-mappings; returns the resulting
    ovn-bridge-mappings value.

    `netns`: the network namespace (a path) of the node's NICs and of ovs-vswitchd; default:
    the agent's own (the host's). Validation against the node comes first: an error leaves the
    node untouched. Without uplinks to move, everything happens in one transaction. Uplinks
    with `moveAddresses` are moved first (see `uplinks`); when a step fails, or the final
    transaction does, every step done is undone and the error says so.
    """
    links = uplinks.observe(netns=netns)
    port_bridges = switch.port_bridges()
    validate_on_node(mappings, links=links, port_bridges=port_bridges, source=source)
    moves = uplinks.plan(mappings, links=links, port_bridges=port_bridges, source=source)
    desired = {m.physical_network: m.bridge for m in mappings}
    if not moves:
        return _converge(switch, mappings, desired, source=source)
    _check_merge(switch, desired, source=source)  # a conflict refuses before anything moves
    steps = _Steps()
    with uplinks.Netlink(netns=netns) as netlink:
        try:
            for move in moves:
                _move(switch, move, netlink, steps)
            steps.start("updating ovn-bridge-mappings and adding the other uplinks")
            value = _converge(switch, mappings, desired, source=source)
        except Exception as exc:
            failed = steps.rollback()
            raise errors.OvnkSecondaryError(
                _move_failed(moves, step=steps.current, exc=exc, failed=failed,
                             source=source)) from None
    for move in moves:
        LOG.info("moved %s from uplink %s to bridge %s (MAC %s); %s is a port of %s",
                 ", ".join([a.cidr for a in move.addresses]
                           + [r.describe() for r in move.routes]) or "nothing", move.uplink,
                 move.bridge, move.mac, move.uplink, move.bridge)
    return value


def _converge(switch: ovs.LocalOvs, mappings: Sequence[BridgeMapping],
              desired: Mapping[str, str], *, source: str) -> str:
    """Bridges, uplink ports and the merge of ovn-bridge-mappings, in one transaction."""
    api = switch.api
    ensures = []
    try:
        with metrics.ovs_operation("bridge_mappings"), \
                api.transaction(check_error=True, wait_for_vswitchd=True) as txn:
            for bridge in dict.fromkeys(m.bridge for m in mappings):
                ensures.append(txn.add(_EnsureBridge(api, bridge)))
            for mapping in mappings:
                for uplink in mapping.uplinks:
                    txn.add(api.add_port(mapping.bridge, uplink, may_exist=True))
            merge_command = txn.add(_MergeCommand(api, desired))
    except errors.InvalidConfig as exc:
        raise errors.InvalidConfig(f"{source}: {exc}") from None
    for ensure in ensures:
        if ensure.result:
            LOG.info("created OVS bridge %s", ensure.name)
    value: str = merge_command.result
    return value


def _check_merge(switch: ovs.LocalOvs, desired: Mapping[str, str], *, source: str) -> None:
    """Refuse a conflicting file up front (the transaction checks again: a race is undone)."""
    ids = switch.api.db_get("Open_vSwitch", ".", "external_ids").execute(check_error=True)
    try:
        merge(current=parse_value(ids.get(MAPPINGS_KEY, "")),
              owned=parse_value(ids.get(OWNED_KEY, "")), desired=desired)
    except errors.InvalidConfig as exc:
        raise errors.InvalidConfig(f"{source}: {exc}") from None


class _Steps:
    """The steps of the moves done so far, each with its inverse, and the one under way (named
    when it fails)."""

    def __init__(self) -> None:
        self.current = ""
        self._inverses: list[tuple[str, Callable[[], object]]] = []

    def start(self, what: str) -> None:
        self.current = what

    def done(self, inverse: Callable[[], object]) -> None:
        """The current step is done; `inverse` undoes it."""
        self._inverses.append((self.current, inverse))

    def rollback(self) -> list[str]:
        """Undo every step done, last first; the steps that could not be undone, in words."""
        failed = []
        while self._inverses:
            what, inverse = self._inverses.pop()
            try:
                inverse()
            except Exception as exc:  # undo the rest anyway; the error names what is left
                failed.append(f"undoing {what}: {exc}")
        return failed


def _transact(api: Any, *commands: Any) -> None:
    """Commit the commands in one transaction and wait for ovs-vswitchd to apply it."""
    with api.transaction(check_error=True, wait_for_vswitchd=True) as txn:
        for cmd in commands:
            txn.add(cmd)


def _move(switch: ovs.LocalOvs, move: uplinks.Move, netlink: uplinks.Netlink,
          steps: _Steps) -> None:
    """Move an uplink's IP configuration to its bridge's interface (the order of `uplinks`),
    recording each step's inverse in `steps`."""
    api = switch.api
    steps.start(f"giving bridge {move.bridge} the MAC {move.mac} of {move.uplink}")
    prepare = _PrepareBridge(api, move.bridge, move.mac)
    _transact(api, prepare)
    created, previous = prepare.result
    if created:
        steps.done(lambda: _transact(api, api.del_br(move.bridge)))
    elif previous is None:
        steps.done(lambda: _transact(api, api.db_remove("Bridge", move.bridge, "other_config",
                                                        "hwaddr")))
    else:
        steps.done(lambda: _transact(api, api.db_set("Bridge", move.bridge,
                                                     ("other_config", {"hwaddr": previous}))))
    steps.start(f"bringing up the interface {move.bridge}")
    bridge = netlink.index(move.bridge, timeout=BRIDGE_INTERFACE_TIMEOUT)
    uplink = netlink.index(move.uplink)
    if not netlink.is_up(bridge):
        netlink.set_up(bridge)
        steps.done(functools.partial(netlink.set_up, bridge, False))
    for address in move.addresses:
        steps.start(f"adding {address.cidr} to {move.bridge}")
        if netlink.add_address(bridge, address):
            steps.done(functools.partial(netlink.delete_address, bridge, address))
    steps.start(f"adding {move.uplink} to bridge {move.bridge} as a port")
    _transact(api, api.add_port(move.bridge, move.uplink, may_exist=False))
    steps.done(lambda: _transact(api, api.del_port(move.uplink, bridge=move.bridge)))
    # Removing its last IPv4 address takes the uplink's IPv4 routes with it: undone by giving
    # the addresses back first (undone last first), then the routes.
    steps.start(f"removing the addresses of {move.uplink}")
    steps.done(lambda: [netlink.add_route(uplink, route) for route in move.routes])
    for address in reversed(move.addresses):  # an IPv4 primary goes last, after its secondaries
        steps.start(f"removing {address.cidr} from {move.uplink}")
        if netlink.delete_address(uplink, address):
            steps.done(functools.partial(netlink.add_address, uplink, address))
    for route in move.routes:
        steps.start(f"moving the {route.describe()} from {move.uplink} to {move.bridge}")
        netlink.delete_route(uplink, route)
        if netlink.add_route(bridge, route):
            steps.done(functools.partial(netlink.delete_route, bridge, route))


def _move_failed(moves: Sequence[uplinks.Move], *, step: str, exc: Exception,
                 failed: Sequence[str], source: str) -> str:
    """Why the moves did not happen, what state the node is in, and what to do."""
    what = ", ".join(f"{m.uplink} to bridge {m.bridge}" for m in moves)
    if failed:
        state = (f"rolling back failed too ({'; '.join(failed)}): check the node's addresses "
                 "and routes (ip address, ip route) and its bridges (ovs-vsctl show)")
    else:
        state = ("everything was rolled back: the uplinks have their addresses and routes "
                 "again and are no ports")
    return (f"{source}: moving the addresses and routes of uplink NIC(s) {what} failed while "
            f"{step}: {exc}; {state}; the agent tries again within a minute")
