"""The Kubernetes API of a benchmark run: a real control plane on this host.

etcd, kube-apiserver and kube-controller-manager of `sandbox.kubeapi`, with the product's CRDs,
namespace and RBAC from manifests/; the controller authenticates with its own ServiceAccount
token, the benchmark's writes are the admin's (client certificate).
"""

from __future__ import annotations

import pathlib
import ssl
import time

import aiohttp

from ovnk_secondary.sandbox import kubeapi


class BenchApi:
    """Start with `start(namespaces)`, end with `stop()`."""

    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.server = ""
        self.controller_kubeconfig = workdir / "controller.kubeconfig"
        self._plane = kubeapi.ControlPlane(directory=workdir / "kube")

    def start(self, namespaces: list[str]) -> None:
        plane = self._plane
        plane.start()
        plane.install_manifests()
        for namespace in namespaces:
            plane.kubectl("create", "namespace", namespace)
        for namespace in namespaces:  # pods need the namespace's default ServiceAccount
            while plane.kubectl("get", "serviceaccount", "default", "-n", namespace,
                                check=False).returncode != 0:
                time.sleep(0.1)
        plane.service_account_kubeconfig("ovnk-secondary", "ovnk-secondary-controller",
                                         self.controller_kubeconfig)
        self.server = plane.server

    def session(self) -> aiohttp.ClientSession:
        """An aiohttp session to the server, as the admin."""
        pki = self._plane.pki.path
        context = ssl.create_default_context(cafile=str(pki("ca.crt")))
        context.load_cert_chain(str(pki("admin.crt")), str(pki("admin.key")))
        return aiohttp.ClientSession(base_url=self.server,
                                     connector=aiohttp.TCPConnector(ssl=context, limit=64))

    def stop(self) -> None:
        self._plane.stop()
