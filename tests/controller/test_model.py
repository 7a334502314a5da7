"""The controller's model: pod and NAD records from API bodies, and the facts derived from them.

The property that a port name maps back to exactly one pod (`model.pod_of_port`) is in
`test_identity.py`, with the other identity properties.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ovnk_secondary import migration, nads, persistentips, selections
from ovnk_secondary.controller import model
from ovnk_secondary.northbound import desired


def _body(**metadata: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "p", "uid": "u1", **metadata},
            "spec": {"nodeName": "node-1"}, "status": {"phase": "Running"}}


def _nad(config: dict[str, Any] | str, **annotations: str) -> dict[str, Any]:
    text = config if isinstance(config, str) else json.dumps(config)
    return {"metadata": {"namespace": "ns", "name": "n", "annotations": annotations},
            "spec": {"config": text}}


LAYER2: dict[str, Any] = {"cniVersion": "0.3.1", "type": "ovn-k8s-cni-overlay", "name": "blue",
          "topology": "layer2", "netAttachDefName": "ns/n", "subnets": "10.1.0.0/24"}


def test_a_plain_pod_keeps_no_vm_facts_and_labels_only_when_it_names_networks() -> None:
    plain = model.pod(_body(labels={"app": "x"}))
    assert (plain.key, plain.node, plain.live, plain.vm) == (("ns", "p"), "node-1", True, None)
    assert plain.labels == ()  # names no network: policies never select it
    assert model.vm_group(plain) is None
    selecting = model.pod(_body(labels={"b": "2", "a": "1"},
                                annotations={selections.ANNOTATION: "ns/n"}))
    assert selecting.labels == (("a", "1"), ("b", "2"))


def test_a_vm_pods_migration_facts_come_from_its_label_annotation_and_condition() -> None:
    body = _body(labels={persistentips.VM_LABEL: "vm-a"}, creationTimestamp="2026-12-02T00:00:00Z",
                 annotations={migration.TARGET_READY: "2026-12-02T00:00:01Z"},
                 deletionTimestamp="2026-12-02T00:00:02Z")
    body["status"]["conditions"] = [{"type": migration.SANDBOX_READY, "status": "True"}]
    pod = model.pod(body)
    assert (pod.vm, pod.created, pod.target_ready, pod.sandbox_up) == (
        "vm-a", "2026-12-02T00:00:00Z", True, True)
    assert not pod.live and pod.departing  # being deleted, its sandbox still up
    assert model.migration_facts(pod) == (False, True, True, "2026-12-02T00:00:00Z")
    assert model.vm_group(pod) == migration.Vm("ns", "vm-a")
    body["status"]["conditions"] = [{"type": migration.SANDBOX_READY, "status": "False"}]
    assert not model.pod(body).departing


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_a_finished_pod_is_neither_live_nor_departing_without_its_sandbox(phase: str) -> None:
    body = _body()
    body["status"]["phase"] = phase
    pod = model.pod(body)
    assert pod.finished and not pod.live and not pod.departing


def test_an_unscheduled_pod_and_a_bare_deletion_are_not_live() -> None:
    assert not model.pod({"metadata": {"namespace": "ns", "name": "p", "uid": "u"}}).live
    assert model.pod({}).key == ("", "")


def test_a_pod_is_an_events_involved_object_and_a_claims_user_by_uid() -> None:
    pod = model.pod(_body(labels={persistentips.VM_LABEL: "vm-a"}))
    assert pod.involved()["metadata"] == {"namespace": "ns", "name": "p", "uid": "u1"}
    assert pod.user() == persistentips.User(namespace="ns", name="p", uid="u1", vm="vm-a")


def test_nad_keys_and_bodies_split_into_namespace_and_name() -> None:
    assert model.split_nad_key("ns/a.b-c") == ("ns", "a.b-c")
    assert model.key_of({"metadata": {"namespace": "ns", "name": "n"}}) == ("ns", "n")
    assert model.key_of({}) == ("", "")


def test_a_nads_network_name_is_none_when_it_is_invalid_or_not_ours() -> None:
    assert model.network_name(_nad(LAYER2)) == "blue"
    assert model.network_name(_nad("{not json")) is None
    assert model.network_name(_nad({**LAYER2, "type": "bridge"})) is None


def test_the_accepted_and_spec_config_texts_are_strings_or_none() -> None:
    body = _nad(LAYER2, **{model.ACCEPTED_CONFIG: "text"})
    assert model.accepted_text(body) == "text"
    assert model.spec_config(body) == json.dumps(LAYER2)
    assert model.accepted_text(_nad(LAYER2)) is None
    assert model.spec_config({"spec": {"config": {"a": 1}}}) is None
    assert model.spec_config({"spec": "nonsense"}) is None


def test_only_the_identity_fields_make_an_identity_change() -> None:
    old = nads.parse_nad(_nad(LAYER2))
    assert old is not None
    cases: list[tuple[dict[str, Any], bool]] = [
        ({"mtu": 1300}, False), ({"subnets": "10.2.0.0/24"}, True), ({"name": "green"}, True),
        ({"excludeSubnets": "10.1.0.1/32"}, True)]
    for changed, identity in cases:
        new = nads.parse_nad(_nad({**LAYER2, **changed}))
        assert new is not None
        assert model.identity_changed(old, new) is identity, changed


def test_a_nad_is_applied_only_with_a_config_and_no_problem() -> None:
    config = nads.parse_nad(_nad(LAYER2))
    assert model.Nad(body={}, config=config).applied
    assert not model.Nad(body={}, config=config, problem="refused").applied
    assert not model.Nad(body={}, config=None).applied


def test_a_fingerprint_tells_written_rows_apart() -> None:
    config = nads.parse_nad(_nad(LAYER2))
    assert config is not None
    one = desired.network_state(config)
    assert model.fingerprint(one) == model.fingerprint(desired.network_state(config))
    changed = nads.parse_nad(_nad({**LAYER2, "subnets": "10.2.0.0/24"}))
    assert changed is not None
    other = desired.network_state(changed)
    assert model.fingerprint(one) != model.fingerprint(other)
    assert len(model.fingerprint(one)) == 16
