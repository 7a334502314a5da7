"""The reference scenario on a sandbox cluster: apply `manifests/examples/`, wait for the pods,
look at them (addresses, pings, captures). Used by `make demo` and by the end-to-end tests.

Everything goes through the user's path: kubectl applies the manifests to the sandbox's API, the
controller writes northbound, the kubelet stand-in calls the CNI plugin, the agent plugs OVS.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import shlex
import subprocess
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ovnk_secondary import errors
from ovnk_secondary.sandbox import cluster, kubeapi

EXAMPLES = cluster.REPO_DIR / "manifests" / "examples"
NAMESPACE = "test"
PODS = ("l2-pod-1", "l2-pod-2", "localnet1-pod", "localnet2-pod", "two-networks-pod")
POD_NETWORKS = "k8s.ovn.org/pod-networks"
NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"


@dataclasses.dataclass(frozen=True)
class PodView:
    """What a person checks about a pod: where it runs and its secondary interfaces."""

    namespace: str
    name: str
    node: str
    netns: str
    ready: bool
    pod_networks: dict[str, Any]  # k8s.ovn.org/pod-networks
    network_status: list[dict[str, Any]]  # k8s.v1.cni.cncf.io/network-status
    interfaces: list[dict[str, Any]]  # `ip -j addr` inside the pod, without lo

    def addresses(self, interface: str) -> list[str]:
        """`address/prefix` of IPv4 and global IPv6 addresses of `interface` in the pod."""
        for link in self.interfaces:
            if link["ifname"] == interface:
                return [
                    f"{a['local']}/{a['prefixlen']}"
                    for a in link.get("addr_info", [])
                    if a.get("scope") == "global"
                ]
        return []

    def mac(self, interface: str) -> str | None:
        return next((i["address"] for i in self.interfaces if i["ifname"] == interface), None)


def kubectl(sb: cluster.Sandbox, *args: str, check: bool = True) -> str:
    """kubectl of the control plane's release, as the sandbox's admin."""
    if sb.kubeconfig is None:
        raise errors.SandboxError(f"sandbox {sb.name!r} has no Kubernetes API")
    done = subprocess.run(
        [str(kubeapi.kubectl()), "--kubeconfig", str(sb.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if check and done.returncode != 0:
        raise errors.SandboxError(f"kubectl {shlex.join(args)}: {done.stderr.strip()}")
    return done.stdout


def apply_examples(sb: cluster.Sandbox, *files: str) -> None:
    """`kubectl apply -f manifests/examples/` (or some of its files)."""
    targets = [str(EXAMPLES / f) for f in files] or [str(EXAMPLES)]
    for target in targets:
        kubectl(sb, "apply", "-f", target)


def core_api(sb: cluster.Sandbox) -> Any:
    import kubernetes

    return kubernetes.client.CoreV1Api(sb.kube())


def custom_api(sb: cluster.Sandbox) -> Any:
    import kubernetes

    return kubernetes.client.CustomObjectsApi(sb.kube())


def ensure_namespace(sb: cluster.Sandbox, name: str, *, timeout: float = 30) -> None:
    """Namespace `name` exists with its default ServiceAccount (`kubeapi.ensure_namespace`)."""
    kubeapi.ensure_namespace(core_api(sb), name, timeout=timeout)


def wait_gone(
    sb: cluster.Sandbox, names: Iterable[str], *, namespace: str = NAMESPACE, timeout: float = 60
) -> None:
    """Wait until the pods are gone from the API and every node has torn down the namespaces of
    pods that no longer exist."""
    import kubernetes

    core = core_api(sb)
    deadline = time.monotonic() + timeout
    left: set[str] = set(names)
    while True:
        for name in sorted(left):
            try:
                core.read_namespaced_pod(name, namespace)
            except kubernetes.client.ApiException as exc:
                if exc.status == 404:
                    left.discard(name)
        alive = {f"cni-{p.metadata.uid}" for p in core.list_pod_for_all_namespaces().items}
        stale = {
            node: [
                ns
                for ns in sb.exec(node, "ip netns list").stdout.split()
                if ns.startswith("cni-") and ns not in alive
            ]
            for node in sb.node_names
        }
        if not left and not any(stale.values()):
            return
        if time.monotonic() > deadline:
            raise errors.SandboxError(
                f"not torn down after {timeout} s: pods {sorted(left)}, namespaces {stale}"
            )
        time.sleep(0.3)


def wait_ready(
    sb: cluster.Sandbox, names: Iterable[str], *, namespace: str = NAMESPACE, timeout: float = 90
) -> None:
    """Wait until every pod is Ready (all its networks up); say which are not, and why."""
    core = core_api(sb)
    pending = set(names)
    deadline = time.monotonic() + timeout
    while pending:
        for name in sorted(pending):
            pod = core.read_namespaced_pod(name, namespace)
            conditions = (pod.status.conditions or []) if pod.status else []
            if any(c.type == "Ready" and c.status == "True" for c in conditions):
                pending.discard(name)
        if not pending:
            return
        if time.monotonic() > deadline:
            events = core.list_namespaced_event(namespace).items
            reasons = [
                f"{e.involved_object.name}: {e.reason}: {e.message}"
                for e in events
                if e.involved_object.name in pending
            ]
            raise errors.SandboxError(
                f"pods {sorted(pending)} not Ready after {timeout} s; events: {reasons[-5:]}"
            )
        time.sleep(0.2)


def view(sb: cluster.Sandbox, name: str, *, namespace: str = NAMESPACE) -> PodView:
    core = core_api(sb)
    pod = core.read_namespaced_pod(name, namespace)
    annotations = pod.metadata.annotations or {}
    node, netns = pod.spec.node_name, f"cni-{pod.metadata.uid}"
    out = sb.exec(node, ["ip", "-j", "-n", netns, "addr"], check=False).stdout
    conditions = (pod.status.conditions or []) if pod.status else []
    return PodView(
        namespace=namespace,
        name=name,
        node=node,
        netns=netns,
        ready=any(c.type == "Ready" and c.status == "True" for c in conditions),
        pod_networks=json.loads(annotations.get(POD_NETWORKS, "{}")),
        network_status=json.loads(annotations.get(NETWORK_STATUS, "[]")),
        interfaces=[i for i in json.loads(out or "[]") if i["ifname"] != "lo"],
    )


def in_pod(
    sb: cluster.Sandbox, pod: PodView, command: Sequence[str], *, check: bool = False
) -> cluster.ExecResult:
    return sb.exec(pod.node, ["ip", "netns", "exec", pod.netns, *command], check=check)


def ping(
    sb: cluster.Sandbox, pod: PodView, address: str, *, replies: int = 3, deadline: int = 5
) -> bool:
    """`replies` echo replies within `deadline` seconds (pinging every 0.2 s: the first packet
    of a flow may be lost while the userspace datapath and ARP warm up)."""
    command = ["ping", "-c", str(replies), "-i", "0.2", "-w", str(deadline), address]
    return in_pod(sb, pod, command).exit_code == 0


def ping_matrix(
    sb: cluster.Sandbox, pods: Sequence[PodView], targets: dict[str, str]
) -> dict[tuple[str, str], bool]:
    """(pod name, target label) -> reached (one reply within 2 s), all pairs at once."""
    pairs = [(pod, label, address) for pod in pods for label, address in targets.items()]
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        reached = pool.map(lambda p: ping(sb, p[0], p[2], replies=1, deadline=2), pairs)
        return {(pod.name, label): ok for (pod, label, _), ok in zip(pairs, reached, strict=True)}


def targets(pods: Sequence[PodView]) -> dict[str, str]:
    """Every pod address on every secondary network, plus the external hosts."""
    found = {}
    for pod in pods:
        for status in pod.network_status:
            for ip in status.get("ips", []):
                found[f"{pod.name}/{status['interface']}"] = ip
    for vlan, (_, address) in cluster.EXTERNAL_HOSTS.items():
        found[f"external/vlan{vlan}"] = address
    return found


def our_switches(sb: cluster.Sandbox) -> str:
    """`ovn-nbctl show` of the switches our controller owns."""
    names = sb.ovn_nbctl(
        "--bare",
        "--columns=name",
        "find",
        "Logical_Switch",
        "external_ids:ovnk-secondary.io/owner=ovnk-secondary",
    ).split()
    return "".join(sb.ovn_nbctl("show", name) for name in sorted(names))


def summary(pods: Sequence[PodView]) -> list[str]:
    lines = []
    for pod in pods:
        for status in pod.network_status:
            interface = status["interface"]
            lines.append(
                f"{pod.namespace}/{pod.name} on {pod.node}: {interface} "
                f"{', '.join(pod.addresses(interface)) or '-'} mac {pod.mac(interface)} "
                f"({status['name']})"
            )
    return lines


def captured_ping(
    sb: cluster.Sandbox,
    pod: PodView,
    address: str,
    *,
    on: tuple[str, str],
    bpf_filter: str,
    extra_args: Sequence[str] = ("-e",),
) -> tuple[bool, list[str]]:
    """Ping `address` from `pod` while capturing on `on` = (container, interface)."""
    node, interface = on
    with sb.capture(node, interface, bpf_filter, extra_args=extra_args) as capture:
        reached = ping(sb, pod, address)
        capture.wait_for(lambda line: f"> {address}" in line, timeout=3)
    return reached, capture.lines


def geneve_evidence(lines: Sequence[str], source: str, destination: str) -> list[str]:
    """From `tcpdump -v` on an underlay: the outer (Geneve) line and the inner ICMP line of the
    first echo request from `source` to `destination`."""
    for index, line in enumerate(lines):
        if f"{source} > {destination}: ICMP echo request" in line and index >= 2:
            return [lines[index - 2].strip(), line.strip()]
    return []


def vlan_evidence(lines: Sequence[str], source: str, destination: str) -> list[str]:
    """From `tcpdump -e` on a trunk: the echo requests from `source` to `destination`."""
    return [line for line in lines if f"{source} > {destination}: ICMP echo request" in line]
