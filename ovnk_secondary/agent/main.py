"""`ovnk-secondary node-agent`: the per-node daemon behind the `ovn-k8s-cni-overlay` plugin.

Start-up order matters: connect to the local OVSDB and the Kubernetes API, converge the
bridge-mappings file, clean up or re-plug the ports of a previous run, start keeping the pods'
MTUs equal to their NADs' (`mtus`), and only then open the CNI socket (until then the plugin
answers "try again later", code 11). Running pods keep their traffic across a restart: nothing
is torn down on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import logging
import pathlib
import signal
import uuid
from concurrent import futures
from typing import Any

from ovnk_secondary import cli, errors
from ovnk_secondary.agent import (
    attachments,
    bridgemappings,
    cnibindir,
    health,
    metrics,
    mtus,
    ovs,
    pods,
    server,
)
from ovnk_secondary.cni import protocol

LOG = logging.getLogger("ovnk_secondary.agent")
MAPPINGS_POLL = 5.0  # seconds between looks at the bridge-mappings file (a ConfigMap mount)
MAPPINGS_RESYNC = 60.0  # re-converge even without a change (somebody may have edited OVS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node-name", required=True,
                        help="this node's name (Kubernetes Node and OVN chassis)")
    parser.add_argument("--ovs-db", default="unix:/run/openvswitch/db.sock",
                        help="the local Open_vSwitch database (default: %(default)s)")
    parser.add_argument("--kubeconfig", default=None,
                        help="kubeconfig file (default: in-cluster config, else $KUBECONFIG)")
    parser.add_argument("--bridge-mappings", default=None, metavar="FILE",
                        help="declarative bridge-mappings file (YAML/JSON); re-read on change")
    parser.add_argument("--cni-bin-dir", default=None, metavar="DIR", type=pathlib.Path,
                        help="keep ovn-k8s-cni-overlay installed there (checked every "
                        f"{cnibindir.CHECK_INTERVAL:.0f} s; default: not checked)")
    parser.add_argument("--primary-plugin", choices=cnibindir.PRIMARY_PLUGIN_MODES,
                        default="refuse", help="another product's ovn-k8s-cni-overlay in "
                        "--cni-bin-dir (OVN-Kubernetes' as the primary network): refuse, or "
                        "keep it and chain to it (default: %(default)s)")
    parser.add_argument("--socket", default=protocol.DEFAULT_SOCKET,
                        help="CNI socket path (default: %(default)s)")
    parser.add_argument("--annotation-timeout", type=float, default=120.0, metavar="S",
                        help="ADD: how long to wait for the pod annotation (default: 120)")
    parser.add_argument("--binding-timeout", type=float, default=60.0, metavar="S",
                        help="ADD: how long to wait for ovn-installed (default: 60)")
    parser.add_argument("--tx-checksum-offload", choices=("auto", "on", "off"), default="auto",
                        help="checksum offload on pod interfaces; auto: off with the userspace "
                        "(netdev) datapath, which forwards offloaded checksums unfinished")
    parser.add_argument("--workers", type=int, default=32,
                        help="threads for blocking netlink/OVSDB/API calls (default: 32)")
    parser.add_argument("--health-port", type=int, default=0, metavar="P",
                        help="port of /healthz, /readyz and /metrics (default 0: none; the "
                        "DaemonSet sets one)")
    parser.add_argument("--health-host", default="0.0.0.0", metavar="ADDR",
                        help="address of /healthz, /readyz and /metrics (default: "
                        "%(default)s)")
    cli.add_log_level(parser)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, value in (("--annotation-timeout", args.annotation_timeout),
                        ("--binding-timeout", args.binding_timeout)):
        if value <= 0:
            raise errors.InvalidConfig(f"{name} {value} must be positive (seconds)")
    asyncio.run(serve(args))
    return 0


class PluginKeeper:
    """Keeps our plugin in the node's CNI binary directory (OVN-K's ovnkube-node copies its own
    over it when it starts) and knows why it is not there, if so."""

    def __init__(self, *, directory: pathlib.Path, primary_plugin: str) -> None:
        self.directory = directory
        self.primary_plugin = primary_plugin
        self.error: str | None = "not checked yet"

    def check(self) -> None:
        self.error = cnibindir.check(self.directory, shim=pathlib.Path(cnibindir.SHIM),
                                     primary_plugin=self.primary_plugin)

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await loop.run_in_executor(None, self.check)
            await asyncio.sleep(cnibindir.CHECK_INTERVAL)


class BridgeMappingsLoop:
    """Keeps the node converged to the bridge-mappings file and reports on the Node: its
    annotation says what is applied or why nothing is, and a refused file (invalid, in conflict,
    an uplink that would cut the node off, a move that failed) is also a Warning Event on the
    Node, once per distinct error.

    `netns`: where the node's NICs and ovs-vswitchd are (a path); default: the agent's own.
    """

    def __init__(self, *, path: str, switch: ovs.LocalOvs, reader: pods.PodReader,
                 node_name: str, netns: str | None = None) -> None:
        self.path = path
        self.switch = switch
        self.reader = reader
        self.node_name = node_name
        self.netns = netns
        self._last_text: str | None = None
        self._last_annotation: str | None = None
        self._last_refusal: str | None = None  # the error of the last Event posted
        self.error: str | None = "not applied yet"  # why the file is not in force, if so

    def converge(self, *, force: bool = False) -> None:
        try:
            with open(self.path, encoding="utf-8") as file:
                text = file.read()
        except OSError as exc:
            text = ""
            error: str | None = f"cannot read bridge-mappings file {self.path}: {exc.strerror}"
        else:
            error = None
        if text == self._last_text and not force:
            return
        self._last_text = text
        mappings: tuple[bridgemappings.BridgeMapping, ...] = ()
        value = None
        refused = False
        if error is None:
            try:
                mappings = bridgemappings.parse_file(text, source=self.path)
                value = bridgemappings.apply(self.switch, mappings, source=self.path,
                                             netns=self.netns)
            except errors.OvnkSecondaryError as exc:
                error = str(exc)
                refused = True
            except Exception as exc:  # OVSDB trouble: report, retry at the next resync
                error = f"applying {self.path} failed: {exc}"
                self._last_text = None
        self.error = error
        if refused and error != self._last_refusal:
            self._post_refusal(str(error))
        elif error is None:
            self._last_refusal = None  # the same refusal later is news again
        if error:
            LOG.error("bridge mappings not applied: %s", error)
            mappings = ()
        else:
            LOG.info("bridge mappings applied: %s (ovn-bridge-mappings=%s)",
                     ", ".join(f"{m.physical_network}->{m.bridge}" for m in mappings) or "none",
                     value)
        self._annotate(bridgemappings.annotation(mappings=mappings, value=value, error=error))

    def _annotate(self, text: str) -> None:
        if text == self._last_annotation:
            return
        body = {"metadata": {"annotations": {bridgemappings.NODE_ANNOTATION: text}}}
        try:
            self.reader.core.patch_node(self.node_name, body,
                                        _content_type="application/merge-patch+json",
                                        _request_timeout=10)
            self._last_annotation = text
        except Exception as exc:  # the report is informative; never stop the agent for it
            LOG.warning("cannot annotate Node %s with the bridge mappings: %s",
                        self.node_name, exc)

    def _post_refusal(self, error: str) -> None:
        body = bridgemappings.refusal_event(node=self.node_name, message=error,
                                            now=datetime.datetime.now(tz=datetime.UTC),
                                            suffix=uuid.uuid4().hex[:12])
        try:
            # a plain dict, as for patch_node: the client serialises either
            self.reader.core.create_namespaced_event(
                bridgemappings.EVENT_NAMESPACE, body,  # type: ignore[arg-type]
                _request_timeout=10)
            self._last_refusal = error
        except Exception as exc:  # informative too; tried again at the next resync
            LOG.warning("cannot post the Event %s on Node %s: %s", bridgemappings.REFUSED,
                        self.node_name, exc)

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        since_resync = 0.0
        while True:
            await asyncio.sleep(MAPPINGS_POLL)
            since_resync += MAPPINGS_POLL
            force = since_resync >= MAPPINGS_RESYNC
            if force:
                since_resync = 0.0
            await loop.run_in_executor(None, functools.partial(self.converge, force=force))


async def serve(args: argparse.Namespace, *, stop: asyncio.Event | None = None) -> None:
    """Run the agent with the parsed `args` until SIGTERM or SIGINT, or until `stop` is set
    when given (then signals are left alone: tests run the agent in a thread)."""
    loop = asyncio.get_running_loop()
    executor = futures.ThreadPoolExecutor(max_workers=args.workers,
                                          thread_name_prefix="agent")
    loop.set_default_executor(executor)
    try:
        switch = await loop.run_in_executor(None, lambda: ovs.LocalOvs(remote=args.ovs_db))
    except Exception as exc:
        raise errors.OvnkSecondaryError(
            f"cannot connect to the local OVSDB at {args.ovs_db}: {exc}; is ovsdb-server "
            "running? pass --ovs-db") from None
    try:
        reader = pods.PodReader(kubeconfig=args.kubeconfig, executor=executor)
    except Exception as exc:
        raise errors.InvalidConfig(f"cannot load the Kubernetes client configuration: {exc}; "
                                   "pass --kubeconfig") from None
    reader.watch_node(args.node_name)
    tasks: list[asyncio.Task[Any]] = []
    mappings: BridgeMappingsLoop | None = None
    if args.bridge_mappings:
        mappings = BridgeMappingsLoop(path=args.bridge_mappings, switch=switch, reader=reader,
                                      node_name=args.node_name)
        await loop.run_in_executor(None, lambda: mappings.converge(force=True))
        tasks.append(asyncio.create_task(mappings.run_forever()))
    plugin_keeper: PluginKeeper | None = None
    if args.cni_bin_dir is not None:
        plugin_keeper = PluginKeeper(directory=args.cni_bin_dir,
                                        primary_plugin=args.primary_plugin)
        tasks.append(asyncio.create_task(plugin_keeper.run_forever()))
    offload = args.tx_checksum_offload == "on"
    if args.tx_checksum_offload == "auto":
        datapath = await loop.run_in_executor(None, switch.integration_datapath_type)
        offload = datapath != "netdev"
        LOG.info("br-int datapath type %s: tx checksum offload on pod interfaces %s", datapath,
                 "on" if offload else "off")
    keeper = mtus.MtuKeeper(api_client=reader.core.api_client, switch=switch)
    agent = attachments.Attachments(
        settings=attachments.Settings(node_name=args.node_name,
                                      annotation_timeout=args.annotation_timeout,
                                      binding_timeout=args.binding_timeout,
                                      tx_checksum_offload=offload),
        switch=switch, reader=reader, executor=executor, keeper=keeper)
    await agent.reconcile()
    keeper.start()  # after the clean-up: ports of vanished pods are gone
    cni = server.CniServer(path=args.socket, handler=agent.handle)
    await cni.start()

    def problems() -> list[str]:
        return health.problems(ovs_connected=switch.connected(), socket_serving=cni.serving(),
                               mappings_error=mappings.error if mappings else None,
                               plugin_error=plugin_keeper.error if plugin_keeper else None)

    def snapshot() -> metrics.Snapshot:
        return metrics.Snapshot(
            attachments=switch.plugged_by_nad(),
            bridge_mappings_applied=None if mappings is None else mappings.error is None)

    runner = await health.start(host=args.health_host, port=args.health_port, check=problems,
                                snapshot=snapshot) if args.health_port else None
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    LOG.info("node agent of %s ready", args.node_name)
    try:
        await stop.wait()
    finally:
        LOG.info("stopping (pods stay connected)")
        if runner is not None:
            await runner.cleanup()
        await cni.close()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        keeper.stop()
        switch.close()
        reader.close()
        executor.shutdown(wait=False, cancel_futures=True)
