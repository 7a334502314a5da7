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

The merge is entry by entry: entries the agent did not write are never dropped or overwritten
(a conflicting file is refused); the agent remembers what it wrote in
`external_ids:ovnk-secondary.io/bridge-mappings` and removes exactly those entries when they
leave the file. Bridges and uplink ports are never deleted (an uplink may carry the node's own
traffic). Parsing, validation and the merge are pure; `apply` is the thin OVSDB adapter.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml
from ovsdbapp.backend.ovs_idl import command, idlutils

from ovnk_secondary import errors
from ovnk_secondary.agent import metrics, ovs

LOG = logging.getLogger(__name__)

MAPPINGS_KEY = "ovn-bridge-mappings"
OWNED_KEY = "ovnk-secondary.io/bridge-mappings"  # on Open_vSwitch external_ids: what we wrote
NODE_ANNOTATION = "ovnk-secondary.io/bridge-mappings"
_FIELDS = {"physicalNetworkName", "bridge", "uplinks"}
# Names end up inside `a:b,c:d` and as kernel interface names (internal ports): keep them plain.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,14}$")
_PHYSNET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BridgeMapping:
    physical_network: str
    bridge: str
    uplinks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"physicalNetworkName": self.physical_network, "bridge": self.bridge,
                "uplinks": list(self.uplinks)}


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
    return BridgeMapping(physical_network=physnet, bridge=bridge, uplinks=tuple(uplinks))


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


@metrics.ovs_operation("read")
def read(switch: ovs.LocalOvs) -> str:
    """The node's ovn-bridge-mappings value as OVN reads it (whoever wrote it); "" if unset."""
    ids = switch.api.db_get("Open_vSwitch", ".", "external_ids").execute(check_error=True)
    return str(ids.get(MAPPINGS_KEY) or "")


def apply(switch: ovs.LocalOvs, mappings: Sequence[BridgeMapping], *, links: Iterable[str],
          source: str) -> str:
    """Converge bridges, uplink ports and ovn-bridge-mappings in one transaction.

    Validation against the node comes first; any error leaves the node untouched. Returns the
    resulting ovn-bridge-mappings value.
    """
    validate_on_node(mappings, links=links, port_bridges=switch.port_bridges(), source=source)
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
            merge_command = txn.add(_MergeCommand(
                api, {m.physical_network: m.bridge for m in mappings}))
    except errors.InvalidConfig as exc:
        raise errors.InvalidConfig(f"{source}: {exc}") from None
    for ensure in ensures:
        if ensure.result:
            LOG.info("created OVS bridge %s", ensure.name)
    value: str = merge_command.result
    return value
