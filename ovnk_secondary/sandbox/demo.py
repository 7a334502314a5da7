"""`make demo`: bring up the sandbox and show its data paths working.

Run with `python -m ovnk_secondary.sandbox.demo [--nodes N] [--name NAME]`. The sandbox stays up
afterwards, for you to explore.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ovnk_secondary import errors
from ovnk_secondary.sandbox import cluster, smoke


def _section(title: str) -> None:
    print(f"\n=== {title}")


def _show_ping(outcome: smoke.Outcome) -> None:
    lines = outcome.ping.stdout.strip().splitlines()
    for line in lines[-2:]:
        print(f"    {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="ovnk")
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: must run as root (docker, network namespaces)", file=sys.stderr)
        return 1
    try:
        started = time.monotonic()
        sb = cluster.Sandbox.up(name=args.name, nodes=args.nodes)
        print(
            f"sandbox {sb.name!r} up in {time.monotonic() - started:.1f} s: "
            f"NB {sb.nb_connection}, SB {sb.sb_connection}, nodes {', '.join(sb.node_names)}"
        )
        _section("OVN southbound: the chassis and their Geneve endpoints")
        print(sb.ovn_sbctl("show").rstrip())

        nb = smoke.nb_api(sb.nb_connection)
        try:
            a, b = smoke.LAYER2_PODS
            _section(f"layer2: {a.netns} on {a.node} pings {b.netns} on {b.node} ({b.ip})")
            l2 = smoke.layer2_over_geneve(sb, nb)
            _show_ping(l2)
            print("  captured on node-1's underlay (udp 6081):")
            for line in l2.capture[:4]:
                print(f"    {line.strip()}")

            pod = smoke.LOCALNET_POD
            _section(
                f"localnet VLAN 33: {pod.netns} on {pod.node} (ovs-br1, uplink enp2s0) "
                "pings the external host 172.17.33.1"
            )
            tagged, stray = smoke.localnet_vlan33(sb, nb)
            _show_ping(tagged)
            print("  captured on the external switch's physnet2 trunk:")
            for line in tagged.capture[:2]:
                print(f"    {line.strip()}")
            _section("isolation: a VLAN 33 pod addressed in 172.17.34.0/24 asks for 172.17.34.1")
            print(f"    reached: {stray.reached}; its ARP stays on VLAN 33:")
            for line in [text for text in stray.capture if "172.17.34.1 " in text][:1]:
                print(f"    {line.strip()}")
        finally:
            nb.ovsdb_connection.stop()
        ok = l2.reached and tagged.reached and not stray.reached
    except errors.OvnkSecondaryError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    _section("try this next")
    print(f"  .venv/bin/ovnk-secondary sandbox status --name {sb.name}")
    print(f"  .venv/bin/ovnk-secondary sandbox exec --name {sb.name} node-1 -- ovs-vsctl show")
    print(
        f"  .venv/bin/ovnk-secondary sandbox exec --name {sb.name} central -- "
        "ovn-nbctl --db=unix:/run/ovn/nb.sock show"
    )
    print(f"  .venv/bin/ovnk-secondary sandbox down --name {sb.name}")
    print("\ndemo: " + ("all data paths work" if ok else "SOMETHING FAILED, see above"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
