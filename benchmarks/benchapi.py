"""The Kubernetes API of a benchmark run: a real control plane (default) or the emulator.

`real`: etcd, kube-apiserver and kube-controller-manager of `sandbox.kubeapi` on this host, with
the product's CRDs, namespace and RBAC from manifests/; the controller authenticates with its
own ServiceAccount token, the benchmark's writes are the admin's (client certificate).
`emulator`: the kmock-based emulator as its own process, plain HTTP, no authentication; kept to
compare the two in the same run of the same machine.
"""

from __future__ import annotations

import json
import os
import pathlib
import ssl
import subprocess
import sys
import time

import aiohttp

from ovnk_secondary.sandbox import kubeapi

KINDS = ("real", "emulator")


class BenchApi:
    """Start with `start(namespaces)`, end with `stop()`."""

    def __init__(self, kind: str, workdir: pathlib.Path) -> None:
        if kind not in KINDS:
            raise ValueError(f"--api must be one of {KINDS}, not {kind!r}")
        self.kind = kind
        self.workdir = workdir
        self.server = ""
        self.controller_kubeconfig = workdir / "controller.kubeconfig"
        self._plane: kubeapi.ControlPlane | None = None
        self._emulator: subprocess.Popen[bytes] | None = None

    def start(self, namespaces: list[str]) -> None:
        if self.kind == "emulator":
            self._emulator = subprocess.Popen(
                [sys.executable, "-m", "ovnk_secondary.sandbox.apiserver", "--port", "0",
                 "--kubeconfig", str(self.controller_kubeconfig)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
            while not self.controller_kubeconfig.exists():
                time.sleep(0.05)
            self.server = json.loads(self.controller_kubeconfig.read_text())[
                "clusters"][0]["cluster"]["server"]
            return
        plane = self._plane = kubeapi.ControlPlane(directory=self.workdir / "kube")
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

    def session(self, **kwargs: object) -> aiohttp.ClientSession:
        """An aiohttp session to the server, as the admin."""
        context: ssl.SSLContext | bool = False
        if self._plane is not None:
            pki = self._plane.pki.path
            context = ssl.create_default_context(cafile=str(pki("ca.crt")))
            context.load_cert_chain(str(pki("admin.crt")), str(pki("admin.key")))
        return aiohttp.ClientSession(base_url=self.server,
                                     connector=aiohttp.TCPConnector(ssl=context, limit=64),
                                     **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self._emulator is not None:
            self._emulator.terminate()
            try:
                self._emulator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._emulator.kill()
        if self._plane is not None:
            self._plane.stop()
