"""Persistent IPs end to end: IPAMClaims in the real API server, pods' addresses and ports in a
real NB. Pools are small (/29, /30), so that an address a claim should keep but does not is the
next one handed out, and shows."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import kubernetes
import pytest

from ovnk_secondary import persistentips
from ovnk_secondary.northbound import servers
from tests import kube
from tests.controller.harness import Api, Controller, ports, until

NS = "vms"


def _networks(nad: str, claim: str | None) -> str:
    element: dict[str, Any] = {"name": nad}
    if claim is not None:
        element["ipam-claim-reference"] = claim
    return json.dumps([element])


def _pod(api: Api, name: str, *, claim: str | None, vm: str | None = None,
         nad: str = "vmnet") -> str:
    """A pod (a VM's virt-launcher pod when `vm`) on `nad`; returns its uid."""
    created = api.create_pod(NS, name, _networks(nad, claim),
                             labels={persistentips.VM_LABEL: vm} if vm else None)
    return str(created["metadata"]["uid"])


def _entry(api: Api, name: str, nad: str = "vmnet") -> dict[str, Any]:
    entry: dict[str, Any] = until(
        lambda: (api.pod_networks(NS, name) or {}).get(f"{NS}/{nad}"),
        f"pod {name} got nothing on NAD {nad}")
    return entry


def _events(api: Api, name: str, reason: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = until(
        lambda: [e for e in api.events(name) if e["reason"] == reason],
        f"no {reason} Event on {name}")
    assert all(e["type"] == "Warning" for e in events)
    return events


def _status(api: Api, claim: str) -> dict[str, Any]:
    return (api.claim(NS, claim) or {}).get("status") or {}


def _port(nb: servers.NbServer, pod: str, nad: str = "vmnet") -> str:
    name = f"{NS}.{nad}_{NS}_{pod}"
    until(lambda: name in ports(nb), f"no port {name}")
    return nb.nbctl("lsp-get-addresses", name).strip()


def _vmnet(api: Api, subnets: str, **config: Any) -> None:
    api.create_nad(NS, "vmnet", name="vmnet", topology="layer2", subnets=subnets,
                   allowPersistentIPs=True, **config)


def test_the_first_pod_gets_new_ips_and_the_claim_records_them(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    _vmnet(api, "10.60.0.0/29")
    api.create_claim(NS, "vm-a.vmnet", "vmnet")
    _pod(api, "launcher-a", claim="vm-a.vmnet", vm="vm-a")
    entry = _entry(api, "launcher-a")
    assert entry["ip_addresses"] == ["10.60.0.1/29"]
    assert entry["mac_address"] == "0a:58:0a:3c:00:01"  # derived from the IP
    status = _status(api, "vm-a.vmnet")
    assert status == {"ips": ["10.60.0.1/29"], "ownerPod": "launcher-a"}
    assert _port(nb_server, "launcher-a") == "0a:58:0a:3c:00:01 10.60.0.1"


def test_a_claims_ips_outlive_its_pod_and_go_back_only_with_the_claim(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    _vmnet(api, "10.61.0.0/30")  # two addresses: .1 and .2
    api.create_claim(NS, "vm-a.vmnet", "vmnet")
    first_uid = _pod(api, "launcher-a", claim="vm-a.vmnet", vm="vm-a")
    first = _entry(api, "launcher-a")
    _pod(api, "other", claim=None)
    assert _entry(api, "other")["ip_addresses"] == ["10.61.0.2/30"]

    api.delete_pod(NS, "launcher-a")  # the VM stops
    until(lambda: f"{NS}.vmnet_{NS}_launcher-a" not in ports(nb_server), "the port stayed")
    # a pod created in between gets nothing: the claim keeps .1 (a pod's address would be free)
    _pod(api, "between", claim=None)
    _events(api, "between", "IPAMFailed")
    assert api.pod_networks(NS, "between") is None

    # the VM starts again: a new pod of the same name (another uid), the same claim
    second_uid = _pod(api, "launcher-a", claim="vm-a.vmnet", vm="vm-a")
    assert second_uid != first_uid
    second = _entry(api, "launcher-a")
    assert second == first  # the same IPs, hence the same MAC
    assert _port(nb_server, "launcher-a") == f"{first['mac_address']} 10.61.0.1"
    assert _status(api, "vm-a.vmnet")["ips"] == first["ip_addresses"]

    # the VM is deleted: its pod, then its claim; only then is .1 handed out again
    api.delete_pod(NS, "launcher-a")
    until(lambda: f"{NS}.vmnet_{NS}_launcher-a" not in ports(nb_server), "the port stayed")
    time.sleep(1)
    assert api.pod_networks(NS, "between") is None, "the claim's IP went before the claim"
    api.delete_claim(NS, "vm-a.vmnet")
    assert _entry(api, "between")["ip_addresses"] == first["ip_addresses"]


def test_a_claim_deleted_under_a_running_pod_keeps_its_ips_until_the_pod_goes(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    _vmnet(api, "10.62.0.0/30")
    api.create_claim(NS, "vm-a.vmnet", "vmnet")
    _pod(api, "launcher-a", claim="vm-a.vmnet", vm="vm-a")
    claimed = _entry(api, "launcher-a")["ip_addresses"]
    _pod(api, "other", claim=None)
    _entry(api, "other")
    _pod(api, "waiter", claim=None)
    _events(api, "waiter", "IPAMFailed")
    api.delete_claim(NS, "vm-a.vmnet")  # e.g. a foreground deletion of the VM
    time.sleep(1)
    assert api.pod_networks(NS, "waiter") is None, "an IP in use was handed out again"
    api.delete_pod(NS, "launcher-a")
    assert _entry(api, "waiter")["ip_addresses"] == claimed


def test_a_restart_reserves_every_claims_ips_before_any_pod_is_allocated(
    api: Api, nb_server: servers.NbServer
) -> None:
    _vmnet(api, "10.63.0.0/29")
    api.create_claim(NS, "vm-a.vmnet", "vmnet")
    first = Controller(nb_remote=nb_server.remote, kubeconfig=api.kubeconfig)
    first.start()
    try:
        _pod(api, "launcher-a", claim="vm-a.vmnet", vm="vm-a")
        claimed = _entry(api, "launcher-a")["ip_addresses"]
        assert claimed == ["10.63.0.1/29"]  # what a fresh pool hands out first
        api.delete_pod(NS, "launcher-a")  # the VM stops; its claim holds .1
        until(lambda: f"{NS}.vmnet_{NS}_launcher-a" not in ports(nb_server), "port stayed")
    finally:
        first.stop()
    # created while no controller runs: the restarted one sees it with its first full sync
    _pod(api, "racer", claim=None)
    second = Controller(nb_remote=nb_server.remote, kubeconfig=api.kubeconfig)
    second.start()
    try:
        assert _entry(api, "racer")["ip_addresses"] != claimed
        _pod(api, "launcher-a", claim="vm-a.vmnet", vm="vm-a")
        assert _entry(api, "launcher-a")["ip_addresses"] == claimed
    finally:
        second.stop()


def test_after_a_crash_between_the_claims_write_and_the_annotation_the_pod_gets_the_claims_ips(
    api: Api, nb_server: servers.NbServer
) -> None:
    """The claim holds addresses that no annotation records (the controller died after writing
    the claim): at restart its pod gets exactly those, and a pod created meanwhile does not."""
    _vmnet(api, "10.64.0.0/29")
    api.create_claim(NS, "vm-a.vmnet", "vmnet", ips=["10.64.0.1/29"], owner_pod="launcher-a")
    # listed (and allocated) before launcher-a: without the claim it would get .1
    _pod(api, "early", claim=None)
    _pod(api, "launcher-a", claim="vm-a.vmnet", vm="vm-a")
    controller = Controller(nb_remote=nb_server.remote, kubeconfig=api.kubeconfig)
    controller.start()
    try:
        assert _entry(api, "early")["ip_addresses"] == ["10.64.0.2/29"]
        entry = _entry(api, "launcher-a")
        assert entry["ip_addresses"] == ["10.64.0.1/29"]
        assert entry["mac_address"] == "0a:58:0a:40:00:01"
        assert _status(api, "vm-a.vmnet") == {"ips": ["10.64.0.1/29"], "ownerPod": "launcher-a"}
    finally:
        controller.stop()


def test_a_missing_claim_makes_the_pod_wait_for_it(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    _vmnet(api, "10.65.0.0/29")
    _pod(api, "launcher-a", claim="vm-a.vmnet", vm="vm-a")
    events = _events(api, "launcher-a", persistentips.NOT_FOUND)
    assert "IPAMClaim vms/vm-a.vmnet (ipam-claim-reference of vms/vmnet) does not exist" in (
        events[0]["message"])
    assert api.pod_networks(NS, "launcher-a") is None
    api.create_claim(NS, "vm-a.vmnet", "vmnet")
    entry = _entry(api, "launcher-a")
    assert _status(api, "vm-a.vmnet")["ips"] == entry["ip_addresses"]


def test_a_claim_on_a_network_without_persistent_ips_is_ignored_with_a_warning(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    api.create_nad(NS, "plain", name="plain", topology="layer2", subnets="10.66.0.0/30")
    api.create_claim(NS, "vm-a.plain", "plain")
    _pod(api, "launcher-a", claim="vm-a.plain", vm="vm-a", nad="plain")
    entry = _entry(api, "launcher-a", nad="plain")
    events = _events(api, "launcher-a", persistentips.IGNORED)
    assert "network plain does not allow persistent IPs" in events[0]["message"]
    assert _status(api, "vm-a.plain") == {}, "the claim of an ignoring network was written"
    # allocation as usual: the address is the pod's, back in the pool with it
    _pod(api, "b", claim=None, nad="plain")
    _entry(api, "b", nad="plain")
    api.delete_pod(NS, "launcher-a")
    _pod(api, "c", claim=None, nad="plain")
    assert _entry(api, "c", nad="plain")["ip_addresses"] == entry["ip_addresses"]


def test_a_claim_of_another_network_is_an_error_and_attaches_nothing(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    _vmnet(api, "10.67.0.0/29")
    api.create_claim(NS, "vm-a.other", "other")
    _pod(api, "launcher-a", claim="vm-a.other", vm="vm-a")
    events = _events(api, "launcher-a", persistentips.NETWORK_MISMATCH)
    assert "IPAMClaim vms/vm-a.other is for network 'other', not 'vmnet'" in (
        events[0]["message"])
    _pod(api, "plain", claim=None)  # a pod queued after it is done, so it was decided
    _entry(api, "plain")
    assert api.pod_networks(NS, "launcher-a") is None
    assert f"{NS}.vmnet_{NS}_launcher-a" not in ports(nb_server)
    assert _status(api, "vm-a.other") == {}


def test_the_pods_of_one_vm_share_its_claim_and_no_other_pod_may(
    api: Api, nb_server: servers.NbServer, controller: Controller
) -> None:
    _vmnet(api, "10.68.0.0/29")
    api.create_claim(NS, "vm-a.vmnet", "vmnet")
    _pod(api, "launcher-a-src", claim="vm-a.vmnet", vm="vm-a")
    source = _entry(api, "launcher-a-src")
    # a live migration's target: the same IPs and MAC, its own port
    _pod(api, "launcher-a-dst", claim="vm-a.vmnet", vm="vm-a")
    assert _entry(api, "launcher-a-dst") == source
    assert _port(nb_server, "launcher-a-dst") == _port(nb_server, "launcher-a-src")

    _pod(api, "launcher-b", claim="vm-a.vmnet", vm="vm-b")
    _pod(api, "unlabelled", claim="vm-a.vmnet", vm=None)
    for name in ("launcher-b", "unlabelled"):
        message = _events(api, name, persistentips.IN_USE)[0]["message"]
        assert message.startswith(
            f"IPAMClaim vms/vm-a.vmnet ({source['ip_addresses'][0]}) of vms/vmnet is in use by "
            "pod vms/launcher-a-dst (VM vm-a)"), message
        assert api.pod_networks(NS, name) is None
    assert not {f"{NS}.vmnet_{NS}_launcher-b", f"{NS}.vmnet_{NS}_unlabelled"} & ports(nb_server)

    # once VM a's pods are gone, a waiting pod gets the claim's addresses
    api.delete_pod(NS, "launcher-a-src")
    time.sleep(1)
    assert api.pod_networks(NS, "launcher-b") is None, "refused while the target still runs"
    api.delete_pod(NS, "launcher-a-dst")
    got = until(lambda: [n for n in ("launcher-b", "unlabelled")
                         if api.pod_networks(NS, n)], "no waiting pod got the claim")
    assert len(got) == 1 and _entry(api, got[0]) == source


_REFUSE_CLAIM_WRITES = "test-refuse-ipamclaim-status"


def _claim_writes_refused(api: Api) -> bool:
    """Whether a write of IPAMClaim status is refused now (tried on a claim of its own)."""
    if api.claim(NS, "probe") is None:
        api.create_claim(NS, "probe", "none")
    group, version, plural = kube.IPAMCLAIMS
    try:
        api.custom().patch_namespaced_custom_object_status(
            group, version, NS, plural, "probe",
            {"status": {"ips": [], "ownerPod": str(time.monotonic())}})
    except kubernetes.client.ApiException as exc:
        if exc.status == 422:
            return True
        raise
    return False


def _refuse_claim_writes(api: Api) -> None:
    """A ValidatingAdmissionPolicy refusing every write of IPAMClaim status, in force."""
    api.request("POST", "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies", {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": _REFUSE_CLAIM_WRITES},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{
                     "apiGroups": ["k8s.cni.cncf.io"], "apiVersions": ["*"],
                     "operations": ["UPDATE"], "resources": ["ipamclaims/status"]}]},
                 "validations": [{"expression": "false", "reason": "Invalid",
                                  "message": "test: IPAMClaim status writes refused"}]}})
    api.request("POST", "/apis/admissionregistration.k8s.io/v1/"
                "validatingadmissionpolicybindings", {
                    "apiVersion": "admissionregistration.k8s.io/v1",
                    "kind": "ValidatingAdmissionPolicyBinding",
                    "metadata": {"name": _REFUSE_CLAIM_WRITES},
                    "spec": {"policyName": _REFUSE_CLAIM_WRITES,
                             "validationActions": ["Deny"]}})
    until(lambda: _claim_writes_refused(api), "the policy did not come into force")


def _allow_claim_writes(api: Api) -> None:
    for kind in ("validatingadmissionpolicybindings", "validatingadmissionpolicies"):
        with contextlib.suppress(kubernetes.client.ApiException):
            api.request("DELETE", f"/apis/admissionregistration.k8s.io/v1/{kind}/"
                        f"{_REFUSE_CLAIM_WRITES}")
    until(lambda: not _claim_writes_refused(api), "the policy stayed in force")


def test_a_pod_is_annotated_only_once_its_claim_holds_the_ips(
    api: Api, nb_server: servers.NbServer, controller: Controller,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The claim is written first: while its write fails the pod gets no annotation (a crash
    then would leave addresses that only the pod records, to be handed out again)."""
    _vmnet(api, "10.69.0.0/29")
    api.create_claim(NS, "vm-a.vmnet", "vmnet")
    _refuse_claim_writes(api)
    try:
        _pod(api, "launcher-a", claim="vm-a.vmnet", vm="vm-a")
        until(lambda: any("could not write IPAMClaim vms/vm-a.vmnet" in m
                          for m in caplog.messages), "the claim's write was not refused")
        time.sleep(1)
        assert api.pod_networks(NS, "launcher-a") is None, "annotated before the claim"
        assert f"{NS}.vmnet_{NS}_launcher-a" not in ports(nb_server)
    finally:
        _allow_claim_writes(api)
        # the refusals this test made (the API server says "forbidden") are no RBAC gap
        caplog.handler.records[:] = [r for r in caplog.handler.records
                                     if _REFUSE_CLAIM_WRITES not in r.getMessage()]
    entry = _entry(api, "launcher-a")  # retried (a full sync) once the claim can be written
    assert _status(api, "vm-a.vmnet")["ips"] == entry["ip_addresses"]
