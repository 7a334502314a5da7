"""The CNI socket: the real CNI binary (the shim) against the real server, with a recording
handler.

The handler stands in for the attachments (tested against OVN in the sandbox); here what is
under test is the socket's permissions, the result/error round trip and the per-interface
serialisation.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import stat
from typing import Any

from ovnk_secondary.agent import server
from ovnk_secondary.cni import protocol, results

CONFIG = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "ovn-k8s-cni-overlay"})


async def invoke(shim: pathlib.Path, sock: str, *, pod: str, ifname: str = "net1",
                 command: str = "ADD") -> tuple[int, Any]:
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": f"c-{pod}",
           "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": ifname,
           "CNI_ARGS": f"K8S_POD_NAMESPACE=ns;K8S_POD_NAME={pod}",
           "OVNK_SECONDARY_CNI_SOCKET": sock}
    proc = await asyncio.create_subprocess_exec(shim, env=env, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate(CONFIG.encode())
    return proc.returncode or 0, json.loads(out) if out.strip() else None


async def test_results_errors_and_serialisation(tmp_path: pathlib.Path,
                                                cni_shim: pathlib.Path) -> None:
    active: dict[tuple[str, str], int] = {}
    overlaps: list[tuple[str, str]] = []
    concurrent_pods: set[int] = set()

    async def handler(request: protocol.Request) -> dict[str, Any] | None:
        key = request.interface_key
        active[key] = active.get(key, 0) + 1
        if active[key] > 1:
            overlaps.append(key)
        concurrent_pods.add(sum(1 for v in active.values() if v))
        await asyncio.sleep(0.2)
        active[key] -= 1
        if request.pod_name == "broken":
            raise protocol.CniError(protocol.BINDING_TIMEOUT, "timed out waiting for OVS port "
                                    "binding", "details")
        result = results.Result(interfaces=(results.Interface(name=request.ifname, mac="m"),))
        return results.shape_result(result, request.cni_version)

    sock = str(tmp_path / "run" / "cni.sock")
    cni = server.CniServer(path=sock, handler=handler)
    await cni.start()
    try:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode) == 0o700
        answers = await asyncio.gather(*(
            invoke(cni_shim, sock, pod=pod, command=command)
            for pod, command in (("a", "ADD"), ("a", "ADD"), ("a", "DEL"), ("b", "ADD"),
                                 ("c", "ADD"), ("broken", "ADD"))))
    finally:
        await cni.close()
    assert answers[0] == (0, {"cniVersion": "1.0.0", "interfaces": [{"name": "net1", "mac": "m"}],
                              "ips": [], "routes": [], "dns": {}})
    assert answers[5] == (1, {"cniVersion": "1.0.0", "code": 101,
                              "msg": "timed out waiting for OVS port binding",
                              "details": "details"})
    assert overlaps == []  # same pod interface: one at a time
    assert max(concurrent_pods) >= 3  # different pods: at the same time
    assert len(cni.locks) == 0  # no lock left behind
    assert not os.path.exists(sock)
