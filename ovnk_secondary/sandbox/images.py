"""The product and sandbox images, built by `ovn-sandbox/build-images.sh`, keyed by their inputs.

The script is the one source of truth (people using compose run it too); this module only runs it
and reads the two image references it prints.
"""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess
import sys

from ovnk_secondary import errors

BUILD_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "ovn-sandbox" / "build-images.sh"


@dataclasses.dataclass(frozen=True)
class Images:
    """Image references (repository:tag) as the build script printed them."""

    product: str  # ovnk-secondary:<version>: the controller, the node agent, the CNI shim
    central: str  # NB, SB, ovn-northd
    chassis: str  # OVS, ovn-controller, the node's Kubernetes components (FROM product)
    pause: str  # the pod sandbox container of the nodes' containerd
    workload: str  # the test and demo pods' container (busybox)


def ensure(*, python: str | None = None) -> Images:
    """The images, built when their inputs changed (the chassis image is built FROM the
    product image)."""
    if not BUILD_SCRIPT.exists():
        raise errors.SandboxError(
            f"{BUILD_SCRIPT} is missing: run from a checkout of ovnk-secondary"
        )
    done = subprocess.run(
        [str(BUILD_SCRIPT), python or sys.executable], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise errors.SandboxError(done.stderr.strip() or f"{BUILD_SCRIPT} exited {done.returncode}")
    lines = done.stdout.split()
    fields = len(dataclasses.fields(Images))
    if len(lines) < fields:
        raise errors.SandboxError(f"{BUILD_SCRIPT} printed no image names: {done.stdout!r}")
    return Images(*lines[-fields:])
