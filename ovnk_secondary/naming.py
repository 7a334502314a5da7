"""Names of OVN northbound objects, identical to OVN-Kubernetes' secondary networks.

Users read `ovn-nbctl show` with OVN-K's names in mind, so these follow OVN-K's code:
the prefix of a network (or of a NAD key) is its text with `-` and `/` replaced by `.`, then `_`.

Rows that OVN-K identifies by external_ids rather than by a readable name (port groups, ACLs
and address sets of network policies) carry OVN-K's "DbObjectIDs" (go-controller
`pkg/libovsdb/ops/db_object_ids.go`): `k8s.ovn.org/owner-controller` (for a secondary network
`<network>-network-controller`), `k8s.ovn.org/owner-type`, the type's own keys, and
`k8s.ovn.org/id`, their values joined by `:` in the type's key order. A port group's or
address set's name is `hash_for_ovn` of that id (`pkg/util/util.go: HashForOVN`). A hash is
not a proof of identity: the exact id stays in external_ids, and whoever builds rows checks
that no two ids share a name (`northbound/acls.py`).
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
# OVN-K's DbObjectIDs keys (`pkg/libovsdb/ops/db_object_ids.go`, `db_object_types.go`)
OWNER_CONTROLLER_KEY = "k8s.ovn.org/owner-controller"
OWNER_TYPE_KEY = "k8s.ovn.org/owner-type"
OBJECT_NAME_KEY = "k8s.ovn.org/name"
PRIMARY_ID_KEY = "k8s.ovn.org/id"

_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211


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


def vm_port_name(nad_key: str, vm_namespace: str, vm_name: str) -> str:
    """Logical switch port (and OVS iface-id) of a KubeVirt VM on a NAD, shared by its pods
    with the multi-chassis live-migration strategy (`migration`): `ns1.l2.network_ns1_vm_vm-a`.

    Ours (OVN-K has a port per pod); never a pod's port name: Kubernetes names hold no `_`, so
    after the NAD's prefix a pod's port has one `_` and a VM's two.
    """
    return f"{prefix(nad_key)}{vm_namespace}_vm_{vm_name}"


def controller_name(network: str) -> str:
    """OVN-K's owner-controller of a secondary network's rows: `<network>-network-controller`."""
    return f"{network}-network-controller"


def hash_for_ovn(text: str) -> str:
    """OVN-K's HashForOVN: `a` + the decimal FNV-1a 64-bit hash of the UTF-8 text (a valid
    port group or address set name; `default` -> `a16982411286042166782`)."""
    value = _FNV_OFFSET
    for byte in text.encode():
        value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"a{value}"
