"""The pod-networks annotation OVN-K's node side reads, and the MAC rule it relies on."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from ovnk_secondary import errors, podnetworks


def test_ipv4_mac_is_0a58_plus_address_bytes() -> None:
    assert podnetworks.mac_address(["10.100.0.5/24"]) == "0a:58:0a:64:00:05"


def test_ipv6_mac_is_0a58_plus_sha256_of_the_address_text() -> None:
    digest = hashlib.sha256(b"fd00::5").digest()[:4]  # the text as Go prints the address
    expected = "0a:58:" + ":".join(f"{b:02x}" for b in digest)
    assert podnetworks.mac_address(["fd00::5/64"]) == expected


def test_requested_mac_wins_and_ipless_mac_is_local_unicast_and_stable() -> None:
    assert podnetworks.mac_address(["10.0.0.1/24"], requested="02:AA:BB:CC:DD:EE") == (
        "02:aa:bb:cc:dd:ee")
    mac = podnetworks.mac_address([], seed="uid-1/test/nad")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01
    assert mac == podnetworks.mac_address([], seed="uid-1/test/nad")
    assert mac != podnetworks.mac_address([], seed="uid-2/test/nad")


def test_encode_decode_round_trip_in_ovnk_format() -> None:
    networks = {
        "test/nad-layer2": podnetworks.PodNetwork(
            ip_addresses=("10.100.0.5/24",), mac_address="0a:58:0a:64:00:05",
            gateway_ips=("10.100.0.1",)),
        "test/nad-localnet2": podnetworks.PodNetwork(ip_addresses=None,
                                                     mac_address="02:00:00:00:00:01"),
    }
    text = podnetworks.encode(networks)
    assert json.loads(text) == {
        "test/nad-layer2": {"ip_addresses": ["10.100.0.5/24"], "mac_address": "0a:58:0a:64:00:05",
                            "gateway_ips": ["10.100.0.1"], "role": "secondary"},
        "test/nad-localnet2": {"ip_addresses": None, "mac_address": "02:00:00:00:00:01",
                               "role": "secondary"},
    }
    assert podnetworks.decode(text) == networks


@pytest.mark.parametrize("text", ["{", "[]", '{"a/b": {"ip_addresses": ["x"], "mac_address": "m"}}',
                                  '{"a/b": {"ip_addresses": null}}',
                                  '{"a/b": {"mac_address": "m", "logical_switch_port": 7}}'])
def test_unreadable_annotations_raise_invalid_config(text: str) -> None:
    with pytest.raises(errors.InvalidConfig):
        podnetworks.decode(text)


def test_a_vms_entry_names_its_port_and_others_derive_the_pods() -> None:
    shared = podnetworks.PodNetwork(ip_addresses=("10.0.0.5/24",), mac_address="0a:58:0a:00:00:05",
                                    logical_switch_port="test.l2_test_vm_vm-a")
    text = podnetworks.encode({"test/l2": shared})
    assert json.loads(text)["test/l2"]["logical_switch_port"] == "test.l2_test_vm_vm-a"
    assert podnetworks.decode(text) == {"test/l2": shared}
    assert podnetworks.port_name("test/l2", "test", "virt-launcher-vm-a-x", shared) == \
        "test.l2_test_vm_vm-a"
    own = dataclasses.replace(shared, logical_switch_port=None)
    assert "logical_switch_port" not in json.loads(podnetworks.encode({"test/l2": own}))["test/l2"]
    assert podnetworks.port_name("test/l2", "test", "pod-1", own) == "test.l2_test_pod-1"
    assert podnetworks.port_name("test/l2", "test", "pod-1", None) == "test.l2_test_pod-1"
