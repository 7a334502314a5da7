"""A KubeVirt VM stand-in for the sandbox (a sandbox component, not the product).

KubeVirt cannot run here (no nested virtualisation), so this reproduces what matters to a
secondary network: what KubeVirt's *bridge binding* does to a virt-launcher pod's interface,
and what virt-controller and virt-handler do to the pods around a restart or a live migration.

- **The virt-launcher pod**: `virt-launcher-<vm>-<5 chars>`, labels `kubevirt.io=virt-launcher`
  and `vm.kubevirt.io/name=<vm>`, one network selection element per NIC (`interface` net1,
  net2, ...; `ipam-claim-reference: <vm>.<interface>` on networks with `allowPersistentIPs`,
  whose IPAMClaim is created first, as KubeVirt's ipam-extensions do; the same static `ips`
  and `mac` on IPAM-less networks, the cloud-init case).
- **The bridge binding**: in the pod, the CNI's interface loses its address and MAC (it gets
  a random one) and is enslaved to a Linux bridge `k6t-<iface>` with a tap-like veth; the
  other end of that veth is the **guest's NIC**, named `<iface>`, with the MAC and IPs of the
  pod annotation (`k8s.ovn.org/pod-networks`).
- **The guest** is a network namespace on the machine running the sandbox,
  `<sandbox>-vm-<vm>`: the VM's "kernel". It outlives pods, so a live migration keeps its
  sockets (a TCP connection survives, as the guest's memory does in a real migration).
- **Live migration** (`migrate`): virt-controller creates the target pod on another node; the
  guest's NIC is prepared there (down); at the switch-over the source NIC goes down and
  aside (deleted once the target is ready, as the source's QEMU exits) and the target NIC
  takes its name, MAC and IPs (the domain pauses on the source and resumes on the target),
  the guest announces itself as QEMU does (RARP, 5 rounds: 0, 50, 200, 450, 800 ms) and with
  a gratuitous ARP, then virt-handler sets `kubevirt.io/migration-target-ready-timestamp` on
  the target pod, and the source pod goes. `abort=True` stops before the switch-
  over and deletes the target pod.
- **Restart** (`restart`): the pod is deleted, a new one created (maybe on another node); the
  guest's NIC is plugged again with what the new annotation says.

The pod's network namespace is reached from this machine through the node container's
`/proc/<pid>/root` (`nsenter --net=...`), so that a veth end can go straight into the guest.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import kubernetes

from ovnk_secondary import errors, migration, persistentips
from ovnk_secondary.sandbox import cluster, realtime, scenario

LAUNCHER_LABEL = ("kubevirt.io", "virt-launcher")
NADS = ("k8s.cni.cncf.io", "v1", "network-attachment-definitions")
CLAIMS = ("k8s.cni.cncf.io", "v1alpha1", "ipamclaims")
# How late a ping's reply may come and still count (`ping_in_background`): fping drops later ones
PATIENCE_MS = 1000

# QEMU's self-announce after a migration: RARP from the guest's MAC, 5 rounds, 50 ms then
# +100 ms apart: 0, 50, 200, 450, 800 ms (net/announce.c, qemu_announce_timer_step with the
# defaults initial 50, step 100, rounds 5; include/migration/misc.h, self_announce_delay, in
# older QEMU), plus the guest's own gratuitous ARP. QEMU sends the first round as the guest
# resumes: the script starts beforehand, says "ready", and sends as soon as the NIC is up with
# the guest's MAC (polled every millisecond).
ANNOUNCE = """
import socket, struct, sys, time
iface, new, mac_text, ip = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
mac = bytes.fromhex(mac_text.replace(":", ""))
def read(name, what):
    with open(f"/sys/class/net/{name}/{what}") as f:
        return f.read().strip()
index = read(new, "ifindex")  # the NIC that becomes `iface` (the old one has that name now)
print("ready", flush=True)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        if read(iface, "ifindex") == index and read(iface, "address") == mac_text \\
                and int(read(iface, "flags"), 16) & 1:
            break
    except OSError:
        pass
    time.sleep(0.001)
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((iface, 0))
broadcast = b"\\xff" * 6
rarp = broadcast + mac + b"\\x80\\x35" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 3) \\
    + mac + bytes(4) + mac + bytes(4)
garp = broadcast + mac + b"\\x08\\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) \\
    + mac + socket.inet_aton(ip) + bytes(6) + socket.inet_aton(ip) if ip else b""
for delay in (0, 0.05, 0.15, 0.25, 0.35):
    time.sleep(delay)
    sock.send(rarp)
    if garp:
        sock.send(garp)
"""


@dataclasses.dataclass(frozen=True)
class Nic:
    """One NIC of a VM: its pod interface (and the guest's NIC name), NAD and addressing."""

    interface: str  # net1, net2, ...
    nad: str  # namespace/name
    claim: str | None = None  # IPAMClaim name (networks with allowPersistentIPs)
    ips: tuple[str, ...] = ()  # static, IPAM-less networks (address/prefix)
    mac: str | None = None  # static

    def element(self) -> dict[str, Any]:
        namespace, name = self.nad.split("/", 1)
        element: dict[str, Any] = {"namespace": namespace, "name": name,
                                   "interface": self.interface}
        if self.claim:
            element["ipam-claim-reference"] = self.claim
        if self.ips:
            element["ips"] = list(self.ips)
        if self.mac:
            element["mac"] = self.mac
        return element


@dataclasses.dataclass(frozen=True)
class Migration:
    """What `migrate` did, with monotonic times (seconds) of its steps."""

    source: scenario.PodView
    target: scenario.PodView
    paused: float  # the guest's source NIC going down
    resumed: float  # the target NIC up with the guest's MAC and IPs (announce sent)
    ready: float  # TARGET_READY set on the target pod


def guest_netns(sb: cluster.Sandbox, vm: str) -> str:
    return f"{sb.name}{cluster.GUEST_NETNS_INFIX}{vm}"


def guest(sb: cluster.Sandbox, vm: str, command: Sequence[str], *, check: bool = False,
          timeout: float = 60) -> cluster.ExecResult:
    """`command` inside the guest (its network namespace, on this machine)."""
    done = subprocess.run(["ip", "netns", "exec", guest_netns(sb, vm), *command],
                          capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise errors.SandboxError(f"{shlex.join(command)} in VM {vm}: {done.stderr.strip()}")
    return cluster.ExecResult(done.returncode, done.stdout, done.stderr)


def launchers(sb: cluster.Sandbox, vm: str, namespace: str) -> list[dict[str, Any]]:
    """The VM's virt-launcher pods (as the API returns them), oldest first."""
    pods = scenario.core_api(sb).list_namespaced_pod(
        namespace, label_selector=f"{persistentips.VM_LABEL}={vm}")
    items = [p.to_dict() for p in pods.items if not p.metadata.deletion_timestamp]
    return sorted(items, key=lambda p: (p["metadata"]["creation_timestamp"],
                                        p["metadata"]["name"]))


def nics_for(sb: cluster.Sandbox, vm: str, nads: Sequence[str],
             static: dict[str, tuple[tuple[str, ...], str | None]] | None = None) -> list[Nic]:
    """The VM's NICs on `nads` (namespace/name), net1 onwards; a claim `<vm>.<iface>` on the
    networks that allow persistent IPs; `static` gives (ips, mac) per NAD (IPAM-less)."""
    nics = []
    for index, nad in enumerate(nads, start=1):
        config = json.loads(_nad(sb, nad)["spec"]["config"])
        interface = f"net{index}"
        ips, mac = (static or {}).get(nad, ((), None))
        claim = f"{vm}.{interface}" if config.get("allowPersistentIPs") and \
            config.get("subnets") else None
        nics.append(Nic(interface=interface, nad=nad, claim=claim, ips=tuple(ips), mac=mac))
    return nics


def _nad(sb: cluster.Sandbox, nad: str) -> dict[str, Any]:
    """The NAD `namespace/name` as the API returns it; SandboxError when there is none."""
    namespace, _, name = nad.partition("/")
    if not namespace or not name:
        raise errors.SandboxError(f"NAD {nad!r}: give it as NAMESPACE/NAME")
    try:
        body: dict[str, Any] = scenario.custom_api(sb).get_namespaced_custom_object(
            NADS[0], NADS[1], namespace, NADS[2], name)
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            raise errors.SandboxError(
                f"NAD {nad} does not exist: create it first (the VM NADs: kubectl apply -f "
                "manifests/examples/vms/10-nads.yaml)") from exc
        raise
    return body


def _ensure_claim(sb: cluster.Sandbox, namespace: str, nic: Nic) -> None:
    """The IPAMClaim as KubeVirt's ipam-extensions create it (spec.network: the network's
    name in the NAD's config)."""
    assert nic.claim is not None
    custom = scenario.custom_api(sb)
    network = json.loads(_nad(sb, nic.nad)["spec"]["config"])["name"]
    try:
        custom.create_namespaced_custom_object(CLAIMS[0], CLAIMS[1], namespace, CLAIMS[2], {
            "apiVersion": f"{CLAIMS[0]}/{CLAIMS[1]}", "kind": "IPAMClaim",
            "metadata": {"name": nic.claim, "namespace": namespace},
            "spec": {"network": network, "interface": nic.interface}})
    except kubernetes.client.ApiException as exc:  # 409: it exists
        if exc.status != 409:
            raise


def _start_launcher(sb: cluster.Sandbox, vm: str, namespace: str, node: str,
                    nics: Sequence[Nic]) -> scenario.PodView:
    name = f"virt-launcher-{vm}-{secrets.token_hex(3)[:5]}"
    body = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {LAUNCHER_LABEL[0]: LAUNCHER_LABEL[1],
                                persistentips.VM_LABEL: vm},
                     "annotations": {"k8s.v1.cni.cncf.io/networks": json.dumps(
                         [nic.element() for nic in nics])}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                 "containers": [{
                     "name": "compute", "image": "ovnk-sandbox/workload:busybox",
                     "imagePullPolicy": "IfNotPresent",
                     "command": ["sh", "-c",
                                 "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"],
                 }]},
    }
    scenario.core_api(sb).create_namespaced_pod(namespace, body)
    scenario.wait_ready(sb, [name], namespace=namespace)
    return scenario.view(sb, name, namespace=namespace)


def _node_pid(sb: cluster.Sandbox, node: str) -> int:
    done = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", sb.container(node)],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def _in_pod(sb: cluster.Sandbox, pod: scenario.PodView, argv: Sequence[str], *,
            stdin: str | None = None) -> str:
    """`argv` in the pod's network namespace, from this machine; its output."""
    if pod.netns is None:
        raise errors.SandboxError(f"pod {pod.namespace}/{pod.name} has no interface of ours")
    # the node's own view of the path (its /var/run is a link to /run: resolved there)
    real = sb.exec(pod.node, ["readlink", "-f", pod.netns]).stdout.strip()
    path = f"/proc/{_node_pid(sb, pod.node)}/root{real}"
    done = subprocess.run(["nsenter", f"--net={path}", *argv], input=stdin,
                          capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise errors.SandboxError(f"in pod {pod.namespace}/{pod.name}: {done.stderr.strip()}")
    return done.stdout


@dataclasses.dataclass(frozen=True)
class Link:
    """A pod interface as the pod's kernel sees it: administratively up, packets it got."""

    up: bool
    rx_packets: int


def pod_links(sb: cluster.Sandbox, pod: scenario.PodView) -> dict[str, Link]:
    """The interfaces in the pod's network namespace (but `lo`), by name."""
    links = json.loads(_in_pod(sb, pod, ["ip", "-j", "-s", "link"]))
    return {link["ifname"]: Link(up="UP" in link["flags"],
                                 rx_packets=int(link["stats64"]["rx"]["packets"]))
            for link in links if link["ifname"] != "lo"}


def _random_mac() -> str:
    octets = bytearray(secrets.token_bytes(6))
    octets[0] = (octets[0] & 0xFC) | 0x02  # locally administered, unicast
    return ":".join(f"{o:02x}" for o in octets)


def _plug(sb: cluster.Sandbox, vm: str, pod: scenario.PodView, nics: Sequence[Nic], *,
          prefix: str) -> None:
    """KubeVirt's bridge binding in the pod; the guest end of each NIC's veth goes into the
    guest, named `<prefix><iface>`, down and without addresses."""
    mtus = {link["ifname"]: link["mtu"] for link in json.loads(_in_pod(sb, pod, ["ip", "-j",
                                                                              "link"]))}
    lines = []
    for nic in nics:
        iface, guest_end = nic.interface, f"{prefix}{nic.interface}"
        mtu = mtus[iface]  # the guest's NIC gets the pod interface's MTU, as in KubeVirt
        lines += [f"link add k6t-{iface} type bridge", f"link set k6t-{iface} up",
                  f"addr flush dev {iface}", f"link set {iface} down",
                  f"link set {iface} address {_random_mac()}",
                  f"link set {iface} master k6t-{iface}", f"link set {iface} up",
                  # the guest's end is made in the guest: its name is the pod's interface's
                  f"link add tap-{iface} mtu {mtu} type veth peer name {guest_end} "
                  f"mtu {mtu} netns {guest_netns(sb, vm)}",
                  f"link set tap-{iface} master k6t-{iface}", f"link set tap-{iface} up"]
    _in_pod(sb, pod, ["ip", "-batch", "-"], stdin="\n".join(lines) + "\n")
    for nic in nics:  # the guest's checksums, finished by the kernel (userspace OVS, see
        # external.sh); and no IPv6 chatter from the guest's link-local address
        guest(sb, vm, ["ethtool", "-K", f"{prefix}{nic.interface}", "tx", "off"], check=True)
        guest(sb, vm, ["sysctl", "-qw",
                       f"net.ipv6.conf.{prefix}{nic.interface}.disable_ipv6=1"], check=True)


def _addressing(pod: scenario.PodView, nic: Nic) -> tuple[str, list[str]]:
    entry = pod.pod_networks.get(nic.nad)
    if entry is None:
        raise errors.SandboxError(f"pod {pod.name} has no address on {nic.nad}")
    return str(entry["mac_address"]), list(entry.get("ip_addresses") or [])


def _announcers(sb: cluster.Sandbox, vm: str, pod: scenario.PodView, nics: Sequence[Nic], *,
                prefix: str, garp: bool = True) -> list[subprocess.Popen[str]]:
    """The guest's announce (`ANNOUNCE`), one process per NIC, started and ready: each sends
    once its NIC (`<prefix><iface>` now) is up as `<iface>` with `pod`'s MAC; QEMU's RARPs
    only without `garp` (a guest NIC without VIRTIO_NET_F_GUEST_ANNOUNCE, e.g. e1000)."""
    announcers: list[subprocess.Popen[str]] = []
    for nic in nics:  # started first, as QEMU is there before the guest resumes
        mac, ips = _addressing(pod, nic)
        announcer = subprocess.Popen(
            ["ip", "netns", "exec", guest_netns(sb, vm), sys.executable, "-c", ANNOUNCE,
             nic.interface, f"{prefix}{nic.interface}", mac, ips[0].split("/")[0] if ips
             and garp else ""], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        announcers.append(announcer)
        assert announcer.stdout is not None
        if announcer.stdout.readline().strip() != "ready":
            for started in announcers:
                started.kill()
            raise errors.SandboxError(f"VM {vm}: no guest NIC {prefix}{nic.interface}")
    return announcers


def _activate(sb: cluster.Sandbox, vm: str, pod: scenario.PodView, nics: Sequence[Nic], *,
              prefix: str, aside: bool,
              announcers: Sequence[subprocess.Popen[str]] | None = None,
              neighbours: Mapping[str, Sequence[tuple[str, str]]] | None = None
              ) -> tuple[float, float]:
    """The guest's NICs up with the MAC and IPs of `pod`'s annotation, announced
    (`_announcers`, started here unless given). With `aside`, the NICs of the previous pod
    first go down, lose their addresses and become `o-<iface>` (`_drop_aside` deletes them
    later: a guest's NIC is not deleted at a switch-over, its backend changes, and deleting a
    veth waits for the kernel's RCU grace periods, tens of milliseconds). `neighbours`: per
    NIC, the guest's ARP cache to carry over (a migrated guest keeps it: its memory moves), as
    stale entries the kernel re-confirms.

    Returns the monotonic times (s) the change began and ended: the guest's pause when
    `aside`. One `ip -batch` in the guest, started and ready beforehand (it has answered a
    first command), so that neither a process start nor a namespace switch is in the pause."""
    if announcers is None:
        announcers = _announcers(sb, vm, pod, nics, prefix=prefix)
    lines = []
    for nic in nics:
        mac, ips = _addressing(pod, nic)
        if aside:
            lines += [f"link set {nic.interface} down", f"addr flush dev {nic.interface}",
                      f"link set {nic.interface} name o-{nic.interface}"]
        if prefix:
            lines.append(f"link set {prefix}{nic.interface} name {nic.interface}")
        lines.append(f"link set {nic.interface} address {mac}")
        lines += [f"addr add {ip} dev {nic.interface}" for ip in ips]
        lines.append(f"link set {nic.interface} up")
        lines += [f"neigh replace {ip} lladdr {lladdr} dev {nic.interface} nud stale"
                  for ip, lladdr in (neighbours or {}).get(nic.interface, ())]
    batch = subprocess.Popen(["ip", "-n", guest_netns(sb, vm), "-batch", "-"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert batch.stdin is not None and batch.stdout is not None
    batch.stdin.write("link show dev lo\n")  # ip flushes its answer: then it is ready
    batch.stdin.flush()
    batch.stdout.readline()
    began = time.monotonic()
    try:
        _, stderr = batch.communicate("\n".join(lines) + "\n", timeout=30)
    except subprocess.TimeoutExpired:
        batch.kill()
        stderr = "ip -batch did not finish in 30 s"
    ended = time.monotonic()
    if batch.returncode != 0:
        for announcer in announcers:
            announcer.kill()
        raise errors.SandboxError(f"VM {vm}: {stderr.strip()}")
    # the rounds go on in the background (half a second), as QEMU's do
    return began, ended


def _drop_aside(sb: cluster.Sandbox, vm: str, nics: Sequence[Nic]) -> None:
    """Delete the NICs `_activate` set aside (and so their pod ends): the source's QEMU is
    gone."""
    lines = "".join(f"link del o-{nic.interface}\n" for nic in nics)
    done = subprocess.run(["ip", "-n", guest_netns(sb, vm), "-batch", "-"], input=lines,
                          capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise errors.SandboxError(f"VM {vm}: {done.stderr.strip()}")


def _neighbours(sb: cluster.Sandbox, vm: str, interface: str) -> list[tuple[str, str]]:
    """The guest's resolved neighbours on a NIC: (IP, MAC)."""
    done = guest(sb, vm, ["ip", "-j", "neigh", "show", "dev", interface])
    try:
        entries = json.loads(done.stdout or "[]")
    except ValueError:
        return []
    return [(str(e["dst"]), str(e["lladdr"])) for e in entries if e.get("lladdr")]


def _other_node(sb: cluster.Sandbox, node: str) -> str:
    others = [n for n in sb.node_names if n != node and n.startswith("node-")]
    if not others:
        raise errors.SandboxError(f"no node to move to besides {node}")
    return others[0]


def _nics_of(pod: dict[str, Any]) -> list[Nic]:
    elements = json.loads(pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"])
    return [Nic(interface=e["interface"], nad=f"{e['namespace']}/{e['name']}",
                claim=e.get("ipam-claim-reference"), ips=tuple(e.get("ips") or ()),
                mac=e.get("mac")) for e in elements]


def _one_launcher(sb: cluster.Sandbox, vm: str, namespace: str) -> dict[str, Any]:
    pods = launchers(sb, vm, namespace)
    if len(pods) != 1:
        raise errors.SandboxError(f"VM {vm} has {len(pods)} virt-launcher pods, not one: "
                                  f"{[p['metadata']['name'] for p in pods]}")
    return pods[0]


def create(sb: cluster.Sandbox, vm: str, nads: Sequence[str], *, namespace: str = "test",
           node: str = "node-1",
           static: dict[str, tuple[tuple[str, ...], str | None]] | None = None
           ) -> scenario.PodView:
    """Start VM `vm` on `node` with a NIC on each NAD; returns its virt-launcher pod. A VM
    that fails to start is deleted again (SandboxError says why)."""
    existing = [p["metadata"]["name"] for p in launchers(sb, vm, namespace)]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=False).stdout.split()
    if existing or guest_netns(sb, vm) in listed:
        raise errors.SandboxError(f"VM {vm} exists (pods {existing}, guest "
                                  f"{guest_netns(sb, vm)}): delete it first or choose another "
                                  "name")
    nics = nics_for(sb, vm, nads, static)
    unknown = set(static or {}) - {nic.nad for nic in nics}
    if unknown:
        raise errors.SandboxError(f"static addresses for {sorted(unknown)}, which the VM has "
                                  f"no NIC on (its NADs: {list(nads)})")
    try:
        for nic in nics:
            if nic.claim:
                _ensure_claim(sb, namespace, nic)
        subprocess.run(["ip", "netns", "add", guest_netns(sb, vm)], check=True,
                       capture_output=True)
        guest(sb, vm, ["ip", "link", "set", "lo", "up"], check=True)
        pod = _start_launcher(sb, vm, namespace, node, nics)
        _plug(sb, vm, pod, nics, prefix="")
        _activate(sb, vm, pod, nics, prefix="", aside=False)
    except (errors.OvnkSecondaryError, subprocess.CalledProcessError,
            kubernetes.client.ApiException) as exc:
        delete(sb, vm, namespace=namespace, claims=[n.claim for n in nics if n.claim])
        raise errors.SandboxError(f"VM {vm} did not start, nothing of it is left: {exc}") \
            from exc
    return pod


def migrate(sb: cluster.Sandbox, vm: str, *, namespace: str = "test", to: str | None = None,
            abort: bool = False,
            before_binding: Callable[[scenario.PodView], None] | None = None,
            before_switch_over: Callable[[], None] | None = None,
            guest_garp: bool = True) -> Migration | None:
    """Live-migrate VM `vm` to `to` (the other node by default), as virt-controller and
    virt-handler do; with `abort`, stop before the switch-over (the target pod deleted) and
    return None. `before_binding` runs with the target pod once it is ready, before the bridge
    binding takes its interfaces (as the CNI left them); `before_switch_over` once the guest's
    NICs are prepared there (tests: stop the controller there). Without `guest_garp` the
    guest announces with QEMU's RARPs alone (`_announcers`)."""
    source_pod = _one_launcher(sb, vm, namespace)
    nics = _nics_of(source_pod)
    source = scenario.view(sb, source_pod["metadata"]["name"], namespace=namespace)
    target = _start_launcher(sb, vm, namespace, to or _other_node(sb, source.node), nics)
    if before_binding is not None:
        before_binding(target)
    _plug(sb, vm, target, nics, prefix="m-")
    core = scenario.core_api(sb)
    if abort:
        core.delete_namespaced_pod(target.name, namespace)
        for nic in nics:
            guest(sb, vm, ["ip", "link", "del", f"m-{nic.interface}"])
        scenario.wait_gone(sb, [target.name], namespace=namespace)
        return None
    if before_switch_over is not None:
        before_switch_over()
    announcers = _announcers(sb, vm, target, nics, prefix="m-", garp=guest_garp)
    neighbours = {nic.interface: _neighbours(sb, vm, nic.interface) for nic in nics}
    paused, resumed = _activate(sb, vm, target, nics, prefix="m-", aside=True,
                                announcers=announcers, neighbours=neighbours)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    core.patch_namespaced_pod(target.name, namespace, {"metadata": {"annotations": {
        migration.TARGET_READY: stamp}}})
    ready = time.monotonic()
    _drop_aside(sb, vm, nics)
    core.delete_namespaced_pod(source.name, namespace)  # virt-launcher's source completes
    return Migration(source=source, target=target, paused=paused, resumed=resumed, ready=ready)


def restart(sb: cluster.Sandbox, vm: str, *, namespace: str = "test",
            to: str | None = None) -> scenario.PodView:
    """Stop and start VM `vm`: its pod deleted, a new one on `to` (the same node by
    default), the guest's NICs plugged again from the new annotation."""
    old = _one_launcher(sb, vm, namespace)
    nics = _nics_of(old)
    name = old["metadata"]["name"]
    scenario.core_api(sb).delete_namespaced_pod(name, namespace)
    scenario.wait_gone(sb, [name], namespace=namespace)
    for nic in nics:  # the veth went with the pod's namespace; say so if it did not
        guest(sb, vm, ["ip", "link", "del", nic.interface])
    pod = _start_launcher(sb, vm, namespace, to or old["spec"]["node_name"], nics)
    _plug(sb, vm, pod, nics, prefix="")
    _activate(sb, vm, pod, nics, prefix="", aside=False)
    return pod


def delete(sb: cluster.Sandbox, vm: str, *, namespace: str = "test",
           claims: Sequence[str] = ()) -> None:
    """Delete VM `vm`: its pods, its IPAMClaims (those its pods name, and `claims`; their IPs
    go back to the pools), the guest."""
    pods = launchers(sb, vm, namespace)
    wanted = {nic.claim for pod in pods for nic in _nics_of(pod) if nic.claim} | set(claims)
    core = scenario.core_api(sb)
    for pod in pods:
        core.delete_namespaced_pod(pod["metadata"]["name"], namespace)
    scenario.wait_gone(sb, [p["metadata"]["name"] for p in pods], namespace=namespace)
    custom = scenario.custom_api(sb)
    for claim in sorted(wanted):
        try:
            custom.delete_namespaced_custom_object(CLAIMS[0], CLAIMS[1], namespace, CLAIMS[2],
                                                   claim)
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise
    subprocess.run(["ip", "netns", "del", guest_netns(sb, vm)], check=False,
                   capture_output=True)


@dataclasses.dataclass(frozen=True)
class Outage:
    """What a ping every INTERVAL saw (`ping_in_background`): requests, replies, the longest
    time without a reply (seconds) and when it began (epoch seconds), and duplicate replies
    (two VMs answering)."""

    sent: int
    received: int
    longest_gap: float
    duplicates: int
    gap_start: float = 0.0
    # every time without a reply longer than three intervals: (began, seconds), in order
    gaps: tuple[tuple[float, float], ...] = ()

    @property
    def lost(self) -> int:
        return self.sent - self.received

    def longest_within(self, start: float, end: float) -> float:
        """The longest gap that overlaps the epoch interval [start, end] (seconds; 0 if none):
        a migration's switch-over, apart from what happened before or after it."""
        return max((length for began, length in self.gaps
                    if began <= end and began + length >= start), default=0.0)

    def back_after(self, start: float, end: float, moment: float) -> float:
        """How long after `moment` (epoch seconds) replies came back, from the gaps that
        overlap [start, end] and began by `moment` (seconds; 0 if none of them lasted past
        it): after a migration's resume, the network's share of its gap, apart from the
        guest's pause. A gap that began later is another one (`longest_within` has it)."""
        ends = [began + length for began, length in self.gaps
                if began <= min(end, moment) and began + length >= start]
        return max(0.0, max(ends, default=moment) - moment)


def outage(output: str, *, interval: float = 0.01) -> Outage:
    """Parse `fping -D -l -s -p MS` output: `[<epoch>] <address> : [<seq>], 64 bytes, ...` per
    reply (seq from 0; a duplicate reply repeats its seq: loop mode prints every reply, where
    count mode drops duplicates unseen) and, once stopped with SIGINT, the global statistics'
    `<N> ICMP Echos sent` (counted as sent; the per-target `xmt` counts a ping once its reply
    or timeout came, and a duplicate again).

    The longest gap is the longest time between two consecutive replies, or, when the first
    or the last requests went unanswered, their time at `interval` apart (requests before the
    first reply, or after the last one until the end): a window that ends in an outage shows
    it. Without any reply it is infinite."""
    replies: list[tuple[float, int]] = []  # (epoch, seq)
    seen: set[int] = set()
    duplicates = 0
    sent = 0
    for line in output.splitlines():
        if line.strip().endswith(" ICMP Echos sent"):
            sent = int(line.split()[0])
        elif line.startswith("[") and " : [" in line and " bytes, " in line:
            seq = int(line.split(" : [", 1)[1].split("]", 1)[0])
            if seq in seen:
                duplicates += 1
                continue
            seen.add(seq)
            replies.append((float(line[1:line.index("]")]), seq))
    if not replies:
        return Outage(sent=sent, received=0, longest_gap=float("inf"), duplicates=duplicates)
    (first, first_seq), (last, last_seq) = replies[0], replies[-1]
    gaps = [(b - a, a) for (a, _), (b, _) in itertools.pairwise(replies)]
    gaps.append((first_seq * interval, first - first_seq * interval))  # the head
    gaps.append((max(sent - 1 - last_seq, 0) * interval, last))  # the tail
    longest, start = max(gaps)
    return Outage(sent=sent, received=len(replies), longest_gap=longest,
                  duplicates=duplicates, gap_start=start,
                  gaps=tuple(sorted((began, length) for length, began in gaps
                                    if length > 3 * interval)))


def probe_in_background(container: str, argv: Sequence[str]) -> subprocess.Popen[str]:
    """Start `argv` in `container` (`docker exec`), real-time above the datapath
    (`realtime.PROBE_PRIORITY`) so that a probe measures the network, not its own wait for a
    CPU; its stdout and stderr are the Popen's stdout. The shell that runs `argv` prints its
    pid and waits until it is real-time (`realtime.probe`: where the host refuses, the probe
    runs as it is); what it then execs (`nsenter`, `ip netns exec`, `timeout`) and what that
    forks inherit the policy."""
    process = subprocess.Popen(
        ["docker", "exec", "-i", container, "sh", "-c", 'echo "$$"; read -r go; exec "$@"',
         "sh", *argv],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdin is not None and process.stdout is not None
    first = process.stdout.readline().strip()
    if first.isdigit():  # else the shell did not start (docker exec's error is the output)
        realtime.probe(int(first), container)
        process.stdin.write("go\n")  # real-time before it starts, so are the ones it forks
        process.stdin.flush()  # left open: `communicate` closes it
    return process


def ping_in_background(sb: cluster.Sandbox, container: str, netns: Sequence[str],
                       address: str, *, seconds: int, interval: float = 0.01,
                       size: int | None = None) -> Callable[[], Outage]:
    """Ping `address` every `interval` seconds for `seconds` from a container of the sandbox
    (`netns`: the argv prefix entering the sender's namespace, e.g. `nsenter --net=PATH` for
    a pod, `ip netns exec vlan33` for an external host); returns a function waiting for its
    end and returning the `Outage`. `size`: ICMP payload bytes, sent unfragmented.

    The prober is `fping -D -l -s -p MS -t PATIENCE_MS`, stopped by `timeout -s INT`, not
    iputils' `ping -i`: for intervals of 10 ms and less (1/HZ) iputils busy-waits
    (`sched_yield` and non-blocking `recvmsg`, about 4,800 times a second: 35-45% of a CPU),
    which at the probe's real-time priority starved the datapath below it and, by all
    signs, set off the kernel's guard for starved tasks: every path silent for 50-60 ms at
    once. fping
    waits in `pselect`. Replies up to `PATIENCE_MS` late count, as iputils' did; loop mode
    (`-l`), since count mode (`-c`) drops duplicate replies without a word."""
    sized = ["-b", str(size), "-M"] if size is not None else []
    process = probe_in_background(
        sb.container(container),
        [*netns, "timeout", "-s", "INT", str(seconds), "fping", "-D", "-l", "-s",
         "-p", str(round(interval * 1000)), "-t", str(PATIENCE_MS), *sized, address])

    def result() -> Outage:
        output, _ = process.communicate(timeout=seconds + 60)
        return outage(output, interval=interval)

    return result
