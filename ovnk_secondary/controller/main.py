"""`ovnk-secondary controller`: flags, logging, and running the informers with the reconciler.

    ovnk-secondary controller --ovn-nb tcp:HOST:6641 [--kubeconfig PATH]
                              [--resync-period S] [--health-port P] [--leader-elect ...]
                              [--migration-strategy per-pod|multi-chassis]

With `--leader-elect`, the controller first waits to hold its Lease (`leaderelection`) and
works only while it holds it; losing it ends the process (exit code 1) for its Deployment to
restart it as a candidate. A standby replica is live and ready (`/readyz` says it stands by):
leadership is not readiness, else a rolling update would wait forever for the new pod.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import logging
import signal
from typing import Any

from ovnk_secondary import cli, errors, migration
from ovnk_secondary.controller import (
    apiclient,
    health,
    informers,
    leaderelection,
    looplag,
    metrics,
    reconciler,
)
from ovnk_secondary.northbound import client

logger = logging.getLogger(__name__)
# gen0 allocations, gen1 and gen2 collections before the next older one (CPython: 700, 10, 10)
GC_THRESHOLDS = (2_000, 10, 1_000_000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ovn-nb", required=True, metavar="REMOTE",
                        help="OVN northbound database, e.g. tcp:10.0.0.1:6641, "
                        "ssl:10.0.0.1:6641 or unix:/path; comma-separated for the members of "
                        "a clustered NB")
    parser.add_argument("--ovn-nb-private-key", metavar="PATH",
                        help="for ssl: remotes, this client's private key (PEM)")
    parser.add_argument("--ovn-nb-certificate", metavar="PATH",
                        help="for ssl: remotes, this client's certificate (PEM)")
    parser.add_argument("--ovn-nb-ca-cert", metavar="PATH",
                        help="for ssl: remotes, the CA certificate that signed NB's (PEM)")
    parser.add_argument("--kubeconfig", metavar="PATH",
                        help="kubeconfig (default: in-cluster account, $KUBECONFIG, "
                        "~/.kube/config)")
    parser.add_argument("--resync-period", type=float, default=300.0, metavar="S",
                        help="seconds between full syncs (default 300)")
    parser.add_argument("--migration-strategy", choices=migration.STRATEGIES,
                        default=migration.DEFAULT_STRATEGY,
                        help="KubeVirt live migration on secondary networks (see README): "
                        "per-pod (OVN-Kubernetes': a port per virt-launcher pod, switched at "
                        "domain-ready) or multi-chassis (OVN's: one port per VM bound on both "
                        "nodes, switched by the guest's RARP); default "
                        f"{migration.DEFAULT_STRATEGY}")
    parser.add_argument("--health-port", type=int, default=8080, metavar="P",
                        help="port of /healthz, /readyz and /metrics (default 8080; 0 "
                        "disables)")
    parser.add_argument("--nb-timeout", type=float, default=10.0, metavar="S",
                        help="seconds to wait for an NB connection or transaction (default 10)")
    parser.add_argument("--leader-elect", action="store_true",
                        help="work only while holding a coordination.k8s.io Lease (run several "
                        "replicas, one active); the Deployment in manifests/ sets it")
    parser.add_argument("--leader-elect-namespace", metavar="NS",
                        help="namespace of the Lease (default: the pod's own namespace, or "
                        f"{leaderelection.DEFAULT_NAMESPACE})")
    parser.add_argument("--leader-elect-name", default=leaderelection.DEFAULT_NAME,
                        metavar="NAME", help="name of the Lease (default %(default)s)")
    parser.add_argument("--leader-elect-lease-duration", type=float, default=15.0, metavar="S",
                        help="seconds a standby waits before taking an unrenewed Lease "
                        "(default 15)")
    parser.add_argument("--leader-elect-renew-deadline", type=float, default=10.0, metavar="S",
                        help="seconds the leader keeps trying to renew before it gives up "
                        "(default 10)")
    parser.add_argument("--leader-elect-retry-period", type=float, default=2.0, metavar="S",
                        help="seconds between attempts to take or renew the Lease (default 2)")
    cli.add_log_level(parser)


def tls_files(args: argparse.Namespace) -> client.Tls | None:
    """The --ovn-nb-* TLS files: all three, or none (InvalidConfig names what is missing)."""
    given = {"--ovn-nb-private-key": args.ovn_nb_private_key,
             "--ovn-nb-certificate": args.ovn_nb_certificate,
             "--ovn-nb-ca-cert": args.ovn_nb_ca_cert}
    if not any(given.values()):
        return None
    missing = [flag for flag, value in given.items() if not value]
    if missing:
        raise errors.InvalidConfig(f"{', '.join(missing)} missing: TLS to NB needs the private "
                                   "key, the certificate and the CA certificate")
    return client.Tls(private_key=args.ovn_nb_private_key,
                      certificate=args.ovn_nb_certificate, ca_cert=args.ovn_nb_ca_cert)


def run(args: argparse.Namespace) -> int:
    if args.resync_period <= 0:
        raise errors.InvalidConfig(f"--resync-period {args.resync_period} must be positive")
    tls = tls_files(args)
    client.check_remote(args.ovn_nb, tls)  # before anything starts: say what to fix
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # CPython's oldest-generation collections scan every object (the NB copy alone is
    # millions at 10,000 pods) and ran each time the heap had grown by a quarter: 22 pauses of
    # 0.1-1 s holding the GIL during a burst of 10,000 pods (network_bench). Young garbage is
    # still collected as usual; the full collection runs after each full sync instead.
    gc.set_threshold(*GC_THRESHOLDS)
    # What the process holds before it works (modules, classes, functions: ~70,000 objects)
    # lives as long as it does: out of every collection. Each full collection (after each full
    # sync, on the event loop) scanned them again: ~30 ms of the loop (network_bench).
    gc.collect()
    gc.freeze()
    election = None
    if args.leader_elect:
        try:
            election = leaderelection.Config(
                namespace=args.leader_elect_namespace or leaderelection.default_namespace(),
                name=args.leader_elect_name, lease_duration=args.leader_elect_lease_duration,
                renew_deadline=args.leader_elect_renew_deadline,
                retry_period=args.leader_elect_retry_period)
        except ValueError as exc:
            raise errors.InvalidConfig(f"--leader-elect-*: {exc}") from None
    credentials = apiclient.load_credentials(args.kubeconfig)

    async def main() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        lost = asyncio.Event()
        await serve(ovn_nb=args.ovn_nb, credentials=credentials,
                    resync_period=args.resync_period, health_port=args.health_port,
                    nb_timeout=args.nb_timeout, stop=stop, election=election, nb_tls=tls,
                    lost_lease=lost, migration_strategy=args.migration_strategy)
        return lost.is_set()

    return 1 if asyncio.run(main()) else 0


def _task_ended(name: str, stop: asyncio.Event, task: asyncio.Task[Any]) -> None:
    if not stop.is_set():
        failure = None if task.cancelled() else task.exception()
        logger.log(logging.ERROR if failure else logging.INFO, "%s ended%s: stopping", name,
                   f" ({failure!r})" if failure else "")
    stop.set()


async def serve(
    *,
    ovn_nb: str,
    credentials: apiclient.Credentials,
    resync_period: float,
    stop: asyncio.Event,
    health_port: int = 0,
    health_host: str = "0.0.0.0",
    nb_timeout: float = 10.0,
    nb_tls: client.Tls | None = None,
    started: asyncio.Event | None = None,
    election: leaderelection.Config | None = None,
    lost_lease: asyncio.Event | None = None,
    migration_strategy: str = migration.DEFAULT_STRATEGY,
) -> reconciler.Reconciler:
    """Run until `stop` is set; returns the reconciler (for tests and benchmarks).

    With `election`, work starts only once the Lease is held, and a lost Lease sets `stop` and
    `lost_lease`.
    """
    northbound = client.Northbound(remote=ovn_nb, timeout=nb_timeout, tls=nb_tls,
                                   on_transaction=metrics.nb_transaction)
    api = apiclient.ApiClient(credentials)
    policy = reconciler.Reconciler(northbound=northbound, api=api, resync_period=resync_period,
                                   migration_strategy=migration_strategy)
    elector = None if election is None else leaderelection.LeaderElector(
        apiclient.ApiClient(credentials), election)
    runner = await health.start(host=health_host, port=health_port, policy=policy,
                                elector=elector) if health_port else None
    logger.info("controller starting: OVN NB %s, Kubernetes API %s, resync every %gs, "
                "live migration %s", ovn_nb, credentials.server, resync_period,
                migration_strategy)
    if started is not None:
        started.set()
    tasks: list[asyncio.Task[Any]] = []
    lag = asyncio.create_task(looplag.LoopLag().run(stop))  # from the start: standby too
    try:
        if elector is not None and not await elector.acquire(stop):
            return policy  # stopped while standing by: nothing was started
        metrics.LEADER.set(1)
        nad_sink, pod_sink = policy.informer_sinks()
        tasks = [
            asyncio.create_task(policy.run_background(stop=stop)),
            # their first list is compared with what the first full sync found
            asyncio.create_task(informers.run(api, apiclient.NAD_PATH, nad_sink, stop,
                                              what="NAD", after=policy.synced)),
            asyncio.create_task(informers.run(api, apiclient.PODS_PATH, pod_sink, stop,
                                              what="pod", after=policy.synced)),
            asyncio.create_task(informers.run(api, apiclient.IPAMCLAIMS_PATH,
                                              policy.claim_sink(), stop, what="IPAMClaim",
                                              after=policy.synced)),
            asyncio.create_task(informers.run(api, apiclient.MULTI_NETWORK_POLICIES_PATH,
                                              policy.policies.policy_sink(), stop,
                                              what="MultiNetworkPolicy", after=policy.synced)),
            asyncio.create_task(informers.run(api, apiclient.NAMESPACES_PATH,
                                              policy.policies.namespace_sink(), stop,
                                              what="namespace", after=policy.synced)),
        ]
        for task, name in zip(tasks, ("northbound sync", "NAD watch", "pod watch",
                                      "IPAMClaim watch", "MultiNetworkPolicy watch",
                                      "namespace watch"), strict=True):
            # the end (or a crash) of any task is our stop too, else the Lease is never
            # released while nothing works
            task.add_done_callback(functools.partial(_task_ended, name, stop))
        if elector is not None:
            held_to_the_end = await elector.hold(stop)
            if not held_to_the_end and lost_lease is not None:
                lost_lease.set()
        else:
            await stop.wait()
    finally:
        stop.set()
        metrics.LEADER.set(0)  # at once: what follows only winds down
        if tasks:
            for task in tasks[1:]:
                task.cancel()  # the watches wait on their streams: nothing to finish
            done, pending = await asyncio.wait(tasks, timeout=30)
            for task in pending:
                task.cancel()
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    logger.error("controller task failed: %r", task.exception())
        if elector is not None:
            await elector.release()  # only once nothing of ours writes any more
            await elector.api.close()
        await lag
        if runner is not None:
            await runner.cleanup()
        await api.close()
        await policy.aclose()
        with contextlib.suppress(Exception):
            northbound.close()
        logger.info("controller stopped")
    return policy
