"""`make demo`: the reference scenario on a sandbox cluster, shown the way a person checks it.

It brings up the sandbox (central, two chassis that are real Kubernetes nodes with containerd,
kubelet and Multus, the external host, a real control plane, the product deployed from
`manifests/`), applies `manifests/examples/` with kubectl, waits for the pods, then prints
`ovn-nbctl show` for our switches, each pod's interfaces, a ping matrix run in the pods with
`kubectl exec`, and captures proving Geneve between the nodes and the VLAN tags on the physical
network; a MultiNetworkPolicy closing one cell of the matrix; a KubeVirt VM (the sandbox's
stand-in) keeping its addresses across a live migration, with the gap the external host saw,
and a restart; diagnose finding a broken uplink; metrics. The sandbox stays up afterwards.

Run with `python -m ovnk_secondary.sandbox.demo [--name NAME]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ovnk_secondary import errors
from ovnk_secondary.sandbox import cluster, kubeapi, scenario, vms


def _section(title: str) -> None:
    print(f"\n=== {title}")


def _matrix(reached: dict[tuple[str, str], bool], pods: list[str], targets: list[str]) -> None:
    width = max(len(p) for p in pods)
    print(" " * (width + 2) + "  ".join(f"{i:>2}" for i in range(1, len(targets) + 1)))
    for pod in pods:
        marks = "  ".join(f"{'ok' if reached[(pod, t)] else ' .':>2}" for t in targets)
        print(f"{pod:<{width}}  {marks}")
    for i, target in enumerate(targets, 1):
        print(f"  {i:>2} = {target}")


# what the demo prints of each /metrics page: the model and the events of this run
_CONTROLLER_SHOWN = ("ovnk_secondary_nads", "ovnk_secondary_networks",
                     "ovnk_secondary_ip_pool_addresses", "ovnk_secondary_ip_pool_used_addresses",
                     "ovnk_secondary_pods_waiting_for_address",
                     "ovnk_secondary_nb_transaction_seconds_count",
                     "ovnk_secondary_nb_transaction_failures_total",
                     "ovnk_secondary_full_sync_seconds_count", "ovnk_secondary_leader")
_AGENT_SHOWN = ("ovnk_secondary_cni_request_seconds_count",
                "ovnk_secondary_ovn_installed_wait_seconds_count",
                "ovnk_secondary_pod_attachments", "ovnk_secondary_bridge_mappings_applied")


def _show_metrics(sb: cluster.Sandbox) -> None:
    def show(samples: list[scenario.Sample], names: tuple[str, ...]) -> None:
        for name, labels, value in samples:
            if name in names:
                text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
                print(f"    {name}{{{text}}} {value:g}" if text else f"    {name} {value:g}")

    _section("metrics: the controller's /metrics and node-1's agent's (scraped on the nodes)")
    print("  controller:")
    show(scenario.controller_metrics(sb), _CONTROLLER_SHOWN)
    print("  node agent on node-1:")
    show(scenario.agent_metrics(sb, "node-1"), _AGENT_SHOWN)


_POLICY = """apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata:
  name: l2-pod-2-from-l2-pod-1-only
  namespace: test
  annotations:
    k8s.v1.cni.cncf.io/policy-for: test/nad-layer2
spec:
  podSelector:
    matchLabels:
      demo: l2-pod-2
  policyTypes: [Ingress]
  ingress:
    - from:
        - ipBlock:
            cidr: {source}/32
"""


def _policy_matrix(sb: cluster.Sandbox, pods: list[scenario.PodView], targets: dict[str, str],
                   before: dict[tuple[str, str], bool]) -> bool:
    """One MultiNetworkPolicy closes l2-pod-2's layer2 interface to all but l2-pod-1 (an ipBlock:
    nad-layer2 has no subnets, so pod selectors cannot name its addresses); deleting it opens
    it again. True when exactly the expected cells of the matrix changed, and back."""
    by_name = {p.name: p for p in pods}
    source = by_name["l2-pod-1"].addresses("net1")[0].split("/")[0]
    text = _POLICY.format(source=source)
    _section("MultiNetworkPolicy: l2-pod-2's layer2 interface accepts only l2-pod-1")
    for line in text.splitlines():
        print(f"  {line}")
    scenario.kubectl(sb, "label", "pod", "-n", scenario.NAMESPACE, "l2-pod-2", "demo=l2-pod-2")
    sb.kubectl("apply", "-f", "-", stdin=text)
    try:
        deadline = time.monotonic() + 30
        closed = "two-networks-pod", "l2-pod-2/net1"
        while scenario.ping(sb, by_name["two-networks-pod"], targets[closed[1]], replies=1,
                            deadline=2) and time.monotonic() < deadline:
            time.sleep(0.5)
        reached = scenario.ping_matrix(sb, pods, targets)
        _matrix(reached, [p.name for p in pods], list(targets))
        changed = {cell for cell in before if before[cell] != reached[cell]}
        print(f"  changed by the policy: {', '.join(f'{r} -> {c}' for r, c in sorted(changed))}")
        # every other pod that reached l2-pod-2 there (its own pings stay local)
        expected = {(r, c) for (r, c) in before if c == closed[1] and before[(r, c)]
                    and r not in ("l2-pod-1", "l2-pod-2")}
    finally:
        sb.kubectl("delete", "multi-networkpolicy", "-n", scenario.NAMESPACE,
                   "l2-pod-2-from-l2-pod-1-only")
        scenario.kubectl(sb, "label", "pod", "-n", scenario.NAMESPACE, "l2-pod-2", "demo-")
    deadline = time.monotonic() + 30
    while not scenario.ping(sb, by_name["two-networks-pod"], targets[closed[1]], replies=1,
                            deadline=2) and time.monotonic() < deadline:
        time.sleep(0.5)
    after = scenario.ping_matrix(sb, pods, targets)
    print(f"  policy deleted: the matrix is {'as before' if after == before else 'CHANGED'}")
    return bool(expected) and changed == expected and after == before


def _vm(sb: cluster.Sandbox) -> bool:
    """A VM (the sandbox's stand-in) with a NIC on layer2 and one on VLAN 33, addresses from
    subnets held by IPAMClaims: live-migrated with 10 ms pings running, then restarted; its
    addresses stay. Returns whether they did and the pings came back."""
    _section("KubeVirt VM vm-a: addresses from subnets, kept by IPAMClaims across live "
             "migration and restart")
    scenario.kubectl(sb, "apply", "-f", str(scenario.EXAMPLES / "vms" / "10-nads.yaml"))
    l2, localnet = f"{scenario.NAMESPACE}/nad-vm-l2", f"{scenario.NAMESPACE}/nad-vm-localnet"

    def addresses(pod: scenario.PodView) -> dict[str, str]:
        return {nad: f"{e['mac_address']} {' '.join(e['ip_addresses'])}"
                for nad, e in sorted(pod.pod_networks.items())}

    ok = True
    try:
        launcher = vms.create(sb, "vm-a", [l2, localnet], node="node-1")
        before = addresses(launcher)
        print(f"  created on {launcher.node} ({launcher.name}):")
        for nad, value in before.items():
            print(f"    {nad}: {value}")
        target_ip = launcher.pod_networks[localnet]["ip_addresses"][0].split("/")[0]
        vlan_netns, host = cluster.EXTERNAL_HOSTS[33]
        pinging = vms.ping_in_background(sb, sb.external, ["ip", "netns", "exec", vlan_netns],
                                         target_ip, seconds=7)
        time.sleep(1)
        moved = vms.migrate(sb, "vm-a")
        assert moved is not None
        seen = pinging()
        after = addresses(moved.target)
        print(f"  live-migrated {moved.source.node} -> {moved.target.node} ({moved.target.name}):"
              f" addresses {'the same' if after == before else 'CHANGED: ' + str(after)}")
        print(f"  the external host {host} pinged {target_ip} every 10 ms meanwhile: "
              f"{seen.lost} of {seen.sent} lost, longest gap {seen.longest_gap * 1000:.0f} ms, "
              f"{seen.duplicates} duplicate replies")
        strategy = scenario.kubectl(sb, "get", "configmap", "-n", cluster.PRODUCT_NAMESPACE,
                                    "ovnk-secondary-controller",
                                    "-o", "jsonpath={.data.migration-strategy}")
        print(f"  live-migration strategy {strategy} (README: KubeVirt VMs: live migration); "
              "the VM's ports in NB now:")
        for nad in sorted(moved.target.pod_networks):
            port = moved.target.port_name(nad)
            options = sb.ovn_nbctl("get", "Logical_Switch_Port", port, "options").strip()
            print(f"    {port}: {options}")
        restarted = vms.restart(sb, "vm-a", to="node-2")
        again = addresses(restarted)
        print(f"  restarted on {restarted.node} ({restarted.name}): addresses "
              f"{'the same' if again == before else 'CHANGED: ' + str(again)}")
        replied = vms.guest(sb, "vm-a", ["ping", "-c", "3", "-i", "0.2", "-W", "2", host])
        print(f"  vm-a -> {host}: {'replies' if replied.exit_code == 0 else 'NO REPLY'}")
        ok = (after == before == again and seen.received > 0 and seen.duplicates == 0
              and replied.exit_code == 0)
    except errors.OvnkSecondaryError as exc:
        print(f"  FAILED: {exc}")
        ok = False
    print("  (try: .venv/bin/ovnk-secondary sandbox vm migrate vm-a; "
          ".venv/bin/ovnk-secondary sandbox vm exec vm-a -- ip addr)")
    return ok


def _broken_uplink(sb: cluster.Sandbox, pod: scenario.PodView) -> bool:
    """A localnet pod cut off by its node's uplink going down, found by `diagnose`; then fixed."""
    key = f"{scenario.NAMESPACE}/{pod.name}"
    _, host = cluster.EXTERNAL_HOSTS[33]
    _section(f"diagnose: {pod.name}'s uplink enp2s0 on {pod.node} goes down "
             f"(`ip link set enp2s0 down` there)")
    sb.exec(pod.node, ["ip", "link", "set", "enp2s0", "down"])
    try:
        cut = not scenario.ping(sb, pod, host, replies=1, deadline=3)
        print(f"  ping {host} from {pod.name}: {'no reply' if cut else 'REPLIES (unexpected)'}")
        print(f"  $ ovnk-secondary diagnose pod {key} --kubeconfig ... --ovn-nb "
              f"{sb.nb_connection} --ovn-sb {sb.sb_connection}")
        code, output = scenario.diagnose(sb, "pod", key)
        for line in output.rstrip().splitlines():
            print(f"  {line}")
        print(f"  (exit status {code})")
        found = code == 1 and "FAILED bridge ovs-br1 on " in output and "enp2s0 down" in output
    finally:
        sb.exec(pod.node, ["ip", "link", "set", "enp2s0", "up"])
    code_after, output_after = scenario.diagnose(sb, "pod", key)
    back = scenario.ping(sb, pod, host)
    print(f"  after `ip link set enp2s0 up`: diagnose exits {code_after} "
          f"({output_after.count('  ok ')} links ok), ping {host}: "
          f"{'replies' if back else 'NO REPLY'}")
    return cut and found and code_after == 0 and back


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="ovnk")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: must run as root (docker, network namespaces)", file=sys.stderr)
        return 1
    try:
        started = time.monotonic()
        sb = cluster.Sandbox.up(name=args.name, nodes=2, kubernetes=True)
        print(
            f"sandbox {sb.name!r} up in {time.monotonic() - started:.1f} s: nodes "
            f"{', '.join(sb.node_names)}; NB {sb.nb_connection}; kubeconfig {sb.kubeconfig}"
        )
        _section("kubectl get pods -n ovnk-secondary (deployed from manifests/)")
        print(scenario.kubectl(sb, "get", "pods", "-n", cluster.PRODUCT_NAMESPACE, "-o",
                               "wide").rstrip())

        _section("kubectl apply -f manifests/examples/")
        started = time.monotonic()
        scenario.apply_examples(sb)
        scenario.wait_ready(sb, scenario.PODS)
        print(f"{len(scenario.PODS)} pods Ready in {time.monotonic() - started:.1f} s")
        columns = "NAME:.metadata.name,NODE:.spec.nodeName,PHASE:.status.phase"
        print(
            scenario.kubectl(
                sb, "get", "pods", "-n", scenario.NAMESPACE, "-o", f"custom-columns={columns}"
            ).rstrip()
        )

        _section("ovn-nbctl show (the switches ovnk-secondary owns)")
        print(scenario.our_switches(sb).rstrip())

        _section("pod interfaces (`ip` in each pod, with kubectl exec)")
        pods = [scenario.view(sb, name) for name in scenario.PODS]
        for line in scenario.summary(pods):
            print(f"  {line}")

        _section("ping matrix: row pings column")
        targets = scenario.targets(pods)
        reached = scenario.ping_matrix(sb, pods, targets)
        _matrix(reached, [p.name for p in pods], list(targets))
        policy_ok = _policy_matrix(sb, pods, targets, reached)

        by_name = {p.name: p for p in pods}
        l2a, l2b = by_name["l2-pod-1"], by_name["l2-pod-2"]
        l2b_ip = l2b.addresses("net1")[0].split("/")[0]
        l2a_ip = l2a.addresses("net1")[0].split("/")[0]
        _section(
            f"layer2 between nodes: l2-pod-1 ({l2a.node}) -> l2-pod-2 ({l2b.node}), "
            f"captured on {l2a.node}'s underlay"
        )
        ok_geneve, lines = scenario.captured_ping(
            sb,
            l2a,
            l2b_ip,
            on=(l2a.node, "underlay0"),
            bpf_filter="udp port 6081",
            extra_args=("-v",),
        )
        geneve = scenario.geneve_evidence(lines, l2a_ip, l2b_ip)
        for line in geneve:
            print(f"  {line}")

        checks = [ok_geneve and bool(geneve), policy_ok]
        for pod_name, vlan, trunk, bridge in (
            ("localnet2-pod", 33, "trunk2", "ovs-br1/enp2s0"),
            ("localnet1-pod", 34, "trunk1", "br-ex/enp1s0"),
        ):
            pod = by_name[pod_name]
            _, host = cluster.EXTERNAL_HOSTS[vlan]
            source = pod.addresses("net1")[0].split("/")[0]
            _section(
                f"localnet VLAN {vlan}: {pod_name} ({pod.node}, {bridge}) -> external "
                f"host {host}, captured on the top-of-rack switch's {trunk}"
            )
            ok, lines = scenario.captured_ping(
                sb, pod, host, on=(sb.external, trunk), bpf_filter="vlan and icmp"
            )
            tagged = scenario.vlan_evidence(lines, source, host)
            for line in tagged[:1]:
                print(f"  {line.strip()}")
            checks.append(ok and bool(tagged) and f"vlan {vlan}," in tagged[0])

        checks.append(_vm(sb))
        checks.append(_broken_uplink(sb, by_name["localnet2-pod"]))
        _show_metrics(sb)
    except errors.OvnkSecondaryError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1

    _section("try this next")
    kubeconfig = f"--kubeconfig {sb.kubeconfig}"
    kubectl = kubeapi.kubectl()
    name = f"--name {sb.name}"
    print(f"  {kubectl} {kubeconfig} get pods -A -o wide")
    print(f"  {kubectl} {kubeconfig} get pods -n test -o yaml | grep -A3 network-status")
    print(f"  {kubectl} {kubeconfig} exec -n test l2-pod-1 -- ping -c 3 10.100.0.12")
    print(f"  {kubectl} {kubeconfig} logs -n ovnk-secondary deployment/ovnk-secondary-controller")
    print("  (no registry: use the image ovnk-sandbox/workload:busybox; no cluster DNS)")
    print(f"  .venv/bin/ovnk-secondary sandbox exec {name} node-1 -- ovs-vsctl show")
    print(
        f"  .venv/bin/ovnk-secondary sandbox exec {name} central -- "
        "ovn-nbctl --db=unix:/run/ovn/nb.sock show"
    )
    print(f"  .venv/bin/ovnk-secondary sandbox down {name}")
    ok = all(checks)
    print("\ndemo: " + ("the reference scenario works" if ok else "SOMETHING FAILED, see above"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
