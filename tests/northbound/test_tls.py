"""NB over TLS and clustered NB remotes: a real ovsdb-server with certificates made for the test.

The certificates come from the sandbox's control-plane PKI (`kubeapi.Pki`, `cryptography`): a
CA, a server certificate for 127.0.0.1 and a client certificate, which ovsdb-server checks
against the same CA.
"""

from __future__ import annotations

import argparse
import pathlib
import socket
from collections.abc import Iterator

import pytest

from ovnk_secondary import errors, naming
from ovnk_secondary.controller import main
from ovnk_secondary.northbound import client, desired, diff, servers
from ovnk_secondary.sandbox import kubeapi


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> kubeapi.Pki:
    return kubeapi.Pki.make(tmp_path / "pki", server_names=("127.0.0.1",))


@pytest.fixture
def tls_server(tmp_path: pathlib.Path, pki: kubeapi.Pki) -> Iterator[servers.NbServer]:
    server = servers.NbServer(directory=tmp_path / "nb", ssl_port=_free_port(), tls=client.Tls(
        private_key=str(pki.path("apiserver.key")), certificate=str(pki.path("apiserver.crt")),
        ca_cert=str(pki.path("ca.crt"))))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _client_tls(pki: kubeapi.Pki) -> client.Tls:
    return client.Tls(private_key=str(pki.path("admin.key")),
                      certificate=str(pki.path("admin.crt")), ca_cert=str(pki.path("ca.crt")))


def _switch(name: str) -> desired.State:
    return desired.State(switches={name: desired.Switch(
        name=name, external_ids={naming.OWNER_KEY: naming.OWNER_VALUE}, other_config={})})


def test_the_controller_reads_and_writes_nb_over_tls(
        tls_server: servers.NbServer, pki: kubeapi.Pki) -> None:
    northbound = client.Northbound(remote=tls_server.ssl_remote, timeout=10,
                                   tls=_client_tls(pki))
    northbound.connect()
    try:
        have, foreign = northbound.read()
        northbound.apply(diff.diff(_switch("over.tls"), have, foreign=foreign))
        # seen by another client (ovn-nbctl on the unix socket): it was written over TLS
        assert tls_server.nbctl("--bare", "--columns=name", "list",
                                "Logical_Switch").split() == ["over.tls"]
    finally:
        northbound.close()


def test_an_ssl_remote_refuses_a_client_certificate_of_another_ca(
        tls_server: servers.NbServer, tmp_path: pathlib.Path) -> None:
    stranger = kubeapi.Pki.make(tmp_path / "other", server_names=("127.0.0.1",))
    northbound = client.Northbound(remote=tls_server.ssl_remote, timeout=2,
                                   tls=_client_tls(stranger))
    with pytest.raises(errors.NorthboundError, match="cannot connect to OVN northbound"):
        northbound.connect()


def test_bad_remotes_and_missing_tls_files_say_what_to_fix(tmp_path: pathlib.Path) -> None:
    with pytest.raises(errors.InvalidConfig, match="--ovn-nb-private-key, --ovn-nb-certificate"):
        client.check_remote("ssl:127.0.0.1:6641", None)
    missing = client.Tls(private_key=str(tmp_path / "none.key"),
                         certificate=str(tmp_path / "none.crt"), ca_cert=str(tmp_path / "ca"))
    with pytest.raises(errors.InvalidConfig, match=r"--ovn-nb-private-key .*none\.key"):
        client.check_remote("tcp:10.0.0.1:6641,ssl:10.0.0.2:6641", missing)
    for bad in ("10.0.0.1:6641", "tcp:10.0.0.1", "http://nb:6641", "tcp:10.0.0.1:66x1"):
        with pytest.raises(errors.InvalidConfig, match="is not an OVSDB remote"):
            client.check_remote(bad, None)
    assert client.check_remote("tcp:[fd00::1]:6641, unix:/run/nb.sock", None) == [
        "tcp:[fd00::1]:6641", "unix:/run/nb.sock"]
    half = argparse.Namespace(ovn_nb_private_key="k", ovn_nb_certificate=None,
                              ovn_nb_ca_cert=None)
    with pytest.raises(errors.InvalidConfig,
                       match="--ovn-nb-certificate, --ovn-nb-ca-cert missing"):
        main.tls_files(half)


def test_a_clustered_nb_with_a_member_down_at_start_up(nb_server: servers.NbServer) -> None:
    down = f"tcp:127.0.0.1:{_free_port()}"  # nothing listens there
    northbound = client.Northbound(remote=f"{down},{nb_server.remote}", timeout=10)
    northbound.connect()
    try:
        have, foreign = northbound.read()
        northbound.apply(diff.diff(_switch("clustered"), have, foreign=foreign))
        assert "clustered" in nb_server.nbctl("--bare", "--columns=name", "list",
                                              "Logical_Switch")
    finally:
        northbound.close()
