"""The `ovnk-secondary` command: one subcommand per long-running component or tool.

Each subcommand lives in its own module and is imported only when it runs, so that the CNI
path and the sandbox tooling do not pay for each other's imports.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence

from ovnk_secondary import errors

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_log_level(parser: argparse.ArgumentParser) -> None:
    """`--log-level` of a component, checked at parsing (any case: `debug` is DEBUG)."""
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        help="default: %(default)s")


def version() -> str:
    try:
        return importlib.metadata.version("ovnk-secondary")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree not installed
        return "unknown (not installed)"


# subcommand -> module exposing `add_arguments(parser)` and `run(args) -> int`
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "controller": (
        "ovnk_secondary.controller.main",
        "run the controller (NADs and pods into OVN NB)",
    ),
    "node-agent": (
        "ovnk_secondary.agent.main",
        "run the node agent (CNI requests, bridge mappings)",
    ),
    "diagnose": (
        "ovnk_secondary.diagnose.main",
        "walk a pod's (or a network's) chain from NAD to wire; say what is broken and the fix",
    ),
    "install-cni": (
        "ovnk_secondary.agent.cnibindir",
        "install ovn-k8s-cni-overlay into the node's CNI binary directory",
    ),
    "sandbox": ("ovnk_secondary.sandbox.cli", "multi-node OVN sandbox in containers"),
}


def main(argv: Sequence[str] | None = None) -> int:
    top = argparse.ArgumentParser(prog="ovnk-secondary", description=__doc__)
    top.add_argument("--version", action="version", version=f"ovnk-secondary {version()}")
    top.add_argument(
        "command",
        choices=SUBCOMMANDS,
        help="; ".join(f"{name}: {text}" for name, (_, text) in SUBCOMMANDS.items()),
    )
    top.add_argument("arguments", nargs=argparse.REMAINDER, help="arguments of the subcommand")
    parsed = top.parse_args(argv)
    module_name, help_text = SUBCOMMANDS[parsed.command]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"ovnk-secondary {parsed.command}", description=help_text)
    module.add_arguments(sub)
    args = sub.parse_args(parsed.arguments)
    try:
        result: int = module.run(args)
    except errors.OvnkSecondaryError as exc:
        print(f"ovnk-secondary {parsed.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
