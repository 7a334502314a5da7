"""Fixtures of the node agent's tests that need no sandbox: a real OVS in a throwaway netns."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ovnk_secondary.agent import ovs
from ovnk_secondary.sandbox import kubeapi, smoke
from tests import kube
from tests.agent import harness

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, OVS)")
needs_ovs = pytest.mark.skipif(shutil.which("ovs-vswitchd") is None, reason="needs openvswitch")


@dataclasses.dataclass
class LocalSwitch:
    """ovsdb-server + ovs-vswitchd (userspace datapath) in their own netns and run dir."""

    netns: str
    rundir: pathlib.Path
    remote: str

    @property
    def netns_path(self) -> str:
        """The namespace as the agent's `netns` arguments take it (where ovs-vswitchd runs)."""
        return f"/var/run/netns/{self.netns}"

    def vsctl(self, *args: str) -> str:
        done = subprocess.run(["ovs-vsctl", f"--db={self.remote}", "--timeout=10", *args],
                              capture_output=True, text=True, check=True)
        return done.stdout.strip()

    def ip(self, *args: str) -> str:
        done = subprocess.run(["ip", "-n", self.netns, *args], capture_output=True, text=True,
                              check=True)
        return done.stdout


def _wait_file(path: pathlib.Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.05)


@pytest.fixture
def api(kube_plane: kubeapi.ControlPlane, tmp_path: pathlib.Path) -> Iterator[kube.KubeApi]:
    """The session's real API server; the agent's code authenticates as the node agent's
    ServiceAccount; namespace ns1 exists; the test's objects are wiped afterwards."""
    view = kube.KubeApi(kube_plane, tmp_path / "kube", identity=kube.NODE_AGENT)
    view.ensure_namespace("ns1")
    try:
        yield view
    finally:
        view.wipe()


@pytest.fixture
def local_switch(tmp_path: pathlib.Path) -> Iterator[LocalSwitch]:
    if os.geteuid() != 0 or shutil.which("ovs-vswitchd") is None:
        pytest.skip("needs root and openvswitch")
    netns = f"ovnk-t-{uuid.uuid4().hex[:8]}"
    rundir = tmp_path / "ovs"
    rundir.mkdir()
    env = dict(os.environ, OVS_RUNDIR=str(rundir), OVS_DBDIR=str(rundir),
               OVS_LOGDIR=str(rundir))
    subprocess.run(["ip", "netns", "add", netns], check=True)
    pids: list[pathlib.Path] = []
    try:
        db = rundir / "conf.db"
        subprocess.run(["ovsdb-tool", "create", str(db),
                        "/usr/share/openvswitch/vswitch.ovsschema"], check=True, env=env)
        sock = rundir / "db.sock"
        pids.append(rundir / "ovsdb.pid")
        subprocess.run(["ip", "netns", "exec", netns, "ovsdb-server", "--detach", "--no-chdir",
                        f"--pidfile={rundir}/ovsdb.pid", f"--log-file={rundir}/ovsdb.log",
                        f"--unixctl={rundir}/ovsdb.ctl", f"--remote=punix:{sock}", str(db)],
                       check=True, env=env)
        remote = f"unix:{sock}"
        switch = LocalSwitch(netns=netns, rundir=rundir, remote=remote)
        switch.vsctl("--no-wait", "init")
        switch.vsctl("--no-wait", "set", "open", ".",
                     "external_ids:ovn-bridge-datapath-type=netdev")
        pids.append(rundir / "vswitchd.pid")
        subprocess.run(["ip", "netns", "exec", netns, "ovs-vswitchd", "--detach", "--no-chdir",
                        f"--pidfile={rundir}/vswitchd.pid", f"--log-file={rundir}/vswitchd.log",
                        f"--unixctl={rundir}/vswitchd.ctl", remote], check=True, env=env)
        _wait_file(rundir / "vswitchd.pid")
        switch.vsctl("add-br", ovs.INTEGRATION_BRIDGE, "--", "set", "bridge",
                     ovs.INTEGRATION_BRIDGE, "datapath_type=netdev", "fail-mode=secure")
        yield switch
    finally:
        for pidfile in reversed(pids):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
        subprocess.run(["ip", "netns", "del", netns], check=False)


@pytest.fixture
def pod_netns() -> Iterator[str]:
    """A network namespace standing for a pod sandbox (on this machine)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"ovnk-pod-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/var/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


# The sandbox nodes' bridge mappings (the reference scenario's; tests/manifests keeps them equal
# to manifests/examples' ConfigMap).
MAPPINGS_FILE = (pathlib.Path(__file__).resolve().parents[2] / "ovn-sandbox"
                 / "bridge-mappings.yaml").read_text()


@pytest.fixture(scope="module")
def agent_cluster(sandbox: Any,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Cluster]:
    """The sandbox with a real kube-apiserver (on this host, reachable from the chassis) and
    one node agent per chassis, authenticated as the node agent's ServiceAccount.

    Each agent runs with the reference scenario's bridge-mappings file. Everything is undone at
    the end: agents stopped, their files removed, ovs-br1 and the mappings taken away again.
    """
    if getattr(sandbox, "kubeconfig", None) is not None:
        pytest.fail(f"sandbox {sandbox.name!r} is a cluster: its own node agents would judge "
                    "this module's pods (unknown to their API) as gone; use an OVN-only one")
    directory = tmp_path_factory.mktemp("kube-agents")
    plane = kube.start(directory, advertise=sandbox.host_address)
    nb = smoke.nb_api(sandbox.nb_connection)
    started: list[harness.Agent] = []
    try:
        api = kube.KubeApi(plane, directory / "identities", identity=kube.NODE_AGENT)
        world = harness.Cluster(sandbox, api, nb)
    except BaseException:
        plane.stop()
        raise
    try:
        for node in sandbox.node_names:
            world.core.create_node({"apiVersion": "v1", "kind": "Node",
                                    "metadata": {"name": node}})
            agent = harness.Agent(sandbox, node, kubeconfig=api.kubeconfig_text(),
                                  mappings=MAPPINGS_FILE, annotation_timeout=5,
                                  binding_timeout=12)
            agent.setup_files()
            started.append(agent)
            agent.start()
        world.agents = {agent.node: agent for agent in started}
        yield world
    finally:
        world.cleanup()
        for agent in started:
            agent.stop()
            sandbox.exec(agent.node, f"rm -rf {harness.AGENT_DIR}; ovs-vsctl --if-exists del-br "
                         "ovs-br1 -- remove open . external_ids ovn-bridge-mappings "
                         "-- remove open . external_ids ovnk-secondary.io/bridge-mappings",
                         check=False)
        nb.ovsdb_connection.stop()
        plane.stop()


@pytest.fixture
def world(agent_cluster: harness.Cluster) -> Iterator[harness.Cluster]:
    """The cluster of `agent_cluster`, with the test's pods and networks removed afterwards."""
    try:
        yield agent_cluster
    finally:
        agent_cluster.cleanup()
