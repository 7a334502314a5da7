"""MTUs of running pods: a NAD's `mtu` edit applied to the interfaces already plugged.

An ADD takes the MTU from the NAD config on stdin. For the pods already running, the agent
watches NetworkAttachmentDefinitions cluster-wide (list + watch, `watches`) and, when a NAD's
mtu changes, sets the new MTU on both ends of every interface it plugged for that NAD on this
node: the host side in br-int and the pod side in the pod's namespace. Which interfaces those
are, and where their pod side lives, the OVS Interface rows the agent wrote say
(`k8s.ovn.org/nad`, `ovnk-secondary.io/netns`, `ovnk-secondary.io/ifname`).

Converging is level-triggered: a list (at start-up, after a lost watch) counts every NAD as
changed, so edits made while the agent was down are applied too, and an interface already at
its NAD's MTU is left alone. NADs that are invalid or of another CNI are ignored; so is the mtu
of a network whose NADs disagree on it (the controller reports NetworkConflict: one L2 segment
would carry two MTUs). Only the mtu is looked at: the rest of a NAD edit is the controller's.

An ADD racing with an edit may have built its interface from the config Multus read just before
the edit, after the watch had converged the interfaces present then: once plugged, the ADD
compares its MTU with the watch's, and when they differ the NAD is read from the API (which of
the two is newer cannot be told) and its MTU applied. All MTU writes happen on one thread, in
the order the changes were seen.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client import exceptions as k8s_exceptions

from ovnk_secondary import errors, nads, naming
from ovnk_secondary.agent import interfaces, ovs, watches

LOG = logging.getLogger(__name__)
NAD_GROUP = "k8s.cni.cncf.io"
NAD_VERSION = "v1"
NAD_PLURAL = "network-attachment-definitions"
RETRY_PAUSE = 5.0  # seconds before a failed round (OVSDB or API trouble) is tried again


def nad_key(key: watches.Key) -> str:
    return f"{key[0]}/{key[1]}"


def parse(bodies: Iterable[Mapping[str, Any]]) -> dict[str, nads.NetworkConfig]:
    """NAD key -> its network config, for the NADs that are ours and valid."""
    configs = {}
    for body in bodies:
        try:
            config = nads.parse_nad(body)
        except errors.InvalidConfig:
            continue  # the controller reports it (InvalidConfig Event)
        if config is not None:
            configs[config.nad_key] = config
    return configs


def desired_mtus(configs: Iterable[nads.NetworkConfig]) -> dict[str, int]:
    """NAD key -> the MTU its pods' interfaces should have; the NADs of a network whose NADs
    disagree on the MTU are left out."""
    by_network: dict[str, list[nads.NetworkConfig]] = {}
    for config in configs:
        by_network.setdefault(config.name, []).append(config)
    desired = {}
    for group in by_network.values():
        if len({config.effective_mtu for config in group}) == 1:
            desired.update({config.nad_key: config.effective_mtu for config in group})
    return desired


def affected(changed: Iterable[str], *, before: Mapping[str, str],
             after: Mapping[str, str]) -> set[str]:
    """The NADs whose desired MTU may have changed: the changed ones and every NAD that shares
    a network with one of them, before or after the change (`before`/`after`: NAD key ->
    network name)."""
    changed = set(changed)
    networks = {names[key] for key in changed for names in (before, after) if key in names}
    return changed | {key for names in (before, after) for key, network in names.items()
                      if network in networks}


class NadWatch(watches.Watch[dict[str, Any]]):
    """Every NAD of the cluster, reduced to what the MTU needs (metadata names, spec)."""

    what = "NetworkAttachmentDefinitions"

    def __init__(self, *, custom: client.CustomObjectsApi,
                 on_change: Callable[[set[watches.Key]], None] | None = None) -> None:
        super().__init__(thread_name="nad-watch", on_change=on_change)
        self.custom = custom

    def list_objects(self) -> Any:
        return self.custom.list_cluster_custom_object(
            NAD_GROUP, NAD_VERSION, NAD_PLURAL, _preload_content=False, _request_timeout=30)

    def watch_objects(self, version: str) -> Any:
        return self.custom.list_cluster_custom_object(
            NAD_GROUP, NAD_VERSION, NAD_PLURAL, watch=True, resource_version=version,
            timeout_seconds=300, _preload_content=False, _request_timeout=(10, 330))

    def convert(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        metadata = obj.get("metadata") or {}
        return {"metadata": {"namespace": metadata.get("namespace"),
                             "name": metadata.get("name")},
                "spec": obj.get("spec") or {}}

    def read(self, key: str) -> dict[str, Any] | None:
        """The NAD as the API has it now (a GET); None when it does not exist."""
        namespace, name = key.split("/", 1)
        try:
            body: Any = self.custom.get_namespaced_custom_object(
                NAD_GROUP, NAD_VERSION, namespace, NAD_PLURAL, name, _request_timeout=10)
        except k8s_exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self.convert(body)


class MtuKeeper:
    """Keeps the MTU of the pod interfaces plugged on this node equal to their NAD's `mtu`."""

    def __init__(self, *, api_client: client.ApiClient, switch: ovs.LocalOvs) -> None:
        self.switch = switch
        self.watch = NadWatch(custom=client.CustomObjectsApi(api_client),
                              on_change=self._changed)
        self._wake = threading.Condition()
        self._pending: set[str] = set()  # NAD keys the watch saw change
        self._unsure: set[str] = set()  # NAD keys to read from the API first (after an ADD)
        self._stopped = False
        # as of the last round: NAD key -> network name, NAD key -> MTU (read by ADDs)
        self._networks: dict[str, str] = {}
        self._desired: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="nad-mtus", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.watch.start()

    def stop(self) -> None:
        self.watch.stop()
        with self._wake:
            self._stopped = True
            self._wake.notify()

    def plugged(self, *, nad_key: str, mtu: int) -> None:
        """An ADD plugged an interface of `nad_key` with `mtu` from its config: if the watch
        knows another MTU for that NAD, read the NAD from the API and apply its MTU."""
        if not self.watch.synced.is_set():
            return  # the list that syncs the watch converges every interface
        desired = self._desired.get(nad_key)
        if desired is None or desired == mtu:
            return
        with self._wake:
            self._unsure.add(nad_key)
            self._wake.notify()

    def _changed(self, keys: set[watches.Key]) -> None:
        with self._wake:
            self._pending |= {nad_key(key) for key in keys}
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._pending or self._unsure or self._stopped):
                    self._wake.wait()
                if self._stopped:
                    return
                pending, self._pending = self._pending, set()
                unsure, self._unsure = self._unsure, set()
            try:
                self._converge(pending, unsure)
            except Exception as exc:  # OVSDB or the API unreachable: try again in a while
                LOG.warning("applying NAD MTUs to this node's pod interfaces failed (%s); "
                            "trying again in %.0f s", exc, RETRY_PAUSE)
                with self._wake:
                    self._pending |= pending
                    self._unsure |= unsure
                    self._wake.wait(RETRY_PAUSE)

    def _converge(self, pending: set[str], unsure: set[str]) -> None:
        bodies = {nad_key(key): body for key, body in self.watch.items().items()}
        for key in sorted(unsure):
            current = self.watch.read(key)
            if current is None:
                bodies.pop(key, None)
            else:
                bodies[key] = current
        configs = parse(bodies.values())
        networks = {key: config.name for key, config in configs.items()}
        desired = desired_mtus(configs.values())
        touched = affected(pending | unsure, before=self._networks, after=networks)
        self._networks, self._desired = networks, desired
        if not touched & set(desired):
            return
        for state in self.switch.our_interfaces():
            key = state.external_ids.get(naming.NAD_KEY, "")
            if key in touched and key in desired:
                self._apply(state, desired[key])

    def _apply(self, state: ovs.PortState, mtu: int) -> None:
        """Both ends of one plugged interface to `mtu`, unless they are there already."""
        ids = state.external_ids
        netns, ifname = ids.get(ovs.NETNS_KEY, ""), ids.get(ovs.IFNAME_KEY, "")
        if not netns or not ifname:
            return
        try:
            host, pod = interfaces.mtus(host_name=state.name, netns=netns, ifname=ifname)
            if host is None or pod is None or (host, pod) == (mtu, mtu):
                return  # being deleted (DEL, start-up clean-up), or nothing to do
            interfaces.set_mtu(host_name=state.name, netns=netns, ifname=ifname, mtu=mtu)
        except OSError as exc:  # gone meanwhile
            LOG.warning("cannot set MTU %d on %s of pod %s (NAD %s): %s", mtu, ifname,
                        ids.get(ovs.POD_KEY), ids.get(naming.NAD_KEY), exc)
            return
        before = str(pod) if host == pod else f"{pod} (host side {host})"
        LOG.info("MTU of %s of pod %s (NAD %s) changed from %s to %d on both ends (host side %s)",
                 ifname, ids.get(ovs.POD_KEY), ids.get(naming.NAD_KEY), before, mtu, state.name)
