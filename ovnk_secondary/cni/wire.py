"""The bytes on the CNI socket between the plugin and the node agent.

The plugin is a fresh process for every ADD, DEL and CHECK, and a node starting many pods runs
many of them at once: its start-up time is CPU that the node agent, OVS and ovn-controller do not
get. So the plugin does not parse anything on the way to the agent: it forwards the runtime's
`CNI_*` variables and its stdin as they are, and prints what the agent answers as it is. The agent
validates (with the same functions the plugin uses when the agent is down) and renders the
output. This module imports nothing: `json`, `re` and `socket` (through `enum`) cost more
start-up time than the rest of the plugin together, and the C-level `_socket` does the job.

Request:  b"ovnk-cni/2\\n", then `NAME=VALUE\\0` for each `CNI_*` variable, then an empty entry
          (b"\\0"), then the runtime's stdin, unchanged. Environment strings cannot hold NUL.
Answer:   the plugin's exit code in ASCII, b"\\n", then the plugin's stdout, unchanged.
Each side half-closes (or closes) the connection after writing.
"""

import _socket

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time and is needed by the type checker only
    from collections.abc import Mapping

MAGIC = b"ovnk-cni/2\n"
PREFIX = b"CNI_"
ENCODING = "utf-8"


class MalformedRequest(ValueError):
    """The bytes are not a request of this version (plugin and agent must match)."""


class ConnectFailed(Exception):
    """Nobody answers on the socket (the agent is down or starting); `error` says why."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def encode_request(environ: "Mapping[bytes, bytes]", stdin: bytes) -> bytes:
    """The runtime's `CNI_*` variables (from `os.environb`) and stdin as one request."""
    parts = [MAGIC]
    for name, value in environ.items():
        if name.startswith(PREFIX):
            parts += (name, b"=", value, b"\0")
    parts += (b"\0", stdin)
    return b"".join(parts)


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
    return str(code).encode() + b"\n" + output


def decode_answer(data: bytes) -> tuple[int, bytes] | None:
    """(exit code, stdout) from an answer; None when there is none (the agent went away)."""
    head, sep, output = data.partition(b"\n")
    if not sep or not head.isdigit():
        return None
    return int(head), output


def call(path: str, request: bytes, *, timeout: float) -> bytes:
    """One round trip on the agent's unix socket.

    ConnectFailed when nobody listens; later failures (TimeoutError, a reset) as OSError.
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise ConnectFailed(exc) from None
        sock.sendall(request)
        sock.shutdown(_socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()
