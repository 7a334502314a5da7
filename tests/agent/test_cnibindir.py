"""Our plugin in the node's CNI binary directory, beside OVN-Kubernetes' own when it is the
primary network: installed by `cnibindir.ensure`, then run as a runtime runs it (the real static
shim), with a stand-in for OVN-K's plugin that records every call."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from ovnk_secondary import errors
from ovnk_secondary.agent import cnibindir, health
from ovnk_secondary.cni import wire

# OVN-Kubernetes' primary network configuration (dist/images/ovnkube.sh, 10-ovn-kubernetes.conf)
PRIMARY = {"cniVersion": "0.4.0", "name": "ovn-kubernetes", "type": "ovn-k8s-cni-overlay",
           "ipam": {}, "dns": {}, "logFile": "/var/log/ovn-kubernetes/ovn-k8s-cni-overlay.log",
           "logLevel": "4", "logfile-maxsize": 100}
SECONDARY = {"cniVersion": "0.4.0", "name": "l2-network", "type": "ovn-k8s-cni-overlay",
             "topology": "layer2", "netAttachDefName": "ns1/l2-network"}


def stand_in(record: pathlib.Path, *, release: str) -> bytes:
    """A plugin standing in for OVN-Kubernetes': appends each call (argv, environment, stdin) to
    `record` as a JSON line, answers with a result naming `release`, writes a line on stderr,
    and exits with the status the config's `exitStatus` asks for (0 without one)."""
    return f"""#!{sys.executable}
import json, sys
stdin = sys.stdin.buffer.read()
# the environment as exec'd (os.environ has Python's own locale coercion in it)
with open("/proc/self/environ", "rb") as raw:
    env = dict(e.decode().split("=", 1) for e in raw.read().split(b"\\0") if e)
with open({str(record)!r}, "a") as out:
    out.write(json.dumps({{"argv": sys.argv[1:], "env": env,
                          "stdin": stdin.decode()}}) + "\\n")
sys.stdout.write(json.dumps({{"cniVersion": "0.4.0", "release": {release!r}}}) + "\\n")
sys.stderr.write("ovn-kubernetes stand-in\\n")
sys.exit(json.loads(stdin or b"{{}}").get("exitStatus", 0))
""".encode()


@pytest.fixture
def node(tmp_path: pathlib.Path) -> pathlib.Path:
    """A node's /opt/cni/bin where OVN-Kubernetes installed its plugin."""
    directory = tmp_path / "opt-cni-bin"
    directory.mkdir()
    plugin = directory / cnibindir.PLUGIN_NAME
    plugin.write_bytes(stand_in(tmp_path / "calls.jsonl", release="v1"))
    plugin.chmod(0o755)
    return directory


def calls(node: pathlib.Path) -> list[dict[str, object]]:
    record = node.parent / "calls.jsonl"
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


@pytest.fixture
def agent(tmp_path: pathlib.Path) -> Iterator[tuple[str, list[bytes]]]:
    """A peer on the agent's socket answering every request with a fixed result: (socket path,
    the requests it received)."""
    path = str(tmp_path / "cni.sock")
    received: list[bytes] = []
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                chunks = []
                while chunk := connection.recv(65536):
                    chunks.append(chunk)
                received.append(b"".join(chunks))
                connection.sendall(wire.encode_answer(0, b'{"cniVersion": "0.4.0", "ours": 1}\n'))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, received
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    thread.join(5)


def run(plugin: pathlib.Path, env: dict[str, str],
        config: dict[str, object]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(plugin)], input=json.dumps(config).encode(), env=env,
                          capture_output=True, timeout=30, check=False)


def cni_env(command: str, socket_path: str) -> dict[str, str]:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/var/run/netns/x",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
            "CNI_ARGS": "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web;K8S_POD_UID=1",
            "OVNK_SECONDARY_CNI_SOCKET": socket_path, "SOME_RUNTIME_VARIABLE": "kept"}


def test_ovn_kubernetes_plugin_is_left_alone_unless_chaining_is_asked_for(
        node: pathlib.Path, cni_shim: pathlib.Path) -> None:
    theirs = (node / cnibindir.PLUGIN_NAME).read_bytes()
    with pytest.raises(errors.InvalidConfig, match=r"refusing to replace .*'chain'"):
        cnibindir.ensure(node, shim=cni_shim, primary_plugin="refuse")
    assert sorted(p.name for p in node.iterdir()) == [cnibindir.PLUGIN_NAME]
    assert (node / cnibindir.PLUGIN_NAME).read_bytes() == theirs
    # the agent's readiness says so, with the fix
    error = cnibindir.check(node, shim=cni_shim, primary_plugin="refuse")
    assert error is not None
    found = health.problems(ovs_connected=True, socket_serving=True, mappings_error=None,
                            plugin_error=error)
    assert found == [f"ovn-k8s-cni-overlay not installed: {error}"]


def test_chained_ovn_kubernetes_primary_network_gets_every_call_unchanged(
        node: pathlib.Path, cni_shim: pathlib.Path,
        agent: tuple[str, list[bytes]]) -> None:
    """Topology (b): OVN-K's plugin serves its primary network exactly as before, ours the NADs."""
    socket_path, received = agent
    theirs = (node / cnibindir.PLUGIN_NAME).read_bytes()
    assert cnibindir.ensure(node, shim=cni_shim,
                            primary_plugin="chain") is cnibindir.Outcome.CHAINED
    plugin, kept = node / cnibindir.PLUGIN_NAME, node / cnibindir.PRIMARY_NAME
    assert sorted(p.name for p in node.iterdir()) == sorted([plugin.name, kept.name])
    assert plugin.read_bytes() == cni_shim.read_bytes() and kept.read_bytes() == theirs
    assert os.access(plugin, os.X_OK) and os.access(kept, os.X_OK)

    # The primary network: ADD, DEL, CHECK and VERSION reach OVN-K's plugin as the runtime gave
    # them (environment, arguments, stdin); its stdout, stderr and exit status come back as is.
    for command in ("ADD", "CHECK", "DEL", "VERSION"):
        env = cni_env(command, socket_path)
        done = run(plugin, env, PRIMARY)
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout) == {"cniVersion": "0.4.0", "release": "v1"}
        assert done.stderr == b"ovn-kubernetes stand-in\n"
        call = calls(node)[-1]
        assert call["argv"] == [] and call["stdin"] == json.dumps(PRIMARY)
        assert call["env"] == env
    failing = run(plugin, cni_env("ADD", socket_path), PRIMARY | {"exitStatus": 7})
    assert failing.returncode == 7
    assert len(calls(node)) == 5 and received == []  # nothing of it went to our agent

    # A NAD's network (and anything else not named "ovn-kubernetes"): our agent, not OVN-K's.
    done = run(plugin, cni_env("ADD", socket_path), SECONDARY)
    assert (done.returncode, json.loads(done.stdout)) == (0, {"cniVersion": "0.4.0", "ours": 1})
    assert len(received) == 1 and len(calls(node)) == 5
    variables, stdin = wire.decode_request(received[0])
    assert variables["CNI_IFNAME"] == "eth0" and json.loads(stdin) == SECONDARY


def test_ovnkube_node_copying_its_plugin_again_is_undone_and_its_new_release_kept(
        node: pathlib.Path, cni_shim: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """ovnkube-node `cp -f`s its plugin at every start (an upgrade of OVN-K brings a new one):
    the next check keeps that one and puts ours back."""
    assert cnibindir.ensure(node, shim=cni_shim, primary_plugin="chain") is (
        cnibindir.Outcome.CHAINED)
    assert cnibindir.ensure(node, shim=cni_shim, primary_plugin="chain") is (
        cnibindir.Outcome.UNCHANGED)
    release = tmp_path / "ovnkube-v2"
    release.write_bytes(stand_in(tmp_path / "calls.jsonl", release="v2"))
    release.chmod(0o755)
    shutil.copyfile(release, node / cnibindir.PLUGIN_NAME)  # what `cp -f` does
    assert cnibindir.check(node, shim=cni_shim, primary_plugin="chain") is None
    assert (node / cnibindir.PLUGIN_NAME).read_bytes() == cni_shim.read_bytes()
    assert (node / cnibindir.PRIMARY_NAME).read_bytes() == release.read_bytes()
    done = run(node / cnibindir.PLUGIN_NAME, cni_env("ADD", "/nonexistent.sock"), PRIMARY)
    assert json.loads(done.stdout)["release"] == "v2"
    assert sorted(p.name for p in node.iterdir()) == sorted(
        [cnibindir.PLUGIN_NAME, cnibindir.PRIMARY_NAME])  # no temporary file left


def test_without_ovn_kubernetes_ours_is_installed_and_upgraded(
        tmp_path: pathlib.Path, cni_shim: pathlib.Path) -> None:
    """Topology (a), another primary CNI: nothing to keep; an older plugin of ours is replaced
    (ours is recognised by its Go module path, whatever its version)."""
    directory = tmp_path / "bin"
    directory.mkdir()
    plugin = directory / cnibindir.PLUGIN_NAME
    for mode in cnibindir.PRIMARY_PLUGIN_MODES:
        assert cnibindir.ensure(directory, shim=cni_shim,
                                primary_plugin=mode) is cnibindir.Outcome.INSTALLED
        assert plugin.read_bytes() == cni_shim.read_bytes() and os.access(plugin, os.X_OK)
        plugin.write_bytes(cni_shim.read_bytes() + b"\0an older build")
    assert cnibindir.ensure(directory, shim=cni_shim,
                            primary_plugin="refuse") is cnibindir.Outcome.INSTALLED
    assert plugin.read_bytes() == cni_shim.read_bytes()
    assert [p.name for p in directory.iterdir()] == [cnibindir.PLUGIN_NAME]
    # no OVN-K plugin kept: a request for its network reaches our agent, which refuses the name
    done = run(plugin, cni_env("ADD", str(tmp_path / "absent.sock")), PRIMARY)
    assert done.returncode == 1 and json.loads(done.stdout)["code"] == 11  # agent not running
