"""Names of OVN northbound objects, identical to OVN-Kubernetes' secondary networks.

Users read `ovn-nbctl show` with OVN-K's names in mind, so these follow OVN-K's code:
the prefix of a network (or of a NAD key) is its text with `-` and `/` replaced by `.`, then `_`.
"""

from __future__ import annotations

LAYER2 = "layer2"
LOCALNET = "localnet"

# external_ids keys (OVN-K's) and our ownership marker
NETWORK_KEY = "k8s.ovn.org/network"
TOPOLOGY_KEY = "k8s.ovn.org/topology"
ROLE_KEY = "k8s.ovn.org/role"
NAD_KEY = "k8s.ovn.org/nad"
OWNER_KEY = "ovnk-secondary.io/owner"
OWNER_VALUE = "ovnk-secondary"


def prefix(text: str) -> str:
    """`l2-network` -> `l2.network_`; `ns1/l2-network` -> `ns1.l2.network_`."""
    return text.replace("-", ".").replace("/", ".") + "_"


def switch_name(network: str, topology: str) -> str:
    """The one logical switch of a layer2 or localnet network."""
    return f"{prefix(network)}ovn_{topology}_switch"


def localnet_port_name(network: str) -> str:
    """The localnet port of a localnet network's switch."""
    return f"{prefix(network)}ovn_localnet_port"


def pod_port_name(nad_key: str, pod_namespace: str, pod_name: str) -> str:
    """Logical switch port (and OVS iface-id) of a pod on a NAD: `ns1.l2.network_ns1_tinypod`."""
    return f"{prefix(nad_key)}{pod_namespace}_{pod_name}"
