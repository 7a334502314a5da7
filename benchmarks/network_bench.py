"""Network benchmark (not a test): 1,000 networks and 10,000 pods through the controller.

    .venv/bin/python benchmarks/network_bench.py [--networks 1000] [--pods 10000] [--single 100]
                                                 [--workdir DIR] [--profile]

On the host, per run: a fresh NB ovsdb-server, a fresh kube-apiserver with etcd
(`benchapi`), and the controller as its own process with leader election
on (`ovnk-secondary controller --leader-elect`, resync every 300 s: what is measured is the
per-event path, not the full sync). Phases, in order:

1. burst: `--networks` NADs (one network and one /24 each) created at once; time from the
   first create call to the last switch committed in NB (`burst_s`), and to the last NAD
   carrying the controller's accepted-config annotation, its last API write for the burst
   (`burst_settled_s`);
2. steady state with those networks present, once the burst has settled: `--single` NADs
   created one after another; per NAD, create call -> switch committed (p50/p99);
3. `--pods` pods spread over the burst's networks, created at once: pods/s and p99 from
   create call to port committed; the controller's peak RSS after it;
4. deletion of the burst's NADs (their pods stay): time until NB holds none of their switches.

Throughout: NB transactions of the controller that failed (its /metrics counter), leadership
changes (its /metrics leader gauge and log), and the event loop's worst lag (a 10 ms ticker in
the controller, /metrics gauge over the last 5-10 s, scraped every 0.5 s: the worst scrape of a
phase). "Committed" is observed by an independent NB client (see controller_bench).

Baselines in the same run, with raw ovsdbapp against a second fresh NB: the same switches
created in one transaction and one transaction per switch, and deleted in one transaction;
and the API server's own part: the time it took to accept the burst's creations
(`burst_api_s`) and deletions (`delete_api_s`), which no controller can beat.

The controller's own part is what follows the API server's last answer: `burst_tail_s`
(`burst_s - burst_api_s`) and `delete_tail_s`, and their ratios to the one-transaction
baselines (`burst_tail_ratio`, `delete_tail_ratio`): how long after the last NAD is in the API
the controller takes to have NB hold the result. `<phase>_worst_lag_ms` is each phase's worst
loop lag, `<phase>_worst_busy_ms` the loop thread's worst own CPU time between two ticks.
Each phase ends when its last NB change is observed: `--pods 0` or `--single 0` skip a phase
(quicker iterations; the figures of record are full-size).

`--profile` (needs `py-spy` in the venv: `.venv/bin/pip install py-spy`, and ptrace rights)
records the controller per phase with py-spy, every thread, into the work directory
(`profile-<phase>.txt`, collapsed stacks, one line per stack and its sample count).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import benchapi  # beside this file (benchmarks/ is the script's directory)
import controller_bench
from ovsdbapp.backend.ovs_idl import connection
from ovsdbapp.schema.ovn_northbound import impl_idl

from ovnk_secondary.controller.reconciler import ACCEPTED_CONFIG
from ovnk_secondary.northbound import servers

NAD_PATH = "/apis/k8s.cni.cncf.io/v1/namespaces/{ns}/network-attachment-definitions"


def _nad(namespace: str, name: str, index: int) -> dict[str, object]:
    config = {"cniVersion": "0.3.1", "name": name, "type": "ovn-k8s-cni-overlay",
              "topology": "layer2", "subnets": f"10.{100 + index // 250}.{index % 250}.0/24",
              "netAttachDefName": f"{namespace}/{name}"}
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"config": json.dumps(config)}}


def _switch(name: str) -> str:
    return f"{name}_ovn_layer2_switch"


class Metrics:
    """Scrapes the controller's /metrics every 0.5 s; phases read the worst values seen."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst_lag = 0.0
        self.worst_busy = 0.0
        self.leader_dropped = False
        self.failures = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def scrape(self) -> dict[str, float]:
        text = urllib.request.urlopen(self.url, timeout=5).read().decode()
        values = {}
        for name in ("ovnk_secondary_event_loop_lag_worst_seconds",
                     "ovnk_secondary_event_loop_busy_worst_seconds", "ovnk_secondary_leader",
                     "ovnk_secondary_nb_transaction_failures_total"):
            found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
            values[name] = float(found[1]) if found else float("nan")
        return values

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                values = self.scrape()
            except OSError:
                continue
            self.fold(values)
            self.leader_dropped |= values["ovnk_secondary_leader"] != 1
            self.failures = values["ovnk_secondary_nb_transaction_failures_total"]

    def fold(self, values: dict[str, float]) -> None:
        self.worst_lag = max(self.worst_lag, values["ovnk_secondary_event_loop_lag_worst_seconds"])
        self.worst_busy = max(self.worst_busy,
                              values["ovnk_secondary_event_loop_busy_worst_seconds"])

    def phase(self) -> None:
        """Start a phase: the worst lag is the phase's own from now on."""
        self.worst_lag = self.worst_busy = 0.0

    def end_phase(self, result: dict[str, float], name: str) -> None:
        """The phase's worst lag and loop hold, with one last scrape (the gauges cover the
        last 5-10 s)."""
        self.fold(self.scrape())
        result[f"{name}_worst_lag_ms"] = self.worst_lag * 1000
        result[f"{name}_worst_busy_ms"] = self.worst_busy * 1000

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Profiler:
    """py-spy recording the controller during one phase at a time (`--profile`)."""

    def __init__(self, pid: int | None, workdir: pathlib.Path) -> None:
        self.pid = pid
        self.workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, phase: str) -> None:
        if self.pid is None:
            return
        py_spy = pathlib.Path(sys.executable).with_name("py-spy")
        self._process = subprocess.Popen(
            [str(py_spy), "record", "--pid", str(self.pid), "--rate", "200", "--threads",
             "--format", "raw", "--nonblocking", "--output",
             str(self.workdir / f"profile-{phase}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attached before the phase starts

    def stop(self) -> None:
        if self._process is not None:
            self._process.send_signal(2)  # SIGINT: py-spy writes its output
            self._process.wait(30)
            self._process = None


def baseline(remote: str, count: int) -> dict[str, float]:
    """Raw ovsdbapp: the same switches in one transaction, one per switch; deletion in one."""
    idl = connection.OvsdbIdl.from_server(remote, "OVN_Northbound")
    api = type("Api", (impl_idl.OvnNbApiIdlImpl,), {"_ovsdb_connection": None})(
        connection.Connection(idl=idl, timeout=60))

    def switches(prefix: str) -> list[tuple[str, dict[str, str], dict[str, str]]]:
        return [(_switch(f"{prefix}{i:04d}"),
                 {"k8s.ovn.org/network": f"{prefix}{i:04d}", "k8s.ovn.org/topology": "layer2",
                  "k8s.ovn.org/role": "secondary"},
                 {"subnet": f"10.{100 + i // 250}.{i % 250}.0/24"}) for i in range(count)]

    started = time.perf_counter()
    with api.transaction(check_error=True) as txn:
        for name, ids, other in switches("one"):
            txn.add(api.ls_add(name, external_ids=ids, other_config=other))
    one = time.perf_counter() - started
    started = time.perf_counter()
    for name, ids, other in switches("each"):
        api.ls_add(name, external_ids=ids, other_config=other).execute(check_error=True)
    each = time.perf_counter() - started
    started = time.perf_counter()
    with api.transaction(check_error=True) as txn:
        for name, _, _ in switches("one"):
            txn.add(api.ls_del(name))
    deleted = time.perf_counter() - started
    api.ovsdb_connection.stop(timeout=5)
    return {"baseline_one_txn_s": one, "baseline_txn_each_s": each,
            "baseline_delete_one_txn_s": deleted}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * q) - 1)]


def _until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


async def _post_all(api: benchapi.BenchApi, items: list[tuple[str, dict[str, object]]],
                    stamps: dict[str, float], stamp_key: object, concurrency: int = 32) -> None:
    async with api.session() as session:
        limit = asyncio.Semaphore(concurrency)

        async def one(path: str, body: dict[str, object]) -> None:
            async with limit:
                stamps[stamp_key(body)] = time.monotonic()  # type: ignore[operator]
                async with session.post(path, json=body) as response:
                    assert response.status == 201, await response.text()

        await asyncio.gather(*(one(path, body) for path, body in items))


async def _settled(api: benchapi.BenchApi, namespace: str, names: set[str],
                   timeout: float) -> bool:
    """Until every NAD named carries the controller's ACCEPTED_CONFIG annotation: its last write
    for a new NAD, so the burst's work (and its PATCHes to the API server) is over."""
    deadline = time.monotonic() + timeout
    async with api.session() as session:
        while time.monotonic() < deadline:
            async with session.get(NAD_PATH.format(ns=namespace)) as response:
                items = (await response.json())["items"]
            done = {item["metadata"]["name"] for item in items
                    if ACCEPTED_CONFIG in (item["metadata"].get("annotations") or {})}
            if names <= done:
                return True
            await asyncio.sleep(0.25)
    return False


async def _delete_all(api: benchapi.BenchApi, paths: list[str], concurrency: int = 32) -> None:
    async with api.session() as session:
        limit = asyncio.Semaphore(concurrency)

        async def one(path: str) -> None:
            async with limit, session.delete(path) as response:
                assert response.status in (200, 202), await response.text()

        await asyncio.gather(*(one(p) for p in paths))


def run(networks: int, pods: int, single: int, workdir: pathlib.Path,
        profile: bool = False) -> dict[str, float]:
    nb = servers.NbServer(directory=workdir / "nb")
    nb.start()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    api = benchapi.BenchApi(workdir)
    log = workdir / "controller.log"
    health = _free_port()
    controller = None
    result: dict[str, float] = {"networks": networks, "pods": pods}
    try:
        api.start(["bench", "steady"])
        with log.open("w") as output:
            controller = subprocess.Popen(
                [sys.executable, "-m", "ovnk_secondary", "controller", "--ovn-nb", nb.remote,
                 "--kubeconfig", str(api.controller_kubeconfig), "--health-port", str(health),
                 "--resync-period", "300", "--leader-elect",
                 "--leader-elect-namespace", "ovnk-secondary"],
                stdout=output, stderr=subprocess.STDOUT, env=env)
        watcher = controller_bench.CommitWatcher(
            nb.remote, ("Logical_Switch", "Logical_Switch_Port"))
        ready = f"http://127.0.0.1:{health}/readyz"

        def is_ready() -> bool:
            try:
                return urllib.request.urlopen(ready, timeout=2).status == 200
            except OSError:
                return False

        assert _until(is_ready, 60), f"the controller did not become ready (log: {log})"
        metrics = Metrics(f"http://127.0.0.1:{health}/metrics")
        profiler = Profiler(controller.pid if profile else None, workdir)
        loop = asyncio.new_event_loop()

        # 1. burst
        names = [f"sc{i:04d}" for i in range(networks)]
        created: dict[str, float] = {}
        metrics.phase()
        profiler.start("burst")
        loop.run_until_complete(_post_all(
            api, [(NAD_PATH.format(ns="bench"), _nad("bench", n, i))
                     for i, n in enumerate(names)], created,
            lambda body: body["metadata"]["name"]))  # type: ignore[index]
        # what the API server itself took to accept them: no controller commits sooner
        result["burst_api_s"] = time.monotonic() - min(created.values())
        wanted = [_switch(n) for n in names]
        assert _until(lambda: all(w in watcher.seen for w in wanted), 300), (
            f"{sum(w not in watcher.seen for w in wanted)} switches never came")
        result["burst_s"] = max(watcher.seen[w] for w in wanted) - min(created.values())
        result["burst_tail_s"] = result["burst_s"] - result["burst_api_s"]
        # the burst is over for the controller when its last API write is done: steady state
        assert loop.run_until_complete(_settled(api, "bench", set(names), 300)), (
            "the burst's NADs never all got their accepted-config annotation")
        result["burst_settled_s"] = time.monotonic() - min(created.values())
        profiler.stop()
        metrics.end_phase(result, "burst")

        # 2. steady state (the burst settled): one NAD at a time
        metrics.phase()
        profiler.start("single")
        latencies = []
        for i in range(single):
            name = f"st{i:04d}"
            stamps: dict[str, float] = {}
            loop.run_until_complete(_post_all(
                api, [(NAD_PATH.format(ns="steady"), _nad("steady", name, networks + i))],
                stamps, lambda body: body["metadata"]["name"]))  # type: ignore[index]
            assert _until(lambda n=name: _switch(n) in watcher.seen, 30)
            latencies.append(watcher.seen[_switch(name)] - stamps[name])
        if latencies:
            result["single_p50_ms"] = statistics.median(latencies) * 1000
            result["single_p99_ms"] = _p(latencies, 0.99) * 1000
        profiler.stop()
        metrics.end_phase(result, "single")

        # 3. pods over the burst's networks
        metrics.phase()
        profiler.start("pods")
        pod_created: dict[str, float] = {}

        def pod(i: int) -> dict[str, object]:
            network = names[i % networks]
            return {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"pod{i}", "namespace": "bench",
                                 "annotations": {"k8s.v1.cni.cncf.io/networks": network}},
                    "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "i"}]}}

        loop.run_until_complete(_post_all(
            api, [("/api/v1/namespaces/bench/pods", pod(i)) for i in range(pods)],
            pod_created, lambda body: "bench.{}_bench_{}".format(  # type: ignore[index]
                body["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"],
                body["metadata"]["name"]), concurrency=16))
        assert _until(lambda: all(p in watcher.seen for p in pod_created),
                      max(120, pods / 20)), "pods' ports missing"
        if pods:
            port_latency = [watcher.seen[p] - t for p, t in pod_created.items()]
            span = max(watcher.seen[p] for p in pod_created) - min(pod_created.values())
            result["pods_per_s"] = pods / span
            result["pod_p99_ms"] = _p(port_latency, 0.99) * 1000
        profiler.stop()
        metrics.end_phase(result, "pods")
        result["peak_rss_mb"] = controller_bench.peak_rss_mb(controller.pid)

        # 4. deletion of the burst's NADs
        metrics.phase()
        profiler.start("delete")
        started = time.monotonic()
        loop.run_until_complete(_delete_all(
            api, [NAD_PATH.format(ns="bench") + f"/{n}" for n in names]))
        result["delete_api_s"] = time.monotonic() - started
        assert _until(lambda: all(w in watcher.deleted for w in wanted), 300), (
            "switches left after deleting the NADs")
        result["delete_s"] = max(watcher.deleted[w] for w in wanted) - started
        result["delete_tail_s"] = result["delete_s"] - result["delete_api_s"]
        profiler.stop()
        metrics.end_phase(result, "delete")

        time.sleep(1)  # a last scrape
        # the controller's last /metrics (GC pauses, loop lag histogram) beside its log
        (workdir / "metrics.txt").write_text(
            urllib.request.urlopen(metrics.url, timeout=5).read().decode())
        metrics.stop()
        loop.close()
        watcher.stop()
        text = log.read_text()
        result["failed_transactions"] = metrics.failures
        result["failed_transaction_log_lines"] = len(
            re.findall(r"transaction of \d+ commands failed", text))
        result["leadership_changes"] = float(metrics.leader_dropped) + len(
            re.findall(r"lost Lease", text))
        result["error_lines"] = len(re.findall(r"^(ERROR|Traceback)", text, re.M))
    finally:
        controller_bench.stop(controller)
        api.stop()
        nb.stop()
    base_nb = servers.NbServer(directory=workdir / "nb-baseline")
    base_nb.start()
    try:
        result.update(baseline(base_nb.remote, networks))
    finally:
        base_nb.stop()
    result["burst_ratio"] = result["burst_s"] / result["baseline_one_txn_s"]
    result["delete_ratio"] = result["delete_s"] / result["baseline_delete_one_txn_s"]
    # the controller's own part: after the API server's last answer, against one transaction
    result["burst_tail_ratio"] = result["burst_tail_s"] / result["baseline_one_txn_s"]
    result["delete_tail_ratio"] = result["delete_tail_s"] / result["baseline_delete_one_txn_s"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=10000)
    parser.add_argument("--single", type=int, default=100)
    parser.add_argument("--workdir", type=pathlib.Path,
                        help="keep NB, logs, the controller's log and its last /metrics here "
                             "(default: a temporary directory, removed)")
    parser.add_argument("--profile", action="store_true",
                        help="record the controller with py-spy, per phase, into the work "
                             "directory (profile-<phase>.txt; use with --workdir)")
    args = parser.parse_args()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(args.networks, args.pods, args.single, args.workdir, args.profile)
    else:
        with tempfile.TemporaryDirectory(prefix="ovnk-netbench-") as workdir:
            result = run(args.networks, args.pods, args.single, pathlib.Path(workdir),
                         args.profile)
    print(json.dumps({k: round(v, 3) for k, v in result.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
