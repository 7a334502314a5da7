"""The `ovn-k8s-cni-overlay` CNI plugin: a shim in front of the node agent.

Multus executes it with the NAD config on stdin and the `CNI_*` variables; it validates what it
can locally (so a broken invocation fails fast even while the agent is down), forwards the
request to the node agent's unix socket and prints the agent's answer. VERSION is answered
locally. Errors are CNI error objects on stdout with exit code 1.

Overrides for tests and unusual layouts: `OVNK_SECONDARY_CNI_SOCKET` (socket path) and
`OVNK_SECONDARY_CNI_TIMEOUT` (seconds to wait for the agent's answer).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Mapping

from ovnk_secondary.cni import protocol

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is for the type checker only: it costs every invocation start-up time
    from typing import IO, Any

# OVN-K's shim gives up after 2 minutes; ours waits a little longer than the agent's default
# annotation timeout (120 s) so that the agent's own, more precise, timeout error wins.
DEFAULT_TIMEOUT = 150.0


def call_agent(socket_path: str, payload: bytes, *, timeout: float) -> dict[str, Any]:
    """Send one request to the agent and return its decoded answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(socket_path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise protocol.CniError(
                protocol.TRY_AGAIN_LATER,
                "the ovnk-secondary node agent is not running or still starting; try again later",
                f"cannot connect to {socket_path}: {exc.strerror}; check the node-agent pod "
                "on this node") from None
        except PermissionError as exc:
            raise protocol.CniError(
                protocol.IO_FAILURE, f"no permission to connect to {socket_path}",
                f"{exc.strerror}; the plugin must run as root like the agent") from None
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        raise protocol.CniError(
            protocol.TRY_AGAIN_LATER, f"the node agent did not answer within {timeout:.0f} s",
            "the agent may be overloaded; see its log; the runtime will retry") from None
    except OSError as exc:
        raise protocol.CniError(protocol.TRY_AGAIN_LATER,
                                f"lost the connection to the node agent: {exc}",
                                "the agent may have restarted; the runtime will retry") from None
    finally:
        sock.close()
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise protocol.CniError(protocol.TRY_AGAIN_LATER,
                                "the node agent closed the connection without an answer",
                                "it may have restarted; the runtime will retry") from None
    if not isinstance(answer, dict):
        raise protocol.CniError(protocol.AGENT_FAILURE, "the node agent's answer is not an object")
    return answer


def handle(env: Mapping[str, str], stdin: bytes) -> dict[str, Any] | None:
    """One invocation: returns the object to print (None for a silent success)."""
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        try:
            requested = json.loads(stdin or b"{}").get("cniVersion")
        except (ValueError, AttributeError):
            requested = None
        return protocol.version_result(requested)
    config = protocol.parse_config(stdin)
    request = protocol.request_from(env, config)
    if request.command == "CHECK" and request.cni_version == "0.3.1":
        raise protocol.CniError(protocol.INCOMPATIBLE_VERSION,
                                "CHECK is not defined for cniVersion 0.3.1",
                                "CHECK needs cniVersion 0.4.0 or later")
    socket_path = env.get("OVNK_SECONDARY_CNI_SOCKET") or protocol.DEFAULT_SOCKET
    try:
        timeout = float(env.get("OVNK_SECONDARY_CNI_TIMEOUT") or DEFAULT_TIMEOUT)
    except ValueError:
        timeout = DEFAULT_TIMEOUT
    answer = call_agent(socket_path, protocol.encode_request(env, config), timeout=timeout)
    if answer.get("error"):
        raise protocol.CniError.from_dict(answer["error"])
    result = answer.get("result")
    return result if isinstance(result, dict) else None


def run(env: Mapping[str, str], stdin: bytes, stdout: IO[str]) -> int:
    try:
        output = handle(env, stdin)
    except protocol.CniError as exc:
        version = protocol.DEFAULT_VERSION
        try:
            declared = json.loads(stdin).get("cniVersion")
            if declared in protocol.SUPPORTED_VERSIONS:
                version = declared
        except (ValueError, AttributeError):
            pass
        json.dump(exc.to_dict(version), stdout)
        stdout.write("\n")
        return 1
    if output is not None:
        json.dump(output, stdout)
        stdout.write("\n")
    return 0


def main() -> int:
    return run(os.environ, sys.stdin.buffer.read(), sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
