"""NAD configs: what users write is accepted as OVN-K does, and mistakes are explained."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import hypothesis
import netaddr
import pytest
from hypothesis import strategies as st

from ovnk_secondary import errors, nads, naming


def _config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "cniVersion": "0.3.1", "name": "l2-network", "type": "ovn-k8s-cni-overlay",
        "topology": "layer2", "netAttachDefName": "test/nad-layer2",
    }
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


def test_reference_layer2_nad() -> None:
    config = nads.parse_config(_config(), nad_key="test/nad-layer2")
    assert config == nads.NetworkConfig(name="l2-network", topology="layer2",
                                        nad_key="test/nad-layer2")
    assert not config.has_ipam and config.effective_mtu == 1400


def test_reference_localnet_nad_with_vlan() -> None:
    config = nads.parse_config(
        _config(name="localnet2", topology="localnet", vlanID=33,
                netAttachDefName="test/nad-localnet2"),
        nad_key="test/nad-localnet2",
    )
    assert config is not None
    assert (config.topology, config.vlan_id, config.physical_network) == (
        naming.LOCALNET, 33, "localnet2")


def test_full_config_with_subnets_and_excludes() -> None:
    config = nads.parse_config(_config(
        subnets="10.100.0.0/24, fd00:100::/64", excludeSubnets="10.100.0.0/29,10.100.0.200",
        mtu=1300, allowPersistentIPs=True, role="secondary",
    ))
    assert config is not None
    assert config.subnets == (netaddr.IPNetwork("10.100.0.0/24"),
                              netaddr.IPNetwork("fd00:100::/64"))
    assert config.exclude_subnets == (netaddr.IPNetwork("10.100.0.0/29"),
                                      netaddr.IPNetwork("10.100.0.200/32"))
    assert config.mtu == 1300 and config.allow_persistent_ips


def test_subnet_with_host_bits_is_normalised() -> None:
    config = nads.parse_config(_config(subnets="10.100.0.7/24"))
    assert config is not None and config.subnets == (netaddr.IPNetwork("10.100.0.0/24"),)


def test_other_cni_types_are_not_ours() -> None:
    assert nads.parse_config({"type": "macvlan", "name": "x"}) is None
    assert nads.parse_config({"name": "x", "plugins": [{"type": "bridge"}]}) is None


def test_conflist_with_one_plugin_takes_the_conflist_name() -> None:
    plugin = _config()
    del plugin["name"]
    config = nads.parse_config({"cniVersion": "0.4.0", "name": "l2-network", "plugins": [plugin]})
    assert config is not None and config.name == "l2-network" and config.cni_version == "0.4.0"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"topology": "layer3"}, "topology 'layer3' is not supported"),
    ({"topology": None}, "topology is required"),
    ({"name": "default"}, "reserved"),
    ({"netAttachDefName": "other/nad"}, "must equal 'test/nad-layer2'"),
    ({"netAttachDefName": None}, "netAttachDefName is required"),
    ({"subnets": "10.0.0.0/33"}, "is not a CIDR"),
    ({"subnets": "10.0.0.0/24,10.0.0.128/25"}, "overlap"),
    ({"subnets": "10.0.0.0/24", "excludeSubnets": "10.1.0.0/29"}, "not inside any of the subnets"),
    ({"excludeSubnets": "10.1.0.0/29"}, "excludeSubnets needs subnets"),
    ({"vlanID": 33}, "vlanID is only valid with topology localnet"),
    ({"topology": "localnet", "vlanID": 5000},
     "vlanID 5000 out of range 1-4094 in NAD test/nad-layer2"),
    ({"topology": "localnet", "vlanID": "33"}, "vlanID must be an integer"),
    ({"mtu": 100}, "mtu 100 out of range"),
    ({"mtu": True}, "mtu must be an integer"),
    ({"ipam": {"type": "whereabouts"}}, "ipam key is not supported"),
    ({"role": "primary"}, "role 'primary' is not supported"),
    ({"allowPersistentIPs": "yes"}, "allowPersistentIPs must be true or false"),
    ({"physicalNetworkName": "physnet"},
     "physicalNetworkName is only valid with topology localnet"),
])
def test_invalid_configs_say_what_to_fix(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(errors.InvalidConfig, match=message.replace("(", r"\(")):
        nads.parse_config(_config(**overrides), nad_key="test/nad-layer2")


def test_what_is_accepted_but_not_acted_on_is_listed() -> None:
    """Nothing accepted and silently ignored: keys we do not read (OVN-K's layer3 fields, typos)
    are named for a Warning Event; allowPersistentIPs is acted on (IPAMClaims), not listed."""
    plain = nads.parse_config(_config(subnets="10.1.0.0/24"), nad_key="test/nad-layer2")
    assert plain is not None and plain.ignored == ()
    config = nads.parse_config(_config(subnets="10.1.0.0/24", allowPersistentIPs=True,
                                       joinSubnet="100.65.0.0/16", vlanid=5),
                               nad_key="test/nad-layer2")
    assert config is not None and len(config.ignored) == 1
    assert config.ignored[0].startswith("joinSubnet, vlanid: not known to ovnk-secondary")
    assert config == plain.__class__(**{**plain.__dict__, "allow_persistent_ips": True})


def test_chained_conflist_is_refused() -> None:
    with pytest.raises(errors.InvalidConfig, match="exactly one plugin"):
        nads.parse_config({"name": "n", "plugins": [_config(), {"type": "tuning"}]})


def test_parse_nad_reads_spec_config_and_checks_the_nad_key() -> None:
    body = {"metadata": {"namespace": "test", "name": "nad-layer2"},
            "spec": {"config": json.dumps(_config())}}
    config = nads.parse_nad(body)
    assert config is not None and config.nad_key == "test/nad-layer2"
    body["spec"]["config"] = "{not json"
    with pytest.raises(errors.InvalidConfig,
                       match=r"spec\.config is not valid JSON.*in NAD test/nad-layer2"):
        nads.parse_nad(body)


def test_disagreeing_nads_of_one_network_are_detected() -> None:
    first = nads.parse_config(_config(subnets="10.0.0.0/24"))
    second = nads.parse_config(_config(subnets="10.0.1.0/24", netAttachDefName="other/nad"))
    same = nads.parse_config(_config(subnets="10.0.0.0/24", netAttachDefName="other/nad"))
    assert first is not None and second is not None and same is not None
    assert nads.disagreements(first, second) == ["subnets"]
    assert nads.disagreements(first, same) == []


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10),
                                                                      children, max_size=4),
    max_leaves=20,
)
_field_values = {
    "name": st.text(max_size=12) | _json,
    "topology": st.sampled_from(["layer2", "localnet", "layer3", ""]) | _json,
    "netAttachDefName": st.sampled_from(["test/nad", "test/", "a/b/c"]) | _json,
    "subnets": st.sampled_from(["10.0.0.0/24", "fd00::/64,10.0.0.0/8", "1", "10.0.0.0/24,"])
    | st.text(max_size=30) | _json,
    "excludeSubnets": st.sampled_from(["10.0.0.0/30", "10.0.0.1", "::1"]) | st.text(max_size=20),
    "mtu": st.integers(-10, 70000) | _json,
    "vlanID": st.integers(-10, 5000) | _json,
    "physicalNetworkName": _json,
    "allowPersistentIPs": _json,
    "role": _json,
    "plugins": _json,
}


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(
    fields=st.dictionaries(st.sampled_from(sorted(_field_values)), st.just(None), max_size=8)
    .flatmap(lambda keys: st.fixed_dictionaries({k: _field_values[k] for k in keys})),
    ours=st.booleans(),
)
def test_parser_raises_nothing_but_invalid_config(fields: dict[str, Any], ours: bool) -> None:
    config = {"type": "ovn-k8s-cni-overlay"} if ours else {}
    config.update(fields)
    try:
        result = nads.parse_config(config, nad_key="test/nad")
    except errors.InvalidConfig as exc:
        assert str(exc)
    else:
        assert result is None or result.topology in ("layer2", "localnet")


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(text=st.text(max_size=60) | _json.map(json.dumps))
def test_parse_nad_raises_nothing_but_invalid_config(text: str) -> None:
    with contextlib.suppress(errors.InvalidConfig):
        nads.parse_nad({"metadata": {"namespace": "a", "name": "b"}, "spec": {"config": text}})
