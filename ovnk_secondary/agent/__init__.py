"""The node agent: serves the CNI plugin's requests and owns the node's localnet plumbing.

Data flow: CNI request (`server`) -> pod attachment (`attachments`, reading `pods`) -> pod
interface (`interfaces`, netlink) -> OVS port on br-int (`ovs`, local OVSDB); bridge mappings
(`bridgemappings`) converge `ovn-bridge-mappings` and the localnet bridges.
"""
