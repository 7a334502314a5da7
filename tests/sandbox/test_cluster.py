"""The sandbox harness itself: up, attach from another process, down leaving nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ovnk_secondary import errors
from ovnk_secondary.sandbox import cluster

pytestmark = pytest.mark.sandbox


def _host_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"] for link in json.loads(out)}


def _docker_names(kind: str, name: str) -> list[str]:
    args = ["docker", kind, "ls"] if kind == "network" else ["docker", "ps", "-a"]
    out = subprocess.run(
        [
            *args,
            "--filter",
            f"label={cluster.SANDBOX_LABEL}={name}",
            "--format",
            "{{.Name}}" if kind == "network" else "{{.Names}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def test_one_node_sandbox_up_status_from_another_process_and_down_leaves_nothing() -> None:
    name = "ovnk-test-lifecycle"
    cluster.down(name)
    links_before = _host_links()
    sb = cluster.Sandbox.up(name=name, nodes=1)
    try:
        assert sb.node_names == ["node-1"]
        networks = sorted(_docker_names("network", name))
        assert [n.rsplit("-", 1)[0] for n in networks] == [
            f"{name}-{role}" for role in sorted(cluster.NETWORKS)
        ]
        assert networks == sorted(sb.network_name(role) for role in cluster.NETWORKS)
        # another process finds it through the CLI
        status = subprocess.run(
            [sys.executable, "-m", "ovnk_secondary", "sandbox", "status", "--name", name],
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(status.stdout)["nb_connection"] == sb.nb_connection
        assert "node-1" in sb.ovn_sbctl("--bare", "--columns=name", "list", "Chassis").split()
    finally:
        cluster.down(name)
    assert _docker_names("container", name) == []
    assert _docker_names("network", name) == []
    assert _host_links() - links_before == set()
    assert not cluster.state_file(name).exists()
    with pytest.raises(errors.SandboxError, match="sandbox up"):
        cluster.Sandbox.attach(name)
