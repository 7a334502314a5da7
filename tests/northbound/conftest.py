"""A real OVN northbound ovsdb-server per test, and a client connected to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ovnk_secondary.northbound import client, servers


@pytest.fixture
def nb(nb_server: servers.NbServer) -> Iterator[client.Northbound]:
    northbound = client.Northbound(remote=nb_server.remote, timeout=10)
    northbound.connect()
    try:
        yield northbound
    finally:
        northbound.close()
