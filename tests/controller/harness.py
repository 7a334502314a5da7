"""Helpers for controller tests: the real API server, the controller on a loop thread, polling."""

from __future__ import annotations

import asyncio
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ovnk_secondary.controller import apiclient, leaderelection, main, reconciler
from ovnk_secondary.northbound import servers
from ovnk_secondary.sandbox import kubeapi
from tests import kube
from tests.loops import LoopThread

T = TypeVar("T")
NAD_GROUP, NAD_VERSION, NAD_PLURAL = kube.NADS


class Api(kube.KubeApi):
    """The real API server as a controller test sees it: the controller authenticates as its
    ServiceAccount (`kubeconfig`); the test's own moves are the admin's."""

    def __init__(self, plane: kubeapi.ControlPlane, tmp_path: pathlib.Path) -> None:
        super().__init__(plane, tmp_path / "kube", identity=kube.CONTROLLER)
        self.core_api = self.core()

    def create_nad(self, namespace: str, nad: str, /, **config: Any) -> None:
        self.ensure_namespace(namespace)
        body = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                "metadata": {"name": nad, "namespace": namespace},
                "spec": {"config": json.dumps(nad_config(namespace, nad, **config))}}
        self.custom().create_namespaced_custom_object(NAD_GROUP, NAD_VERSION, namespace,
                                                      NAD_PLURAL, body)

    def update_nad(self, namespace: str, nad: str, /, **config: Any) -> None:
        self.custom().patch_namespaced_custom_object(
            NAD_GROUP, NAD_VERSION, namespace, NAD_PLURAL, nad,
            {"spec": {"config": json.dumps(nad_config(namespace, nad, **config))}})

    def delete_nad(self, namespace: str, name: str) -> None:
        self.custom().delete_namespaced_custom_object(NAD_GROUP, NAD_VERSION, namespace,
                                                      NAD_PLURAL, name)

    def create_pod(self, namespace: str, name: str, networks: str,
                   node: str = "node1", labels: dict[str, str] | None = None) -> dict[str, Any]:
        self.ensure_namespace(namespace)
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": labels or {},
                             "annotations": {"k8s.v1.cni.cncf.io/networks": networks}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}}
        created: dict[str, Any] = self.client.sanitize_for_serialization(
            self.core_api.create_namespaced_pod(namespace, body))
        return created

    def create_claim(self, namespace: str, name: str, network: str, *,
                     ips: list[str] | None = None, owner_pod: str = "") -> dict[str, Any]:
        """An IPAMClaim as its owner (KubeVirt) creates it; with `ips`, its status as a
        controller wrote it (through the status subresource)."""
        self.ensure_namespace(namespace)
        group, version, plural = kube.IPAMCLAIMS
        created: dict[str, Any] = self.custom().create_namespaced_custom_object(
            group, version, namespace, plural, {
                "apiVersion": f"{group}/{version}", "kind": "IPAMClaim",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"network": network, "interface": "net1"}})
        if ips is not None:
            created = self.custom().patch_namespaced_custom_object_status(
                group, version, namespace, plural, name,
                {"status": {"ips": ips, "ownerPod": owner_pod}})
        return created

    def claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.stored(kube.IPAMCLAIMS, namespace, name)

    def delete_claim(self, namespace: str, name: str) -> None:
        group, version, plural = kube.IPAMCLAIMS
        self.custom().delete_namespaced_custom_object(group, version, namespace, plural, name)

    def create_policy(self, namespace: str, name: str, spec: dict[str, Any], *,
                      policy_for: str | None = None) -> dict[str, Any]:
        """A MultiNetworkPolicy (annotation k8s.v1.cni.cncf.io/policy-for when given); the
        object as stored."""
        self.ensure_namespace(namespace)
        group, version, plural = kube.MULTI_NETWORK_POLICIES
        metadata: dict[str, Any] = {"name": name, "namespace": namespace}
        if policy_for is not None:
            metadata["annotations"] = {"k8s.v1.cni.cncf.io/policy-for": policy_for}
        created: dict[str, Any] = self.custom().create_namespaced_custom_object(
            group, version, namespace, plural, {"apiVersion": f"{group}/{version}",
                                                "kind": "MultiNetworkPolicy",
                                                "metadata": metadata, "spec": spec})
        return created

    def delete_policy(self, namespace: str, name: str) -> None:
        group, version, plural = kube.MULTI_NETWORK_POLICIES
        self.custom().delete_namespaced_custom_object(group, version, namespace, plural, name)

    def label_namespace(self, namespace: str, labels: dict[str, str | None]) -> None:
        """Set (None: remove) labels of a namespace, created when missing."""
        self.ensure_namespace(namespace)
        self.core_api.patch_namespace(namespace, {"metadata": {"labels": labels}})

    def label_pod(self, namespace: str, name: str, labels: dict[str, str | None]) -> None:
        self.core_api.patch_namespaced_pod(name, namespace, {"metadata": {"labels": labels}})

    def pod_networks(self, namespace: str, name: str) -> dict[str, Any] | None:
        pod = self.stored(kube.PODS, namespace, name)
        text = ((pod or {}).get("metadata", {}).get("annotations") or {}).get(
            "k8s.ovn.org/pod-networks")
        return json.loads(text) if text else None


def nad_config(namespace: str, nad: str, /, **config: Any) -> dict[str, Any]:
    result = {"cniVersion": "0.3.1", "type": "ovn-k8s-cni-overlay",
              "netAttachDefName": f"{namespace}/{nad}", **config}
    return {k: v for k, v in result.items() if v is not None}


class Controller:
    """`ovnk-secondary controller` in-process: kopf and the reconciler on a loop thread."""

    def __init__(self, *, nb_remote: str, kubeconfig: pathlib.Path,
                 resync_period: float = 300.0, health_port: int = 0,
                 election: leaderelection.Config | None = None,
                 migration_strategy: str = "per-pod") -> None:
        self.election = election
        self.migration_strategy = migration_strategy
        self.nb_remote = nb_remote
        self.kubeconfig = kubeconfig
        self.resync_period = resync_period
        self.health_port = health_port
        self.thread: LoopThread | None = None
        self.stop_flag: asyncio.Event | None = None
        self.future: Any = None

    def start(self) -> None:
        self.thread = LoopThread()
        credentials = apiclient.load_credentials(str(self.kubeconfig))
        started = asyncio.Event()

        async def make() -> None:
            self.stop_flag = asyncio.Event()
        self.thread.run(make())
        assert self.stop_flag is not None
        self.future = asyncio.run_coroutine_threadsafe(main.serve(
            ovn_nb=self.nb_remote, credentials=credentials, resync_period=self.resync_period,
            stop=self.stop_flag, health_port=self.health_port, health_host="127.0.0.1",
            nb_timeout=5, started=started, election=self.election,
            migration_strategy=self.migration_strategy), self.thread.loop)

    def stop(self) -> reconciler.Reconciler | None:
        if self.thread is None:
            return None
        assert self.stop_flag is not None
        self.thread.loop.call_soon_threadsafe(self.stop_flag.set)
        policy: reconciler.Reconciler = self.future.result(60)
        self.thread.close()
        self.thread = None
        return policy


def ports(nb: servers.NbServer) -> set[str]:
    """Names of every Logical_Switch_Port in NB."""
    return set(nb.nbctl("--bare", "--columns=name", "list", "Logical_Switch_Port").split())


def switches(nb: servers.NbServer) -> set[str]:
    """Names of every Logical_Switch in NB."""
    return set(nb.nbctl("--bare", "--columns=name", "list", "Logical_Switch").split())


def nb_get(nb: servers.NbServer, table: str, record: str, column: str) -> str:
    """One column of one NB row as ovn-nbctl prints it ("" when the row does not exist)."""
    return nb.nbctl("--if-exists", "get", table, record, column).strip()


def until(predicate: Callable[[], T], message: str, timeout: float = 30) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


