"""The CNI protocol as the node agent speaks it (CNI spec 1.0, SPEC.md; 0.3.1 and 0.4.0 too).

Pure values:
- the CNI request as a runtime (Multus) hands it to the CNI binary: `CNI_*` environment
  variables and the network config on stdin, validated into a `Request`;
- what the agent answers on the unix socket: the binary's exit code and stdout, rendered here
  (the framing is in `wire`: the shim forwards and prints bytes without parsing them);
- CNI error objects (results live in `results`).

The shim (`cni-shim/`) answers VERSION and "agent unreachable" (code 11) by itself; its list of
versions is SUPPORTED_VERSIONS (tests/cni/test_shim.py holds them equal).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ovnk_secondary.cni import wire

SUPPORTED_VERSIONS = ("0.3.1", "0.4.0", "1.0.0")
DEFAULT_VERSION = "0.3.1"  # what OVN-K's NADs in the wild declare (and the reference scenario)
DEFAULT_SOCKET = "/var/run/ovnk-secondary/cni.sock"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")

# Well-known error codes of the CNI spec (1-99 are reserved for the spec).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
# Ours (the spec leaves 100 and up to plugins); the README's table says what to do for each.
ANNOTATION_TIMEOUT = 100
BINDING_TIMEOUT = 101
CHECK_FAILED = 102
AGENT_FAILURE = 103
INTERFACE_IN_USE = 104  # CNI_IFNAME or the logical switch port is another attachment's
UNMAPPED_PHYSICAL_NETWORK = 105  # a localnet NAD's physical network has no bridge on the node

# CNI spec: container ids are alphanumerics plus `_ . -`; interface names follow the kernel.
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_MAX_IFNAME = 15


class CniError(Exception):
    """A failure that the plugin reports to the runtime as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str = DEFAULT_VERSION) -> dict[str, Any]:
        body: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            body["details"] = self.details
        return body

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> CniError:
        return cls(int(body.get("code", AGENT_FAILURE)), str(body.get("msg", "")),
                   str(body.get("details", "")))


class Request:
    """One CNI invocation: the runtime's environment and the network config, validated.

    A plain class rather than a dataclass: the plugin imports this module on every invocation
    and `dataclasses` (with `inspect`) costs more start-up time than the rest of the plugin.
    """

    __slots__ = ("args", "command", "config", "container_id", "ifname", "netns", "path")

    def __init__(self, *, command: str, container_id: str, netns: str, ifname: str,
                 args: Mapping[str, str], path: str, config: Mapping[str, Any]) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns  # may be empty on DEL: the sandbox can already be gone
        self.ifname = ifname
        self.args = args  # CNI_ARGS, e.g. K8S_POD_NAMESPACE
        self.path = path
        self.config = config

    def __repr__(self) -> str:
        return (f"Request({self.command} {self.container_id} {self.ifname} "
                f"{self.pod_namespace}/{self.pod_name})")

    @property
    def cni_version(self) -> str:
        return str(self.config.get("cniVersion") or DEFAULT_VERSION)

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")

    @property
    def pod_uid(self) -> str:
        return self.args.get("K8S_POD_UID", "")

    @property
    def interface_key(self) -> tuple[str, str]:
        """What two requests must share to be serialised: the pod (or sandbox) and interface."""
        pod = f"{self.pod_namespace}/{self.pod_name}" if self.pod_name else self.container_id
        return (pod, self.ifname)


def parse_cni_args(text: str) -> dict[str, str]:
    """`K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p` -> dict; entries without `=` are refused."""
    parsed: dict[str, str] = {}
    for item in text.split(";"):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS entry {item!r} is not KEY=VALUE",
                           "CNI_ARGS must be a ;-separated list of KEY=VALUE pairs")
        parsed[key.strip()] = value.strip()
    return parsed


def parse_config(stdin: bytes | str) -> dict[str, Any]:
    """The network config the runtime wrote on stdin: a JSON object with a supported version."""
    try:
        config = json.loads(stdin or b"")
    except ValueError as exc:
        raise CniError(INVALID_CONFIG, "network config on stdin is not valid JSON",
                       f"{exc}; the runtime must pass the NAD's spec.config on stdin") from None
    if not isinstance(config, dict):
        raise CniError(INVALID_CONFIG, "network config on stdin is not a JSON object",
                       f"got {type(config).__name__}; pass the NAD's spec.config on stdin")
    version = config.get("cniVersion") or DEFAULT_VERSION
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported",
                       f"use one of {', '.join(SUPPORTED_VERSIONS)} in the NAD config")
    return config


def request_from(env: Mapping[str, str], config: Mapping[str, Any]) -> Request:
    """Validate the `CNI_*` variables for the command they carry (DEL is the most lenient)."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not one of "
                       f"{', '.join(COMMANDS)}", "set CNI_COMMAND as the CNI spec requires")
    required = ["CNI_CONTAINERID", "CNI_IFNAME"]
    if command in ("ADD", "CHECK"):
        required.append("CNI_NETNS")
    missing = [name for name in required if not env.get(name)]
    if missing:
        raise CniError(INVALID_ENVIRONMENT,
                       f"missing environment variable(s) {', '.join(missing)} for {command}",
                       "the runtime must set them (CNI spec, section 'Parameters')")
    container_id = env["CNI_CONTAINERID"]
    if not _CONTAINER_ID.match(container_id):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_CONTAINERID {container_id!r} is not valid",
                       "it must start with an alphanumeric and hold only alphanumerics, _ . -")
    ifname = env["CNI_IFNAME"]
    if (len(ifname) > _MAX_IFNAME or ifname in (".", "..")
            or any(c in ifname for c in "/: \t\n")):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {ifname!r} is not a valid interface name",
                       f"at most {_MAX_IFNAME} characters, no '/', ':' or whitespace")
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    if command in ("ADD", "CHECK"):
        absent = [k for k in ("K8S_POD_NAMESPACE", "K8S_POD_NAME") if not args.get(k)]
        if absent:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS lacks {', '.join(absent)}",
                           "Multus sets K8S_POD_NAMESPACE and K8S_POD_NAME; pass them in CNI_ARGS")
    return Request(command=command, container_id=container_id, netns=env.get("CNI_NETNS", ""),
                   ifname=ifname, args=args, path=env.get("CNI_PATH", ""), config=dict(config))


def validate(env: Mapping[str, str], stdin: bytes | str) -> Request:
    """Everything the spec lets a plugin refuse up front, in the order the errors matter."""
    request = request_from(env, parse_config(stdin))
    if request.command == "CHECK" and request.cni_version == "0.3.1":
        raise CniError(INCOMPATIBLE_VERSION, "CHECK is not defined for cniVersion 0.3.1",
                       "CHECK needs cniVersion 0.4.0 or later")
    return request


def declared_version(stdin: bytes | str, *, default: bool = False) -> str | None:
    """The config's `cniVersion` if it is one we speak; else DEFAULT_VERSION (or None)."""
    try:
        declared = json.loads(stdin or b"{}").get("cniVersion")
    except (ValueError, AttributeError):
        declared = None
    if declared in SUPPORTED_VERSIONS:
        return str(declared)
    return DEFAULT_VERSION if default else None


# --- the socket (framing in `wire`) ----------------------------------------------------------

def unpack_request(data: bytes) -> tuple[dict[str, str], bytes]:
    """(CNI_* variables, stdin) as the plugin forwarded them."""
    try:
        return wire.decode_request(data)
    except wire.MalformedRequest as exc:
        raise CniError(DECODE_FAILURE, "the agent received a malformed request",
                       f"{exc}; the plugin and the agent must be the same ovnk-secondary "
                       "version") from None


def render_result(result: Mapping[str, Any] | None) -> bytes:
    """The plugin's stdout for a success (nothing for DEL)."""
    return b"" if result is None else json.dumps(result).encode() + b"\n"


def render_error(error: CniError, cni_version: str | None = DEFAULT_VERSION) -> bytes:
    """The plugin's stdout for a failure: a CNI error object."""
    return json.dumps(error.to_dict(cni_version or DEFAULT_VERSION)).encode() + b"\n"


def answer(*, result: Mapping[str, Any] | None = None, error: CniError | None = None,
           cni_version: str = DEFAULT_VERSION) -> bytes:
    """What the agent sends back: the shim's exit code and stdout, ready to print."""
    if error is not None:
        return wire.encode_answer(1, render_error(error, cni_version))
    return wire.encode_answer(0, render_result(result))
