"""A local OVN northbound ovsdb-server process, for tests and benchmarks on the host.

It uses the Debian `ovn-central` binaries and schema: `ovsdb-tool create` makes the database
file once; `ovsdb-server` serves it on a unix socket (and optionally TCP) inside one
directory, so several servers can run side by side. Stopping and starting again keeps the
data, as a restarted central would.

`Northd`: ovn-northd and a southbound ovsdb-server of one's own on such an NB, to see NB rows
as OVN reads them. ovn-northd compiles NB (ACLs included) into SB logical flows; `ovn-trace`
loads every flow, parsing each match with OVN's own expression parser (a match it cannot parse
is a warning on its stderr), and follows a packet through the pipelines. No chassis is
involved: the verdicts are OVN's logic, not a datapath's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

from ovnk_secondary import errors
from ovnk_secondary.northbound import client

SCHEMA = pathlib.Path("/usr/share/ovn/ovn-nb.ovsschema")


class NbServer:
    """`ovsdb-server` for OVN_Northbound in `directory`; `remote` is what clients connect to."""

    def __init__(self, *, directory: pathlib.Path, tcp_port: int | None = None,
                 ssl_port: int | None = None, tls: client.Tls | None = None) -> None:
        """`ssl_port` with `tls` (the server's key and certificate, and the CA whose
        certificates it accepts from clients) also serves NB over TLS on 127.0.0.1."""
        if (ssl_port is None) != (tls is None):
            raise errors.NorthboundError("ssl_port and tls go together")
        self.directory = directory
        self.tcp_port = tcp_port
        self.ssl_port = ssl_port
        self.tls = tls
        self.database = directory / "ovnnb_db.db"
        self.socket = directory / "ovnnb_db.sock"
        self.control = directory / "ovnnb_db.ctl"
        self.log = directory / "ovsdb-server-nb.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def remote(self) -> str:
        return f"unix:{self.socket}"

    @property
    def tcp_remote(self) -> str:
        if self.tcp_port is None:
            raise errors.NorthboundError("this NB server has no TCP port; pass tcp_port")
        return f"tcp:127.0.0.1:{self.tcp_port}"

    @property
    def ssl_remote(self) -> str:
        if self.ssl_port is None:
            raise errors.NorthboundError("this NB server serves no TLS; pass ssl_port and tls")
        return f"ssl:127.0.0.1:{self.ssl_port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, *, timeout: float = 10.0) -> None:
        for binary in ("ovsdb-tool", "ovsdb-server"):
            if shutil.which(binary) is None:
                raise errors.NorthboundError(f"{binary} is missing: apt-get install ovn-central")
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.database.exists():
            subprocess.run(["ovsdb-tool", "create", str(self.database), str(SCHEMA)],
                           check=True, capture_output=True)
        self.socket.unlink(missing_ok=True)
        remotes = [f"--remote=punix:{self.socket}"]
        if self.tcp_port is not None:
            remotes.append(f"--remote=ptcp:{self.tcp_port}:127.0.0.1")
        if self.ssl_port is not None and self.tls is not None:
            remotes += [f"--remote=pssl:{self.ssl_port}:127.0.0.1",
                        f"--private-key={self.tls.private_key}",
                        f"--certificate={self.tls.certificate}",
                        f"--ca-cert={self.tls.ca_cert}"]
        self._process = subprocess.Popen(
            ["ovsdb-server", str(self.database), *remotes, f"--unixctl={self.control}",
             f"--log-file={self.log}", "-vconsole:off", "-vfile:info"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C of the test run must not race our own stop()
        )
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode() if self._process.stderr else ""
                raise errors.NorthboundError(f"ovsdb-server exited: {stderr.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise errors.NorthboundError(f"ovsdb-server did not listen within {timeout}s")
            time.sleep(0.02)

    def _accepts(self) -> bool:
        if not self.socket.exists():
            return False
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        for port in (self.tcp_port, self.ssl_port):
            if port is None:
                continue
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
        return True

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr is not None:
            process.stderr.close()

    def nbctl(self, *args: str, timeout: float = 30) -> str:
        """`ovn-nbctl --db=<remote> ARGS`, as a user would type it; returns stdout."""
        done = subprocess.run(
            ["ovn-nbctl", f"--db={self.remote}", "--no-leader-only", *args],
            capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "OVN_NB_DAEMON": ""},
        )
        if done.returncode != 0:
            raise errors.NorthboundError(f"ovn-nbctl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A pod's interface as a trace sees it: its logical switch port, MAC and IPv4 address."""

    port: str
    mac: str
    ip: str


def microflow(source: Endpoint, target: Endpoint, l4: str) -> str:
    """An IPv4 packet from `source` to `target` entering at `source`'s port; `l4` e.g.
    `tcp.dst == 80`."""
    return (f'inport == "{source.port}" && eth.src == {source.mac} && eth.dst == {target.mac} '
            f"&& ip4.src == {source.ip} && ip4.dst == {target.ip} && ip.ttl == 64 && {l4}")


class Northd:
    """ovn-northd and a southbound ovsdb-server in `directory`, on `nb`."""

    def __init__(self, *, directory: pathlib.Path, nb: NbServer) -> None:
        self.directory = directory
        self.nb = nb
        self.socket = directory / "ovnsb_db.sock"
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def sb_remote(self) -> str:
        return f"unix:{self.socket}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        database = self.directory / "ovnsb_db.db"
        subprocess.run(["ovsdb-tool", "create", str(database), "/usr/share/ovn/ovn-sb.ovsschema"],
                       check=True, capture_output=True)
        self._spawn(["ovsdb-server", str(database), f"--remote=punix:{self.socket}",
                     f"--unixctl={self.directory / 'ovnsb_db.ctl'}",
                     f"--log-file={self.directory / 'ovsdb-server-sb.log'}", "-vconsole:off"])
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            assert time.monotonic() < deadline, "the SB ovsdb-server did not start"
            time.sleep(0.02)
        self._spawn(["ovn-northd", f"--ovnnb-db={self.nb.remote}",
                     f"--ovnsb-db={self.sb_remote}", f"--unixctl={self.directory / 'northd.ctl'}",
                     f"--log-file={self.directory / 'northd.log'}", "-vconsole:off"])

    def _spawn(self, argv: list[str]) -> None:
        self._processes.append(subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True))

    def stop(self) -> None:
        for process in reversed(self._processes):
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()

    def sync(self, timeout: int = 20) -> None:
        """Wait until northd has compiled everything NB holds now."""
        self.nb.nbctl(f"--timeout={timeout}", "--wait=sb", "sync", timeout=timeout + 10)

    def lflows(self, datapath: str) -> str:
        done = subprocess.run(["ovn-sbctl", f"--db={self.sb_remote}", "lflow-list", datapath],
                              capture_output=True, text=True, timeout=30, check=True)
        return done.stdout

    def reaches(self, datapath: str, source: Endpoint, target: Endpoint, l4: str, *,
                ct: tuple[str, ...] = ("new", "new")) -> bool:
        """Whether OVN delivers the packet (`microflow`) to `target`'s port, once northd has
        compiled what NB holds now; a match OVN cannot parse fails."""
        self.sync()
        out, err = self.trace(datapath, microflow(source, target, l4), ct=ct)
        assert "parsing expression failed" not in err, err
        return f'output("{target.port}")' in out

    def trace(self, datapath: str, microflow: str, *, ct: tuple[str, ...] = ("new", "new"),
              timeout: float = 30) -> tuple[str, str]:
        """(ovn-trace's minimal output, its stderr) for `microflow` entering `datapath`;
        `ct`: the connection tracking state each successive ct_next reports."""
        done = subprocess.run(
            ["ovn-trace", f"--db={self.sb_remote}", "--minimal",
             *(f"--ct={flags}" for flags in ct), datapath, microflow],
            capture_output=True, text=True, timeout=timeout, check=True)
        return done.stdout, done.stderr


@contextlib.contextmanager
def running(directory: pathlib.Path, nb: NbServer) -> Iterator[Northd]:
    """A started `Northd` (SB and ovn-northd) on `nb`, stopped afterwards."""
    daemon = Northd(directory=directory, nb=nb)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
