"""The real controller (kopf, in a thread) against a real kube-apiserver and NB ovsdb-server."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from ovnk_secondary.northbound import servers
from ovnk_secondary.sandbox import kubeapi
from tests import loops
from tests.controller import harness


@pytest.fixture
def api(kube_plane: kubeapi.ControlPlane, tmp_path: pathlib.Path) -> Iterator[harness.Api]:
    """The session's API server, left empty of the test's objects afterwards."""
    view = harness.Api(kube_plane, tmp_path)
    try:
        yield view
    finally:
        view.wipe()


@pytest.fixture
def loop() -> Iterator[loops.LoopThread]:
    """An event loop in a thread, for async code the (sync) tests drive."""
    thread = loops.LoopThread()
    try:
        yield thread
    finally:
        thread.close()


@pytest.fixture
def controller(nb_server: servers.NbServer, api: harness.Api) -> Iterator[harness.Controller]:
    running = harness.Controller(nb_remote=nb_server.remote, kubeconfig=api.kubeconfig,
                         resync_period=300)
    running.start()
    try:
        yield running
    finally:
        running.stop()
