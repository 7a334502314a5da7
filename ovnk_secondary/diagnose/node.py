"""`ovnk-secondary diagnose node`: what the node's OVSDB says about one pod interface and the
node's bridges, as JSON on stdout. It runs in the node agent's pod (`diagnose pod` executes it
there through the Kubernetes API), reading the same local OVSDB as the agent.

Output (all names as OVS has them):

    {"interface": {"name", "external_ids", "ofport", "error", "link_state"} | null,
     "ovn_bridge_mappings": "physnet:bridge,...",
     "bridges": {bridge: [{"name", "type", "link_state", "options"}...]}}   # br-int left out
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ovnk_secondary.diagnose import ovsdb

DATABASE = "Open_vSwitch"


def report(remote: str, *, iface_id: str | None) -> dict[str, Any]:
    interface = None
    if iface_id:
        found = ovsdb.select(remote, DATABASE, "Interface",
                             [["external_ids", "includes", ["map", [["iface-id", iface_id]]]]],
                             ["name", "external_ids", "ofport", "error", "link_state"])
        interface = found[0] if found else None
    root = ovsdb.select(remote, DATABASE, "Open_vSwitch", [], ["external_ids"])
    mappings = root[0]["external_ids"].get("ovn-bridge-mappings", "") if root else ""
    interfaces = {row["_uuid"]: row for row in ovsdb.select(
        remote, DATABASE, "Interface", [], ["_uuid", "name", "type", "link_state", "options"])}
    ports = {row["_uuid"]: row for row in ovsdb.select(
        remote, DATABASE, "Port", [], ["_uuid", "name", "interfaces"])}
    bridges: dict[str, list[dict[str, Any]]] = {}
    for bridge in ovsdb.select(remote, DATABASE, "Bridge", [], ["name", "ports"]):
        if bridge["name"] == "br-int":
            continue
        members = []
        for port_uuid in _uuids(bridge["ports"]):
            for interface_uuid in _uuids(ports.get(port_uuid, {}).get("interfaces", [])):
                row = interfaces.get(interface_uuid)
                if row is not None:
                    members.append({k: row[k] for k in ("name", "type", "link_state",
                                                         "options")})
        bridges[bridge["name"]] = sorted(members, key=lambda m: str(m["name"]))
    return {"interface": interface, "ovn_bridge_mappings": mappings, "bridges": bridges}


def _uuids(column: Any) -> list[str]:
    """A reference column holding one uuid (a str) or a set of them (a list)."""
    if isinstance(column, str):
        return [column]
    return [str(u) for u in column or []]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ovs-db", default="unix:/run/openvswitch/db.sock",
                        help="the node's Open_vSwitch database (default: %(default)s)")
    parser.add_argument("--iface-id", default=None,
                        help="the pod's logical switch port name (OVS external_ids:iface-id)")


def run(args: argparse.Namespace) -> int:
    json.dump(report(args.ovs_db, iface_id=args.iface_id), sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0
