"""Attach benchmark: N pods on one layer2 network, created at once, spread over two nodes.

Measures, on a sandbox cluster (real OVN; real kubelets, containerd and Multus; the product
deployed from its manifests), the time from each pod's creation to the pod being Ready (its
container running and every network up, which the agent reports only after ovn-controller has
marked the port `ovn-installed`): p50, p99, total.

Baselines, in the same run and sandbox (after a warm-up round of plain pods):
- plain: the same pods without the secondary network (eth0 only), measured before and after
  ours (their mean is reported): what the kubelet, containerd and Multus cost by themselves, so
  ours/plain is what the secondary network adds;
- shell: the same number of pod interfaces wired by a shell script the way a person would do it
  by hand: northbound rows with `ovn-nbctl`, the pod side with `ip` and `ovs-vsctl`, waiting for
  `ovn-installed` on each port; one script per node, both at once. It starts no container: on
  real nodes it bounds from below what wiring alone costs, not a pod start.

    .venv/bin/python benchmarks/attach_bench.py [--pods 100]

Not a test: the figures are noisy (2 shared cores); compare the ratio, not the seconds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import threading
import time
from typing import Any

import kubernetes

from ovnk_secondary.sandbox import cluster, scenario

NS = "bench"
NAD = "nad-bench"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ours(sb: cluster.Sandbox, count: int, *, secondary: bool = True) -> dict[str, float]:
    """Pods created at once, until all are Ready; with the secondary network or without."""
    core, custom = scenario.core_api(sb), scenario.custom_api(sb)
    config = {
        "cniVersion": "0.3.1",
        "name": "bench-net",
        "type": "ovn-k8s-cni-overlay",
        "topology": "layer2",
        "netAttachDefName": f"{NS}/{NAD}",
        "subnets": "10.210.0.0/16",
    }
    if secondary:
        custom.create_namespaced_custom_object(
            "k8s.cni.cncf.io",
            "v1",
            NS,
            "network-attachment-definitions",
            {
                "apiVersion": "k8s.cni.cncf.io/v1",
                "kind": "NetworkAttachmentDefinition",
                "metadata": {"name": NAD, "namespace": NS},
                "spec": {"config": json.dumps(config)},
            },
        )
    names = [f"bench-{i}" for i in range(count)]
    created: dict[str, float] = {}
    ready: dict[str, float] = {}

    def watch_ready() -> None:
        # a watch, not polling: listing 100 pods every few ms would eat the CPU being measured
        response = core.list_namespaced_pod(NS, watch=True, timeout_seconds=600,
                                            _preload_content=False)
        for line in kubernetes.watch.watch.iter_resp_lines(response):
            pod = json.loads(line).get("object") or {}
            conditions = (pod.get("status") or {}).get("conditions") or []
            name = pod.get("metadata", {}).get("name")
            if name not in ready and any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
            ):
                ready[name] = time.monotonic()
                if len(ready) == count:
                    response.close()
                    return

    def create(index_name: tuple[int, str]) -> None:
        index, name = index_name
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NS,
                "annotations": {"k8s.v1.cni.cncf.io/networks": NAD} if secondary else {},
            },
            "spec": {
                "nodeName": sb.node_names[index % len(sb.node_names)],
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": "ovnk-sandbox/workload:busybox",
                                "imagePullPolicy": "IfNotPresent",
                                "command": ["sleep", "3600"]}],
            },
        }
        created[name] = time.monotonic()
        core.create_namespaced_pod(NS, body)

    watcher = threading.Thread(target=watch_ready, daemon=True)
    watcher.start()
    time.sleep(0.5)  # the watch is open before the first pod is created
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(create, enumerate(names)))
    watcher.join(timeout=600)
    if len(ready) < count:
        raise SystemExit(f"only {len(ready)} of {count} pods became Ready")
    latencies = [ready[n] - created[n] for n in names]
    total = max(ready.values()) - started
    for name in names:
        core.delete_namespaced_pod(name, NS)
    if secondary:
        custom.delete_namespaced_custom_object(
            "k8s.cni.cncf.io", "v1", NS, "network-attachment-definitions", NAD
        )
    scenario.wait_gone(sb, names, namespace=NS, timeout=300)
    return {"p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99), "total": total}


# One node's part of the baseline: for each pod, the NB rows (ovn-nbctl over TCP, as an admin
# would from a node), then the pod side, then wait for ovn-installed. Prints per-pod seconds.
BASELINE_SCRIPT = r"""
set -e
NB="ovn-nbctl --db=$NB_REMOTE"
start=$(date +%s%N)
for i in $PODS; do
  port=baseline_p$i; ns=bl$i; mac=$(printf '0a:58:0a:d3:%02x:%02x' $((i / 256)) $((i % 256)))
  ip=10.211.$((i / 256)).$((i % 256 + 1))
  $NB lsp-add baseline_ovn_layer2_switch $port -- lsp-set-addresses $port "$mac $ip" \
      -- lsp-set-port-security $port "$mac $ip" \
      -- lsp-set-options $port requested-chassis=$NODE
  ip netns add $ns
  ip link add vbl$i type veth peer name net1 netns $ns
  ip -n $ns link set net1 address $mac mtu 1400 up
  ip -n $ns addr add $ip/16 dev net1
  ip link set vbl$i mtu 1400 up
  ovs-vsctl add-port br-int vbl$i -- set interface vbl$i external_ids:iface-id=$port
  until [ "$(ovs-vsctl get interface vbl$i external_ids:ovn-installed 2>/dev/null)" = '"true"' ]; do
    sleep 0.02
  done
  echo "$i $(( $(date +%s%N) - start ))"  # nanoseconds since the script started
done
"""

BASELINE_CLEANUP = r"""
for i in $PODS; do ovs-vsctl --if-exists del-port br-int vbl$i; ip netns del bl$i 2>/dev/null; done
true
"""


def baseline(sb: cluster.Sandbox, count: int) -> dict[str, float]:
    sb.ovn_nbctl("--may-exist", "ls-add", "baseline_ovn_layer2_switch")
    per_node = {
        node: [i for i in range(count) if i % len(sb.node_names) == n]
        for n, node in enumerate(sb.node_names)
    }

    def run(node: str) -> tuple[float, list[float]]:
        env = {
            "NB_REMOTE": sb.nb_connection,
            "NODE": node,
            "PODS": " ".join(map(str, per_node[node])),
        }
        began = time.monotonic()
        out = sb.exec(node, ["bash", "-c", BASELINE_SCRIPT], env=env, timeout=1200).stdout
        return time.monotonic() - began, [int(line.split()[1]) / 1e9 for line in out.splitlines()]

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor() as pool:
        results = list(pool.map(run, sb.node_names))
    total = time.monotonic() - started
    latencies = [t for _, times in results for t in times]
    for node in sb.node_names:
        env = {"PODS": " ".join(map(str, per_node[node]))}
        sb.exec(node, ["bash", "-c", BASELINE_CLEANUP], env=env, timeout=600)
    sb.ovn_nbctl("ls-del", "baseline_ovn_layer2_switch")
    # a pod of the script is "Ready" when its port is installed; it was "created" at the start
    return {"p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99), "total": total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--name", default="ovnk-bench")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds to let the new sandbox settle before measuring")
    args = parser.parse_args(argv)
    sb = cluster.Sandbox.up(name=args.name, nodes=2, kubernetes=True)
    try:
        scenario.ensure_namespace(sb, NS)
        # a sandbox just up is still busy starting (ovn-controller's first flows, the agents'
        # start-up syncs): both measurements start from a settled system, as the baseline
        # (which runs second) would otherwise alone
        time.sleep(args.settle)
        # warm-up: the nodes' first containers unpack the image's snapshot and fill caches
        ours(sb, max(4, args.pods // 10), secondary=False)
        plain_before = ours(sb, args.pods, secondary=False)
        ours_figures = ours(sb, args.pods)
        plain_after = ours(sb, args.pods, secondary=False)
        base_figures = baseline(sb, args.pods)
        # plain pods measured on both sides of ours: the machine's drift shows in the two
        plain_figures = {k: (plain_before[k] + plain_after[k]) / 2 for k in plain_before}
    finally:
        sb.down()
    report: dict[str, Any] = {
        "pods": args.pods,
        "ovnk_secondary": {k: round(v, 3) for k, v in ours_figures.items()},
        "baseline_plain_pods": {k: round(v, 3) for k, v in plain_figures.items()},
        "plain_pods_before_and_after": [round(plain_before["total"], 3),
                                        round(plain_after["total"], 3)],
        "baseline_shell": {k: round(v, 3) for k, v in base_figures.items()},
        "total_vs_plain": round(ours_figures["total"] / plain_figures["total"], 2),
        "total_speedup_vs_shell": round(base_figures["total"] / ours_figures["total"], 2),
    }
    print(json.dumps(report, indent=2))
    print(
        f"pods Ready: p50 {ours_figures['p50']:.2f} s, p99 {ours_figures['p99']:.2f} s, "
        f"total {ours_figures['total']:.1f} s; plain pods total {plain_figures['total']:.1f} s "
        f"({report['total_vs_plain']}x); shell baseline total {base_figures['total']:.1f} s "
        f"-> {report['total_speedup_vs_shell']}x",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
