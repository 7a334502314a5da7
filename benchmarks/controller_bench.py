"""Controller benchmark (not a test): N pods on one layer2 network, from creation to NB port.

    .venv/bin/python benchmarks/controller_bench.py --pods 1000 [--pods 10000]
        [--resync-period S] [--controller-python OTHER_CHECKOUT/.venv/bin/python]

Per run, on the host: a fresh NB ovsdb-server, a fresh kube-apiserver with etcd
(`benchapi`), and the controller as its own process (`ovnk-secondary
controller`). Reports pods/s from pod creation to port committed in NB (p50/p99 latency), the
duration of a full resync with nothing to change (from the controller's log), the controller's
peak RSS, and a baseline measured in the same run: the same ports inserted with raw ovsdbapp,
one transaction per port.

"Committed" is observed independently of the controller: a plain python-ovs IDL of its own,
monitoring only Logical_Switch_Port names, stamps each port when the update inserting it
arrives (a row reaches a monitoring client only after its transaction committed). Latency
runs from just before the pod's create call to that stamp; throughput is the number of
ports over the span from the first create call to the last commit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import benchapi  # beside this file (benchmarks/ is the script's directory)
import ovs.poller
from ovs.db import idl as ovs_idl
from ovsdbapp.backend.ovs_idl import connection
from ovsdbapp.schema.ovn_northbound import impl_idl

from ovnk_secondary.northbound import servers

NAD = {"cniVersion": "0.3.1", "name": "bench", "type": "ovn-k8s-cni-overlay",
       "topology": "layer2", "subnets": "10.128.0.0/14", "netAttachDefName": "bench/bench"}


class CommitWatcher(ovs_idl.Idl):  # type: ignore[misc]
    """An independent NB client that records when each row of `tables` appears (`seen`) and
    goes (`deleted`), by name.

    `columns` registers more (table: columns) to read, e.g. for a predicate over the whole
    state: `on_change(stamp)`, when set, is called in the watcher's thread after each batch of
    updates (`stamp`: when the batch was read), so it reads consistent rows. Other threads
    read rows holding `lock`."""

    def __init__(self, remote: str, tables: tuple[str, ...] = ("Logical_Switch_Port",),
                 columns: Mapping[str, Sequence[str]] | None = None) -> None:
        helper = ovs_idl.SchemaHelper(location=str(servers.SCHEMA))
        registered: dict[str, set[str]] = {table: {"name"} for table in tables}
        for table, names in (columns or {}).items():
            registered.setdefault(table, set()).update(names)
        for table, names in registered.items():
            helper.register_columns(table, sorted(names))
        super().__init__(remote, helper)
        self._named = frozenset(tables)
        self.seen: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self.lock = threading.Lock()
        self.on_change: Callable[[float], None] | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def notify(self, event: str, row: object, updates: object = None) -> None:
        if getattr(row, "_table").name not in self._named:  # noqa: B009
            return
        name = getattr(row, "name")  # noqa: B009
        if event == ovs_idl.ROW_CREATE:
            self.seen.setdefault(name, time.monotonic())
        elif event == ovs_idl.ROW_DELETE:
            self.deleted.setdefault(name, time.monotonic())

    def _run(self) -> None:
        while not self._stop:
            with self.lock:
                seqno = self.change_seqno
                self.run()
                if self.on_change is not None and self.change_seqno != seqno:
                    self.on_change(time.monotonic())
            poller = ovs.poller.Poller()
            self.wait(poller)
            poller.timer_wait(100)
            poller.block()

    def stop(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.close()


def baseline(remote: str, count: int) -> float:
    """Ports per second with raw ovsdbapp, one transaction per port (OVN-K's pattern)."""
    idl = connection.OvsdbIdl.from_server(remote, "OVN_Northbound")
    api = type("Api", (impl_idl.OvnNbApiIdlImpl,), {"_ovsdb_connection": None})(
        connection.Connection(idl=idl, timeout=30))
    api.ls_add("baseline").execute(check_error=True)
    started = time.perf_counter()
    for i in range(count):
        address = f"0a:58:0a:00:00:01 10.0.{i // 250}.{i % 250}"
        with api.transaction(check_error=True) as txn:
            txn.add(api.lsp_add(
                "baseline", f"baseline_{i}", addresses=[address], port_security=[address],
                external_ids={"namespace": "bench", "pod": "true"},
                options={"requested-chassis": "node1", "iface-id-ver": str(i)}))
    elapsed = time.perf_counter() - started
    api.ovsdb_connection.stop(timeout=5)
    return count / elapsed


async def create_pods(api: benchapi.BenchApi, count: int, created: dict[str, float]) -> float:
    """Create the NAD, then `count` pods (16 at a time); `created` gets each pod's start time.
    Returns the seconds the API server took to accept all the pods."""
    async with api.session() as session:
        await session.post("/apis/k8s.cni.cncf.io/v1/namespaces/bench/"
                           "network-attachment-definitions",
                           json={"apiVersion": "k8s.cni.cncf.io/v1",
                                 "kind": "NetworkAttachmentDefinition",
                                 "metadata": {"name": "bench", "namespace": "bench"},
                                 "spec": {"config": json.dumps(NAD)}})
        await asyncio.sleep(1.0)
        limit = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with limit:
                name = f"pod{i}"
                created[f"bench.bench_bench_{name}"] = time.monotonic()
                async with session.post("/api/v1/namespaces/bench/pods", json={
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": "bench",
                                 "annotations": {"k8s.v1.cni.cncf.io/networks": "bench"}},
                    "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "i"}]},
                }) as response:
                    assert response.status == 201, await response.text()

        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(count)))
        return time.monotonic() - started


def peak_rss_mb(pid: int) -> float:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(found[1]) / 1024 if found else float("nan")


def run(count: int, workdir: pathlib.Path, resync_period: float = 15,
        controller_python: str = sys.executable) -> dict[str, float]:
    nb = servers.NbServer(directory=workdir / "nb")
    nb.start()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    api = benchapi.BenchApi(workdir)
    log = workdir / "controller.log"
    controller = None
    try:
        api.start(["bench"])
        with log.open("w") as output:
            controller = subprocess.Popen(
                [controller_python, "-m", "ovnk_secondary", "controller", "--ovn-nb", nb.remote,
                 "--kubeconfig", str(api.controller_kubeconfig), "--health-port", "0",
                 "--resync-period", str(resync_period)],
                stdout=output, stderr=subprocess.STDOUT, env=env,
                cwd=workdir)  # not this checkout: `-m` imports from the working directory
        watcher = CommitWatcher(nb.remote)
        created: dict[str, float] = {}
        committed = watcher.seen
        loop = asyncio.new_event_loop()
        time.sleep(2)  # the controller's start-up sync
        task = loop.create_task(create_pods(api, count, created))
        deadline = time.monotonic() + max(120, count / 20)
        accepted_in = loop.run_until_complete(task)
        while len(committed) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        loop.close()
        latencies = sorted(committed[n] - created[n] for n in created if n in committed)
        span = max(committed[n] for n in created if n in committed) - min(created.values())
        # The first sync to finish may have started before the last pods were committed:
        # the resync of unchanged ports is the one after it (it reports no change).
        syncs_before = len(re.findall(r"full sync \d+ done", log.read_text()))
        sync_deadline = time.monotonic() + min(90, 2 * resync_period)
        resync = waited = float("nan")
        changed = ""
        while time.monotonic() < sync_deadline:
            lines = re.findall(r"full sync \d+ done in ([0-9.]+)s \(after ([0-9.]+)s[^)]*\): "
                               r"(.*)", log.read_text())
            if len(lines) > syncs_before + 1:
                seconds, after, changed = lines[syncs_before + 1]
                resync, waited = float(seconds), float(after)
                break
            time.sleep(0.2)
        if changed != "nothing to change":
            print(f"warning: the measured resync changed something: {changed!r}", flush=True)
        rss = peak_rss_mb(controller.pid)
        watcher.stop()
        base = baseline(nb.remote, count)
        return {
            "pods": count,
            "committed": len(latencies),
            "pods_per_s": len(latencies) / span,
            # what the API server itself accepts: no controller can commit pods faster
            "api_creates_per_s": count / accepted_in,
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
            "resync_s": resync,
            "resync_waited_s": waited,
            "peak_rss_mb": rss,
            "baseline_ports_per_s": base,
        }
    finally:
        stop(controller)
        api.stop()
        nb.stop()


def stop(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, action="append",
                        help="number of pods (repeatable; default 1000 and 10000)")
    parser.add_argument("--resync-period", type=float, default=15, metavar="S",
                        help="the controller's full-sync period (default 15 s, so that the "
                        "resync of unchanged ports is measured; at 10,000 pods the burst "
                        "outlasts it and meets full syncs, which hold pod work while they run)")
    parser.add_argument("--controller-python", default=sys.executable, metavar="PATH",
                        help="the Python that runs the controller (default: this one); another "
                        "checkout's venv measures that checkout's controller with this harness, "
                        "for before/after comparisons on the same machine")
    args = parser.parse_args()
    results = []
    for count in args.pods or [1000, 10000]:
        with tempfile.TemporaryDirectory(prefix="ovnk-bench-") as workdir:
            result = run(count, pathlib.Path(workdir), args.resync_period,
                         args.controller_python)
        result["ratio_to_baseline"] = result["pods_per_s"] / result["baseline_ports_per_s"]
        results.append(result)
        print(json.dumps({k: round(v, 3) for k, v in result.items()}), flush=True)
    if len(results) > 1:
        cost = [1 / r["pods_per_s"] for r in results]
        print(f"per-pod cost at {results[-1]['pods']:.0f} / at {results[0]['pods']:.0f}: "
              f"{cost[-1] / cost[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
