"""The CNI protocol: validation of the runtime's request and results shaped per cniVersion."""

from __future__ import annotations

import ast
import json
import pathlib
import re

import pytest

from ovnk_secondary.cni import protocol, results, wire

ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "0123abcd",
    "CNI_NETNS": "/var/run/netns/pod",
    "CNI_IFNAME": "net1",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=tinypod;K8S_POD_UID=u-1",
    "CNI_PATH": "/opt/cni/bin",
}
RESULT = results.Result(
    interfaces=(results.Interface(name="ovk0123", mac="aa:bb:cc:dd:ee:ff"),
                results.Interface(name="net1", mac="0a:58:0a:64:00:05",
                                   sandbox="/var/run/netns/pod", mtu=1400)),
    ips=(results.IPConfig(address="10.100.0.5/24", interface=1, gateway="10.100.0.1"),
         results.IPConfig(address="fd00::5/64", interface=1)),
    routes=(results.Route(dst="0.0.0.0/0", gw="10.100.0.1"),),
)


def test_request_carries_pod_identity_from_cni_args() -> None:
    request = protocol.request_from(ENV, {"cniVersion": "1.0.0"})
    assert (request.pod_namespace, request.pod_name, request.pod_uid) == ("ns1", "tinypod", "u-1")
    assert request.interface_key == ("ns1/tinypod", "net1")
    assert request.cni_version == "1.0.0"


@pytest.mark.parametrize("missing", ["CNI_NETNS", "CNI_IFNAME", "CNI_CONTAINERID"])
def test_add_without_a_required_variable_is_code_4(missing: str) -> None:
    env = {k: v for k, v in ENV.items() if k != missing}
    with pytest.raises(protocol.CniError) as info:
        protocol.request_from(env, {})
    assert info.value.code == protocol.INVALID_ENVIRONMENT
    assert missing in info.value.msg


def test_del_without_netns_is_accepted() -> None:
    env = {k: v for k, v in ENV.items() if k != "CNI_NETNS"} | {"CNI_COMMAND": "DEL"}
    assert protocol.request_from(env, {}).netns == ""


@pytest.mark.parametrize(("key", "value"), [
    ("CNI_IFNAME", "a-very-long-interface"), ("CNI_IFNAME", "net/1"),
    ("CNI_CONTAINERID", "-bad"), ("CNI_ARGS", "K8S_POD_NAME"), ("CNI_COMMAND", "PLUG"),
    ("CNI_ARGS", "K8S_POD_NAME=p"),
])
def test_invalid_variables_are_code_4(key: str, value: str) -> None:
    with pytest.raises(protocol.CniError) as info:
        protocol.request_from(ENV | {key: value}, {})
    assert info.value.code == protocol.INVALID_ENVIRONMENT


@pytest.mark.parametrize(("stdin", "code"), [
    (b"{not json", protocol.INVALID_CONFIG), (b"[1, 2]", protocol.INVALID_CONFIG),
    (b"", protocol.INVALID_CONFIG), (b'{"cniVersion": "0.2.0"}', protocol.INCOMPATIBLE_VERSION),
])
def test_bad_config_on_stdin(stdin: bytes, code: int) -> None:
    with pytest.raises(protocol.CniError) as info:
        protocol.parse_config(stdin)
    assert info.value.code == code


def test_result_1_0_0_has_mtu_and_no_ip_version() -> None:
    shaped = results.shape_result(RESULT, "1.0.0")
    assert shaped["cniVersion"] == "1.0.0"
    assert shaped["interfaces"][1] == {"name": "net1", "mac": "0a:58:0a:64:00:05",
                                       "sandbox": "/var/run/netns/pod", "mtu": 1400}
    assert shaped["ips"][0] == {"address": "10.100.0.5/24", "gateway": "10.100.0.1",
                                "interface": 1}
    assert shaped["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.100.0.1"}]


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0"])
def test_result_0_x_has_ip_versions_and_no_mtu(version: str) -> None:
    shaped = results.shape_result(RESULT, version)
    assert shaped["cniVersion"] == version
    assert [ip["version"] for ip in shaped["ips"]] == ["4", "6"]
    assert "mtu" not in shaped["interfaces"][1]
    assert "sandbox" not in shaped["interfaces"][0]  # the host side


def test_request_decoding_and_answers() -> None:
    stdin = b'{"cniVersion": "0.3.1", "name": "n\\u00e9"}'
    request = wire.MAGIC + b"".join(f"{k}={v}".encode() + b"\0" for k, v in ENV.items())
    env, forwarded = protocol.unpack_request(request + b"\0" + stdin)
    assert env == ENV and forwarded == stdin
    assert protocol.validate(env, forwarded).pod_name == "tinypod"
    for garbage in (b"garbage", wire.MAGIC + b"CNI_COMMAND=ADD", wire.MAGIC + b"NOEQUALS\0\0"):
        with pytest.raises(protocol.CniError) as info:
            protocol.unpack_request(garbage)
        assert info.value.code == protocol.DECODE_FAILURE
    code, _, output = protocol.answer(error=protocol.CniError(11, "later", "why"),
                                      cni_version="1.0.0").partition(b"\n")
    assert code == b"1"
    assert json.loads(output) == {"cniVersion": "1.0.0", "code": 11, "msg": "later",
                                  "details": "why"}
    assert protocol.answer(result=None) == b"0\n"


REPO = pathlib.Path(__file__).resolve().parents[2]


def _codes_returned() -> dict[int, list[str]]:
    """code -> where: every `CniError(protocol.X, ...)` of the node agent (the shim's own two,
    5 and 11, are in tests/cni/test_shim.py)."""
    found: dict[int, list[str]] = {}
    for package in ("agent", "cni"):
        for path in sorted((REPO / "ovnk_secondary" / package).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.Call) and node.args and ast.unparse(node.func)
                        in ("CniError", "protocol.CniError")):
                    continue
                name = ast.unparse(node.args[0]).removeprefix("protocol.")
                code = getattr(protocol, name)
                found.setdefault(code, []).append(f"{path.name}:{node.lineno}")
    return found


def _codes_documented() -> set[int]:
    """The codes of the error table in the README's "CNI plugin and node agent" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## CNI plugin and node agent", 1)[1].split("\n## ", 1)[0]
    return {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}


def test_every_error_code_the_plugin_and_agent_return_is_in_the_readme() -> None:
    returned = _codes_returned()
    assert {protocol.INVALID_CONFIG, protocol.AGENT_FAILURE} <= set(returned)  # the scan works
    undocumented = {code: where for code, where in returned.items()
                    if code not in _codes_documented()}
    assert not undocumented, f"add these codes to the README's table: {undocumented}"
