"""The controller against a real kube-apiserver (v1.37.2 from the Go module proxy), with RBAC on.

The control plane (etcd, kube-apiserver, kube-controller-manager) runs as host processes
(`sandbox.kubeapi`); the CRDs, the namespace and the RBAC come from `manifests/` themselves,
applied with server-side validation; the controller authenticates with a ServiceAccount token
bound by exactly `manifests/rbac.yaml`. So a permission the manifests lack is a real 403 here,
and one the code does not need is refused to a call that tries it.
"""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest

from ovnk_secondary.controller import apiclient, leaderelection, model
from ovnk_secondary.northbound import servers
from ovnk_secondary.sandbox import kubeapi
from tests import kube
from tests.controller.harness import Controller, ports, until


@pytest.fixture
def control_plane(kube_plane: kubeapi.ControlPlane,
                  tmp_path: pathlib.Path) -> Iterator[kubeapi.ControlPlane]:
    """The session's control plane (manifests applied), wiped of this test's objects after."""
    try:
        yield kube_plane
    finally:
        kube.KubeApi(kube_plane, tmp_path / "wipe").wipe()


@pytest.fixture
def controller_kubeconfig(control_plane: kubeapi.ControlPlane,
                          tmp_path: pathlib.Path) -> pathlib.Path:
    return control_plane.service_account_kubeconfig(
        "ovnk-secondary", "ovnk-secondary-controller", tmp_path / "controller.kubeconfig")


def _apply(plane: kubeapi.ControlPlane, *objects: dict[str, Any]) -> None:
    plane.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objects))


def _nad(namespace: str, name: str, /, **config: Any) -> dict[str, Any]:
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"config": json.dumps({"cniVersion": "0.3.1", "type": "ovn-k8s-cni-overlay",
                                           "netAttachDefName": f"{namespace}/{name}",
                                           **config})}}


def _pod(namespace: str, name: str, networks: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": {"k8s.v1.cni.cncf.io/networks": networks}},
            "spec": {"nodeName": "node-1",
                     "containers": [{"name": "c", "image": "workload:sandbox"}]}}


def _get(plane: kubeapi.ControlPlane, *what: str) -> dict[str, Any]:
    done = plane.kubectl("get", *what, "-o", "json", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else {}


def test_the_controller_works_with_its_own_least_privilege_identity(
    control_plane: kubeapi.ControlPlane, controller_kubeconfig: pathlib.Path,
    nb_server: servers.NbServer, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    _apply(control_plane, {"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": "test"}},
           _nad("test", "nad-layer2", name="l2-network", topology="layer2",
                subnets="10.100.0.0/24"),
           _nad("test", "nad-localnet2", name="localnet2", topology="localnet", vlanID=33))
    # the controller-manager's ServiceAccount controller makes the namespace's default account
    until(lambda: _get(control_plane, "serviceaccount", "-n", "test", "default"),
          "no default ServiceAccount in namespace test")
    running = Controller(nb_remote=nb_server.remote, kubeconfig=controller_kubeconfig,
                         election=leaderelection.Config(namespace="ovnk-secondary",
                                                        name="ovnk-secondary-controller"))
    running.start()
    try:
        _apply(control_plane, _pod("test", "p1", "nad-layer2,nad-localnet2"),
               _pod("test", "p2", json.dumps([{"name": "nad-layer2",
                                               "mac": "02:00:00:00:00:02"}])))
        until(lambda: {"test.nad.layer2_test_p1", "test.nad.localnet2_test_p1",
                       "test.nad.layer2_test_p2"} <= ports(nb_server), "pod ports missing")
        pod = _get(control_plane, "pod", "-n", "test", "p1")
        networks = json.loads(pod["metadata"]["annotations"]["k8s.ovn.org/pod-networks"])
        assert networks["test/nad-layer2"]["ip_addresses"][0].startswith("10.100.0.")
        assert networks["test/nad-localnet2"]["ip_addresses"] is None
        nad = _get(control_plane, "net-attach-def", "-n", "test", "nad-layer2")
        accepted = nad["metadata"]["annotations"][model.ACCEPTED_CONFIG]
        assert json.loads(accepted)["subnets"] == "10.100.0.0/24"
        lease = _get(control_plane, "lease", "-n", "ovnk-secondary", "ovnk-secondary-controller")
        assert lease["spec"]["holderIdentity"]
        # a merge patch by kubectl (custom resources take no strategic merge) is seen as any
        # other change
        control_plane.kubectl("patch", "net-attach-def", "-n", "test", "nad-localnet2",
                              "--type=merge", "-p", json.dumps({"spec": {"config": json.dumps({
                                  "cniVersion": "0.3.1", "type": "ovn-k8s-cni-overlay",
                                  "name": "localnet2", "topology": "localnet", "vlanID": 34,
                                  "netAttachDefName": "test/nad-localnet2"})}}))
        until(lambda: nb_server.nbctl("get", "Logical_Switch_Port",
                                      "localnet2_ovn_localnet_port", "tag_request").strip()
              == "34", "the VLAN edit did not reach NB")
        # a strategic-merge patch of a pod (kubectl's default for built-in kinds) that drops
        # our annotation: the controller writes it back, with the same address and MAC
        def annotation() -> dict[str, Any] | None:
            text = (_get(control_plane, "pod", "-n", "test", "p2")["metadata"].get(
                "annotations") or {}).get("k8s.ovn.org/pod-networks")
            return json.loads(text) if text else None

        before = until(annotation, "p2 was not annotated")
        patched = json.loads(control_plane.kubectl(
            "patch", "pod", "-n", "test", "p2", "-o", "json", "-p", json.dumps(
                {"metadata": {"annotations": {"k8s.ovn.org/pod-networks": None}}})).stdout)
        assert "k8s.ovn.org/pod-networks" not in patched["metadata"]["annotations"]
        until(lambda: annotation() == before, "the dropped annotation was not written back")
        # no kubelet confirms a graceful deletion here (the port stays while a pod terminates)
        control_plane.kubectl("delete", "pod", "-n", "test", "p1", "--grace-period=0",
                              "--force")
        until(lambda: "test.nad.layer2_test_p1" not in ports(nb_server), "p1's port stayed")
    finally:
        running.stop()
    refused = [r.getMessage() for r in caplog.records if kube.REFUSAL.search(r.getMessage())]
    assert not refused, refused


def test_what_rbac_does_not_grant_is_a_real_403(
    control_plane: kubeapi.ControlPlane, controller_kubeconfig: pathlib.Path,
) -> None:
    def can(*what: str) -> bool:
        done = control_plane.kubectl("auth", "can-i", *what, kubeconfig_path=controller_kubeconfig,
                                     check=False)
        return done.stdout.strip() == "yes"

    assert can("patch", "pods", "-A") and can("patch", "network-attachment-definitions", "-A")
    assert can("create", "leases", "-n", "ovnk-secondary")
    assert not can("create", "leases", "-n", "default")
    assert not can("delete", "pods", "-A") and not can("get", "secrets", "-A")
    done = control_plane.kubectl("get", "secrets", "-A", kubeconfig_path=controller_kubeconfig,
                                 check=False)
    assert done.returncode != 0 and "Forbidden" in done.stderr


async def test_in_cluster_credentials_and_a_rotated_token(
    control_plane: kubeapi.ControlPlane, tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a pod, the controller takes the ServiceAccount token and CA the kubelet mounts
    (`kubernetes.config` writes the header as "bearer <token>": it once went out as
    "Bearer bearer <token>", a 401 for every call), and reads the token file again as the
    kubelet rotates it."""
    token = control_plane.kubectl("create", "token", "ovnk-secondary-controller", "-n",
                                  "ovnk-secondary").stdout.strip()
    token_file = tmp_path / "token"
    token_file.write_text(token)
    incluster = kubernetes.config.incluster_config
    monkeypatch.setattr(incluster, "SERVICE_TOKEN_FILENAME", str(token_file))
    monkeypatch.setattr(incluster, "SERVICE_CERT_FILENAME",
                        str(control_plane.pki.path("ca.crt")))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(control_plane.port))
    credentials = apiclient.load_credentials(None)
    assert credentials.token == token and credentials.token_file == str(token_file)
    api = apiclient.ApiClient(credentials)
    monkeypatch.setattr(apiclient, "TOKEN_FILE_TTL", 0.0)
    try:
        assert await api.list(apiclient.NAD_PATH) == []
        token_file.write_text("no-longer-valid")  # what a stale token meets
        with pytest.raises(apiclient.ApiError) as refused:
            await api.list(apiclient.NAD_PATH)
        assert refused.value.status == 401
        token_file.write_text(token + "\n")  # the kubelet wrote the new one
        assert await api.list(apiclient.NAD_PATH) == []
    finally:
        await api.close()
