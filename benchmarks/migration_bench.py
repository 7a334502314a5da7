"""Live-migration downtime benchmark (not a test): a VM migrating between two nodes while a peer
on a third one, and the external VLAN host, ping it every 10 ms and hold a TCP connection.

    .venv/bin/python benchmarks/migration_bench.py [--migrations 10] [--aborts 3] [--keep]
                                                   [--strategy per-pod|multi-chassis|both]
                                                   [--guest-announce rarp+garp|rarp]
                                                   [--scheduling realtime|normal]

Needs the sandbox's images and Kubernetes binaries (`make images kube`). Per run: a sandbox
cluster of its own with three nodes (`migbench`), the product deployed as in `make demo`; two
NADs with `subnets` and `allowPersistentIPs`: `vm-l2` (layer2) and `vm-localnet` (localnet on
VLAN 33, the external host's segment); a peer pod on node-3 on `vm-l2`; one VM (the sandbox's
VM stand-in, `ovnk_secondary/sandbox/vms.py`) with a NIC on each, started on node-1.

Per migration (node-1 -> node-2, then back, and so on; the first one is the VM's first): from
the peer (layer2) and from the external host (localnet): `fping -D -p 10` and a TCP client
sending a line every 10 ms to an echo server in the guest, both started 1 s before the
migration and ending 4 s after it. Reported per topology: packets lost, the longest time
without a reply (between two replies, or before the first or after the last one: an outage at
the window's end counts; `vms.outage`) and where it began, duplicate replies (two locations
answering), the TCP connection's fate (reset or not) and its longest gap between echoes; and
per migration the guest's own pause (the NIC moving inside the guest, the stand-in's
"blackout") and when virt-handler's `kubevirt.io/migration-target-ready-timestamp` was set
after the resume.

The longest gap of a window may lie outside the switch-over: while the target pod starts
(kubelet, runtime, CNI and ovn-controller share the machine's CPUs with the userspace datapath,
which forwards in ovs-vswitchd's threads) or while the source goes. So each migration also
reports the longest gap from the guest's pause to its last announce, 800 ms after the resume
(the switch-over itself), and where the window's longest gap began; the aborted migrations,
which start a target pod and never switch, are the same run's measure of the preparation
alone.

Aborted migrations (`--aborts`): the target pod deleted before the switch-over; the longest
gap while it happens (the source keeps the traffic; target: < 300 ms).

Before the switch-over, what the target got while the source still held the VM (per
migration; the stand-in's NICs there are not the guest's yet): the packets ovn-controller on the
target's node output to the target's OVS interface (the OpenFlow counters of the flows that
output to it, read just before the guest resumes: on the per-pod strategy the target's port is
disabled, on multi-chassis its binding is blocked until the guest's RARP), and the packets the
target pod's own kernel received on those interfaces before the bridge binding took them (it
holds the VM's MAC and IPs there and would answer for the VM; the node agent hands a VM port's
interface over down, `attachments.desired_interface`).

Baseline in the same run: the same pings and TCP for 6 s with no migration: the longest gap
of the path itself (the userspace datapath's jitter on this machine), to which every gap is
compared (ratio).

Scheduling (`--scheduling`, `realtime` by default): the sandbox runs ovs-vswitchd's main
thread, which forwards the userspace datapath's packets, SCHED_FIFO, as a kernel datapath
forwards in softirq ahead of every process, and the probes (pings, TCP client, echo server)
above it, so that neither waits for a CPU while a pod starts (`ovnk_secondary/sandbox/
realtime.py`); ovn-controller, the kubelet and the rest stay as a node has them. `normal` puts
the datapath and the probes back to SCHED_OTHER: what those waits add on this machine.

Strategies (`--strategy`, both by default, one after the other on the same sandbox: the
controller's ConfigMap is switched and the controller rolled out, and the VM created afresh):
`per-pod`, OVN-Kubernetes' (two ports; at the target's domain-ready annotation, one NB
transaction enables the target and disables the source, emptying its addresses), and
`multi-chassis`, OVN's (one port of the VM, `requested-chassis=<source>,<target>` with
`activation-strategy=rarp` during the migration: the target's chassis takes over at the guest's
first RARP). With multi-chassis, a third ping stream measures the MTU caveat: from the external
host (localnet), packets of the guest NIC's full MTU (`-M do`: never fragmented).

The guest announces itself with QEMU's RARPs and its own gratuitous ARPs (a Linux guest on
virtio-net, VIRTIO_NET_F_GUEST_ANNOUNCE); `--guest-announce rarp`: RARPs alone (a NIC without
it, e.g. e1000). OVN's port security drops the RARPs of a port with addresses (only the port's
ARP and IP pass: `ovs-appctl ofproto/trace`), so with `rarp` nothing the guest announces
reaches the network; what it sends then (its replies) is all that shows where it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from ovnk_secondary import migration
from ovnk_secondary.sandbox import cluster, realtime, scenario, vms

NS = "test"
L2, LOCALNET = f"{NS}/nad-vm-l2", f"{NS}/nad-vm-localnet"
VM_NADS = scenario.EXAMPLES / "vms" / "10-nads.yaml"  # nad-vm-l2, nad-vm-localnet
ECHO_PORT = 7777

# in the guest: a TCP echo server (one thread per connection)
ECHO_SERVER = """
import socket, sys, threading
server = socket.create_server(("0.0.0.0", int(sys.argv[1])), backlog=16)
def echo(conn):
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)
while True:
    threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()
"""
# at the peer: one connection, a line every 10 ms for `seconds`; prints JSON: the longest
# time between two echoes, lines sent and echoed, and the error that ended it (reset) if any
TCP_CLIENT = """
import json, socket, sys, time
address, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock = socket.create_connection((address, port), timeout=5)
sock.settimeout(0.005)
end, sent, echoed, last, gap, error, buffer = time.monotonic() + seconds, 0, 0, None, 0.0, None, b""
try:
    while time.monotonic() < end:
        sock.sendall(b"x" * 15 + b"\\n")
        sent += 1
        deadline = time.monotonic() + 0.01
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise ConnectionError("closed by the VM")
            now = time.monotonic()
            if last is not None:
                gap = max(gap, now - last)
            last = now
            echoed += data.count(b"\\n")
except OSError as exc:
    error = repr(exc)
print(json.dumps({"gap": gap, "sent": sent, "echoed": echoed, "error": error}))
"""


@dataclasses.dataclass
class Sample:
    """One topology in one migration (or abort, or baseline window)."""

    lost: int
    sent: int
    gap: float  # s, longest without a ping reply (`vms.outage`)
    duplicates: int
    tcp_gap: float
    tcp_error: str | None
    gap_start: float = 0.0  # epoch s


def _apply_nads(sb: cluster.Sandbox) -> None:
    scenario.ensure_namespace(sb, NS)
    sb.kubectl("apply", "-f", str(VM_NADS))


def _peer(sb: cluster.Sandbox, node: str) -> scenario.PodView:
    scenario.core_api(sb).create_namespaced_pod(NS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "peer", "namespace": NS,
                     "annotations": {"k8s.v1.cni.cncf.io/networks": L2}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1, "containers": [{
            "name": "c", "image": "ovnk-sandbox/workload:busybox",
            "imagePullPolicy": "IfNotPresent", "command": ["sleep", "100000"]}]}})
    scenario.wait_ready(sb, ["peer"])
    return scenario.view(sb, "peer")


class Window:
    """Pings and a TCP client from the peer and the external host, for `seconds`."""

    def __init__(self, sb: cluster.Sandbox, peer: scenario.PodView, targets: dict[str, str],
                 seconds: int, *, full_mtu: int | None = None) -> None:
        assert peer.netns is not None
        vlan_netns, _ = cluster.EXTERNAL_HOSTS[33]
        self.senders = {"layer2": (peer.node, ["nsenter", f"--net={peer.netns}"]),
                        "localnet": (sb.external, ["ip", "netns", "exec", vlan_netns])}
        self.pings: dict[str, Callable[[], vms.Outage]] = {}
        self.tcp: dict[str, subprocess.Popen[str]] = {}
        for topology, (where, netns) in self.senders.items():
            address = targets[topology]
            self.pings[topology] = vms.ping_in_background(sb, where, netns, address,
                                                          seconds=seconds)
            self.tcp[topology] = vms.probe_in_background(
                sb.container(where), [*netns, "python3", "-c", TCP_CLIENT, address,
                                      str(ECHO_PORT), str(seconds - 0.5)])
        self.full_mtu: Callable[[], vms.Outage] | None = None
        if full_mtu is not None:  # packets of the localnet NIC's MTU, never fragmented
            where, netns = self.senders["localnet"]
            self.full_mtu = vms.ping_in_background(sb, where, netns, targets["localnet"],
                                                   seconds=seconds, size=full_mtu - 28)

    def result(self) -> dict[str, Sample]:
        samples = {}
        self.outages: dict[str, vms.Outage] = {}
        if self.full_mtu is not None:
            seen = self.outages["localnet-full-mtu"] = self.full_mtu()
            samples["localnet-full-mtu"] = Sample(
                lost=seen.lost, sent=seen.sent, gap=seen.longest_gap,
                duplicates=seen.duplicates, tcp_gap=0.0, tcp_error=None,
                gap_start=seen.gap_start)
        for topology, ping in self.pings.items():
            seen = self.outages[topology] = ping()
            output, _ = self.tcp[topology].communicate(timeout=120)
            try:
                tcp = json.loads(output.strip().splitlines()[-1])
            except (ValueError, IndexError):
                tcp = {"gap": float("inf"), "error": output.strip()[-300:]}
            samples[topology] = Sample(lost=seen.lost, sent=seen.sent, gap=seen.longest_gap,
                                       duplicates=seen.duplicates, tcp_gap=tcp["gap"],
                                       tcp_error=tcp["error"], gap_start=seen.gap_start)
        return samples


def _ofport(sb: cluster.Sandbox, node: str, port: str) -> int | None:
    """The OpenFlow port of the OVS interface bound to logical switch port `port` on `node`."""
    found = json.loads(sb.exec(node, ["ovs-vsctl", "--format=json", "--columns=ofport", "find",
                                      "Interface", f"external_ids:iface-id={port}"]).stdout)
    numbers = [row[0] for row in found["data"] if isinstance(row[0], int) and row[0] > 0]
    return numbers[0] if numbers else None


def _output_packets(sb: cluster.Sandbox, node: str, ofport: int) -> int:
    """Packets br-int's flows on `node` have output to `ofport` (the flows' counters)."""
    flows = sb.exec(node, ["ovs-ofctl", "--no-names", "dump-flows", "br-int"]).stdout
    return sum(int(match.group(1)) for line in flows.splitlines()
               if re.search(rf"output:{ofport}(?![0-9])", line)
               for match in [re.search(r"n_packets=(\d+)", line)] if match)


class TargetWatch:
    """What a migration's target got before the switch-over (`before_binding` and
    `before_switch_over` of `vms.migrate`): per NIC, the target pod kernel's received packets
    when the bridge binding takes the interface, and OVS's packets output to it by then."""

    def __init__(self, sb: cluster.Sandbox, nads: dict[str, str]) -> None:
        self.sb, self.nads = sb, nads  # interface -> NAD
        self.target: scenario.PodView | None = None
        self.kernel_rx: dict[str, int] = {}
        self.links_up: dict[str, bool] = {}
        self.delivered: dict[str, int] = {}

    def before_binding(self, target: scenario.PodView) -> None:
        self.target = target
        links = vms.pod_links(self.sb, target)
        self.kernel_rx = {iface: links[iface].rx_packets for iface in self.nads}
        self.links_up = {iface: links[iface].up for iface in self.nads}

    def before_switch_over(self) -> None:
        assert self.target is not None
        for iface, nad in self.nads.items():
            ofport = _ofport(self.sb, self.target.node, self.target.port_name(nad))
            self.delivered[iface] = (-1 if ofport is None else
                                     _output_packets(self.sb, self.target.node, ofport))


# How long the monitors of `SwitchOverTrace` run: from just before the guest's pause, well past
# the narrowing (once the source pod's sandbox is down: 0.4-0.8 s after the resume here)
TRACE_SECONDS = 3


def _stamp(line: str) -> float | None:
    """The epoch seconds of a line `ovs-ofctl --timestamp` or `ovsdb-client --timestamp` begins
    with (`YYYY-MM-DD HH:MM:SS.mmm`, UTC), None for other lines."""
    match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})", line)
    if match is None:
        return None
    return datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(
        tzinfo=datetime.UTC).timestamp()


class SwitchOverTrace:
    """Multi-chassis only: what OVN did around one switch-over, from monitors started just
    before the guest's pause (`TRACE_SECONDS`):

    - when ovn-controller on the target unblocked the VM's ports: the deletion of their
      activation flows (table 0, `rarp,in_port=<ofport>`, priority 1010: ovn
      controller/physical.c, `setup_rarp_activation_strategy`), seen by an OpenFlow flow
      monitor on the target's br-int (the last of the VM's ports);
    - when the controller's narrowing reached SB: `requested-chassis` of one chassis in the
      ports' `Port_Binding` options;
    - whether SB showed a port with no chassis at all (`chassis` and `additional_chassis`
      empty): ovn-controller on the source releases the binding with a blind write
      (controller/binding.c, `release_lport_main_chassis`), which can undo the target's
      claim; the target claims it again moments later.

    The monitors load ovs-vswitchd and the SB server a little (their updates); the baseline
    windows run without them."""

    def __init__(self, sb: cluster.Sandbox, target: scenario.PodView, ports: list[str]) -> None:
        self.ports = ports
        self.ofports = {_ofport(sb, target.node, port) for port in ports}
        run = ["timeout", str(TRACE_SECONDS), "stdbuf", "-oL"]  # line by line: timeout ends them
        self.flows = subprocess.Popen(
            ["docker", "exec", sb.container(target.node), *run, "ovs-ofctl", "--timestamp",
             "monitor", "br-int", "watch:!initial,table=0"],  # it prints them on stderr
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.southbound = subprocess.Popen(
            ["docker", "exec", sb.container("central"), *run, "ovsdb-client", "--timestamp",
             "monitor", "unix:/run/ovn/sb.sock", "OVN_Southbound", "Port_Binding",
             "logical_port,chassis,additional_chassis,options"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def result(self, paused: float, resumed: float) -> dict[str, Any]:
        """`paused`, `resumed`: epoch seconds. Times in ms after the resume (None: not seen)."""
        flows, _ = self.flows.communicate(timeout=TRACE_SECONDS + 30)
        southbound, _ = self.southbound.communicate(timeout=TRACE_SECONDS + 30)
        unblocked: dict[int, float] = {}
        when: float | None = None
        for line in flows.splitlines():
            when = _stamp(line) or when
            match = re.search(r"event=DELETED .*\brarp,in_port=(\d+)\b", line)
            if match and when is not None and int(match.group(1)) in self.ofports:
                unblocked.setdefault(int(match.group(1)), when)
        narrowed: float | None = None
        no_chassis = False
        when = None
        for line in southbound.splitlines():
            when = _stamp(line) or when
            # a modified row: its "old" line (with the row's uuid), then its "new" line
            row = re.match(r"\s*(?:[0-9a-f-]{36}\s+)?new\s+(\S+)\s+(\S+)\s+(\[[^]]*\])\s+(\{.*\})",
                           line)
            if row is None or when is None or when < paused or row.group(1) not in self.ports:
                continue
            no_chassis |= row.group(2) == "[]" and row.group(3) == "[]"
            requested = re.search(r'requested-chassis=("[^"]*"|[^,}]*)', row.group(4))
            if narrowed is None and requested and "," not in requested.group(1):
                narrowed = when

        def after(t: float | None) -> float | None:
            return None if t is None else (t - resumed) * 1000

        complete = len(unblocked) == len(self.ofports)
        return {"unblocked_after_resume_ms": after(max(unblocked.values()) if complete
                                                   else None),
                "narrowed_after_resume_ms": after(narrowed), "no_chassis": no_chassis}


def _summary(label: str, samples: list[Sample], baseline: Sample) -> str:
    gaps = [s.gap for s in samples]
    return (f"{label}: lost {sum(s.lost for s in samples)}/{sum(s.sent for s in samples)}, "
            f"longest gap p50 {statistics.median(gaps) * 1000:.0f} ms, max "
            f"{max(gaps) * 1000:.0f} ms ({max(gaps) / baseline.gap:.1f}x the baseline's "
            f"{baseline.gap * 1000:.0f} ms), duplicates {sum(s.duplicates for s in samples)}, "
            f"TCP resets {sum(1 for s in samples if s.tcp_error)}, TCP longest gap "
            f"{max(s.tcp_gap for s in samples) * 1000:.0f} ms")


def run(sb: cluster.Sandbox, peer: scenario.PodView, *, strategy: str, migrations: int,
        aborts: int, guest_garp: bool = True) -> dict[str, Any]:
    sb.set_migration_strategy(strategy)
    nodes = [n for n in sb.node_names if n.startswith("node-")]
    launcher = vms.create(sb, "vm-bench", [L2, LOCALNET], node=nodes[0])
    targets = {"layer2": launcher.pod_networks[L2]["ip_addresses"][0].split("/")[0],
               "localnet": launcher.pod_networks[LOCALNET]["ip_addresses"][0].split("/")[0]}
    # the guest's localnet NIC (net2) has the pod interface's MTU
    mtu = int(vms.guest(sb, "vm-bench", ["cat", "/sys/class/net/net2/mtu"], check=True).stdout)
    full_mtu = mtu if strategy == migration.MULTI_CHASSIS else None
    server = subprocess.Popen(["ip", "netns", "exec", vms.guest_netns(sb, "vm-bench"),
                               sys.executable, "-c", ECHO_SERVER, str(ECHO_PORT)])
    realtime.probe(server.pid)  # a probe too (`vms.probe_in_background`)
    try:
        time.sleep(1)
        window = Window(sb, peer, targets, seconds=6, full_mtu=full_mtu)
        baseline = window.result()
        print(f"baseline (no migration, 6 s): {json.dumps(dataclasses.asdict(baseline['layer2']))}"
              f" {json.dumps(dataclasses.asdict(baseline['localnet']))}", file=sys.stderr)
        rows: list[dict[str, Any]] = []
        epoch_offset = time.time() - time.monotonic()
        for index in range(migrations):
            window = Window(sb, peer, targets, seconds=7, full_mtu=full_mtu)
            time.sleep(1)
            watch = TargetWatch(sb, {"net1": L2, "net2": LOCALNET})
            traces: list[SwitchOverTrace] = []

            def before_switch_over(watch: TargetWatch = watch,
                                   traces: list[SwitchOverTrace] = traces) -> None:
                watch.before_switch_over()
                if strategy == migration.MULTI_CHASSIS and watch.target is not None:
                    traces.append(SwitchOverTrace(sb, watch.target, [
                        watch.target.port_name(nad) for nad in watch.nads.values()]))

            moved = vms.migrate(sb, "vm-bench", before_binding=watch.before_binding,
                                before_switch_over=before_switch_over, guest_garp=guest_garp)
            assert moved is not None
            samples = window.result()
            paused = moved.paused + epoch_offset  # the ping's clock: the same machine's
            trace = traces[0].result(paused, moved.resumed + epoch_offset) if traces else {}
            row = {"migration": index + 1, "from": moved.source.node, "to": moved.target.node,
                   "guest_pause_ms": (moved.resumed - moved.paused) * 1000,
                   # where each topology's longest gap began, after the guest's pause began
                   "gap_at_ms": {t: (x.gap_start - paused) * 1000 for t, x in samples.items()},
                   # the longest gap of the switch-over: from the pause to the guest's last
                   # announce (QEMU's fifth RARP round, 800 ms after the resume: `vms`)
                   "switch_over_gap_ms": {
                       t: o.longest_within(paused, moved.resumed + epoch_offset + 0.8) * 1000
                       for t, o in window.outages.items()},
                   # when replies came back after the guest's resume: the network's share
                   "back_after_resume_ms": {
                       t: o.back_after(paused, moved.resumed + epoch_offset + 0.8,
                                       moved.resumed + epoch_offset) * 1000
                       for t, o in window.outages.items()},
                   "ready_after_resume_ms": (moved.ready - moved.resumed) * 1000,
                   "target_links_up": watch.links_up, "target_kernel_rx": watch.kernel_rx,
                   "target_delivered": watch.delivered, **trace,
                   **{t: dataclasses.asdict(s) for t, s in samples.items()}}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
            scenario.wait_gone(sb, [moved.source.name])
        aborted: list[dict[str, Sample]] = []
        for _ in range(aborts):
            window = Window(sb, peer, targets, seconds=7, full_mtu=full_mtu)
            time.sleep(1)
            assert vms.migrate(sb, "vm-bench", abort=True) is None
            aborted.append(window.result())
            print(json.dumps({t: dataclasses.asdict(s) for t, s in aborted[-1].items()}),
                  file=sys.stderr)
    finally:
        server.kill()
        vms.delete(sb, "vm-bench")
    return {"baseline": baseline, "rows": rows, "aborted": aborted}


def _trace_summary(rows: list[dict[str, Any]]) -> str:
    """`SwitchOverTrace`'s figures over the migrations, and the worst switch-over's."""
    def figures(key: str) -> str:
        seen = [row[key] for row in rows if row.get(key) is not None]
        return (f"p50 {statistics.median(seen):.0f} ms, max {max(seen):.0f} ms "
                f"({len(rows) - len(seen)} not seen)" if seen else "not seen")

    worst = max(rows, key=lambda row: max(row["switch_over_gap_ms"].values()))

    def at(key: str) -> str:
        value = worst.get(key)
        return "not seen" if value is None else f"{value:.0f} ms"

    return (f"the target's ports unblocked (activation flows gone) after the resume: "
            f"{figures('unblocked_after_resume_ms')}; the narrowing in SB after the resume: "
            f"{figures('narrowed_after_resume_ms')}; a port with no chassis at all in "
            f"{sum(1 for row in rows if row.get('no_chassis'))} of {len(rows)} migrations; "
            f"the worst switch-over (migration {worst['migration']}, "
            f"{max(worst['switch_over_gap_ms'].values()):.0f} ms): unblocked at "
            f"{at('unblocked_after_resume_ms')}, narrowed at {at('narrowed_after_resume_ms')}"
            f"{', no chassis for a moment' if worst.get('no_chassis') else ''}")


def _gap(ms: float) -> str:
    """A switch-over's gap: 0 is none longer than three ping intervals (`vms.Outage.gaps`)."""
    return f"{ms:.0f} ms" if ms else "under 30 ms"


def report(strategy: str, result: dict[str, Any]) -> None:
    baseline, rows, aborted = result["baseline"], result["rows"], result["aborted"]
    how = {migration.PER_POD: "two ports, switch-over at the target's domain-ready annotation",
           migration.MULTI_CHASSIS: "one port, requested-chassis on both nodes, "
                                    "activation-strategy=rarp"}[strategy]
    print(f"strategy {strategy} ({how}); {len(rows)} migrations, pings every 10 ms, TCP line "
          "every 10 ms")
    for topology in [t for t in ("layer2", "localnet", "localnet-full-mtu") if t in baseline]:
        samples = [Sample(**row[topology]) for row in rows]
        print(_summary(f"  {topology}, all migrations", samples, baseline[topology]))
        switch = [row["switch_over_gap_ms"][topology] for row in rows]
        print(f"  {topology}, the switch-over's gap (from the pause to the guest's last "
              f"announce): p50 {_gap(statistics.median(switch))}, max {_gap(max(switch))}")
        back = [row["back_after_resume_ms"][topology] for row in rows]
        print(f"  {topology}, replies back after the guest's resume (the gap less the guest's "
              f"pause): p50 {statistics.median(back):.0f} ms, max {max(back):.0f} ms (0: no "
              f"gap over 30 ms lasted past the resume)")
        worst = max(rows, key=lambda row: row[topology]["gap"])
        print(f"  {topology}, the longest gap (migration {worst['migration']}, "
              f"{worst['from']} -> {worst['to']}) began {worst['gap_at_ms'][topology]:.0f} ms "
              f"after the guest's pause began; the pause took {worst['guest_pause_ms']:.0f} ms, "
              f"domain-ready came {worst['ready_after_resume_ms']:.0f} ms after the resume")
        first = samples[0]
        print(f"  {topology}, the VM's first migration: lost {first.lost}, longest gap "
              f"{first.gap * 1000:.0f} ms, TCP {'reset' if first.tcp_error else 'kept'}")
        if aborted:
            print(_summary(f"  {topology}, aborted migrations", [a[topology] for a in aborted],
                           baseline[topology]))
    delivered = [sum(row["target_delivered"].values()) for row in rows]
    kernel = [sum(row["target_kernel_rx"].values()) for row in rows]
    up = sum(1 for row in rows if any(row["target_links_up"].values()))
    print(f"  before the switch-over, the target: OVS output {sum(delivered)} packets to its "
          f"interfaces (in {sum(1 for d in delivered if d)} of {len(rows)} migrations); its pod's "
          f"kernel received {sum(kernel)} (in {sum(1 for k in kernel if k)}), its interfaces "
          f"handed over up in {up}")
    if strategy == migration.MULTI_CHASSIS:
        print(f"  {_trace_summary(rows)}")
    pauses = [row["guest_pause_ms"] for row in rows]
    ready = [row["ready_after_resume_ms"] for row in rows]
    print(f"  the stand-in's own blackout (guest NIC moved): p50 {statistics.median(pauses):.0f}"
          f" ms, max {max(pauses):.0f} ms; domain-ready annotation set "
          f"{statistics.median(ready):.0f} ms (p50) after the resume")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--migrations", type=int, default=10)
    parser.add_argument("--aborts", type=int, default=3)
    parser.add_argument("--strategy", choices=[*migration.STRATEGIES, "both"], default="both")
    parser.add_argument("--guest-announce", choices=["rarp+garp", "rarp"], default="rarp+garp",
                        help="what the guest sends as it resumes (rarp: QEMU's RARPs alone)")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox up")
    parser.add_argument("--scheduling", choices=["realtime", "normal"], default="realtime",
                        help="normal: the datapath and the probes SCHED_OTHER (`realtime`), "
                             "to see what waits for a CPU add")
    args = parser.parse_args()
    strategies = migration.STRATEGIES if args.strategy == "both" else (args.strategy,)
    started = time.monotonic()
    sb = cluster.Sandbox.up(name="migbench", nodes=3, kubernetes=True)
    print(f"sandbox up in {time.monotonic() - started:.0f} s", file=sys.stderr)
    containers = [sb.container(node) for node in [*sb.node_names, sb.external]]
    if args.scheduling == "normal":
        realtime.probes = False
        for container in containers:
            realtime.make_normal(realtime.vswitchd(container))
    datapath = ", ".join(f"{container} {realtime.policy(realtime.vswitchd(container))}"
                         for container in containers)
    results = {}
    try:
        _apply_nads(sb)
        peer = _peer(sb, [n for n in sb.node_names if n.startswith("node-")][2])
        for strategy in strategies:
            results[strategy] = run(sb, peer, strategy=strategy, migrations=args.migrations,
                                    aborts=args.aborts,
                                    guest_garp=args.guest_announce == "rarp+garp")
    finally:
        if not args.keep:
            sb.down()
    print(f"the guest announces with {args.guest_announce}; the datapath's scheduling policy "
          f"(ovs-vswitchd's main thread; `realtime`): {datapath}")
    for strategy, result in results.items():
        report(strategy, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
