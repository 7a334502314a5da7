"""The real kube-apiserver as the tests see it: an admin client for the test's own moves, the
product's least-privilege identities for the code under test, and a clean slate between tests.

One control plane (etcd, kube-apiserver, kube-controller-manager from `sandbox.kubeapi`) serves
a whole test session or module: starting one costs seconds, wiping what a test made costs
milliseconds. `KubeApi.wipe` removes every pod (without grace: no kubelet confirms a deletion
here), NAD, IPAMClaim, MultiNetworkPolicy, Event, Lease and Node the tests made; namespaces
stay, so that the next test does not wait for one to terminate.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import kubernetes

from ovnk_secondary.sandbox import kubeapi

ResourceId = tuple[str, str, str]  # (group, version, plural)
PODS: ResourceId = ("", "v1", "pods")
NADS: ResourceId = ("k8s.cni.cncf.io", "v1", "network-attachment-definitions")
IPAMCLAIMS: ResourceId = ("k8s.cni.cncf.io", "v1alpha1", "ipamclaims")
MULTI_NETWORK_POLICIES: ResourceId = ("k8s.cni.cncf.io", "v1beta1", "multi-networkpolicies")
LEASES: ResourceId = ("coordination.k8s.io", "v1", "leases")
PRODUCT_NAMESPACE = "ovnk-secondary"
CONTROLLER = "ovnk-secondary-controller"
NODE_AGENT = "ovnk-secondary-node-agent"
# Namespaces of the cluster itself: wiped of the tests' objects, never deleted.
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
# A refusal in a log line: an HTTP status 403 or its reason. Not "403" inside a port name
# (ovke40319a4ffbe: no word boundary) nor the milliseconds of a timestamp ("17:46:26,403").
REFUSAL = re.compile(r"(?<![,.])\b403\b|[Ff]orbidden")


def start(directory: pathlib.Path, *, advertise: str = "127.0.0.1") -> kubeapi.ControlPlane:
    """A started control plane with the product's CRDs, namespace and RBAC from manifests/."""
    plane = kubeapi.ControlPlane(directory=directory, advertise=advertise)
    plane.start()
    try:
        plane.install_manifests()
    except BaseException:
        plane.stop()
        raise
    return plane


def _path(resource: ResourceId, namespace: str | None, name: str | None = None) -> str:
    group, version, plural = resource
    path = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespace is not None:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    return path + (f"/{name}" if name is not None else "")


class KubeApi:
    """One test's view of a running control plane."""

    def __init__(self, plane: kubeapi.ControlPlane, directory: pathlib.Path, *,
                 identity: str = CONTROLLER) -> None:
        self.plane = plane
        self.url = plane.server
        self.client = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(plane.admin_kubeconfig))
        directory.mkdir(parents=True, exist_ok=True)
        # the code under test authenticates as the product does: a ServiceAccount token bound
        # by exactly manifests/rbac.yaml
        self.kubeconfig = plane.service_account_kubeconfig(
            PRODUCT_NAMESPACE, identity, directory / f"{identity}.kubeconfig")
        self._ready: set[str] = set()

    def core(self) -> Any:
        return kubernetes.client.CoreV1Api(self.client)

    def custom(self) -> Any:
        return kubernetes.client.CustomObjectsApi(self.client)

    def kubeconfig_text(self) -> str:
        return self.kubeconfig.read_text()

    def identity_client(self) -> Any:
        """An official client authenticated as the product's identity (not the admin)."""
        return kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig))

    def request(self, method: str, path: str, body: Any = None,
                content_type: str | None = None) -> Any:
        """A raw call as the admin; the decoded JSON answer (ApiException on errors)."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        response = self.client.call_api(*self.client.param_serialize(
            method=method, resource_path=path, header_params=headers, body=body,
            auth_settings=["BearerToken"]))
        response.read()
        if response.status >= 400:
            raise kubernetes.client.ApiException(http_resp=response)
        return json.loads(response.data) if response.data else None

    def ensure_namespace(self, namespace: str) -> None:
        """Namespace `namespace` exists with its default ServiceAccount (without which the
        ServiceAccount admission refuses pods)."""
        if namespace not in self._ready:
            kubeapi.ensure_namespace(self.core(), namespace)
            self._ready.add(namespace)

    def stored(self, resource: ResourceId, namespace: str | None,
               name: str) -> dict[str, Any] | None:
        """The object as the API server holds it now, or None."""
        try:
            found: dict[str, Any] = self.request("GET", _path(resource, namespace, name))
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every Event about an object named `name`, as JSON dicts."""
        listed = self.core().list_event_for_all_namespaces(
            field_selector=f"involvedObject.name={name}")
        events: list[dict[str, Any]] = self.client.sanitize_for_serialization(listed)["items"]
        return events

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete at once, as the kubelet does once the containers are gone (there is none)."""
        self.core().delete_namespaced_pod(name, namespace, grace_period_seconds=0)

    def wipe(self) -> None:
        """Remove what tests made; see the module's docstring."""
        core = self.core()
        custom = self.custom()
        for namespace in core.list_namespace().items:
            name = namespace.metadata.name
            if name in SYSTEM_NAMESPACES:
                continue
            core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
            core.delete_collection_namespaced_event(name)
            for group, version, plural in (NADS, IPAMCLAIMS, MULTI_NETWORK_POLICIES):
                custom.delete_collection_namespaced_custom_object(group, version, name, plural)
        self.request("DELETE", _path(LEASES, PRODUCT_NAMESPACE))
        core.delete_collection_node()
