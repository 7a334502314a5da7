"""Fixtures shared by the whole suite: the OVN sandbox (one per test session) and its NB."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ovnk_secondary.sandbox import cluster

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

SANDBOX_NAME = os.environ.get("OVNK_TEST_SANDBOX", "ovnk-test")


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
