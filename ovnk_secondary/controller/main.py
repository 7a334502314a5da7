"""`ovnk-secondary controller`: flags, logging, and running kopf with the reconciler.

    ovnk-secondary controller --ovn-nb tcp:HOST:6641 [--kubeconfig PATH]
                              [--resync-period S] [--health-port P]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

import kopf

from ovnk_secondary import errors
from ovnk_secondary.controller import apiclient, handlers, health, reconciler
from ovnk_secondary.northbound import client

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ovn-nb", required=True, metavar="REMOTE",
                        help="OVN northbound database, e.g. tcp:10.0.0.1:6641 or unix:/path")
    parser.add_argument("--kubeconfig", metavar="PATH",
                        help="kubeconfig (default: in-cluster account, $KUBECONFIG, "
                        "~/.kube/config)")
    parser.add_argument("--resync-period", type=float, default=300.0, metavar="S",
                        help="seconds between full syncs (default 300)")
    parser.add_argument("--health-port", type=int, default=8080, metavar="P",
                        help="port of /healthz and /readyz (default 8080; 0 disables)")
    parser.add_argument("--nb-timeout", type=float, default=10.0, metavar="S",
                        help="seconds to wait for an NB connection or transaction (default 10)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    if args.resync_period <= 0:
        raise errors.InvalidConfig(f"--resync-period {args.resync_period} must be positive")
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":  # kopf says "Handler ... succeeded" for every pod event
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    credentials = apiclient.load_credentials(args.kubeconfig)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(ovn_nb=args.ovn_nb, credentials=credentials,
                    resync_period=args.resync_period, health_port=args.health_port,
                    nb_timeout=args.nb_timeout, stop=stop)

    asyncio.run(main())
    return 0


async def serve(
    *,
    ovn_nb: str,
    credentials: apiclient.Credentials,
    resync_period: float,
    stop: asyncio.Event,
    health_port: int = 0,
    health_host: str = "0.0.0.0",
    nb_timeout: float = 10.0,
    started: asyncio.Event | None = None,
) -> reconciler.Reconciler:
    """Run until `stop` is set; returns the reconciler (for tests and benchmarks)."""
    northbound = client.Northbound(remote=ovn_nb, timeout=nb_timeout)
    api = apiclient.ApiClient(credentials)
    policy = reconciler.Reconciler(northbound=northbound, api=api, resync_period=resync_period)
    registry = kopf.OperatorRegistry()
    handlers.register(registry, policy=policy, credentials=credentials)
    settings = kopf.OperatorSettings()
    settings.posting.enabled = False  # our own Events say what to fix; kopf's add noise
    settings.watching.server_timeout = 300
    settings.persistence.diffbase_storage = handlers.NoDiffBase()  # no change handlers
    # kopf keeps a worker per object (its task, queue and last event body) until the object
    # has been quiet this long (default 5 s): during a burst of pod creations that held
    # thousands of them. Our handlers return at once, so a short idle time costs nothing.
    settings.queueing.idle_timeout = 0.2
    runner = await health.start(host=health_host, port=health_port, policy=policy) \
        if health_port else None
    logger.info("controller starting: OVN NB %s, Kubernetes API %s, resync every %gs",
                ovn_nb, credentials.server, resync_period)
    if started is not None:
        started.set()
    tasks = [
        asyncio.create_task(kopf.operator(registry=registry, settings=settings,
                                          clusterwide=True, standalone=True, stop_flag=stop)),
        asyncio.create_task(policy.run_background(stop=stop)),
    ]
    try:
        await stop.wait()
    finally:
        stop.set()
        done, pending = await asyncio.wait(tasks, timeout=30)
        for task in pending:
            task.cancel()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                logger.error("controller task failed: %r", task.exception())
        if runner is not None:
            await runner.cleanup()
        await api.close()
        await policy.aclose()
        with contextlib.suppress(Exception):
            northbound.close()
        logger.info("controller stopped")
    return policy
