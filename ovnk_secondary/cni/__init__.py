"""The CNI side of the node: the `ovn-k8s-cni-overlay` plugin and the protocol it speaks.

The plugin is a shim that Multus executes once per secondary network of a pod; it forwards the
request to the node agent over a unix socket. Everything here stays import-light (standard
library only) because the plugin runs as a fresh process for every ADD, DEL and CHECK.
"""
