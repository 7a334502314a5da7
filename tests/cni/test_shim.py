"""The CNI binary Multus executes (`ovn-k8s-cni-overlay`, the static Go shim in cni-shim/), run
as a runtime runs it: with the real agent side of the socket (`cni.wire`, `agent.server`), or
with nobody, or a broken peer, on the other end."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from ovnk_secondary.cni import protocol, wire

CONFIG = {"cniVersion": "0.4.0", "name": "l2-network", "type": "ovn-k8s-cni-overlay",
          "topology": "layer2", "netAttachDefName": "ns1/l2-network"}


@pytest.fixture
def env(tmp_path: pathlib.Path) -> dict[str, str]:
    return {
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/var/run/netns/x",
        "CNI_IFNAME": "net1", "CNI_PATH": "/opt/cni/bin",
        "CNI_ARGS": "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=tinypod;K8S_POD_UID=1",
        "OVNK_SECONDARY_CNI_SOCKET": str(tmp_path / "run" / "cni.sock"),
    }


def invoke(shim: pathlib.Path, env: Mapping[str, str], stdin: bytes, *,
           argv_prefix: tuple[str, ...] = ()) -> tuple[int, dict[str, Any] | None, bytes]:
    """(exit code, stdout as JSON, stdout) of one run with exactly `env` (no PATH, no HOME)."""
    done = subprocess.run([*argv_prefix, str(shim)], input=stdin, env=dict(env),
                          capture_output=True, timeout=30, check=False)
    assert not done.stderr, done.stderr
    output = json.loads(done.stdout) if done.stdout.strip() else None
    return done.returncode, output, done.stdout


@pytest.fixture
def peer(env: dict[str, str]) -> Iterator[Callable[[Callable[[socket.socket], None]], None]]:
    """Serve the socket with `behaviour(connection)` for every connection."""
    path = pathlib.Path(env["OVNK_SECONDARY_CNI_SOCKET"])
    path.parent.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    threads: list[threading.Thread] = []

    def start(behaviour: Callable[[socket.socket], None]) -> None:
        def serve() -> None:
            while True:
                try:
                    connection, _ = listener.accept()
                except OSError:
                    return
                with connection:
                    behaviour(connection)
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    for thread in threads:
        thread.join(5)


def read_request(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(65536):  # the shim half-closes after its request
        chunks.append(chunk)
    return b"".join(chunks)


def test_version_is_answered_without_the_agent(cni_shim: pathlib.Path,
                                               env: dict[str, str]) -> None:
    code, output, _ = invoke(cni_shim, env | {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.4.0"}')
    assert code == 0
    assert output == {"cniVersion": "0.4.0", "supportedVersions": list(protocol.SUPPORTED_VERSIONS)}
    # a version we do not speak (or no config at all): the newest we do
    for stdin in (b'{"cniVersion": "9.9.9"}', b""):
        code, output, _ = invoke(cni_shim, env | {"CNI_COMMAND": "VERSION"}, stdin)
        assert (code, output) == (0, {"cniVersion": protocol.SUPPORTED_VERSIONS[-1],
                                      "supportedVersions": list(protocol.SUPPORTED_VERSIONS)})


def test_request_reaches_the_agent_as_the_runtime_gave_it_and_the_answer_comes_back_as_is(
        cni_shim: pathlib.Path, env: dict[str, str],
        peer: Callable[[Callable[[socket.socket], None]], None]) -> None:
    received: list[bytes] = []
    answer = b'{"cniVersion": "0.4.0", "interfaces": [{"name": "net1"}]}\n'

    def agent(connection: socket.socket) -> None:
        received.append(read_request(connection))
        connection.sendall(wire.encode_answer(0, answer))

    peer(agent)
    stdin = json.dumps(CONFIG | {"name": "n\u00e9t"}).encode() + b"\n  "  # bytes as they are
    code, _, stdout = invoke(cni_shim, env | {"HOME": "/root", "NOT_CNI": "x"}, stdin)
    assert (code, stdout) == (0, answer)
    variables, forwarded = wire.decode_request(received[0])
    assert variables == {k: v for k, v in env.items() if k.startswith("CNI_")}  # no other
    assert forwarded == stdin
    assert protocol.validate(variables, forwarded).pod_name == "tinypod"


def test_agent_errors_keep_their_code_and_exit_status(
        cni_shim: pathlib.Path, env: dict[str, str],
        peer: Callable[[Callable[[socket.socket], None]], None]) -> None:
    error = protocol.CniError(protocol.INTERFACE_IN_USE, "net1 is in use", "by nad ns1/other")

    def agent(connection: socket.socket) -> None:
        read_request(connection)
        connection.sendall(protocol.answer(error=error, cni_version="0.4.0"))

    peer(agent)
    code, output, _ = invoke(cni_shim, env, json.dumps(CONFIG).encode())
    assert (code, output) == (1, error.to_dict("0.4.0"))


def test_agent_absent_is_try_again_later(cni_shim: pathlib.Path, env: dict[str, str]) -> None:
    code, output, _ = invoke(cni_shim, env, json.dumps(CONFIG).encode())
    socket_path = env["OVNK_SECONDARY_CNI_SOCKET"]
    assert (code, output) == (1, {
        "cniVersion": "0.4.0", "code": protocol.TRY_AGAIN_LATER,
        "msg": "the ovnk-secondary node agent is not running or still starting; try again later",
        "details": f"cannot connect to {socket_path}: No such file or directory; check the "
                   "node-agent pod on this node"})


def _stale_socket(env: dict[str, str]) -> None:
    path = pathlib.Path(env["OVNK_SECONDARY_CNI_SOCKET"])
    path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: an agent that crashed


def test_stale_socket_is_try_again_later_in_the_configs_version(
        cni_shim: pathlib.Path, env: dict[str, str]) -> None:
    _stale_socket(env)
    code, output, _ = invoke(cni_shim, env | {"CNI_COMMAND": "CHECK"},
                             json.dumps(CONFIG | {"cniVersion": "1.0.0"}).encode())
    assert code == 1 and output is not None
    assert (output["cniVersion"], output["code"]) == ("1.0.0", protocol.TRY_AGAIN_LATER)
    assert "Connection refused" in output["details"]


@pytest.mark.parametrize("socket_state", ["absent", "stale"])
def test_del_without_an_agent_succeeds(cni_shim: pathlib.Path, env: dict[str, str],
                                       socket_state: str) -> None:
    """No agent on the node (stopped, or the product uninstalled): a DEL has nothing it could
    tear down now and succeeds, so the pod does not stay Terminating; the agent removes the
    ports of gone pods when it starts."""
    if socket_state == "stale":
        _stale_socket(env)
    assert invoke(cni_shim, env | {"CNI_COMMAND": "DEL"}, json.dumps(CONFIG).encode()) == (
        0, None, b"")


def test_agent_closing_without_an_answer_is_try_again_later(
        cni_shim: pathlib.Path, env: dict[str, str],
        peer: Callable[[Callable[[socket.socket], None]], None]) -> None:
    peer(read_request)  # reads, then closes: an agent that restarted mid-request
    code, output, _ = invoke(cni_shim, env, b"not even json")
    assert (code, output) == (1, {
        "cniVersion": protocol.DEFAULT_VERSION, "code": protocol.TRY_AGAIN_LATER,
        "msg": "the node agent closed the connection without an answer",
        "details": "it may have restarted; the runtime will retry"})


def test_agent_not_answering_in_time_is_try_again_later(
        cni_shim: pathlib.Path, env: dict[str, str],
        peer: Callable[[Callable[[socket.socket], None]], None]) -> None:
    release = threading.Event()

    def stuck(connection: socket.socket) -> None:
        read_request(connection)
        release.wait(10)

    peer(stuck)
    try:
        code, output, _ = invoke(cni_shim, env | {"OVNK_SECONDARY_CNI_TIMEOUT": "1"},
                                 json.dumps(CONFIG).encode())
    finally:
        release.set()
    assert code == 1 and output is not None
    assert output["code"] == protocol.TRY_AGAIN_LATER
    assert output["msg"] == "the node agent did not answer within 1 s", output


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the shim as another user")
def test_no_permission_on_the_socket_is_an_io_failure(
        cni_shim: pathlib.Path, env: dict[str, str],
        peer: Callable[[Callable[[socket.socket], None]], None]) -> None:
    """The agent's socket is 0600 in a 0700 directory (agent.server): a runtime that is not
    root gets CNI error 5, which says so, rather than "try again later" forever."""
    peer(read_request)
    socket_dir = pathlib.Path(env["OVNK_SECONDARY_CNI_SOCKET"]).parent
    socket_dir.chmod(0o700)
    code, output, _ = invoke(cni_shim, env, json.dumps(CONFIG).encode(),
                             argv_prefix=("setpriv", "--reuid=65534", "--regid=65534",
                                          "--clear-groups"))
    assert code == 1 and output is not None
    assert (output["code"], output["msg"]) == (
        protocol.IO_FAILURE, f"no permission to connect to {env['OVNK_SECONDARY_CNI_SOCKET']}")
    assert "must run as root" in output["details"]
