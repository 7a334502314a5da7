"""Fixtures shared by the whole suite: the OVN sandbox (one per test session) and its NB."""

from __future__ import annotations

import logging
import os
import pathlib
import subprocess
from collections.abc import Iterator

import pytest

from ovnk_secondary.northbound import servers
from ovnk_secondary.sandbox import cluster, kubeapi
from tests import kube

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

REPO = pathlib.Path(__file__).resolve().parents[1]
SANDBOX_NAME = os.environ.get("OVNK_TEST_SANDBOX", "ovnk-test")
CLUSTER_NAME = f"{SANDBOX_NAME}-cluster"


@pytest.fixture(autouse=True)
def _no_call_refused_by_rbac(request: pytest.FixtureRequest,
                             caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The code under test authenticates as the product's ServiceAccounts (bound by exactly
    manifests/rbac.yaml): a call the RBAC does not grant shows up as a logged 403, and fails
    the test that made it, whatever that test checks.

    Except in tests marked `restarts_api_server`: a kube-apiserver that has just started
    refuses requests (403) until its RBAC caches are filled, and the product retries them.
    """
    caplog.set_level(logging.WARNING, logger="ovnk_secondary")
    yield
    if request.node.get_closest_marker("restarts_api_server"):
        return
    refused = [record.getMessage()
               for phase in ("setup", "call") for record in caplog.get_records(phase)
               if record.name.startswith("ovnk_secondary") and kube.REFUSAL.search(
                   record.getMessage())]
    assert not refused, f"the API server refused calls of the product: {refused}"


@pytest.fixture(scope="session")
def cni_shim(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The CNI binary (`cni-shim/`, static Go) built as the product image gets it."""
    binary = tmp_path_factory.mktemp("cni-shim") / "ovn-k8s-cni-overlay"
    subprocess.run([str(REPO / "ovn-sandbox" / "build-shim.sh"), str(binary)], check=True,
                   timeout=600)
    return binary


@pytest.fixture
def nb_server(tmp_path: pathlib.Path) -> Iterator[servers.NbServer]:
    """A real OVN northbound ovsdb-server of the test's own, on a unix socket."""
    server = servers.NbServer(directory=tmp_path / "nb")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kube_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kubeapi.ControlPlane]:
    """A real control plane (etcd, kube-apiserver, kube-controller-manager) on this host with
    the product's CRDs, namespace and RBAC; tests wipe what they made (`kube.KubeApi.wipe`)."""
    plane = kube.start(tmp_path_factory.mktemp("kube"))
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def sandbox() -> Iterator[cluster.Sandbox]:
    """Central, two chassis and the external host, shared by every test of the session.

    Tests leave it as they found it (they remove their pods, ports, bridges and switches).
    """
    sb = cluster.Sandbox.up(name=SANDBOX_NAME, nodes=2)
    try:
        yield sb
    finally:
        sb.down()


@pytest.fixture(scope="session")
def cluster_sandbox() -> Iterator[cluster.Sandbox]:
    """A sandbox cluster: OVN plus a real Kubernetes (control plane, kubelets, containerd,
    Multus) with the product deployed from manifests/; for end-to-end tests through the user's
    path."""
    sb = cluster.Sandbox.up(name=CLUSTER_NAME, nodes=2, kubernetes=True)
    try:
        yield sb
    finally:
        sb.down()
