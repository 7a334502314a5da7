"""The bytes on the CNI socket between the CNI binary on the host and the node agent.

This is the one definition of the protocol. The binary that Multus executes
(`ovn-k8s-cni-overlay`, the static Go shim in `cni-shim/`) writes requests and reads answers; the
agent reads requests and writes answers with the functions below; `tests/cni/test_shim.py`
runs the real shim against them.

The shim is a fresh process for every ADD, DEL and CHECK, and a node starting many pods runs
many of them at once, so it parses nothing on the way: it forwards the runtime's `CNI_*`
variables and its stdin as they are, and prints what the agent answers as it is. The agent
validates and renders the output (`protocol`).

Request:  b"ovnk-cni/2\\n", then `NAME=VALUE\\0` for each `CNI_*` variable (in the runtime's
          order), then an empty entry (b"\\0"), then the runtime's stdin, unchanged. Environment
          strings cannot hold NUL. The shim half-closes the connection after writing.
Answer:   the shim's exit code in ASCII, b"\\n", then the shim's stdout, unchanged; the agent
          closes the connection after writing. An answer that does not start with digits and a
          newline (the agent went away) makes the shim report CNI error 11 (try again later).
"""

from __future__ import annotations

MAGIC = b"ovnk-cni/2\n"
ENCODING = "utf-8"


class MalformedRequest(ValueError):
    """The bytes are not a request of this version (shim and agent must match)."""


def decode_request(data: bytes) -> tuple[dict[str, str], bytes]:
    """(CNI_* variables, stdin) from a request; MalformedRequest when it is not one."""
    if not data.startswith(MAGIC):
        raise MalformedRequest("request does not start with " + repr(MAGIC))
    env: dict[str, str] = {}
    position = len(MAGIC)
    while True:
        end = data.find(b"\0", position)
        if end < 0:
            raise MalformedRequest("request ends inside the environment block")
        entry = data[position:end]
        position = end + 1
        if not entry:
            break
        name, sep, value = entry.partition(b"=")
        if not sep:
            raise MalformedRequest(f"environment entry {entry[:40]!r} is not NAME=VALUE")
        env[name.decode(ENCODING, "surrogateescape")] = value.decode(ENCODING, "surrogateescape")
    return env, data[position:]


def encode_answer(code: int, output: bytes) -> bytes:
    """The shim's exit code and stdout, framed."""
    return str(code).encode() + b"\n" + output
