"""The `ovn-k8s-cni-overlay` binary, run as Multus runs it, when the agent cannot answer."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLUGIN = shutil.which("ovn-k8s-cni-overlay", path=os.path.dirname(sys.executable))
CONFIG = {"cniVersion": "0.3.1", "name": "l2-network", "type": "ovn-k8s-cni-overlay",
          "topology": "layer2", "netAttachDefName": "ns1/l2-network"}


def invoke(env: Mapping[str, str], stdin: bytes) -> tuple[int, dict[str, object] | None]:
    assert PLUGIN, "the console script ovn-k8s-cni-overlay is not installed in the venv"
    done = subprocess.run([PLUGIN], input=stdin, env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, timeout=30, check=False)
    output = json.loads(done.stdout) if done.stdout.strip() else None
    return done.returncode, output


@pytest.fixture
def env(tmp_path: pathlib.Path) -> dict[str, str]:
    return {
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/var/run/netns/x",
        "CNI_IFNAME": "net1", "CNI_PATH": "/opt/cni/bin",
        "CNI_ARGS": "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=tinypod;K8S_POD_UID=1",
        "OVNK_SECONDARY_CNI_SOCKET": str(tmp_path / "run" / "cni.sock"),
    }


def test_version_is_answered_without_the_agent(env: dict[str, str]) -> None:
    code, output = invoke(env | {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}')
    assert code == 0
    assert output == {"cniVersion": "1.0.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0"]}


def test_bad_stdin_is_invalid_config(env: dict[str, str]) -> None:
    code, output = invoke(env, b"{this is not json")
    assert code != 0
    assert output is not None and output["code"] == 7
    assert "not valid JSON" in str(output["msg"])


def test_missing_netns_is_invalid_environment(env: dict[str, str]) -> None:
    del env["CNI_NETNS"]
    code, output = invoke(env, json.dumps(CONFIG).encode())
    assert code != 0
    assert output is not None and output["code"] == 4 and "CNI_NETNS" in str(output["msg"])


def test_agent_down_is_try_again_later(env: dict[str, str]) -> None:
    code, output = invoke(env, json.dumps(CONFIG).encode())
    assert code != 0 and output is not None
    assert output == {"cniVersion": "0.3.1", "code": 11, "msg": output["msg"],
                      "details": output["details"]}
    assert "try again later" in str(output["msg"])


def test_stale_socket_without_agent_is_try_again_later(env: dict[str, str]) -> None:
    path = pathlib.Path(env["OVNK_SECONDARY_CNI_SOCKET"])
    path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: an agent that crashed
    code, output = invoke(env | {"CNI_COMMAND": "DEL"}, json.dumps(CONFIG).encode())
    assert code != 0 and output is not None and output["code"] == 11


def test_plugin_imports_stay_light() -> None:
    """The plugin runs once per pod interface: it must not load the agent's heavy libraries,
    nor (on its way to the agent) even json and socket, which cost more than the rest of it."""
    probe = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import ovnk_secondary.cni.plugin; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & "
             "{'kopf', 'kubernetes', 'ovsdbapp', 'pyroute2', 'yaml', 'netaddr', 'ovs', "
             "'typing', 'dataclasses', 'asyncio', 'json', 'socket', 'os'} | "
             "({'ovnk_secondary.cni.protocol'} & set(sys.modules))))")
    # as the installed plugin starts: isolated, without site (which would import os itself)
    done = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "[]"
