"""`ovnk-secondary sandbox up [--nodes N] [--bare] | status | exec NODE -- CMD |
exec-pod NS/NAME -- CMD | down`."""

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
        help="OVN only: no Kubernetes API, controller, node agents or kubelet stand-ins",
    )
    actions.add_parser("status", parents=[common], help="print the running sandbox as JSON")
    run = actions.add_parser(
        "exec", parents=[common], help="run a command on a node (node-1, central, external)"
    )
    run.add_argument("node")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    pod = actions.add_parser(
        "exec-pod", parents=[common], help="run a command in a pod's network namespace"
    )
    pod.add_argument("pod", metavar="NS/NAME")
    pod.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
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
        return 0
    sb = cluster.Sandbox.attach(args.name)
    if args.action == "status":
        print(json.dumps(sb.status(), indent=2))
        return 0
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        print(f"ovnk-secondary sandbox {args.action}: give a command after --", file=sys.stderr)
        return 2
    if args.action == "exec-pod":
        namespace, _, name = args.pod.rpartition("/")
        node, netns = sb.pod_netns(namespace or "default", name)
        target, command = node, ["ip", "netns", "exec", netns, *command]
    else:
        target = args.node
    # interactive: the caller's terminal goes straight to the container
    tty = ["-it"] if sys.stdin.isatty() else ["-i"]
    return subprocess.call(["docker", "exec", *tty, sb.container(target), *command])
