"""The OVN sandbox: a real multi-node OVN in containers, for tests, the demo and users.

Topology (every docker network is `--internal`; no sandbox packet leaves the machine):

    mgmt       control plane: central's NB/SB on TCP 6641/6642, later the Kubernetes API.
               A plain kernel NIC in every container (TCP must not cross a userspace bridge).
    underlay   Geneve between chassis: each chassis' NIC there sits in br-phy, with the encap IP.
    physnet    the physical network behind br-ex: each chassis' `enp1s0` is br-ex's uplink.
    physnet2   the physical network of a dedicated bridge: each chassis' `enp2s0`, free for
               `ovs-br1` (created by the node agent from its bridge mappings).

    central    ovn-central image: NB, SB, ovn-northd.
    node-N     ovn-chassis image: ovsdb-server, ovs-vswitchd (userspace datapath), ovn-controller.
    external   the "outside": an OVS top-of-rack switch trunking VLANs 33 and 34 from physnet and
               physnet2 to one host per VLAN (172.17.33.1, 172.17.34.1, in namespaces vlan33/34).

Docker cannot attach a container twice to one network, hence two physnet networks joined by the
external switch, as two NICs of a node would be cabled to one top-of-rack switch.

Everything a sandbox makes carries the label `io.ovnk-secondary.sandbox=<name>`: another process
finds it again (`Sandbox.attach`) and `down` removes all of it, also after a failed `up`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ovnk_secondary import errors
from ovnk_secondary.sandbox import images, kubeapi, realtime

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # the reaper image cannot be pulled

import docker
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

SANDBOX_LABEL = "io.ovnk-secondary.sandbox"
ROLE_LABEL = "io.ovnk-secondary.role"
NODE_LABEL = "io.ovnk-secondary.node"
NETWORKS = ("mgmt", "underlay", "physnet", "physnet2")
EXTERNAL = "external"
CENTRAL = "central"
API = "api"
API_PORT = 6443
KUBE_IN_CONTAINER = "/var/lib/ovnk-kube"
KUBE_BIN_IN_CONTAINER = "/opt/kube/bin"
NODE_BIN_IN_CONTAINER = "/opt/node/bin"
MULTUS_RBAC = "multus-rbac.yaml"
SOURCE_IN_CONTAINER = "/opt/ovnk-secondary"
CONFIG_IN_CONTAINER = "/etc/ovnk-secondary"  # a node's own credentials (nodes/NODE/ on the host)
IMAGES_IN_CONTAINER = "/var/lib/ovnk-sandbox-images"  # the images every node imports
# A Kubernetes node's own processes in a chassis, in the order they start.
NODE_SERVICES = ("containerd", "kubelet", "kube-proxy")
PRODUCT_NAMESPACE = "ovnk-secondary"
POD_CIDR = "10.244.{index}.0/24"  # node-N's pods' eth0 (the bridge plugin, host-local IPAM)
REPO_DIR = pathlib.Path(__file__).resolve().parents[2]
STATE_DIR = pathlib.Path(os.environ.get("XDG_STATE_HOME", pathlib.Path.home() / ".local/state"))
CHASSIS_CAPS = {
    "cap_add": ["NET_ADMIN", "SYS_ADMIN", "NET_RAW"],
    "devices": ["/dev/net/tun:/dev/net/tun"],
    "security_opt": ["apparmor=unconfined"],
}
# A chassis that is a Kubernetes node: containerd, runc and the kubelet need cgroups, mounts,
# sysctls and devices, as kind's nodes do. Not `privileged`: these machines' docker daemon lacks
# CAP_SYS_RESOURCE, and privileged asks for every capability. Everything else privileged gives,
# explicitly: the other capabilities, no AppArmor or seccomp, every device (node-prepare.sh makes
# /sys, /proc/sys and the cgroup hierarchies writable).
NODE_PRIVILEGES: dict[str, Any] = {
    "cap_add": ["ALL"],
    "cap_drop": ["SYS_RESOURCE"],
    "security_opt": ["apparmor=unconfined", "seccomp=unconfined"],
    "device_cgroup_rules": ["a *:* rwm"],
    "devices": ["/dev/net/tun:/dev/net/tun", "/dev/kmsg:/dev/kmsg"],
}
# The reference scenario's external hosts: VLAN -> (namespace in the external container, address).
EXTERNAL_HOSTS = {33: ("vlan33", "172.17.33.1"), 34: ("vlan34", "172.17.34.1")}
GUEST_NETNS_INFIX = "-vm-"  # <sandbox>-vm-<vm>: the guests of the VM stand-in (`vms`)


@dataclasses.dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str


@dataclasses.dataclass
class Capture:
    """Lines printed by a tcpdump running on one link of the sandbox."""

    lines: list[str] = dataclasses.field(default_factory=list)
    _seen: threading.Condition = dataclasses.field(default_factory=threading.Condition)

    def add(self, line: str) -> None:
        with self._seen:
            self.lines.append(line)
            self._seen.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], *, timeout: float = 10.0) -> str | None:
        """The first captured line matching `predicate`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in self.lines:
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._seen.wait(left)


def state_dir(name: str) -> pathlib.Path:
    """Files of sandbox `name` on the host: its status and kubeconfig, mounted into containers."""
    return STATE_DIR / "ovnk-secondary" / f"sandbox-{name}"


def state_file(name: str) -> pathlib.Path:
    return state_dir(name) / "status.json"


def _docker(
    *args: str, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise errors.SandboxError(
            "the docker command is missing: apt-get install docker.io"
        ) from exc
    if check and done.returncode != 0:
        raise errors.SandboxError(f"docker {' '.join(args[:3])} failed: {done.stderr.strip()}")
    return done


class Sandbox:
    """A running sandbox; get one with `Sandbox.up(...)` or `Sandbox.attach(name)`."""

    def __init__(self, *, name: str, containers: Mapping[str, Mapping[str, Any]]) -> None:
        self.name = name
        self._containers = dict(containers)  # role or node name -> docker inspect data
        self.node_names = sorted(
            (
                n
                for n, c in self._containers.items()
                if c["Config"]["Labels"][ROLE_LABEL] == "chassis"
            ),
            key=lambda n: (len(n), n),
        )
        self.external = EXTERNAL
        central_ip = self.address(CENTRAL, "mgmt")
        self.nb_connection = f"tcp:{central_ip}:6641"
        self.sb_connection = f"tcp:{central_ip}:6642"
        networks = self._containers[CENTRAL]["NetworkSettings"]["Networks"]
        self.host_address: str = networks[self.network_name("mgmt")]["Gateway"]
        self.source_dir_in_container = SOURCE_IN_CONTAINER
        kubeconfig = state_dir(name) / "kubeconfig"
        self.kubeconfig: pathlib.Path | None = kubeconfig if API in self._containers else None

    # -- life cycle ---------------------------------------------------------------------------

    @classmethod
    def up(
        cls,
        *,
        name: str = "ovnk",
        nodes: int = 2,
        kubernetes: bool = False,
        python: str | None = None,
    ) -> Sandbox:
        """Start central, `nodes` chassis and the external host (leftovers of `name` go first).

        With `kubernetes`, the sandbox is a small real cluster: etcd, kube-apiserver,
        kube-controller-manager and kube-scheduler in the `api` container (`kubeapi.main`);
        every chassis a node (containerd, kubelet, kube-proxy; Multus as the node's CNI with
        the reference plugins' bridge as the pods' eth0); the product deployed from
        `manifests/` through a sandbox overlay (`deploy`). An admin kubeconfig for the host is
        written.
        """
        if nodes < 1:
            raise errors.SandboxError(f"--nodes must be at least 1, got {nodes}")
        built = images.ensure(python=python)
        kube_bin = kubeapi.binaries() if kubernetes else None
        node_bin = kubeapi.node_binaries() if kubernetes else None
        down(name)
        try:
            # a name of this `up` only: a network docker cannot remove (an endpoint it failed
            # to release) never blocks the next one
            token = uuid.uuid4().hex[:6]
            networks = {
                role: Network(docker_network_kw={"internal": True, "labels": {SANDBOX_LABEL: name}})
                for role in NETWORKS
            }
            for role, network in networks.items():
                network.name = f"{name}-{role}-{token}"
                network.create()
            cidrs = {role: _subnet(networks[role].name) for role in NETWORKS}

            central = _container(
                built.central, name=name, role="central", hostname=CENTRAL,
                network=networks["mgmt"])
            central.start()
            central_ip = _inspect(f"{name}-{CENTRAL}")["NetworkSettings"]["Networks"][
                networks["mgmt"].name
            ]["IPAddress"]
            env = {f"{role.upper()}_CIDR": cidrs[role] for role in NETWORKS[1:]}
            started = []
            config_dir = state_dir(name)
            config_dir.mkdir(parents=True, exist_ok=True)
            kube_dir = config_dir / "kube"
            if kubernetes:
                # the control plane in the `api` container; its directory (certificates,
                # kubeconfigs, etcd's data, logs) is on the host
                shutil.rmtree(kube_dir, ignore_errors=True)
                kube_dir.mkdir(parents=True)
                api = _container(
                    built.chassis,
                    name=name,
                    role="api",
                    hostname=API,
                    network=networks["mgmt"],
                    entrypoint=[
                        "/opt/venv/bin/python", "-m", "ovnk_secondary.sandbox.kubeapi",
                        "--directory", KUBE_IN_CONTAINER, "--bin", KUBE_BIN_IN_CONTAINER,
                        "--port", str(API_PORT), "--cluster",
                        "--manifests", f"{SOURCE_IN_CONTAINER}/manifests",
                        "--apply", f"{SOURCE_IN_CONTAINER}/ovn-sandbox/{MULTUS_RBAC}",
                    ],
                )
                api.with_env("PYTHONPATH", SOURCE_IN_CONTAINER)
                api.with_volume_mapping(str(REPO_DIR), SOURCE_IN_CONTAINER, "ro")
                api.with_volume_mapping(str(kube_bin), KUBE_BIN_IN_CONTAINER, "ro")
                api.with_volume_mapping(str(kube_dir), KUBE_IN_CONTAINER, "rw")
                api.start()
            for index in range(1, nodes + 1):
                node = f"node-{index}"
                if kubernetes:
                    kwargs: dict[str, Any] = dict(NODE_PRIVILEGES)
                    # containerd's snapshots live on a volume: overlayfs cannot stack on the
                    # container's own overlay root
                    kwargs["mounts"] = [docker.types.Mount(target="/var/lib/containerd",
                                                           source=None, type="volume")]
                else:
                    kwargs = dict(CHASSIS_CAPS)
                chassis = _container(
                    built.chassis,
                    name=name,
                    role="chassis",
                    hostname=node,
                    network=networks["mgmt"],
                    **kwargs,
                )
                chassis.with_envs(CENTRAL=central_ip, NODE_NAME=node, **env)
                chassis.with_volume_mapping(str(REPO_DIR), SOURCE_IN_CONTAINER, "ro")
                # what this node may know, and no more: its own credentials (not the CA's key
                # nor the admin's kubeconfig), and the images to import
                node_dir = config_dir / "nodes" / node
                node_dir.mkdir(parents=True, exist_ok=True)
                (config_dir / "images").mkdir(exist_ok=True)
                chassis.with_volume_mapping(str(node_dir), CONFIG_IN_CONTAINER, "ro")
                chassis.with_volume_mapping(str(config_dir / "images"), IMAGES_IN_CONTAINER, "ro")
                if kube_bin is not None and node_bin is not None:
                    chassis.with_volume_mapping(str(kube_bin), KUBE_BIN_IN_CONTAINER, "ro")
                    chassis.with_volume_mapping(str(node_bin), NODE_BIN_IN_CONTAINER, "ro")
                chassis.start()
                for role in ("underlay", "physnet", "physnet2"):
                    networks[role].connect(chassis.get_container_id())
                started.append(f"{name}-{node}")
            external = _container(
                built.chassis,
                name=name,
                role="external",
                hostname=EXTERNAL,
                network=networks["mgmt"],
                entrypoint="/usr/local/bin/ovn-external-entrypoint",
                **CHASSIS_CAPS,
            )
            external.with_envs(**env)
            external.start()
            for role in ("physnet", "physnet2"):
                networks[role].connect(external.get_container_id())
            started.append(f"{name}-{EXTERNAL}")

            with concurrent.futures.ThreadPoolExecutor() as pool:
                list(pool.map(_wait_ready, [f"{name}-{CENTRAL}", *started]))
            for container in started:  # the chassis and the external host
                try:
                    realtime.datapath(container)
                except realtime.RealtimeError as exc:
                    print(f"sandbox: {container}'s datapath is not real-time ({exc}): pod "
                          f"starts will stall its forwarding (`realtime`)", file=sys.stderr)
            sandbox = cls.attach(name)
            sandbox._wait_chassis_registered()
            if kubernetes:
                _write_identities(
                    kube_dir, config_dir, container=f"{name}-{API}", nodes=sandbox.node_names,
                    address=sandbox.address(API, "mgmt"))
                sandbox._start_nodes(built)
                sandbox.deploy()
        except BaseException:
            if os.environ.get("OVNK_SANDBOX_KEEP_FAILED") != "1":
                down(name)  # else kept for a look; the next `up` or `down` removes it
            raise
        sandbox._write_state()
        return sandbox

    @classmethod
    def attach(cls, name: str = "ovnk") -> Sandbox:
        """The running sandbox `name`, found by its docker labels."""
        ids = _docker("ps", "-q", "--filter", f"label={SANDBOX_LABEL}={name}").stdout.split()
        if not ids:
            raise errors.SandboxError(
                f"no sandbox named {name!r} is running: start it with `ovnk-secondary sandbox up`"
            )
        containers = {}
        for data in json.loads(_docker("inspect", *ids).stdout):
            labels = data["Config"]["Labels"]
            containers[labels.get(NODE_LABEL) or labels[ROLE_LABEL]] = data
        if CENTRAL not in containers:
            raise errors.SandboxError(
                f"sandbox {name!r} has no central container: run `sandbox down`"
            )
        return cls(name=name, containers=containers)

    def down(self) -> None:
        down(self.name)

    def _write_state(self) -> None:
        path = state_file(self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.status(), indent=2) + "\n")

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "nb_connection": self.nb_connection,
            "sb_connection": self.sb_connection,
            "host_address": self.host_address,
            "nodes": {
                node: {
                    "container": self.container(node),
                    "mgmt_address": self.address(node, "mgmt"),
                    "state": self._containers[node]["State"]["Status"],
                }
                for node in self.node_names
            },
            "external_hosts": {str(vlan): ip for vlan, (_, ip) in EXTERNAL_HOSTS.items()},
            "kubeconfig": str(self.kubeconfig) if self.kubeconfig else None,
            # the control plane's release (the kubectl on PATH may be another)
            "kubectl": str(kubeapi.kubectl()) if self.kubeconfig else None,
        }

    # -- addressing ---------------------------------------------------------------------------

    def network_name(self, role: str) -> str:
        """Docker name of the sandbox's network `role` (mgmt, underlay, ...): NAME-ROLE-<id>."""
        prefix = f"{self.name}-{role}-"
        for data in self._containers.values():
            for network in data["NetworkSettings"]["Networks"]:
                if network.startswith(prefix) and "-" not in network[len(prefix):]:
                    return str(network)
        raise errors.SandboxError(f"sandbox {self.name!r} has no {role} network")

    def container(self, node: str) -> str:
        """Docker name of a node (`node-1`), of `central` or of `external`."""
        if node not in self._containers:
            known = ", ".join(sorted(self._containers))
            raise errors.SandboxError(
                f"sandbox {self.name!r} has no node {node!r} (it has {known})"
            )
        name: str = self._containers[node]["Name"].lstrip("/")
        return name

    def address(self, node: str, network: str) -> str:
        """IPv4 address docker gave `node` on `network` (mgmt, underlay, ...)."""
        self.container(node)
        nets = self._containers[node]["NetworkSettings"]["Networks"]
        address: str = nets[self.network_name(network)]["IPAddress"]
        return address

    # -- commands -----------------------------------------------------------------------------

    def exec(
        self,
        node: str,
        command: str | Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
        detach: bool = False,
    ) -> ExecResult:
        """Run `command` (argv, or a string for bash -c) in a container of the sandbox."""
        argv = ["bash", "-c", command] if isinstance(command, str) else list(command)
        options = ["-i"] if input is not None else []
        if detach:
            options.append("-d")
        for key, value in (env or {}).items():
            options += ["-e", f"{key}={value}"]
        try:
            done = subprocess.run(
                ["docker", "exec", *options, self.container(node), *argv],
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise errors.SandboxError(
                f"{shlex.join(argv)} on {node} did not finish within {timeout} s"
            ) from exc
        result = ExecResult(done.returncode, done.stdout, done.stderr)
        if check and result.exit_code != 0:
            raise errors.SandboxError(
                f"{shlex.join(argv)} on {node} exited {result.exit_code}: "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
        return result

    def add_pod_netns(self, node: str, name: str) -> str:
        """A fresh network namespace on `node` standing for a pod sandbox; returns its path."""
        self.exec(
            node,
            f"ip netns del {shlex.quote(name)} 2>/dev/null; ip netns add {shlex.quote(name)}"
            f" && ip -n {shlex.quote(name)} link set lo up",
        )
        return f"/var/run/netns/{name}"

    def delete_pod_netns(self, node: str, name: str) -> None:
        self.exec(node, ["ip", "netns", "del", name], check=False)

    @contextlib.contextmanager
    def capture(
        self,
        node: str,
        interface: str,
        bpf_filter: str = "",
        *,
        count: int | None = None,
        extra_args: Sequence[str] = ("-e",),
        netns: str | None = None,
    ) -> Iterator[Capture]:
        """tcpdump on `interface` of `node` (in `netns` if given) while the block runs."""
        tag = f"ovnk-capture-{uuid.uuid4().hex[:8]}"
        dump = ["tcpdump", "-n", "-l", "-i", interface, *extra_args]
        if count is not None:
            dump += ["-c", str(count)]
        dump += shlex.split(bpf_filter)
        inner = f"exec -a {tag} {shlex.join(dump)}"
        if netns is not None:
            inner = f"exec ip netns exec {shlex.quote(netns)} bash -c {shlex.quote(inner)}"
        process = subprocess.Popen(
            ["docker", "exec", self.container(node), "bash", "-c", inner],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        captured = Capture()
        listening = threading.Event()

        def read_stderr() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                if "listening on" in line:
                    listening.set()
            listening.set()

        def read_stdout() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                captured.add(line.rstrip("\n"))

        readers = [threading.Thread(target=f, daemon=True) for f in (read_stderr, read_stdout)]
        for reader in readers:
            reader.start()
        try:
            if not listening.wait(15) or process.poll() not in (None, 0):
                raise errors.SandboxError(f"tcpdump on {node}:{interface} did not start")
            yield captured
        finally:
            if count is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
            self.exec(node, ["pkill", "-INT", "-f", tag], check=False)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
            for reader in readers:
                reader.join(timeout=5)

    # -- services inside chassis containers --------------------------------------------------

    def _service_argv(self, node: str, service: str) -> list[str]:
        if service == "containerd":
            return [f"{NODE_BIN_IN_CONTAINER}/containerd", "--config",
                    "/etc/containerd/config.toml"]
        if service == "kubelet":
            return [f"{KUBE_BIN_IN_CONTAINER}/kubelet", "--config=/etc/kubernetes/kubelet.yaml",
                    f"--kubeconfig={CONFIG_IN_CONTAINER}/kubelet.kubeconfig",
                    f"--hostname-override={node}", f"--node-ip={self.address(node, 'mgmt')}"]
        if service == "kube-proxy":
            return [f"{KUBE_BIN_IN_CONTAINER}/kube-proxy",
                    "--config=/etc/kubernetes/kube-proxy.yaml"]
        raise errors.SandboxError(f"unknown service {service!r}; known: {', '.join(NODE_SERVICES)}")

    def start_service(self, node: str, service: str) -> None:
        """Start `service` (containerd, kubelet, kube-proxy) on `node`; logs in
        /var/log/ovnk-secondary/<service>.log."""
        argv = shlex.join(self._service_argv(node, service))
        self.exec(
            node,
            "mkdir -p /run/ovnk-secondary-services /var/log/ovnk-secondary; "
            f"export PATH={NODE_BIN_IN_CONTAINER}:$PATH; "
            f"nohup {argv} >>/var/log/ovnk-secondary/{service}.log 2>&1 & "
            f"echo $! > /run/ovnk-secondary-services/{service}.pid",
        )

    def stop_service(self, node: str, service: str, *, signal: str = "TERM") -> None:
        """Stop `service` on `node` and wait until it is gone."""
        pidfile = f"/run/ovnk-secondary-services/{service}.pid"
        self.exec(
            node,
            f"[ -f {pidfile} ] || exit 0; pid=$(cat {pidfile}); kill -{signal} $pid 2>/dev/null; "
            "for i in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done; "
            f"kill -KILL $pid 2>/dev/null; rm -f {pidfile}",
            timeout=30,
        )

    def restart_service(self, node: str, service: str) -> None:
        self.stop_service(node, service)
        self.start_service(node, service)

    def serve_nb_over_tls(self, directory: pathlib.Path, *, port: int = 6643) -> tuple[
            str, kubeapi.Pki]:
        """NB also on `ssl:<central>:port`, as an operator turns it on (`ovn-nbctl set-ssl`,
        `set-connection pssl:...`), with certificates made here: (the remote, the PKI whose
        `ca.crt` signed NB's certificate (`apiserver.*`) and a client's (`admin.*`))."""
        central = self.address(CENTRAL, "mgmt")
        pki = kubeapi.Pki.make(directory, server_names=(central,))
        self.exec(CENTRAL, "mkdir -p /etc/ovn/nb-tls")
        for name in ("apiserver.key", "apiserver.crt", "ca.crt"):
            _docker("cp", str(pki.path(name)), f"{self.container(CENTRAL)}:/etc/ovn/nb-tls/{name}")
        self.ovn_nbctl("set-ssl", "/etc/ovn/nb-tls/apiserver.key",
                       "/etc/ovn/nb-tls/apiserver.crt", "/etc/ovn/nb-tls/ca.crt")
        self.ovn_nbctl("set-connection", f"pssl:{port}")
        return f"ssl:{central}:{port}", pki

    def restart_nb(self, *, down_for: float = 0) -> None:
        """Stop the NB ovsdb-server, wait `down_for` seconds, start it on the same database."""
        self.exec(CENTRAL, ["ovn-restart-nb", str(down_for)], timeout=30 + down_for)

    # -- the Kubernetes nodes and the product ------------------------------------------------

    def _start_nodes(self, built: images.Images, timeout: float = 180) -> None:
        """Make every chassis a node: prepare it (`ovn-node-prepare`), start containerd, import
        the images (no registry), start the kubelet and kube-proxy; wait until all are Ready."""
        saved = state_dir(self.name) / "images" / "images.tar"
        # one archive for all nodes (the product image is most of it), read through the
        # state directory's mount
        _docker("save", "-o", str(saved), built.pause, built.workload, built.product,
                timeout=300)

        def start(index_node: tuple[int, str]) -> None:
            index, node = index_node
            self.exec(node, ["ovn-node-prepare", node, self.address(node, "mgmt"),
                             POD_CIDR.format(index=index)])
            self.start_service(node, "containerd")
            self.exec(node, "for i in $(seq 300); do ctr version >/dev/null 2>&1 && exit 0; "
                      "sleep 0.1; done; tail -20 /var/log/ovnk-secondary/containerd.log; exit 1",
                      env={"PATH": f"{NODE_BIN_IN_CONTAINER}:/usr/bin:/bin"}, timeout=60)
            self.exec(node, [f"{NODE_BIN_IN_CONTAINER}/ctr", "-n", "k8s.io", "images", "import",
                             f"{IMAGES_IN_CONTAINER}/images.tar"],
                      timeout=300)
            for service in ("kubelet", "kube-proxy"):
                self.start_service(node, service)

        try:
            with concurrent.futures.ThreadPoolExecutor() as pool:
                list(pool.map(start, enumerate(self.node_names, start=1)))
        finally:
            saved.unlink(missing_ok=True)
        deadline = time.monotonic() + timeout
        while True:
            nodes = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)["items"]
            ready = {n["metadata"]["name"] for n in nodes if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", []))}
            missing = sorted(set(self.node_names) - ready)
            if not missing:
                return
            if time.monotonic() > deadline:
                log = self.exec(missing[0], "tail -15 /var/log/ovnk-secondary/kubelet.log",
                                check=False).stdout
                raise errors.SandboxError(
                    f"nodes {missing} not Ready within {timeout:.0f} s; the kubelet of "
                    f"{missing[0]} says:\n{log}")
            time.sleep(0.5)

    def deploy(self, *, timeout: float = 180) -> None:
        """Deploy the product as a user does: `kubectl apply -k` of a sandbox overlay of
        `manifests/` (the NB address, the reference scenario's bridge mappings; everything else
        as the base says), then wait until the controller and every node agent are Ready."""
        overlay = state_dir(self.name) / "deploy"
        overlay.mkdir(exist_ok=True)
        # the scenario's bridge mappings: the examples' ConfigMap itself, as a patch (applying
        # the examples later changes nothing)
        shutil.copyfile(REPO_DIR / "manifests" / "examples" / "05-bridge-mappings.yaml",
                        overlay / "bridge-mappings.yaml")
        (overlay / "kustomization.yaml").write_text(json.dumps({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(REPO_DIR / "manifests", overlay)],
            "configMapGenerator": [
                {"name": "ovnk-secondary-controller", "namespace": PRODUCT_NAMESPACE,
                 "behavior": "merge", "literals": [f"ovn-nb={self.nb_connection}"]},
            ],
            "generatorOptions": {"disableNameSuffixHash": True},
            "patches": [{"path": "bridge-mappings.yaml"}],
        }, indent=1) + "\n")
        self.kubectl("apply", "-k", str(overlay))
        for workload in ("deployment/ovnk-secondary-controller",
                         "daemonset/ovnk-secondary-node-agent"):
            done = self.kubectl("rollout", "status", "-n", PRODUCT_NAMESPACE, workload,
                                f"--timeout={timeout:.0f}s", check=False, timeout=timeout + 10)
            if done.returncode != 0:
                pods = self.kubectl("get", "pods", "-n", PRODUCT_NAMESPACE, "-o", "wide",
                                    check=False).stdout
                raise errors.SandboxError(
                    f"{workload} did not become ready within {timeout:.0f} s: "
                    f"{(done.stderr or done.stdout).strip()}\n{pods}")

    def rollout_restart_controller(self, *, timeout: float = 180) -> None:
        """`kubectl rollout restart` of the controller's Deployment, until it is rolled out."""
        workload = "deployment/ovnk-secondary-controller"
        self.kubectl("rollout", "restart", "-n", PRODUCT_NAMESPACE, workload)
        self.kubectl("rollout", "status", "-n", PRODUCT_NAMESPACE, workload,
                     f"--timeout={timeout:.0f}s", timeout=timeout + 10)

    def delete_node_agent_pod(self, node: str) -> None:
        """Delete the node agent's pod on `node` (its DaemonSet starts another)."""
        self.kubectl("delete", "pod", "-n", PRODUCT_NAMESPACE, "--wait=false",
                     "-l", "app.kubernetes.io/component=node-agent",
                     f"--field-selector=spec.nodeName={node}")

    def audit_events(self) -> Iterator[dict[str, Any]]:
        """The API server's audit events (request metadata: user, verb, object, response
        code), oldest first."""
        path = state_dir(self.name) / "kube" / kubeapi.AUDIT_LOG
        with path.open(encoding="utf-8") as events:
            for line in events:
                if line.strip():
                    yield json.loads(line)

    def set_migration_strategy(self, strategy: str) -> None:
        """Set the controller's live-migration strategy (its ConfigMap) and roll it out."""
        patch = json.dumps({"data": {"migration-strategy": strategy}})
        self.kubectl("patch", "configmap", "-n", PRODUCT_NAMESPACE,
                     "ovnk-secondary-controller", "--type=merge", "-p", patch)
        self.rollout_restart_controller()

    def kubectl(self, *args: str, timeout: float = 120, check: bool = True,
                stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """kubectl (of the control plane's release) as the sandbox's admin."""
        if self.kubeconfig is None:
            raise errors.SandboxError(
                f"sandbox {self.name!r} runs no Kubernetes API (started with --bare)")
        done = subprocess.run([str(kubeapi.kubectl()), f"--kubeconfig={self.kubeconfig}", *args],
                              input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise errors.SandboxError(f"kubectl {shlex.join(args)}: {done.stderr.strip()}")
        return done

    def kube(self) -> Any:
        """An official `kubernetes` API client for the sandbox's API."""
        if self.kubeconfig is None:
            raise errors.SandboxError(
                f"sandbox {self.name!r} runs no Kubernetes API (started with --bare)"
            )
        import kubernetes  # only sandboxes with an API need it

        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]

    def ovn_nbctl(self, *args: str) -> str:
        """`ovn-nbctl` on central, as an operator would run it."""
        return self.exec(CENTRAL, ["ovn-nbctl", "--db=unix:/run/ovn/nb.sock", *args]).stdout

    def ovn_sbctl(self, *args: str) -> str:
        return self.exec(CENTRAL, ["ovn-sbctl", "--db=unix:/run/ovn/sb.sock", *args]).stdout

    def _wait_chassis_registered(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        expected = set(self.node_names)
        while True:
            registered = set(self.ovn_sbctl("--bare", "--columns=name", "list", "Chassis").split())
            if expected <= registered:
                return
            if time.monotonic() > deadline:
                raise errors.SandboxError(
                    f"chassis {sorted(expected - registered)} did not register in the SB within "
                    f"{timeout} s; see `ovnk-secondary sandbox exec NODE -- cat "
                    "/var/log/ovn/ovn-controller.log`"
                )
            time.sleep(0.2)


def down(name: str) -> None:
    """Remove every container and network of sandbox `name`; fine when there is nothing."""
    label = f"label={SANDBOX_LABEL}={name}"
    ids = _docker("ps", "-aq", "--filter", label).stdout.split()
    if ids:
        _docker("rm", "-f", "-v", *ids, timeout=120)
    # docker may still be detaching the removed containers' endpoints for a moment; a network
    # whose endpoint it never releases (seen once) is left, said, and in nobody's way
    deadline = time.monotonic() + 20
    while nets := _docker("network", "ls", "-q", "--filter", label).stdout.split():
        removed = _docker("network", "rm", *nets, check=False)
        if removed.returncode == 0:
            break
        if time.monotonic() > deadline:
            print(f"sandbox {name}: docker keeps networks it says have active endpoints "
                  f"(restarting dockerd frees them): {removed.stderr.strip()}", file=sys.stderr)
            break
        time.sleep(0.5)
    shutil.rmtree(state_dir(name), ignore_errors=True)
    # the guests of the VM stand-in (`vms`): network namespaces on this machine
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=False).stdout
    for line in listed.splitlines():
        netns = (line.split() or [""])[0]
        if netns.startswith(f"{name}{GUEST_NETNS_INFIX}"):
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)


def _container(
    image: str, *, name: str, role: str, hostname: str, network: Network, **kwargs: Any
) -> DockerContainer:
    labels = {SANDBOX_LABEL: name, ROLE_LABEL: role}
    if role == "chassis":
        labels[NODE_LABEL] = hostname
    # DockerContainer.with_kwargs replaces earlier kwargs: everything goes in here at once.
    return DockerContainer(
        image,
        name=f"{name}-{hostname}",
        network=network,
        hostname=hostname,
        labels=labels,
        **kwargs,
    )


def _inspect(container: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_docker("inspect", container).stdout)[0]
    return data


def _subnet(network: str) -> str:
    data = json.loads(_docker("network", "inspect", network).stdout)[0]
    subnet: str = data["IPAM"]["Config"][0]["Subnet"]
    return subnet


def _write_identities(kube_dir: pathlib.Path, config_dir: pathlib.Path, *, container: str,
                      address: str, nodes: Sequence[str],
                      timeout: float = 120) -> None:
    """Wait for the `api` container's control plane, then write what the host and the nodes
    authenticate with: the admin's kubeconfig (`kubeconfig`) and, in each node's own directory
    (`nodes/NODE/`), the CA (`ca.crt`, for the kubelet to check the API server's calls), the
    kubelet's client certificate (`kubelet.kubeconfig`, `system:node:NODE`), kube-proxy's and
    Multus' ServiceAccount token."""
    deadline = time.monotonic() + timeout
    while not (kube_dir / kubeapi.READY_FILE).exists():
        if _inspect(container)["State"]["Status"] != "running" or time.monotonic() > deadline:
            logs = _docker("logs", "--tail", "30", container, check=False)
            raise errors.SandboxError(
                f"the Kubernetes control plane did not start ({container}; logs in "
                f"{kube_dir}/*.log): {(logs.stdout + logs.stderr).strip()[-1500:]}")
        time.sleep(0.2)
    plane = kubeapi.ControlPlane(directory=kube_dir, advertise=address, port=API_PORT)
    shutil.copyfile(plane.admin_kubeconfig, config_dir / "kubeconfig")
    # one of each for all nodes, kept with the control plane's files (not for the host's use)
    proxy = plane.client_kubeconfig(kube_dir / "kube-proxy.kubeconfig",
                                    common="system:kube-proxy")
    multus = plane.service_account_kubeconfig("kube-system", "multus",
                                              kube_dir / "multus.kubeconfig", duration="8760h")
    for node in nodes:
        node_dir = config_dir / "nodes" / node
        shutil.copyfile(plane.pki.path("ca.crt"), node_dir / "ca.crt")
        plane.client_kubeconfig(node_dir / "kubelet.kubeconfig", name=f"kubelet-{node}",
                                common=f"system:node:{node}", organization="system:nodes")
        for shared in (proxy, multus):
            shutil.copyfile(shared, node_dir / shared.name)


def _wait_ready(container: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _inspect(container)["State"]
        logs = _docker("logs", container).stdout
        if "READY" in logs.split():
            return
        if not state["Running"]:
            break
        time.sleep(0.2)
    tail = _docker("logs", "--tail", "20", container, check=False)
    raise errors.SandboxError(
        f"{container} did not become ready: {(tail.stdout + tail.stderr).strip()[-1500:]}"
    )
