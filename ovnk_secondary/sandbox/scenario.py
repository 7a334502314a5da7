"""The reference scenario on a sandbox cluster: apply `manifests/examples/`, wait for the pods,
look at them (addresses, pings, captures). Used by `make demo` and by the end-to-end tests.

Everything goes through the user's path: kubectl applies the manifests to the sandbox's API, the
controller writes northbound, the kubelet starts the pods and Multus calls our CNI binary, the
agent plugs OVS; pings run in the pods' containers with `kubectl exec`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import prometheus_client.parser

from ovnk_secondary import errors, podnetworks
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
    uid: str
    ready: bool
    pod_networks: dict[str, Any]  # k8s.ovn.org/pod-networks
    network_status: list[dict[str, Any]]  # k8s.v1.cni.cncf.io/network-status (Multus)
    macs: dict[str, str]  # interface -> MAC, as `ip link` shows them inside the pod
    ips: dict[str, list[str]]  # interface -> global `address/prefix`, as `ip addr` shows them
    host_ports: dict[str, str]  # secondary interface -> its OVS port on the node (the agent's)
    netns: str | None  # the pod's network namespace on the node, as the agent recorded it

    def addresses(self, interface: str) -> list[str]:
        """`address/prefix` of the IPv4 and global IPv6 addresses of `interface` in the pod."""
        return self.ips.get(interface, [])

    def mac(self, interface: str) -> str | None:
        return self.macs.get(interface)

    def port_name(self, nad: str) -> str:
        """Its logical switch port on NAD `nad` (namespace/name): the one its annotation entry
        names, else its own (`podnetworks.port_name`)."""
        entry = podnetworks.decode(json.dumps(self.pod_networks)).get(nad)
        return podnetworks.port_name(nad, self.namespace, self.name, entry)


def kubectl(sb: cluster.Sandbox, *args: str, check: bool = True) -> str:
    """kubectl of the control plane's release, as the sandbox's admin; its stdout."""
    return sb.kubectl(*args, check=check).stdout


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


def our_ports(sb: cluster.Sandbox, node: str) -> list[dict[str, str]]:
    """external_ids of the OVS interfaces the node agent plugged on `node` (its marker)."""
    out = sb.exec(node, ["ovs-vsctl", "--format=json", "--columns=name,external_ids", "find",
                         "Interface", "external_ids:ovnk-secondary.io/owner=ovnk-secondary"]).stdout
    return [{"name": name, **dict(ids[1])} for name, ids in json.loads(out)["data"]]


def wait_gone(
    sb: cluster.Sandbox, names: Iterable[str], *, namespace: str = NAMESPACE, timeout: float = 90
) -> None:
    """Wait until the pods are gone from the API, and no node keeps an OVS port of a pod that
    no longer exists (the port's `iface-id-ver` is the pod's uid) nor a network namespace
    beyond those of its running pods (the runtime's `cni-*`)."""
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
        pods = core.list_pod_for_all_namespaces().items
        alive = {p.metadata.uid for p in pods}
        stale: dict[str, list[str]] = {}
        for node in sb.node_names:
            ports = [p["name"] for p in our_ports(sb, node) if p.get("iface-id-ver") not in alive]
            namespaces = [n for n in sb.exec(node, "ip netns list").stdout.split()
                          if n.startswith("cni-")]
            sandboxed = [p for p in pods if p.spec.node_name == node
                         and not p.spec.host_network and p.status.phase == "Running"]
            if ports or len(namespaces) > len(sandboxed):
                stale[node] = ports + namespaces
        if not left and not stale:
            return
        if time.monotonic() > deadline:
            raise errors.SandboxError(
                f"not torn down after {timeout} s: pods {sorted(left)}, on nodes {stale}"
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


def in_pod(
    sb: cluster.Sandbox, pod: PodView | str, command: Sequence[str], *,
    namespace: str = NAMESPACE, check: bool = False, timeout: float = 60,
) -> cluster.ExecResult:
    """`command` in the pod's container, with `kubectl exec` (as a person would)."""
    if isinstance(pod, PodView):
        namespace, name = pod.namespace, pod.name
    else:
        name = pod
    done = sb.kubectl("exec", "-n", namespace, name, "--", *command, check=False,
                      timeout=timeout)
    result = cluster.ExecResult(done.returncode, done.stdout, done.stderr)
    if check and result.exit_code != 0:
        raise errors.SandboxError(
            f"{shlex.join(command)} in {namespace}/{name} exited {result.exit_code}: "
            f"{(result.stderr or result.stdout).strip()[-1000:]}")
    return result


def view(sb: cluster.Sandbox, name: str, *, namespace: str = NAMESPACE) -> PodView:
    core = core_api(sb)
    pod = core.read_namespaced_pod(name, namespace)
    annotations = pod.metadata.annotations or {}
    conditions = (pod.status.conditions or []) if pod.status else []
    # busybox's `ip -o`: "3: net1@if13: <...> mtu 1400 ...\    link/ether 0a:58:... brd ..."
    # and "3: net1    inet 10.100.0.13/24 scope global net1\ ..."
    shown = in_pod(sb, name, ["sh", "-c", "ip -o link; echo --; ip -o addr"],
                   namespace=namespace).stdout
    links, _, addresses = shown.partition("--\n")
    macs: dict[str, str] = {}
    ips: dict[str, list[str]] = {}
    for line in links.splitlines():
        fields = line.split()
        if len(fields) > 2 and "link/ether" in fields:
            macs[fields[1].rstrip(":").split("@")[0]] = fields[fields.index("link/ether") + 1]
    for line in addresses.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] in ("inet", "inet6") and "global" in fields:
            ips.setdefault(fields[1], []).append(fields[3])
    node = pod.spec.node_name
    plugged = [p for p in our_ports(sb, node) if p.get("iface-id-ver") == pod.metadata.uid]
    return PodView(
        namespace=namespace,
        name=name,
        node=node,
        uid=pod.metadata.uid,
        ready=any(c.type == "Ready" and c.status == "True" for c in conditions),
        pod_networks=json.loads(annotations.get(POD_NETWORKS, "{}")),
        network_status=json.loads(annotations.get(NETWORK_STATUS, "[]")),
        macs=macs,
        ips=ips,
        host_ports={p["ovnk-secondary.io/ifname"]: p["name"] for p in plugged},
        netns=next((p["ovnk-secondary.io/netns"] for p in plugged), None),
    )


def on_pod_network(sb: cluster.Sandbox, pod: PodView, command: Sequence[str], *,
                   check: bool = False) -> cluster.ExecResult:
    """`command` in the pod's network namespace, from its node: what the pod's container may
    not do itself (it has no NET_ADMIN), e.g. add a route."""
    if pod.netns is None:
        raise errors.SandboxError(f"pod {pod.namespace}/{pod.name} has no interface of ours")
    return sb.exec(pod.node, ["nsenter", f"--net={pod.netns}", *command], check=check)


def ping(
    sb: cluster.Sandbox, pod: PodView, address: str, *, replies: int = 3, deadline: int = 5
) -> bool:
    """`replies` echo replies within `deadline` seconds (pinging every 0.2 s: the first packet
    of a flow may be lost while the userspace datapath and ARP warm up). busybox's ping counts
    the requests it sends (-c) and fails on any loss: a few more are sent and the replies
    counted from its summary."""
    command = ["ping", "-c", str(replies + 3), "-i", "0.2", "-w", str(deadline), address]
    summary = re.search(r"(\d+) packets received",
                        in_pod(sb, pod, command, timeout=deadline + 30).stdout)
    return summary is not None and int(summary.group(1)) >= replies


def diagnose(sb: cluster.Sandbox, *subject: str) -> tuple[int, str]:
    """`ovnk-secondary diagnose SUBJECT...` as a user runs it against the sandbox (its
    kubeconfig, NB and SB): (exit status, output)."""
    done = subprocess.run(
        [sys.executable, "-m", "ovnk_secondary", "diagnose", *subject,
         "--kubeconfig", str(sb.kubeconfig), "--ovn-nb", sb.nb_connection,
         "--ovn-sb", sb.sb_connection],
        capture_output=True, text=True, timeout=180, check=False)
    return done.returncode, done.stdout + done.stderr


Sample = tuple[str, dict[str, str], float]  # (name, labels, value) of a Prometheus sample

_SCRAPE = ("import sys, urllib.request; "
           "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())")


def scrape(sb: cluster.Sandbox, node: str, url: str) -> list[Sample]:
    """The samples of a `/metrics` page, fetched from `node` (with the node's python3) as a
    Prometheus on that node would, parsed by prometheus_client's parser."""
    text = sb.exec(node, ["python3", "-c", _SCRAPE, url]).stdout
    return [(sample.name, dict(sample.labels), sample.value)
            for family in prometheus_client.parser.text_string_to_metric_families(text)
            for sample in family.samples]


def controller_metrics(sb: cluster.Sandbox) -> list[Sample]:
    """The controller's /metrics (its pod's health port, 8080, from the pod's node)."""
    pods = json.loads(kubectl(sb, "get", "pods", "-n", cluster.PRODUCT_NAMESPACE, "-l",
                              "app.kubernetes.io/component=controller", "-o", "json"))["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"
               and not p["metadata"].get("deletionTimestamp")]
    if len(running) != 1:
        raise errors.OvnkSecondaryError(f"expected one running controller pod, found "
                                        f"{len(running)}")
    pod = running[0]
    return scrape(sb, pod["spec"]["nodeName"], f"http://{pod['status']['podIP']}:8080/metrics")


def agent_metrics(sb: cluster.Sandbox, node: str) -> list[Sample]:
    """The node agent's /metrics on `node` (the DaemonSet serves it on the node's loopback)."""
    return scrape(sb, node, "http://127.0.0.1:9190/metrics")


# -- TCP and UDP listeners, and probes of them ---------------------------------------------------

# A listener for `python3 -c LISTENER NAME TCP_PORTS UDP_PORTS` (ports comma-separated): every TCP
# connection and every UDP datagram is answered with "NAME PROTOCOL PORT", so a probe knows which
# listener answered, not only that something did. Runs in any container with python3 (the
# product image, the sandbox's node images).
LISTENER = """
import socket, sys, threading
name, tcp, udp = sys.argv[1], sys.argv[2], sys.argv[3]
def serve_tcp(port):
    server = socket.create_server(("0.0.0.0", port), backlog=64)
    while True:
        conn, _ = server.accept()
        with conn:
            conn.sendall(f"{name} tcp {port}".encode())
def serve_udp(port):
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", port))
    while True:
        _, peer = server.recvfrom(2048)
        server.sendto(f"{name} udp {port}".encode(), peer)
threads = [threading.Thread(target=serve_tcp, args=(int(p),)) for p in tcp.split(",") if p]
threads += [threading.Thread(target=serve_udp, args=(int(p),)) for p in udp.split(",") if p]
for thread in threads:
    thread.start()
print("listening", flush=True)
"""

# `python3 -c PROBE JSON` with JSON a list of [protocol, address, port]: prints a JSON list of
# the answers (the listener's line, or null when nothing answered): TCP connects within 1.5 s,
# UDP sends a datagram every 0.5 s, three times, and takes the first answer.
PROBE = """
import concurrent.futures, json, socket, sys
def probe(protocol, address, port):
    try:
        if protocol == "tcp":
            with socket.create_connection((address, port), timeout=1.5) as conn:
                conn.settimeout(1.5)
                return conn.recv(256).decode() or None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as conn:
            conn.settimeout(0.5)
            for _ in range(3):
                conn.sendto(b"probe", (address, port))
                try:
                    return conn.recv(256).decode()
                except socket.timeout:
                    pass
    except OSError:
        return None
    return None
targets = json.loads(sys.argv[1])
with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
    print(json.dumps(list(pool.map(lambda t: probe(*t), targets))))
"""


@dataclasses.dataclass(frozen=True, order=True)
class Probe:
    """One TCP connection or UDP exchange to a listener."""

    protocol: str  # "tcp" | "udp"
    address: str
    port: int


def listener_command(name: str, *, tcp: Sequence[int] = (), udp: Sequence[int] = ()) -> list[str]:
    """argv of a listener answering "NAME PROTOCOL PORT" on the given ports (`LISTENER`)."""
    return ["python3", "-c", LISTENER, name, ",".join(map(str, tcp)), ",".join(map(str, udp))]


def probe_command(probes: Sequence[Probe]) -> list[str]:
    """argv that tries every probe at once and prints the answers (`PROBE`)."""
    return ["python3", "-c", PROBE,
            json.dumps([[p.protocol, p.address, p.port] for p in probes])]


def answered(probes: Sequence[Probe], result: cluster.ExecResult) -> dict[Probe, str | None]:
    """The answer to each probe from the output of `probe_command(probes)`.

    Raises SandboxError if the probe itself failed (no python3, bad arguments, ...)."""
    if result.exit_code != 0:
        raise errors.SandboxError(f"probe failed ({result.exit_code}): "
                                  f"{(result.stderr or result.stdout).strip()[-500:]}")
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    return dict(zip(probes, answers, strict=True))


def probe_from_pod(sb: cluster.Sandbox, pod: PodView,
                   probes: Sequence[Probe]) -> dict[Probe, str | None]:
    """Run the probes in the pod's container (`kubectl exec`; its image needs python3)."""
    return answered(probes, in_pod(sb, pod, probe_command(probes), timeout=30))


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
            if status.get("default"):
                continue  # the cluster network's eth0
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
            if status.get("default"):
                continue
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
