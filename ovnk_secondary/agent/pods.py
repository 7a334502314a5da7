"""Pods as the node agent sees them: the controller's `k8s.ovn.org/pod-networks` annotation.

The controller allocates each pod's MAC and IPs per NAD and writes them into the pod annotation
(conventions section 3); the node agent only reads it. An ADD waits (bounded) for the entry of
its NAD, because Multus may call the plugin before the controller has written it. The agent
watches this node's pods (list + watch, an informer: see `watches`) so that a burst of ADDs costs
no API round trips and learns of an annotation when it is written; a direct GET now and then
covers a pod not yet seen by the watch. This module is the thin Kubernetes adapter of the CNI
path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping
from concurrent import futures
from typing import Any

from kubernetes import client, config
from kubernetes.client import exceptions as k8s_exceptions

from ovnk_secondary import errors, podnetworks
from ovnk_secondary.agent import watches

LOG = logging.getLogger(__name__)
ANNOTATION = podnetworks.ANNOTATION
DIRECT_READ_INTERVAL = 2.0  # seconds between direct GETs while a watch serves the wait


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pod:
    uid: str
    annotations: Mapping[str, str]
    deleting: bool = False  # metadata.deletionTimestamp is set


def network_for(annotations: Mapping[str, str],
                nad_key: str) -> podnetworks.PodNetwork | None:
    """The annotation's entry for a NAD, None while the controller has not written it."""
    return podnetworks.decode(annotations.get(ANNOTATION)).get(nad_key)


class PodWatch(watches.Watch[Pod]):
    """This node's pods as the API last reported them (an informer, see `watches`).

    Waiters for one pod are woken when that pod changes, so an ADD learns of its annotation as
    soon as the controller writes it, without polling the API once per pending ADD.
    """

    what = "this node's pods"

    def __init__(self, *, core: client.CoreV1Api, node_name: str) -> None:
        super().__init__(thread_name="pod-watch")
        self.core = core
        self.selector = f"spec.nodeName={node_name}"

    def list_objects(self) -> Any:
        return self.core.list_pod_for_all_namespaces(
            field_selector=self.selector, _preload_content=False, _request_timeout=30)

    def watch_objects(self, version: str) -> Any:
        return self.core.list_pod_for_all_namespaces(
            field_selector=self.selector, watch=True, resource_version=version,
            timeout_seconds=300, _preload_content=False, _request_timeout=(10, 330))

    def convert(self, obj: Mapping[str, Any]) -> Pod:
        return _pod(obj)


def _network_of(pod: Pod | None, *, key: tuple[str, str], uid: str,
                nad_key: str) -> podnetworks.PodNetwork | None:
    if pod is None:
        return None
    if uid and pod.uid and pod.uid != uid:
        raise errors.OvnkSecondaryError(
            f"pod {key[0]}/{key[1]} now has uid {pod.uid}, not {uid} of this sandbox: it was "
            "re-created; the runtime will tear this sandbox down")
    network = network_for(pod.annotations, nad_key)
    if network is None and pod.deleting:
        # waiting on would hold the sandbox, and with it the pod's deletion (the kubelet's
        # RunPodSandbox waits for this ADD), until --annotation-timeout
        raise errors.OvnkSecondaryError(
            f"pod {key[0]}/{key[1]} is being deleted and has no {ANNOTATION} entry for "
            f"{nad_key}: not attached")
    return network


def _pod(obj: Mapping[str, Any]) -> Pod:
    metadata = obj.get("metadata") or {}
    return Pod(uid=str(metadata.get("uid") or ""),
               annotations=dict(metadata.get("annotations") or {}),
               deleting=bool(metadata.get("deletionTimestamp")))


class PodReader:
    """Reads pods through the Kubernetes API (blocking calls run in the given executor)."""

    def __init__(self, *, kubeconfig: str | None, executor: futures.Executor,
                 poll_interval: float = 0.25) -> None:
        configuration = client.Configuration()
        if kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            # None: $KUBECONFIG or ~/.kube/config, as kubectl does
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, client_configuration=configuration)
        else:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
        # Many ADDs poll at once; urllib3's default pool of 4 would discard connections.
        configuration.connection_pool_maxsize = 32
        self.core = client.CoreV1Api(client.ApiClient(configuration))
        self._executor = executor
        self.poll_interval = poll_interval
        self.watch: PodWatch | None = None

    def watch_node(self, node_name: str) -> None:
        """Serve reads of this node's pods from a watch instead of one GET per poll."""
        self.watch = PodWatch(core=self.core, node_name=node_name)
        self.watch.start()

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()

    def get(self, namespace: str, name: str) -> Pod | None:
        try:
            # raw JSON: the client's model classes cost more CPU than the rest of an ADD
            response: Any = self.core.read_namespaced_pod(name, namespace, _request_timeout=10,
                                                          _preload_content=False)
        except k8s_exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _pod(json.loads(response.data))

    async def wait_for_network(self, *, namespace: str, name: str, uid: str, nad_key: str,
                               timeout: float) -> podnetworks.PodNetwork | None:
        """Wait until the pod's entry for the NAD exists; None on timeout.

        With a synced watch the pod comes from its cache and a change wakes the wait; a direct
        GET still happens now and then (the pod may not have reached the watch yet, or the watch
        may be stuck). Raises `errors.InvalidConfig` for a malformed annotation,
        `errors.OvnkSecondaryError` when the pod was re-created (another uid) or is being
        deleted without the entry: waiting would not help; and `errors.Unavailable` when the
        API stayed unreachable until the deadline.
        """
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        key = (namespace, name)
        watch = self.watch
        changed = watch.subscribe(key) if watch is not None else None
        next_get = time.monotonic()
        last_error: Exception | None = None
        try:
            while True:
                if watch is not None and watch.synced.is_set():
                    # a cached pod of another uid may just be stale: only a GET may refuse it
                    cached = watch.get(namespace, name)
                    network = None if cached is None or (uid and cached.uid != uid) else (
                        _network_of(cached, key=key, uid=uid, nad_key=nad_key))
                    if network is not None:
                        return network
                if time.monotonic() >= next_get:
                    try:
                        pod = await loop.run_in_executor(self._executor, self.get, namespace,
                                                         name)
                        last_error = None
                    except (k8s_exceptions.ApiException, OSError) as exc:
                        pod, last_error = None, exc  # maybe briefly unreachable: keep trying
                    network = _network_of(pod, key=key, uid=uid, nad_key=nad_key)
                    if network is not None:
                        return network
                    next_get = time.monotonic() + (
                        DIRECT_READ_INTERVAL if changed is not None else self.poll_interval)
                left = deadline - time.monotonic()
                if left <= 0:
                    if last_error is not None:
                        raise errors.Unavailable(
                            f"cannot read pod {namespace}/{name} from the Kubernetes API: "
                            f"{last_error}") from None
                    return None
                pause = min(left, max(0.01, next_get - time.monotonic()))
                if changed is None:
                    await asyncio.sleep(pause)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), pause)
                    changed.clear()
        finally:
            if watch is not None and changed is not None:
                watch.unsubscribe(key, changed)
