"""`ovnk-secondary sandbox up [--nodes N] [--bare] | status | exec NODE -- CMD | down`, and
`ovnk-secondary sandbox vm create|migrate|restart|delete|exec` (the VM stand-in, `vms`).

Inside pods, use kubectl with the sandbox's admin kubeconfig (`status` prints its path):
`kubectl --kubeconfig PATH exec -n test l2-pod-1 -- ping 10.100.0.12`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import subprocess
import sys
import time

from ovnk_secondary.sandbox import cluster, scenario, vms

MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", default="ovnk", help="sandbox name (default: ovnk)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser(
        "up", parents=[common], help="start central, N chassis and the external host"
    )
    up.add_argument("--nodes", type=int, default=2, help="number of chassis (default: 2)")
    up.add_argument(
        "--bare",
        action="store_true",
        help="OVN only: no Kubernetes (control plane, kubelets, Multus) and no product",
    )
    actions.add_parser("status", parents=[common], help="print the running sandbox as JSON")
    run = actions.add_parser(
        "exec", parents=[common], help="run a command on a node (node-1, central, external)"
    )
    run.add_argument("node")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    actions.add_parser(
        "down", parents=[common], help="remove every container and network of the sandbox"
    )
    vm = actions.add_parser(
        "vm", parents=[common], help="the KubeVirt VM stand-in: create, migrate, restart, "
        "delete a VM, or run a command in its guest")
    vm_actions = vm.add_subparsers(dest="vm_action", required=True, metavar="VM_ACTION")
    vm_common = argparse.ArgumentParser(add_help=False)
    vm_common.add_argument("vm", help="the VM's name")
    vm_common.add_argument("--namespace", default="test", help="(default: test)")
    create = vm_actions.add_parser("create", parents=[vm_common],
                                   help="start a VM with a NIC on each --nad")
    create.add_argument("--nad", action="append", required=True, metavar="NAMESPACE/NAME",
                        help="a NAD of ours (repeat: net1, net2, ...); a claim <vm>.<netN> is "
                        "created on networks with allowPersistentIPs")
    create.add_argument("--node", default="node-1", help="(default: node-1)")
    create.add_argument("--static", action="append", default=[],
                        metavar="NAMESPACE/NAME=IP/PREFIX[,MAC]",
                        help="static address (and MAC) on an IPAM-less NAD")
    move = vm_actions.add_parser("migrate", parents=[vm_common],
                                 help="live-migrate the VM to another node")
    move.add_argument("--to", help="target node (default: the other one)")
    move.add_argument("--abort", action="store_true",
                      help="stop before the switch-over: the target pod is deleted")
    again = vm_actions.add_parser("restart", parents=[vm_common],
                                  help="stop and start the VM (a new virt-launcher pod)")
    again.add_argument("--to", help="node (default: the same)")
    vm_actions.add_parser("delete", parents=[vm_common],
                          help="delete the VM, its claims and its guest")
    inside = vm_actions.add_parser("exec", parents=[vm_common],
                                   help="run a command in the VM's guest")
    inside.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("ovnk-secondary sandbox: must run as root (docker, debootstrap)", file=sys.stderr)
        return 1
    if args.action == "up":
        started = time.monotonic()
        sb = cluster.Sandbox.up(name=args.name, nodes=args.nodes, kubernetes=not args.bare)
        print(json.dumps(sb.status(), indent=2))
        print(f"sandbox {sb.name!r} up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        return 0
    if args.action == "down":
        cluster.down(args.name)
        print(f"sandbox {args.name!r} removed (nothing of it is left)", file=sys.stderr)
        return 0
    sb = cluster.Sandbox.attach(args.name)
    if args.action == "vm":
        return _vm(sb, args)
    if args.action == "status":
        print(json.dumps(sb.status(), indent=2))
        return 0
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        print(f"ovnk-secondary sandbox {args.action}: give a command after --", file=sys.stderr)
        return 2
    target = args.node
    # interactive: the caller's terminal goes straight to the container
    tty = ["-it"] if sys.stdin.isatty() else ["-i"]
    return subprocess.call(["docker", "exec", *tty, sb.container(target), *command])


def _vm(sb: cluster.Sandbox, args: argparse.Namespace) -> int:
    def show(pod: scenario.PodView) -> None:
        print(json.dumps({"pod": pod.name, "node": pod.node, "networks": {
            nad: {"mac": e.get("mac_address"), "ips": e.get("ip_addresses")}
            for nad, e in pod.pod_networks.items()}}, indent=2))

    if args.vm_action == "create":
        static: dict[str, tuple[tuple[str, ...], str | None]] = {}
        for item in args.static:
            nad, _, value = item.partition("=")
            address, _, mac = value.partition(",")
            try:
                ipaddress.ip_interface(address)
                if "/" not in address or not nad or (mac and not MAC.fullmatch(mac)):
                    raise ValueError(item)
            except ValueError:
                print(f"ovnk-secondary sandbox vm create: --static {item!r}: give "
                      "NAMESPACE/NAME=IP/PREFIX[,MAC], e.g. "
                      "test/nad-vm-static=172.17.33.70/24,02:00:00:00:33:70", file=sys.stderr)
                return 2
            static[nad] = ((address,), mac or None)
        show(vms.create(sb, args.vm, args.nad, namespace=args.namespace, node=args.node,
                        static=static))
    elif args.vm_action == "migrate":
        done = vms.migrate(sb, args.vm, namespace=args.namespace, to=args.to, abort=args.abort)
        if done is None:
            print(f"VM {args.vm}: migration aborted, it stays where it was", file=sys.stderr)
        else:
            show(done.target)
            print(f"VM {args.vm}: {done.source.node} -> {done.target.node}; the guest paused "
                  f"{(done.resumed - done.paused) * 1000:.0f} ms", file=sys.stderr)
    elif args.vm_action == "restart":
        pod = vms.restart(sb, args.vm, namespace=args.namespace, to=args.to)
        show(pod)
        print(f"VM {args.vm}: restarted on {pod.node}", file=sys.stderr)
    elif args.vm_action == "delete":
        vms.delete(sb, args.vm, namespace=args.namespace)
        print(f"VM {args.vm}: deleted (its pods, IPAMClaims and guest)", file=sys.stderr)
    else:
        command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        return subprocess.call(["ip", "netns", "exec", vms.guest_netns(sb, args.vm), *command])
    return 0
