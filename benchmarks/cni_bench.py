"""CNI ADD throughput on one node: the node agent against a shell script doing the same plumbing.

    .venv/bin/python benchmarks/cni_bench.py [--sandbox NAME] [--sizes 50,200] [--node node-1]

Uses a running sandbox (`ovnk-secondary sandbox up --name NAME`) or starts and removes its own.
For each size N, N pods get their annotation and logical switch port up front (the controller's
part is not measured); then N ADDs run in parallel on one node:

- agent: the `ovn-k8s-cni-overlay` binary as Multus runs it, timed from its exec to its exit
  (process start, socket, queueing in the agent, plumbing, answer), as the shell's jobs are timed
  from their first command; the agent logs its wait for `ovn-installed` per ADD.
- shell: the same plumbing with `ip` and `ovs-vsctl` commands (the way a script-based CNI does
  it, each step one command), then `ovs-vsctl wait-until ... ovn-installed=true`. Like the
  agent, `add-port` does not wait for ovs-vswitchd (`--no-wait`): both count vswitchd's work in
  the wait for ovn-installed. (The agent also turns tx checksum offload off and writes more
  external_ids; the shell skips that, which only favours the shell.) Every `ovs-vsctl` runs
  with `--retry`: without it, about a quarter of 200 simultaneous connections to ovsdb-server's
  socket fail ("database connection failed") and those ADDs silently did nothing. Any failed
  step fails the benchmark.

Reported per ADD: own time (p50/p99; the whole ADD minus the wait for ovn-installed) and time
from the start of the ADD to ovn-installed (p50/p99), with the agent/shell ratios of both.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from ovnk_secondary.sandbox import cluster, smoke
from tests import kube
from tests.agent import harness

NETWORK = harness.Network("bench-net", "layer2", "bench/nad-bench", subnet="10.200.0.0/16")
ADD_LINE = re.compile(r"ADD bench/(\S+) net1: .*\(annotation ([\d.]+) s, plumbing ([\d.]+) s, "
                      r"binding ([\d.]+) s\)")

# Runs inside the chassis: N plugin processes at once, as N pods being started by the runtime.
DRIVER = textwrap.dedent("""
    import json, resource, subprocess, sys, time
    jobs = json.load(sys.stdin)
    procs = []
    for job in jobs:
        started = time.monotonic()
        proc = subprocess.Popen(["/opt/cni/bin/ovn-k8s-cni-overlay"], env=job["env"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        proc.stdin.write(job["config"].encode()); proc.stdin.close()
        procs.append((proc, started))
    out = []
    for proc, started in procs:
        text = proc.stdout.read(); proc.wait()
        out.append({"code": proc.returncode, "seconds": time.monotonic() - started,
                    "output": text.decode()})
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"results": out, "plugin_cpu": children.ru_utime + children.ru_stime}))
""")

# Runs inside the chassis: CPU seconds (user+system) so far of each long-running process, by name.
CPU = textwrap.dedent("""
    import json, os
    tick = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
            cmd = open(f"/proc/{pid}/cmdline").read().split("\\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if "node-agent" in cmd:
            name = "node-agent"
        cpu[name] = cpu.get(name, 0) + (int(fields[11]) + int(fields[12])) / tick
    print(json.dumps(cpu))
""")
SETTLE_PAUSE = 2.0  # seconds of quiet before each measured batch
WATCHED = ("node-agent", "ovs-vswitchd", "ovsdb-server", "ovn-controller")


def cpu_snapshot(world: harness.Cluster, node: str) -> dict[str, float]:
    done = world.sb.exec(node, ["/opt/venv/bin/python", "-c", CPU])
    return dict(json.loads(done.stdout))


def cpu_used(before: dict[str, float], after: dict[str, float], size: int) -> str:
    """CPU milliseconds per ADD of the long-running processes (those that outlive the batch)."""
    parts = [f"{name} {(after.get(name, 0) - before.get(name, 0)) / size * 1000:.1f}"
             for name in WATCHED]
    return ", ".join(parts)

# Runs inside the chassis: the same plumbing by commands, N jobs at once.
SHELL = textwrap.dedent("""
    plug() {  # host ns mac ip port out
        local t0 t1 t2
        t0=$(date +%s%N)
        ip link add "$1" mtu 1400 type veth peer name net1 netns "$2" address "$3" mtu 1400 &&
        ip -n "$2" addr add "$4" dev net1 &&
        ip -n "$2" link set net1 up &&
        ip link set "$1" up &&
        ovs-vsctl --retry --timeout=60 --no-wait add-port br-int "$1" -- set interface "$1" \
            external_ids:iface-id="$5" || { echo "failed $1 plumbing" > "$6"; return; }
        t1=$(date +%s%N)
        ovs-vsctl --retry --timeout=60 wait-until interface "$1" \
            external_ids:ovn-installed=true || { echo "failed $1 ovn-installed" > "$6"; return; }
        t2=$(date +%s%N)
        echo "$t0 $t1 $t2" > "$6"
    }
    mkdir -p /tmp/shbench && rm -f /tmp/shbench/*
    i=0
    while read -r host ns mac ip port; do
        i=$((i+1)); plug "$host" "$ns" "$mac" "$ip" "$port" "/tmp/shbench/$i" &
    done
    wait
    cat /tmp/shbench/*
""")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> str:
    p50, p99 = statistics.median(values), percentile(values, 0.99)
    return f"p50 {p50 * 1000:7.1f} ms   p99 {p99 * 1000:7.1f} ms"


def make_pods(size: int, node: str) -> list[harness.Pod]:
    pods = []
    for i in range(size):
        high, low = divmod(i + 10, 250)
        ip = f"10.200.{size % 250 + high}.{low + 2}"
        octets = [int(x) for x in ip.split(".")]
        mac = "0a:58:" + ":".join(f"{o:02x}" for o in octets)
        pods.append(harness.Pod(node, "bench", f"b{size}-{i}", NETWORK, f"{ip}/16", mac))
    return pods


def create_pods(world: harness.Cluster, pods: list[harness.Pod]) -> None:
    for pod in pods:
        world.core.create_namespaced_pod(pod.namespace, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": pod.namespace, "annotations": {
                "k8s.ovn.org/pod-networks": json.dumps({NETWORK.nad_key: {
                    "ip_addresses": [pod.ip], "mac_address": pod.mac, "role": "secondary"}})}},
            "spec": {"nodeName": pod.node, "containers": [{"name": "c", "image": "x"}]}})
        pod.uid = world.core.read_namespaced_pod(pod.name, pod.namespace).metadata.uid
    with world.nb.transaction(check_error=True) as txn:
        for pod in pods:
            addresses = [f"{pod.mac} {pod.address}"]
            txn.add(world.nb.lsp_add(NETWORK.switch, pod.port, addresses=addresses,
                                     port_security=addresses,
                                     options={"requested-chassis": pod.node}))
    names = " ".join(p.netns_name for p in pods)
    world.sb.exec(pods[0].node, f"for n in {names}; do ip netns add $n; done", timeout=300)


def remove_pods(world: harness.Cluster, pods: list[harness.Pod]) -> None:
    with world.nb.transaction(check_error=True) as txn:
        for pod in pods:
            txn.add(world.nb.lsp_del(pod.port, if_exists=True))
    names = " ".join(p.netns_name for p in pods)
    world.sb.exec(pods[0].node, f"for n in {names}; do ip netns del $n; done", check=False,
                  timeout=300)
    for pod in pods:
        world.api.delete_pod(pod.namespace, pod.name)


def settle(world: harness.Cluster) -> None:
    """Let the previous step's work finish before the next measured batch starts.

    Creating N logical switch ports (or deleting N OVS ports) keeps northd, ovn-controller and
    ovs-vswitchd busy for a while after the call returns; measured straight away, a batch would
    share the CPU with its predecessor's aftermath. `--wait=hv` returns once every chassis has
    caught up with the northbound database; the pause lets the last iterations end.
    """
    world.sb.ovn_nbctl("--timeout=120", "--wait=hv", "sync")
    time.sleep(SETTLE_PAUSE)


def run_plugins(world: harness.Cluster, pods: list[harness.Pod], command: str) -> dict[str, Any]:
    """One plugin process per pod, all at once (DRIVER); exits the benchmark if any failed."""
    jobs = [{"env": pod.env(command) | {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
             "config": json.dumps(NETWORK.config())} for pod in pods]
    done = world.sb.exec(pods[0].node, ["/opt/venv/bin/python", "-c", DRIVER],
                         input=json.dumps(jobs), timeout=600)
    answer: dict[str, Any] = json.loads(done.stdout)
    failed = [r for r in answer["results"] if r["code"] != 0]
    if failed:
        raise SystemExit(f"{len(failed)} {command}s failed, e.g. {failed[0]['output']}")
    return answer


def run_agent(world: harness.Cluster, agent: harness.Agent,
              pods: list[harness.Pod]) -> dict[str, Any]:
    settle(world)
    cpu_before = cpu_snapshot(world, pods[0].node)
    answer = run_plugins(world, pods, "ADD")
    cpu_after = cpu_snapshot(world, pods[0].node)
    logged = {m.group(1): m for m in ADD_LINE.finditer(agent.log_text())}
    # The runtime's view: from the plugin's exec to its exit; own time leaves out only the wait
    # for ovn-installed (as the shell's does), not the plugin process or queueing in the agent.
    walls = [r["seconds"] for r in answer["results"]]
    own = [wall - float(logged[pod.name].group(4))
           for pod, wall in zip(pods, walls, strict=True)]
    deleted = run_plugins(world, pods, "DEL")["results"]
    return {"own": own, "installed": walls, "plugin": walls,
            "plumbing": [float(logged[pod.name].group(3)) for pod in pods],
            "del": [r["seconds"] for r in deleted],
            "cpu": cpu_used(cpu_before, cpu_after, len(pods))
            + f", plugin processes {answer['plugin_cpu'] / len(pods) * 1000:.1f}"}


def run_shell(world: harness.Cluster, pods: list[harness.Pod]) -> dict[str, Any]:
    lines = "".join(f"sh{i:05d}{len(pods):04d} {p.netns_name} {p.mac} {p.ip} {p.port}\n"
                    for i, p in enumerate(pods))
    settle(world)
    cpu_before = cpu_snapshot(world, pods[0].node)
    done = world.sb.exec(pods[0].node, ["bash", "-c", SHELL], input=lines, timeout=600)
    cpu_after = cpu_snapshot(world, pods[0].node)
    own, installed, failed = [], [], []
    for line in done.stdout.split("\n"):
        if line.startswith("failed"):
            failed.append(line)
        elif line.strip():
            t0, t1, t2 = (int(x) for x in line.split())
            own.append((t1 - t0) / 1e9)
            installed.append((t2 - t0) / 1e9)
    world.sb.exec(pods[0].node, "for p in $(ovs-vsctl list-ports br-int | grep '^sh'); do "
                  "ovs-vsctl del-port br-int $p; ip link del $p; done", timeout=600)
    if failed or len(own) != len(pods):
        raise SystemExit(f"shell baseline: {len(own)} of {len(pods)} ADDs finished, "
                         f"{len(failed)} failed, e.g. {failed[:1]}\n{done.stderr[-2000:]}")
    return {"own": own, "installed": installed, "cpu": cpu_used(cpu_before, cpu_after, len(pods))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sandbox", default=None, help="use this running sandbox")
    parser.add_argument("--sizes", default="50,200")
    parser.add_argument("--node", default="node-1")
    args = parser.parse_args()
    own_sandbox = args.sandbox is None
    sb = (cluster.Sandbox.up(name="ovnk-bench", nodes=1) if own_sandbox
          else cluster.Sandbox.attach(args.sandbox))
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="ovnk-cni-bench-"))
    plane = kube.start(workdir, advertise=sb.host_address)
    api = kube.KubeApi(plane, workdir / "identities", identity=kube.NODE_AGENT)
    api.ensure_namespace("bench")
    nb = smoke.nb_api(sb.nb_connection)
    world = harness.Cluster(sb, api, nb)
    agent = harness.Agent(sb, args.node, kubeconfig=api.kubeconfig_text(),
                          annotation_timeout=60, binding_timeout=60)
    report: list[str] = []
    try:
        world.add_network(NETWORK)
        agent.setup_files()
        agent.start()
        for size in (int(s) for s in args.sizes.split(",")):
            pods = make_pods(size, args.node)
            create_pods(world, pods)
            try:
                started = time.monotonic()
                ours = run_agent(world, agent, pods)
                agent_wall = time.monotonic() - started
                started = time.monotonic()
                shell = run_shell(world, pods)
                shell_wall = time.monotonic() - started
            finally:
                remove_pods(world, pods)
            ratio = statistics.median(ours["own"]) / statistics.median(shell["own"])
            ratio99 = percentile(ours["own"], 0.99) / percentile(shell["own"], 0.99)
            installed_ratio = (percentile(ours["installed"], 0.99)
                               / percentile(shell["installed"], 0.99))
            report += [
                f"{size} ADDs in parallel on {args.node}:",
                f"  agent  own time       {summary(ours['own'])}",
                f"  agent  to ovn-install {summary(ours['installed'])}",
                f"  plugin process (wall) {summary(ours['plugin'])}   (batch {agent_wall:.1f} s)",
                f"  inside the agent: plumbing {summary(ours['plumbing'])}",
                f"  agent  DEL (plugin wall)  {summary(ours['del'])}",
                f"  agent  CPU ms per ADD: {ours['cpu']}",
                f"  shell  own time       {summary(shell['own'])}",
                f"  shell  to ovn-install {summary(shell['installed'])}   "
                f"(batch {shell_wall:.1f} s)",
                f"  shell  CPU ms per ADD: {shell['cpu']}",
                f"  own-time ratio agent/shell: p50 {ratio:.2f}, p99 {ratio99:.2f}; "
                f"to ovn-installed p99 {installed_ratio:.2f}",
            ]
    finally:
        agent.stop()
        sb.exec(args.node, f"rm -rf {harness.AGENT_DIR}", check=False)
        nb.ls_del(NETWORK.switch, if_exists=True).execute(check_error=True)
        nb.ovsdb_connection.stop()
        plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if own_sandbox:
            sb.down()
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
