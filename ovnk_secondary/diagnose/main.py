"""`ovnk-secondary diagnose pod NS/NAME | network NAME | node`: see the package docstring.

Prints one line per link (`ok` or `FAILED`, what was found) and, under the first broken one,
the fix; exits 1 when a link is broken, 0 when all hold. Needs what an admin has: a kubeconfig
allowed to read pods, NADs, Events and Nodes and to exec into the node-agent pods, and NB and
SB reachable (`--ovn-nb`, `--ovn-sb`; the TLS files apply to both).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ovnk_secondary import errors, naming, podnetworks
from ovnk_secondary.controller import main as controller_main
from ovnk_secondary.diagnose import chain, facts, node, ovsdb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    subjects = parser.add_subparsers(dest="subject", required=True)
    pod = subjects.add_parser("pod", help="the chain of each network selection element of a pod")
    pod.add_argument("pod", metavar="NAMESPACE/NAME")
    network = subjects.add_parser("network", help="a network: its NADs, NB rows, and for "
                                  "localnet every node's mapping, bridge and uplink")
    network.add_argument("network", metavar="NAME", help="the network name (NAD config `name`)")
    for sub in (pod, network):
        sub.add_argument("--kubeconfig", metavar="PATH",
                         help="default: in-cluster account, $KUBECONFIG, ~/.kube/config")
        sub.add_argument("--ovn-nb", required=True, metavar="REMOTE",
                         help="OVN NB, as the controller's --ovn-nb")
        sub.add_argument("--ovn-sb", required=True, metavar="REMOTE",
                         help="OVN SB, e.g. tcp:10.0.0.1:6642")
        for flag in ("private-key", "certificate", "ca-cert"):
            sub.add_argument(f"--ovn-nb-{flag}", metavar="PATH",
                             help="for ssl: remotes (NB and SB), as the controller's")
        sub.add_argument("--agent-namespace", default="ovnk-secondary", metavar="NS",
                         help="namespace of the node-agent pods (default: %(default)s)")
    node.add_arguments(subjects.add_parser(
        "node", help="(run in a node-agent pod) the node's OVSDB facts as JSON"))


def run(args: argparse.Namespace) -> int:
    if args.subject == "node":
        return node.run(args)
    tls = controller_main.tls_files(args)
    if tls is not None:
        ovsdb.set_tls(private_key=tls.private_key, certificate=tls.certificate,
                      ca_cert=tls.ca_cert)
    reader = facts.Facts(kubeconfig=args.kubeconfig, ovn_nb=args.ovn_nb, ovn_sb=args.ovn_sb,
                         agent_namespace=args.agent_namespace)
    if args.subject == "pod":
        return _pod(reader, args.pod)
    return _network(reader, args.network)


def _pod(reader: facts.Facts, key: str) -> int:
    namespace, _, name = key.partition("/")
    if not namespace or not name:
        raise errors.InvalidConfig(f"{key!r}: name the pod as NAMESPACE/NAME")
    pod = reader.pod(namespace, name)
    print(f"pod {pod.key} (uid {pod.uid}) on node {pod.node or '(not scheduled)'}")
    try:
        elements = list(chain.pod_selections(pod))
    except errors.InvalidConfig as exc:
        _print([chain.Step(what="network selection annotation parses", ok=False, found=str(exc),
                           fix="fix the pod's k8s.v1.cni.cncf.io/networks annotation")])
        return 1
    if not elements:
        print("  no network selection elements (annotation k8s.v1.cni.cncf.io/networks): "
              "the pod has no secondary networks")
        return 0
    broken = False
    for index, selection in enumerate(elements, start=1):
        print(f"network selection element {index}: {selection.nad_key}"
              + (f" (interface {selection.interface})" if selection.interface else ""))
        nad = reader.nad(selection.nad_key)
        network = chain.network_of(nad)
        port_name = podnetworks.port_name(selection.nad_key, pod.namespace, pod.name,
                                          _entry(pod, selection.nad_key))
        northbound = southbound = node_facts = None
        if network is not None and pod.node is not None:
            northbound = reader.northbound(network, port_name)
            southbound = reader.southbound(port_name)
            node_facts = reader.node(pod.node, iface_id=port_name)
        steps = chain.pod_element(pod, selection, nad, northbound, southbound, node_facts)
        _print(steps)
        broken = broken or not steps[-1].ok
    return 1 if broken else 0


def _network(reader: facts.Facts, name: str) -> int:
    print(f"network {name}")
    found = reader.nads_of_network(name)
    network = chain.network_of(found[0]) if found else None
    northbound = chain.Northbound(switch=None, port=None)
    nodes: list[chain.Node] = []
    pods = 0
    if network is not None:
        northbound = reader.northbound(network, None)
        if northbound.switch is not None:
            pods = len(northbound.switch["ports"]) - (network.topology == naming.LOCALNET)
        if network.topology == naming.LOCALNET:
            nodes = [reader.node(n, iface_id=None) for n in reader.node_names()]
    steps = chain.network(name, found, northbound, nodes, pods=pods)
    _print(steps)
    return 0 if steps and steps[-1].ok else 1


def _print(steps: Sequence[chain.Step]) -> None:
    for step in steps:
        mark = "ok    " if step.ok else "FAILED"
        print(f"  {mark} {step.what}" + (f": {step.found}" if step.found else ""))
        if not step.ok:
            print(f"         fix: {step.fix}")
    sys.stdout.flush()


def _entry(pod: chain.Pod, nad_key: str) -> podnetworks.PodNetwork | None:
    """The pod's annotation entry for a NAD; None when absent or unreadable (the chain says
    why)."""
    try:
        return podnetworks.decode(pod.annotations.get(podnetworks.ANNOTATION)).get(nad_key)
    except errors.OvnkSecondaryError:
        return None
