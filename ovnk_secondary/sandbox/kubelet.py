"""A kubelet and Multus stand-in for the sandbox (a sandbox component, not product code).

There is no kubelet, container runtime or Multus on these machines, so one of these runs in each
chassis container. For every pod bound to its node (`spec.nodeName`) it does what matters to
secondary networks, the way they do it:

- the runtime's part: a network namespace for the pod sandbox (`/var/run/netns/cni-<pod uid>`);
- Multus' part: for each network selection element of `k8s.v1.cni.cncf.io/networks`, read the
  NAD, then execute `/opt/cni/bin/<type>` with the NAD config on stdin and `CNI_COMMAND`,
  `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` (`net1`, `net2`, ... or the element's
  `interface`), `CNI_ARGS` (`K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_UID=..`) and `CNI_PATH`;
  then write `k8s.v1.cni.cncf.io/network-status` from the results;
- the kubelet's part: mark the pod Running and Ready once every network is up; report failures
  as Events on the pod (`FailedCreatePodSandBox`) and retry with backoff; on pod deletion call
  DEL for each network and remove the namespace.

What it has set up is kept in `/var/lib/ovnk-sandbox-kubelet/<uid>.json`, so that after a restart
it tears down pods deleted meanwhile and leaves running ones alone.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import datetime
import errno
import fcntl
import hashlib
import json
import logging
import os
import pathlib
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import kubernetes
from kubernetes.client import ApiException

from ovnk_secondary import errors, nads, selections

logger = logging.getLogger("ovnk_secondary.sandbox.kubelet")

NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
NETWORK_STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"
NAD_GROUP, NAD_VERSION, NAD_PLURAL = "k8s.cni.cncf.io", "v1", "network-attachment-definitions"
CNI_BIN_DIR = "/opt/cni/bin"
STATE_DIR = pathlib.Path("/var/lib/ovnk-sandbox-kubelet")
CNI_TIMEOUT = 150.0  # above the plugin's own 2-minute request timeout
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
NETNS_DIR = "/var/run/netns"
_LIBC = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
_MS_BIND, _MS_REC, _MS_SHARED, _MNT_DETACH = 0x1000, 0x4000, 0x100000, 0x2
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_NETNS_DIR_LOCK = threading.Lock()
_netns_dir_ready = False  # NETNS_DIR is a shared bind mount (under _NETNS_DIR_LOCK)


def netns_name(uid: str) -> str:
    """The pod sandbox's namespace, named like containerd names them."""
    return f"cni-{uid}"


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _is_mount_point(path: str) -> bool:
    """From mountinfo: os.path.ismount misses a directory bound onto itself (same device)."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as file:
        return any(line.split()[4] == target for line in file)


def create_netns(name: str) -> None:
    """`ip netns add NAME` and `ip -n NAME link set lo up`, in-process as a runtime does it.

    A container runtime makes the pod's namespace itself (no fork/exec per pod); so does this
    stand-in, because when many pods start at once two `ip` processes per pod cost the node more
    CPU than the CNI plugin itself. Runs on the calling thread only: a network namespace belongs
    to a thread, so the thread enters a new one, pins it with a bind mount (what `ip netns`
    does), sets its loopback up and comes back.
    """
    global _netns_dir_ready
    with _NETNS_DIR_LOCK:  # once: concurrent self-binds would stack mounts until ENOSPC
        if not _netns_dir_ready:  # (mountinfo grows with every pod: read it once)
            os.makedirs(NETNS_DIR, exist_ok=True)
            if not _is_mount_point(NETNS_DIR):  # as `ip netns`: shared, seen by other mount ns
                _check(_LIBC.mount(NETNS_DIR.encode(), NETNS_DIR.encode(), b"none", _MS_BIND,
                                   None), f"mount --bind {NETNS_DIR}")
                _check(_LIBC.mount(b"", NETNS_DIR.encode(), b"none", _MS_SHARED | _MS_REC,
                                   None), f"mount --make-rshared {NETNS_DIR}")
            _netns_dir_ready = True
    path = os.path.join(NETNS_DIR, name)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))  # EEXIST: in use
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_LIBC.unshare(_CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            _check(_LIBC.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", _MS_BIND,
                               None), f"mount --bind the new namespace on {path}")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                request = struct.pack("16sH14x", b"lo", 0)
                flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
                fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))
        finally:
            _check(_LIBC.setns(own, _CLONE_NEWNET), "setns back to the node's namespace")
    except BaseException:
        delete_netns(name)
        raise
    finally:
        os.close(own)


def delete_netns(name: str) -> None:
    """`ip netns del NAME` in-process; nothing to do when it is gone."""
    path = os.path.join(NETNS_DIR, name)
    if _LIBC.umount2(path.encode(), _MNT_DETACH) != 0 and ctypes.get_errno() not in (
        errno.EINVAL, errno.ENOENT):
        code = ctypes.get_errno()
        raise OSError(code, f"umount {path}: {os.strerror(code)}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def container_id(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Attachment:
    """One network of a pod as Multus delegated it: enough to call DEL later."""

    nad_key: str
    interface: str
    config: dict[str, Any]


@dataclasses.dataclass
class PodSandbox:
    uid: str
    namespace: str
    name: str
    attachments: list[Attachment] = dataclasses.field(default_factory=list)

    @property
    def netns_path(self) -> str:
        return f"/var/run/netns/{netns_name(self.uid)}"

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        path = STATE_DIR / f"{self.uid}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self)))
        tmp.replace(path)

    def forget(self) -> None:
        (STATE_DIR / f"{self.uid}.json").unlink(missing_ok=True)

    @classmethod
    def load_all(cls) -> dict[str, PodSandbox]:
        found = {}
        for path in STATE_DIR.glob("*.json"):
            data = json.loads(path.read_text())
            data["attachments"] = [Attachment(**a) for a in data["attachments"]]
            found[data["uid"]] = cls(**data)
        return found


class CniFailure(errors.OvnkSecondaryError):
    pass


def plugin_config(nad_config: Mapping[str, Any]) -> dict[str, Any]:
    """The config a plugin gets on stdin: a single config as is; from a conflist its one plugin
    with the list's `name` and `cniVersion` (as libcni does)."""
    if "plugins" not in nad_config:
        return dict(nad_config)
    plugins = nad_config["plugins"]
    if not isinstance(plugins, list) or len(plugins) != 1:
        raise CniFailure("the sandbox's Multus stand-in delegates conflists of exactly one plugin")
    return {
        **plugins[0],
        "name": nad_config.get("name"),
        "cniVersion": nad_config.get("cniVersion", "0.3.1"),
    }


def network_status(attachment: Attachment, result: Mapping[str, Any]) -> dict[str, Any]:
    """One element of Multus' `network-status` from a CNI result (0.3.x/0.4.0/1.0.0 shapes)."""
    interfaces = result.get("interfaces") or []
    index = next(
        (i for i, each in enumerate(interfaces) if each.get("sandbox")), 0 if interfaces else None
    )
    status: dict[str, Any] = {"name": attachment.nad_key, "interface": attachment.interface}
    ips = [
        ip["address"].split("/")[0]
        for ip in result.get("ips") or []
        if ip.get("interface") in (None, index)
    ]
    if ips:
        status["ips"] = ips
    if index is not None and interfaces[index].get("mac"):
        status["mac"] = interfaces[index]["mac"]
    status["dns"] = result.get("dns") or {}
    return status


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pod:
    """The fields of a pod used here, from the API's JSON (the client's models cost ~ms a pod)."""

    uid: str
    namespace: str
    name: str
    annotations: Mapping[str, str]
    deleting: bool
    phase: str | None
    containers: tuple[tuple[str, str], ...] = ()  # (name, image) of spec.containers

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Pod:
        metadata = body.get("metadata") or {}
        containers = tuple((str(c.get("name")), str(c.get("image") or ""))
                           for c in (body.get("spec") or {}).get("containers") or ())
        return cls(uid=str(metadata.get("uid") or ""), namespace=str(metadata.get("namespace")),
                   name=str(metadata.get("name")), annotations=metadata.get("annotations") or {},
                   deleting=bool(metadata.get("deletionTimestamp")),
                   phase=(body.get("status") or {}).get("phase"), containers=containers)


def _nad_key(nad: Mapping[str, Any]) -> tuple[str, str]:
    metadata = nad.get("metadata") or {}
    return str(metadata.get("namespace")), str(metadata.get("name"))


def _watch_events(response: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(type, object) of each event of a watch made with `_preload_content=False`."""
    for line in kubernetes.watch.watch.iter_resp_lines(response):  # type: ignore[no-untyped-call]
        event = json.loads(line)
        if event.get("type") == "ERROR":
            raise RuntimeError(f"watch error: {event.get('object')}")
        yield str(event.get("type")), event.get("object") or {}


def _json(response: Any) -> Any:
    """The body of a call made with `_preload_content=False`."""
    return json.loads(response.data)


class Kubelet:
    def __init__(self, *, node_name: str, api: kubernetes.client.ApiClient, workers: int) -> None:
        self.node_name = node_name
        # the client's models are loosely typed (every field optional): handled as Any here
        self.core: Any = kubernetes.client.CoreV1Api(api)
        self.custom: Any = kubernetes.client.CustomObjectsApi(api)
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
        self.sandboxes = PodSandbox.load_all()
        self.latest: dict[str, Pod | None] = {}  # uid -> newest pod (None: deleted), not yet seen
        self.busy: set[str] = set()  # uids a worker is on
        self.failures: dict[str, int] = {}
        self.guard = threading.Lock()
        # NADs as a watch last showed them, as Multus' informer keeps them: no GET per pod
        self.nads: dict[tuple[str, str], dict[str, Any]] = {}
        self.nads_synced = threading.Event()

    # -- the watch loop -------------------------------------------------------------------------

    def register_node(self) -> None:
        """Create this node's Node object, as a kubelet registers itself (the talk's virt workers
        carry the `node-role.kubernetes.io/worker-virt` label)."""
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "node-role.kubernetes.io/worker-virt": "",
                },
            },
        }
        try:
            self.core.create_node(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        # Ready, as a kubelet reports once it runs (nothing here marks a node NotReady later:
        # the sandbox runs no node lifecycle controller)
        now = datetime.datetime.now(datetime.UTC).isoformat()
        self.core.patch_node_status(self.node_name, {"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "the sandbox's kubelet stand-in is running",
             "lastHeartbeatTime": now, "lastTransitionTime": now}]}},
            _preload_content=False)

    def watch_nads(self) -> None:
        """Keep `self.nads` current (list, then watch; list again when the watch ends)."""
        while True:
            try:
                listed = _json(self.custom.list_cluster_custom_object(
                    NAD_GROUP, NAD_VERSION, NAD_PLURAL, _preload_content=False))
                with self.guard:
                    self.nads = {_nad_key(nad): nad for nad in listed.get("items") or []}
                self.nads_synced.set()
                response = self.custom.list_cluster_custom_object(
                    NAD_GROUP, NAD_VERSION, NAD_PLURAL, watch=True, timeout_seconds=300,
                    resource_version=(listed.get("metadata") or {}).get("resourceVersion"),
                    _preload_content=False)
                for kind, nad in _watch_events(response):
                    with self.guard:
                        if kind == "DELETED":
                            self.nads.pop(_nad_key(nad), None)
                        else:
                            self.nads[_nad_key(nad)] = nad
            except Exception as exc:
                logger.warning("watch of NADs ended (%s); listing again", exc)
                self.nads_synced.clear()
                time.sleep(1)

    def run(self) -> None:
        self.register_node()
        threading.Thread(target=self.watch_nads, name="nad-watch", daemon=True).start()
        selector = f"spec.nodeName={self.node_name}"
        while True:
            try:
                listed = _json(self.core.list_pod_for_all_namespaces(
                    field_selector=selector, _preload_content=False))
                pods = [Pod.from_json(item) for item in listed.get("items") or []]
                present = {pod.uid for pod in pods}
                for uid in set(self.sandboxes) - present:  # deleted while we were away
                    self.submit(uid, None)
                for pod in pods:
                    self.submit(pod.uid, pod)
                response = self.core.list_pod_for_all_namespaces(
                    field_selector=selector, watch=True, timeout_seconds=300,
                    resource_version=(listed.get("metadata") or {}).get("resourceVersion"),
                    _preload_content=False)
                for kind, obj in _watch_events(response):
                    pod = Pod.from_json(obj)
                    self.submit(pod.uid, None if kind == "DELETED" else pod)
            except Exception as exc:  # the API went away or the watch expired: list again
                logger.warning("watch of pods on %s ended (%s); listing again", self.node_name, exc)
                time.sleep(1)

    def submit(self, uid: str, pod: Pod | None) -> None:
        """Queue the latest state of a pod; one worker at a time handles a pod, and states that
        arrive meanwhile are coalesced into the newest."""
        with self.guard:
            self.latest[uid] = pod
            if uid in self.busy:
                return
            self.busy.add(uid)
        self.pool.submit(self.work, uid)

    def work(self, uid: str) -> None:
        while True:
            with self.guard:
                if uid not in self.latest:
                    self.busy.discard(uid)
                    return
                pod = self.latest.pop(uid)
            try:
                if pod is None or pod.deleting or pod.phase in ("Succeeded", "Failed"):
                    self.teardown(uid)
                    if pod is not None and pod.deleting:
                        self.finish_deletion(pod)
                elif uid not in self.sandboxes:
                    self.setup(pod)
            except Exception:
                logger.exception("pod %s: unexpected failure", uid)

    # -- ADD ------------------------------------------------------------------------------------

    def setup(self, pod: Pod) -> None:
        sandbox = PodSandbox(uid=pod.uid, namespace=pod.namespace, name=pod.name)
        started = time.monotonic()
        try:
            wanted = selections.parse(
                (pod.annotations or {}).get(NETWORKS_ANNOTATION),
                pod_namespace=pod.namespace,
                pod_name=pod.name,
            )
            interfaces = selections.interface_names(wanted)
            try:
                create_netns(netns_name(pod.uid))
            except OSError as exc:
                raise CniFailure(f"cannot create network namespace of the pod: {exc}") from exc
            sandbox.save()  # from here on a restart knows what to tear down
            statuses = []
            for selection in wanted:
                nad_key = f"{selection.namespace}/{selection.name}"
                config = plugin_config(self.nad_config(selection.namespace, selection.name))
                attachment = Attachment(nad_key, interfaces[nad_key], config)
                sandbox.attachments.append(attachment)
                sandbox.save()
                result = self.cni("ADD", sandbox, attachment)
                statuses.append(network_status(attachment, result))
        except (errors.OvnkSecondaryError, ApiException) as exc:
            message = exc.body if isinstance(exc, ApiException) else str(exc)
            self.undo(sandbox)
            self.retry_later(
                pod, f"failed to set up networks of pod {pod.namespace}/{pod.name}: {message}"
            )
            return
        self.sandboxes[pod.uid] = sandbox
        self.failures.pop(pod.uid, None)
        now = datetime.datetime.now(datetime.UTC).isoformat()
        self.core.patch_namespaced_pod(
            pod.name,
            pod.namespace,
            {"metadata": {"annotations": {NETWORK_STATUS_ANNOTATION: json.dumps(statuses)}}},
            _preload_content=False,
        )
        self.core.patch_namespaced_pod_status(
            pod.name,
            pod.namespace,
            {
                "status": {
                    "phase": "Running",
                    "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": now},
                        {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                    ],
                    # no container runs (no runtime here): reported ready, as kubectl's READY
                    # column counts them, once the pod's networks are up
                    "containerStatuses": [
                        {"name": name, "image": image, "imageID": "", "ready": True,
                         "started": True, "restartCount": 0,
                         "state": {"running": {"startedAt": now}}}
                        for name, image in pod.containers
                    ],
                }
            },
            _preload_content=False,
        )
        logger.info(
            "pod %s/%s: %d network(s) up in %.2f s",
            pod.namespace,
            pod.name,
            len(statuses),
            time.monotonic() - started,
        )

    def nad_config(self, namespace: str, name: str) -> dict[str, Any]:
        with self.guard:
            nad = self.nads.get((namespace, name)) if self.nads_synced.is_set() else None
        if nad is None:  # not seen (yet): ask the API, as Multus does on a cache miss
            try:
                nad = self.custom.get_namespaced_custom_object(
                    NAD_GROUP, NAD_VERSION, namespace, NAD_PLURAL, name
                )
            except ApiException as exc:
                if exc.status == 404:
                    raise CniFailure(
                        f"NetworkAttachmentDefinition {namespace}/{name} not found"
                    ) from exc
                raise
        try:
            config: dict[str, Any] = json.loads(nad.get("spec", {}).get("config", ""))
        except json.JSONDecodeError as exc:
            raise CniFailure(f"NAD {namespace}/{name}: spec.config is not JSON ({exc})") from exc
        if config.get("type", (config.get("plugins") or [{}])[0].get("type")) != nads.CNI_TYPE:
            raise CniFailure(f"NAD {namespace}/{name} is not of type {nads.CNI_TYPE}")
        return config

    def retry_later(self, pod: Pod, message: str) -> None:
        uid = pod.uid
        attempt = self.failures.get(uid, 0)
        self.failures[uid] = attempt + 1
        delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
        logger.warning("%s; retrying in %.0f s", message, delay)
        self.event(pod, "FailedCreatePodSandBox", message)

        def again() -> None:
            try:
                current = Pod.from_json(_json(self.core.read_namespaced_pod(
                    pod.name, pod.namespace, _preload_content=False)))
            except ApiException:
                return  # gone: nothing to retry
            if current.uid == uid:
                self.submit(uid, current)

        timer = threading.Timer(delay, again)
        timer.daemon = True
        timer.start()

    # -- DEL ------------------------------------------------------------------------------------

    def finish_deletion(self, pod: Pod) -> None:
        """Delete the pod object for good once its networks are gone, as the kubelet does
        after its containers stopped (grace 0, only this incarnation: uid precondition)."""
        try:
            # in the body: the API server reads DeleteOptions from the body when there is one,
            # and then ignores ?gracePeriodSeconds
            self.core.delete_namespaced_pod(
                pod.name, pod.namespace,
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": pod.uid}},
                _preload_content=False)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def teardown(self, uid: str) -> None:
        sandbox = self.sandboxes.pop(uid, None)
        if sandbox is None:
            return
        self.undo(sandbox)
        logger.info("pod %s/%s: networks torn down", sandbox.namespace, sandbox.name)

    def undo(self, sandbox: PodSandbox) -> None:
        """DEL every network (last first), then remove the namespace and the state."""
        for attachment in reversed(sandbox.attachments):
            try:
                self.cni("DEL", sandbox, attachment)
            except errors.OvnkSecondaryError as exc:
                logger.warning("pod %s/%s: %s", sandbox.namespace, sandbox.name, exc)
        try:
            delete_netns(netns_name(sandbox.uid))
        except OSError as exc:
            logger.warning("pod %s/%s: %s", sandbox.namespace, sandbox.name, exc)
        sandbox.forget()

    # -- the CNI call, as Multus makes it --------------------------------------------------------

    def cni(self, command: str, sandbox: PodSandbox, attachment: Attachment) -> dict[str, Any]:
        plugin = pathlib.Path(CNI_BIN_DIR) / str(attachment.config.get("type"))
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id(sandbox.uid),
            "CNI_NETNS": sandbox.netns_path,
            "CNI_IFNAME": attachment.interface,
            "CNI_ARGS": (
                f"IgnoreUnknown=true;K8S_POD_NAMESPACE={sandbox.namespace};"
                f"K8S_POD_NAME={sandbox.name};K8S_POD_INFRA_CONTAINER_ID="
                f"{container_id(sandbox.uid)};K8S_POD_UID={sandbox.uid}"
            ),
            "CNI_PATH": CNI_BIN_DIR,
        }
        try:
            done = subprocess.run(
                [str(plugin)],
                input=json.dumps(attachment.config),
                env=env,
                capture_output=True,
                text=True,
                timeout=CNI_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CniFailure(
                f"{command} {attachment.nad_key} ({attachment.interface}): {exc}"
            ) from exc
        try:
            output: dict[str, Any] = json.loads(done.stdout) if done.stdout.strip() else {}
        except json.JSONDecodeError:
            output = {"msg": done.stdout.strip()}
        if done.returncode != 0:
            detail = output.get("msg") or done.stderr.strip() or f"exit {done.returncode}"
            if output.get("details"):
                detail += f" ({output['details']})"
            raise CniFailure(
                f"CNI {command} of {attachment.nad_key} as {attachment.interface} "
                f"failed (code {output.get('code')}): {detail}"
            )
        return output

    def event(self, pod: Pod, reason: str, message: str) -> None:
        now = datetime.datetime.now(datetime.UTC).isoformat()
        body = {
            "metadata": {
                "generateName": f"{pod.name}.",
                "namespace": pod.namespace,
            },
            "involvedObject": {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": pod.name,
                "namespace": pod.namespace,
                "uid": pod.uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning",
            "source": {"component": "kubelet", "host": self.node_name},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(pod.namespace, body, _preload_content=False)
        except ApiException as exc:
            logger.warning("could not post event %s on %s: %s", reason, pod.name, exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the sandbox's kubelet and Multus stand-in")
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--workers", type=int, default=128,
                        help="pods set up at once (a kubelet starts every pod at once)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s kubelet: %(message)s")
    api = kubernetes.config.new_client_from_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    Kubelet(node_name=args.node_name, api=api, workers=args.workers).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
