"""Network selection elements in both annotation forms, as Multus users write them."""

from __future__ import annotations

import json

import hypothesis
import pytest
from hypothesis import strategies as st

from ovnk_secondary import errors, selections


def _parse(text: str | None) -> tuple[selections.NetworkSelection, ...]:
    return selections.parse(text, pod_namespace="ns1", pod_name="tinypod")


def test_text_form_with_namespaces_and_interfaces() -> None:
    parsed = _parse("test/nad-layer2@eth1, nad-localnet2")
    assert [(s.nad_key, s.interface) for s in parsed] == [
        ("test/nad-layer2", "eth1"), ("ns1/nad-localnet2", None)]
    assert selections.interface_names(parsed) == {"test/nad-layer2": "eth1",
                                                  "ns1/nad-localnet2": "net2"}


def test_json_form_with_every_field() -> None:
    parsed = _parse(json.dumps([{
        "name": "nad-layer2", "namespace": "test", "interface": "net5",
        "ips": ["192.168.10.5/24"], "mac": "0A:58:C0:A8:0A:05",
        "default-route": ["192.168.10.1"], "ipam-claim-reference": "vm-a.net5",
    }, {"name": "nad-localnet1"}]))
    first, second = parsed
    assert first == selections.NetworkSelection(
        namespace="test", name="nad-layer2", interface="net5", ips=("192.168.10.5/24",),
        mac="0a:58:c0:a8:0a:05", default_route=("192.168.10.1",),
        ipam_claim_reference="vm-a.net5")
    assert second.nad_key == "ns1/nad-localnet1"


def test_no_annotation_selects_nothing() -> None:
    assert _parse(None) == () and _parse("  ") == ()


@pytest.mark.parametrize(("text", "message"), [
    ("[{\"namespace\": \"test\"}]", "has no name"),
    ("[{\"name\": \"a\", \"mac\": \"01:00:5e:00:00:01\"}]", "multicast"),
    ("[{\"name\": \"a\", \"mac\": \"zz\"}]", "not a MAC address"),
    ("[{\"name\": \"a\", \"ips\": [\"10.0.0.1\"]}]", "needs a prefix length"),
    ("[{\"name\": \"a\", \"ips\": \"10.0.0.1/24\"}]", "must be a list of strings"),
    ("[{\"name\": \"a\", \"default-route\": [\"x\"]}]", "is not an IP address"),
    ("a@averyveryverylongname", "not a valid Linux interface name"),
    ("a,a", "selected twice"),
    ("a,b@net1", "interface net1 of NAD ns1/b \\(element 2\\) is the default name "
                 "\\(Multus'\\) of NAD ns1/a"),
    ("a@eth1,b@eth1", "is also requested by NAD ns1/a"),
    ("[{\"name\": \"a\", \"default-route\": [\"10.0.0.1\"]}, "
     "{\"name\": \"b\", \"default-route\": [\"10.0.1.1\"]}]", "default-route is set on 2"),
    ("Bad_Name", "not a valid object name"),
    ("[{\"name\": \"a\"", "not valid JSON"),
    ("[1]", "must be an object"),
])
def test_malformed_selections_say_what_to_fix(text: str, message: str) -> None:
    with pytest.raises(errors.InvalidConfig, match=message) as raised:
        _parse(text)
    assert "pod ns1/tinypod" in str(raised.value)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(text=st.text(max_size=80) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=15),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(
        st.sampled_from(["name", "namespace", "interface", "ips", "mac", "default-route"]),
        c, max_size=4),
    max_leaves=15).map(json.dumps))
def test_parser_raises_nothing_but_invalid_config(text: str) -> None:
    try:
        parsed = _parse(text)
    except errors.InvalidConfig:
        return
    assert len({s.nad_key for s in parsed}) == len(parsed)
    names = selections.interface_names(parsed)
    assert len(set(names.values())) == len(parsed), "two elements share an interface name"
    assert sum(1 for s in parsed if s.default_route) <= 1
