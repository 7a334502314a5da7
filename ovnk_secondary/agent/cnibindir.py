"""The node's CNI binary directory: our `ovn-k8s-cni-overlay` installed, and OVN-Kubernetes' kept.

Multus executes a plugin by the `type` of its configuration, and our NADs keep OVN-Kubernetes'
type, `ovn-k8s-cni-overlay`. Two topologies are supported (README, "Supported topologies"):

- **Another primary CNI** (Calico, Cilium, flannel, ...): the directory has no plugin of that name
  or ours (an older one is replaced: an upgrade).
- **OVN-Kubernetes as the primary network, its multi-network support off**: its plugin has the
  same name. With `primary_plugin="chain"` it is kept as `ovn-k8s-cni-overlay.primary` and ours
  takes its name; our shim hands every request for OVN-K's primary network (`"name":
  "ovn-kubernetes"`) to it unchanged (cni-shim/main.go). ovnkube-node copies its plugin again
  each time it starts (`cp -f` in OVN-K's dist/images/ovnkube.sh): the agent checks every
  `CHECK_INTERVAL` seconds and chains again, so ours is back within that time (a secondary ADD
  in between fails and the kubelet retries it).
  With `primary_plugin="refuse"` (the default: chaining is a decision for the admin) a plugin
  that is not ours is left alone and reported as an error.

Replacements are atomic (`rename(2)` of a complete file): the runtime never finds the name
missing or a half-written binary. Ours is recognised by its Go module path, which `go build`
embeds in the binary.
"""

from __future__ import annotations

import argparse
import enum
import logging
import os
import pathlib

from ovnk_secondary import cli, errors

LOG = logging.getLogger(__name__)

PLUGIN_NAME = "ovn-k8s-cni-overlay"
PRIMARY_NAME = "ovn-k8s-cni-overlay.primary"  # cni-shim/main.go primaryPluginName
OURS_MARK = b"ovnk-secondary/cni-shim"  # cni-shim/go.mod: the module path
SHIM = "/usr/local/lib/ovnk-secondary/cni/ovn-k8s-cni-overlay"  # in the product image
PRIMARY_PLUGIN_MODES = ("refuse", "chain")
CHECK_INTERVAL = 10.0  # seconds between the agent's checks


class Outcome(enum.Enum):
    UNCHANGED = "unchanged"
    INSTALLED = "installed"  # where there was none, or over an older one of ours
    CHAINED = "chained"  # OVN-Kubernetes' plugin kept as PRIMARY_NAME, ours in its place


def is_ours(content: bytes) -> bool:
    return OURS_MARK in content


def ensure(directory: pathlib.Path, *, shim: pathlib.Path, primary_plugin: str) -> Outcome:
    """Make `directory`/ovn-k8s-cni-overlay our shim (a copy of `shim`).

    Raises errors.InvalidConfig when another product's plugin has the name and `primary_plugin`
    is "refuse" (the directory is then left as it was).
    """
    if primary_plugin not in PRIMARY_PLUGIN_MODES:
        raise errors.InvalidConfig(f"primary plugin mode {primary_plugin!r} is not one of "
                                   f"{', '.join(PRIMARY_PLUGIN_MODES)}")
    target = directory / PLUGIN_NAME
    wanted = shim.read_bytes()
    try:
        present: bytes | None = target.read_bytes()
    except FileNotFoundError:
        present = None
    if present == wanted:
        return Outcome.UNCHANGED
    outcome = Outcome.INSTALLED
    if present is not None and not is_ours(present):
        if primary_plugin != "chain":
            raise errors.InvalidConfig(
                f"refusing to replace {target}: it is another product's plugin (OVN-Kubernetes' "
                "has this name). If OVN-Kubernetes is this cluster's primary network, turn its "
                "multi-network support off and set the node agent's primary plugin mode to "
                "'chain' (manifests/components/ovn-kubernetes-primary); see the README's "
                "supported topologies")
        # A hard link under a temporary name, renamed over the kept one: the name of
        # OVN-Kubernetes' plugin is never missing, and a newer copy replaces an older one.
        aside = directory / f".{PRIMARY_NAME}.partial"
        aside.unlink(missing_ok=True)
        os.link(target, aside)
        os.replace(aside, directory / PRIMARY_NAME)
        outcome = Outcome.CHAINED
    partial = directory / f".{PLUGIN_NAME}.partial"
    partial.write_bytes(wanted)
    partial.chmod(0o755)
    os.replace(partial, target)
    return outcome


def check(directory: pathlib.Path, *, shim: pathlib.Path, primary_plugin: str) -> str | None:
    """One check, logged: None when our plugin is in place, else why not (for /readyz)."""
    try:
        outcome = ensure(directory, shim=shim, primary_plugin=primary_plugin)
    except errors.OvnkSecondaryError as exc:
        LOG.error("%s", exc)
        return str(exc)
    except OSError as exc:
        LOG.error("cannot install %s into %s: %s", PLUGIN_NAME, directory, exc)
        return f"cannot install {PLUGIN_NAME} into {directory}: {exc.strerror or exc}"
    if outcome is Outcome.CHAINED:
        LOG.warning("%s in %s was OVN-Kubernetes' plugin: kept it as %s (it serves the "
                    "primary network) and installed ours", PLUGIN_NAME, directory, PRIMARY_NAME)
    elif outcome is Outcome.INSTALLED:
        LOG.info("installed %s into %s", PLUGIN_NAME, directory)
    return None


# --- `ovnk-secondary install-cni`: the node-agent DaemonSet's init container ---------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cni-bin-dir", required=True, type=pathlib.Path,
                        help="the node's CNI binary directory, as mounted in the container")
    parser.add_argument("--primary-plugin", choices=PRIMARY_PLUGIN_MODES, default="refuse",
                        help="when another product's ovn-k8s-cni-overlay is there (OVN-Kubernetes"
                             " as the primary network): refuse, or keep it and chain to it "
                             "(default: %(default)s)")
    parser.add_argument("--shim", type=pathlib.Path, default=pathlib.Path(SHIM),
                        help="the plugin to install (default: %(default)s)")
    cli.add_log_level(parser)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(message)s")
    return 1 if check(args.cni_bin_dir, shim=args.shim, primary_plugin=args.primary_plugin) else 0
