"""ovn-northd and a southbound ovsdb-server of a test's own (`servers.Northd`, shared with the
benchmarks), to see NB rows as OVN reads them."""

from __future__ import annotations

from ovnk_secondary.northbound.servers import Endpoint, Northd, microflow, running

__all__ = ["Endpoint", "Northd", "microflow", "running"]
