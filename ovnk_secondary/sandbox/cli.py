"""`ovnk-secondary sandbox up [--nodes N] [--bare] | status | exec NODE -- CMD | down`.

Inside pods, use kubectl with the sandbox's admin kubeconfig (`status` prints its path):
`kubectl --kubeconfig PATH exec -n test l2-pod-1 -- ping 10.100.0.12`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from ovnk_secondary.sandbox import cluster


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
