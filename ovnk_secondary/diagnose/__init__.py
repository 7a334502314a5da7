"""`ovnk-secondary diagnose`: walk the chain from a pod's network selection to the wire.

For each network selection element of a pod (or for a network), the facts are read where the
controller and the node agent read them (the Kubernetes API, OVN NB and SB, the node's OVSDB
through its agent's pod) by `facts`, then judged by the pure `chain`: each link ok or failed,
with the fix. `node` is the part that runs in the agent's pod (`ovnk-secondary diagnose node`).
"""
