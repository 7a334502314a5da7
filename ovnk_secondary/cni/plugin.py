"""The `ovn-k8s-cni-overlay` CNI plugin: a shim in front of the node agent.

Multus executes it with the NAD config on stdin and the `CNI_*` variables. It forwards them to
the node agent's unix socket untouched and prints the agent's answer untouched (see `wire`):
the agent validates and renders, so the plugin's own work is a process start and one round trip.
Many pods starting at once run many plugins at once, and every millisecond of their start-up is
CPU the agent, OVS and ovn-controller do not get: the path to the agent imports nothing beyond
`wire`. Only when the agent cannot be reached does the plugin load `protocol` and validate
locally, so that a broken invocation still gets its precise error (code 4, 7) rather than "try
again later" (11). VERSION is answered locally. Errors are CNI error objects on stdout with exit
code 1.

Overrides for tests and unusual layouts: `OVNK_SECONDARY_CNI_SOCKET` (socket path) and
`OVNK_SECONDARY_CNI_TIMEOUT` (seconds to wait for the agent's answer).
"""

import posix  # built in; `os` would also load stat, posixpath and _collections_abc
import sys

from ovnk_secondary.cni import wire

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is for the type checker only: it costs every invocation start-up time
    from collections.abc import Mapping
    from typing import IO

DEFAULT_SOCKET = "/var/run/ovnk-secondary/cni.sock"  # protocol.DEFAULT_SOCKET, without its imports
# OVN-K's shim gives up after 2 minutes; ours waits a little longer than the agent's default
# annotation timeout (120 s) so that the agent's own, more precise, timeout error wins.
DEFAULT_TIMEOUT = 150.0


def _timeout(env: "Mapping[str, str]") -> float:
    try:
        return float(env.get("OVNK_SECONDARY_CNI_TIMEOUT") or DEFAULT_TIMEOUT)
    except ValueError:
        return DEFAULT_TIMEOUT


def run(env: "Mapping[str, str]", environb: "Mapping[bytes, bytes]", stdin: bytes,
        stdout: "IO[bytes]") -> int:
    """One invocation: the agent's answer, or the plugin's own (VERSION, agent unreachable)."""
    if env.get("CNI_COMMAND") == "VERSION":
        return _local(env, stdin, stdout)
    path = env.get("OVNK_SECONDARY_CNI_SOCKET") or DEFAULT_SOCKET
    failure: BaseException | None
    try:
        answer = wire.decode_answer(
            wire.call(path, wire.encode_request(environb, stdin), timeout=_timeout(env)))
    except (wire.ConnectFailed, OSError) as exc:  # OSError includes TimeoutError
        failure = exc
    else:
        if answer is not None:
            code, output = answer
            stdout.write(output)
            return code
        failure = None  # the agent closed the connection without answering
    return _local(env, stdin, stdout, failure=failure, path=path)


def _local(env: "Mapping[str, str]", stdin: bytes, stdout: "IO[bytes]", *,
           failure: BaseException | None = None, path: str = "") -> int:
    """What the plugin answers by itself: VERSION, or why the agent did not answer.

    A broken invocation gets its precise error (missing variables, invalid config) first, as
    the agent would have answered it.
    """
    from ovnk_secondary.cni import protocol  # only off the fast path: it imports json and re

    try:
        if env.get("CNI_COMMAND") == "VERSION":
            output = protocol.version_result(protocol.declared_version(stdin))
        else:
            protocol.validate(env, stdin)
            raise protocol.unavailable_error(failure, path=path, timeout=_timeout(env))
    except protocol.CniError as exc:
        stdout.write(protocol.render_error(exc, protocol.declared_version(stdin, default=True)))
        return 1
    stdout.write(protocol.render_result(output))
    return 0


def main() -> int:
    environb = posix.environ  # bytes, as os.environb; decoded as os.environ decodes it
    env = {name.decode(wire.ENCODING, "surrogateescape"): value.decode(wire.ENCODING,
                                                                      "surrogateescape")
           for name, value in environb.items()}
    return run(env, environb, sys.stdin.buffer.read(), sys.stdout.buffer)


if __name__ == "__main__":
    sys.exit(main())
