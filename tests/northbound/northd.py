"""ovn-northd and a southbound ovsdb-server of a test's own, to see NB rows as OVN reads them.

ovn-northd compiles NB (ACLs included) into SB logical flows; `ovn-trace` loads every flow,
parsing each match with OVN's own expression parser (a match it cannot parse is a warning on
its stderr), and follows a packet through the pipelines. No chassis is involved: the
verdicts are OVN's logic, not a datapath's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import subprocess
import time
from collections.abc import Iterator

from ovnk_secondary.northbound import servers


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
    def __init__(self, *, directory: pathlib.Path, nb: servers.NbServer) -> None:
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

    def sync(self) -> None:
        """Wait until northd has compiled everything NB holds now."""
        self.nb.nbctl("--timeout=20", "--wait=sb", "sync")

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
              ) -> tuple[str, str]:
        """(ovn-trace's minimal output, its stderr) for `microflow` entering `datapath`;
        `ct`: the connection tracking state each successive ct_next reports."""
        done = subprocess.run(
            ["ovn-trace", f"--db={self.sb_remote}", "--minimal",
             *(f"--ct={flags}" for flags in ct), datapath, microflow],
            capture_output=True, text=True, timeout=30, check=True)
        return done.stdout, done.stderr


@contextlib.contextmanager
def running(directory: pathlib.Path, nb: servers.NbServer) -> Iterator[Northd]:
    """A started `Northd` (SB and ovn-northd) on `nb`, stopped afterwards."""
    daemon = Northd(directory=directory, nb=nb)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
