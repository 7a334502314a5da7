"""Real-time scheduling for the sandbox's datapath and its probes (a sandbox component).

**Why.** On a real node OVS forwards in the kernel (the openvswitch module, in softirq), ahead
of every process. The sandbox has OVS's userspace datapath, whose ports (veths, the underlay
NICs) are not PMD ports: ovs-vswitchd's **main thread** forwards their packets, between its
OpenFlow and OVSDB work (`dpif_netdev_run`, OVS `lib/dpif-netdev.c`). On a small machine that
runs three nodes, the control plane and Kubernetes, that thread waits in the run queue while
pods start: measured during aborted migrations (a target pod started and deleted, nothing
switched) on two CPUs, the thread waited 40-80 ms in one go and pings saw 60-160 ms without
a reply, against 21 ms without the pod start; the `ping` measuring it was starved alike.
Neither is OVN's or the product's behaviour, so both run **SCHED_FIFO**: ovs-vswitchd's main
thread in every chassis and in the external host (`DATAPATH_PRIORITY`) and the sandbox's
measuring probes (`PROBE_PRIORITY`, above it: `vms.ping_in_background`, the benchmarks).
ovn-controller, the agent and everything else stay as a real node has them. A probe made
real-time must block while it waits, never spin: a spinning probe at priority 20 takes the
CPU from the datapath and from every ordinary task (`vms.ping_in_background` says which ping
did that).

**How.** `sched_setscheduler(2)`. A kernel with RT group scheduling (`CONFIG_RT_GROUP_SCHED`)
with cgroup v1 lets a thread be real-time only in a cpu cgroup with an RT budget
(`cpu.rt_runtime_us`, Documentation/scheduler/sched-rt-group.rst), and Docker gives its
containers none; such threads move to one cpu cgroup of this machine, `CGROUP` (cgroup v1
moves threads, not processes, between cpu cgroups: `tasks`), whose budget is what its parent
has left, up to `BUDGET` of each CPU, so that a runaway thread is still throttled. Other
kernels need no cgroup. Threads the moved one creates stay in its cgroup; ovs-vswitchd's are
not real-time (SCHED_RESET_ON_FORK), a probe's are.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

CPU_HIERARCHY = pathlib.Path("/sys/fs/cgroup/cpu")  # cgroup v1's cpu controller
CGROUP = CPU_HIERARCHY / "ovnk-sandbox-realtime"
BUDGET = 0.9  # of each CPU's time per period, at most
DATAPATH_PRIORITY = 10
PROBE_PRIORITY = 20


# False: `vms.probe_in_background` leaves probes as they start (a benchmark's comparison)
probes = True


class RealtimeError(Exception):
    """A thread could not be made real-time; the message says why and what the host lacks."""


def _budgeted_cgroup() -> pathlib.Path | None:
    """`CGROUP`, created with an RT budget, if this host's kernel needs one (cgroup v1 with RT
    group scheduling), else None. Raises `RealtimeError` if there is no budget to give."""
    if not (CPU_HIERARCHY / "cpu.rt_runtime_us").exists():
        return None
    runtime = CGROUP / "cpu.rt_runtime_us"
    if CGROUP.is_dir() and int(runtime.read_text()) > 0:
        return CGROUP
    CGROUP.mkdir(exist_ok=True)
    period = int((CGROUP / "cpu.rt_period_us").read_text())
    # a parent's budget (a share of the period) bounds the sum of its children's
    parent_share = (int((CPU_HIERARCHY / "cpu.rt_runtime_us").read_text())
                    / int((CPU_HIERARCHY / "cpu.rt_period_us").read_text()))
    taken = sum(int((child / "cpu.rt_runtime_us").read_text())
                / int((child / "cpu.rt_period_us").read_text())
                for child in CPU_HIERARCHY.iterdir()
                if child.is_dir() and child != CGROUP and (child / "cpu.rt_runtime_us").exists())
    share = min(BUDGET, parent_share - taken)
    if share < 0.1:
        raise RealtimeError(
            f"the cpu cgroups beside {CGROUP} hold {taken:.0%} of the real-time budget "
            f"({parent_share:.0%}), leaving too little for the sandbox's datapath")
    runtime.write_text(f"{int(share * period)}\n")
    return CGROUP


def make_realtime(pid: int, priority: int, *, threads_inherit: bool = True) -> None:
    """Make thread `pid` (a host pid/tid) SCHED_FIFO at `priority` (1-99), moving it into the
    budgeted cgroup where the kernel needs one; the threads it creates afterwards are
    SCHED_FIFO too unless not `threads_inherit` (SCHED_RESET_ON_FORK, sched(7)). Raises
    `RealtimeError` saying why it could not (no such thread, or the host refuses: no
    CAP_SYS_NICE, a cgroup v2 with RT group scheduling, no budget left)."""
    policy = os.SCHED_FIFO if threads_inherit else os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
    try:
        cgroup = _budgeted_cgroup()
        if cgroup is not None:
            (cgroup / "tasks").write_text(f"{pid}\n")
        os.sched_setscheduler(pid, policy, os.sched_param(priority))
    except OSError as exc:
        raise RealtimeError(f"thread {pid} stays SCHED_OTHER: {exc}") from exc


def make_normal(pid: int) -> None:
    """Make thread `pid` (a host pid/tid) SCHED_OTHER again (a benchmark's comparison)."""
    os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))


def host_pid(container: str, pid: int) -> int:
    """The host's pid of the process `pid` of `container`'s pid namespace (`NSpid` in
    `/proc/<pid>/status`, proc(5)). Raises `RealtimeError` if there is none."""
    init = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", container],
                          capture_output=True, text=True, check=False).stdout.strip()
    try:
        namespace = os.readlink(f"/proc/{init}/ns/pid")
    except (OSError, ValueError) as exc:
        raise RealtimeError(f"container {container} is not running: {exc}") from exc
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "pid") != namespace:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("NSpid:") and int(line.split()[-1]) == pid:
                    return int(entry.name)
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
    raise RealtimeError(f"no process {pid} in container {container}")


def vswitchd(container: str) -> int:
    """The host's pid of `container`'s ovs-vswitchd (its main thread's tid too). Raises
    `RealtimeError`."""
    read = subprocess.run(["docker", "exec", container, "cat",
                           "/var/run/openvswitch/ovs-vswitchd.pid"],
                          capture_output=True, text=True, check=False)
    if read.returncode != 0 or not read.stdout.strip().isdigit():
        raise RealtimeError(f"no ovs-vswitchd pid file in {container}: {read.stderr.strip()}")
    return host_pid(container, int(read.stdout))


def datapath(container: str) -> None:
    """Make the ovs-vswitchd main thread of `container` (a chassis or the external host)
    real-time at `DATAPATH_PRIORITY`; the threads it starts later (revalidators, handlers)
    are not. Raises `RealtimeError`."""
    make_realtime(vswitchd(container), DATAPATH_PRIORITY, threads_inherit=False)


def probe(pid: int, container: str | None = None) -> None:
    """Make a probe, process `pid` (of `container`'s pid namespace if given, else the host's),
    real-time at `PROBE_PRIORITY`, unless `probes` is off. Where the host refuses, says so
    once on stderr and leaves the probe as it is."""
    if not probes:
        return
    try:
        make_realtime(pid if container is None else host_pid(container, pid), PROBE_PRIORITY)
    except RealtimeError as exc:
        if not _refused:
            _refused.append(str(exc))
            print(f"sandbox: probes run without real-time priority ({exc}): what they "
                  f"measure includes their own waits for a CPU", file=sys.stderr)


_refused: list[str] = []  # why the first probe could not be real-time (said once)


def policy(pid: int) -> str:
    """`SCHED_FIFO`, `SCHED_OTHER`, ... of thread `pid` (a host pid)."""
    names = {getattr(os, name): name for name in ("SCHED_OTHER", "SCHED_FIFO", "SCHED_RR",
                                                  "SCHED_BATCH", "SCHED_IDLE")
             if hasattr(os, name)}
    scheduler = os.sched_getscheduler(pid) & ~getattr(os, "SCHED_RESET_ON_FORK", 0)
    return names.get(scheduler, str(scheduler))
