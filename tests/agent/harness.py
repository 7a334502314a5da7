"""Driving the node agent inside the sandbox the way a cluster would.

What a real cluster provides around the agent is played here by the test: the Kubernetes API
(a real kube-apiserver on the host, reachable from the chassis containers), the controller's
output (the pod's `k8s.ovn.org/pod-networks` annotation and the logical switch port in NB,
written by hand as the conventions describe them) and Multus (the plugin binary executed with
`CNI_*` variables and the NAD config on stdin, inside the node's container).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kubernetes import client

from ovnk_secondary import naming
from ovnk_secondary.agent import interfaces
from ovnk_secondary.sandbox import cluster
from tests import kube

AGENT_DIR = "/run/ovnk-agent-test"
SOCKET = f"{AGENT_DIR}/sock/cni.sock"
PLUGIN = "/opt/cni/bin/ovn-k8s-cni-overlay"
HEALTH_PORT = 9190  # the test agents' /healthz and /readyz, on the chassis' loopback
NAD_GROUP, NAD_VERSION, NAD_PLURAL = "k8s.cni.cncf.io", "v1", "network-attachment-definitions"


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str,
               interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclasses.dataclass(frozen=True)
class Network:
    name: str
    topology: str
    nad_key: str
    subnet: str = ""
    vlan: int | None = None
    mtu: int | None = None
    physical_network: str = ""  # localnet: physicalNetworkName (default: name)

    @property
    def switch(self) -> str:
        return naming.switch_name(self.name, self.topology)

    def config(self, cni_version: str = "0.3.1") -> dict[str, Any]:
        conf: dict[str, Any] = {"cniVersion": cni_version, "name": self.name,
                                "type": "ovn-k8s-cni-overlay", "topology": self.topology,
                                "netAttachDefName": self.nad_key}
        if self.subnet:
            conf["subnets"] = self.subnet
        if self.vlan:
            conf["vlanID"] = self.vlan
        if self.mtu:
            conf["mtu"] = self.mtu
        if self.physical_network:
            conf["physicalNetworkName"] = self.physical_network
        return conf


@dataclasses.dataclass
class Pod:
    node: str
    namespace: str
    name: str
    network: Network
    ip: str  # CIDR
    mac: str
    uid: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    container_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    ifname: str = "net1"

    @property
    def netns_name(self) -> str:
        return f"pod-{self.name}"

    @property
    def netns(self) -> str:
        return f"/var/run/netns/{self.netns_name}"

    @property
    def port(self) -> str:
        return naming.pod_port_name(self.network.nad_key, self.namespace, self.name)

    @property
    def host_side(self) -> str:
        return interfaces.host_ifname(container_id=self.container_id, ifname=self.ifname)

    @property
    def address(self) -> str:
        return self.ip.split("/")[0]

    def env(self, command: str) -> dict[str, str]:
        return {
            "CNI_COMMAND": command, "CNI_CONTAINERID": self.container_id,
            "CNI_NETNS": self.netns, "CNI_IFNAME": self.ifname, "CNI_PATH": "/opt/cni/bin",
            "CNI_ARGS": (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};"
                         f"K8S_POD_NAME={self.name};K8S_POD_INFRA_CONTAINER_ID="
                         f"{self.container_id};K8S_POD_UID={self.uid}"),
            "OVNK_SECONDARY_CNI_SOCKET": SOCKET,
        }


@dataclasses.dataclass
class CniOutcome:
    exit_code: int
    output: dict[str, Any] | None
    stderr: str


class Cluster:
    """The sandbox with agents running, plus the cluster-side writes the tests make."""

    def __init__(self, sb: cluster.Sandbox, api: kube.KubeApi, nb: Any) -> None:
        self.sb = sb
        self.api = api
        self.core: Any = api.core()
        self.custom: Any = api.custom()
        self.nb = nb
        self._switches: list[str] = []
        self._pods: list[Pod] = []
        self._nads: list[Network] = []
        self.agents: dict[str, Agent] = {}

    # --- the controller's side --------------------------------------------------------------

    def add_network(self, network: Network, *, physical_network: str = "") -> None:
        ids = {naming.NETWORK_KEY: network.name, naming.TOPOLOGY_KEY: network.topology,
               naming.ROLE_KEY: "secondary", naming.OWNER_KEY: naming.OWNER_VALUE}
        with self.nb.transaction(check_error=True) as txn:
            txn.add(self.nb.ls_add(network.switch, may_exist=True, external_ids=ids))
            if network.topology == naming.LOCALNET:
                port = naming.localnet_port_name(network.name)
                txn.add(self.nb.lsp_add(network.switch, port, type="localnet",
                                        addresses=["unknown"],
                                        options={"network_name": physical_network or
                                                 network.physical_network or network.name}))
                if network.vlan:
                    txn.add(self.nb.db_set("Logical_Switch_Port", port,
                                           ("tag_request", network.vlan)))
        self._switches.append(network.switch)

    def add_nad(self, network: Network) -> None:
        """The NetworkAttachmentDefinition object of `network` (the agent watches NADs)."""
        namespace, name = network.nad_key.split("/")
        self.api.ensure_namespace(namespace)
        self.custom.create_namespaced_custom_object(
            NAD_GROUP, NAD_VERSION, namespace, NAD_PLURAL,
            {"apiVersion": f"{NAD_GROUP}/{NAD_VERSION}", "kind": "NetworkAttachmentDefinition",
             "metadata": {"name": name, "namespace": namespace},
             "spec": {"config": json.dumps(network.config())}})
        self._nads.append(network)

    def edit_nad(self, network: Network) -> None:
        """Replace the NAD's spec.config with `network`'s (a merge patch, as `kubectl edit`)."""
        namespace, name = network.nad_key.split("/")
        self.custom.patch_namespaced_custom_object(
            NAD_GROUP, NAD_VERSION, namespace, NAD_PLURAL, name,
            {"spec": {"config": json.dumps(network.config())}})

    def add_pod(self, pod: Pod, *, annotate: bool = True, port: bool = True) -> None:
        """The pod object (annotated as the controller would) and its logical switch port."""
        self.sb.add_pod_netns(pod.node, pod.netns_name)
        self._pods.append(pod)
        self.api.ensure_namespace(pod.namespace)
        annotations = {"k8s.v1.cni.cncf.io/networks": pod.network.nad_key}
        if annotate:
            annotations["k8s.ovn.org/pod-networks"] = json.dumps({pod.network.nad_key: {
                "ip_addresses": [pod.ip], "mac_address": pod.mac, "role": "secondary"}})
        self.core.create_namespaced_pod(pod.namespace, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": pod.namespace,
                         "annotations": annotations},
            "spec": {"nodeName": pod.node, "containers": [{"name": "c", "image": "x"}]}})
        # the API server stamps the uid: the runtime passes it in CNI_ARGS
        pod.uid = self.core.read_namespaced_pod(pod.name, pod.namespace).metadata.uid
        if port:
            self._add_port(pod)

    def add_attachment(self, pod: Pod) -> None:
        """Another network of a pod made with `add_pod` (same name, uid and sandbox): its
        annotation entry next to the others, and its logical switch port."""
        self._pods.append(pod)
        annotations = self.core.read_namespaced_pod(pod.name, pod.namespace).metadata.annotations
        entries = json.loads(annotations.get("k8s.ovn.org/pod-networks") or "{}")
        entries[pod.network.nad_key] = {"ip_addresses": [pod.ip], "mac_address": pod.mac,
                                        "role": "secondary"}
        selections = annotations["k8s.v1.cni.cncf.io/networks"] + "," + pod.network.nad_key
        self.core.patch_namespaced_pod(pod.name, pod.namespace, {"metadata": {"annotations": {
            "k8s.v1.cni.cncf.io/networks": selections,
            "k8s.ovn.org/pod-networks": json.dumps(entries)}}})
        self._add_port(pod)

    def _add_port(self, pod: Pod) -> None:
        addresses = [f"{pod.mac} {pod.address}"]
        self.nb.lsp_add(pod.network.switch, pod.port, addresses=addresses,
                        port_security=addresses,
                        external_ids={"namespace": pod.namespace, "pod": "true",
                                      naming.NETWORK_KEY: pod.network.name,
                                      naming.NAD_KEY: pod.network.nad_key,
                                      naming.OWNER_KEY: naming.OWNER_VALUE},
                        options={"requested-chassis": pod.node, "iface-id-ver": pod.uid},
                        may_exist=True).execute(check_error=True)

    def remove_pod(self, pod: Pod) -> None:
        self.nb.lsp_del(pod.port, if_exists=True).execute(check_error=True)
        try:
            self.api.delete_pod(pod.namespace, pod.name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        self.sb.delete_pod_netns(pod.node, pod.netns_name)

    def cleanup(self) -> None:
        for pod in self._pods:
            self.cni(pod, "DEL", check=False)
            # in case the agent was down: the node must be left clean all the same
            self.sb.exec(pod.node, f"ovs-vsctl --if-exists del-port {pod.host_side}; "
                         f"ip link del {pod.host_side} 2>/dev/null", check=False)
            self.remove_pod(pod)
        for switch in self._switches:
            self.nb.ls_del(switch, if_exists=True).execute(check_error=True)
        for network in self._nads:
            namespace, name = network.nad_key.split("/")
            try:
                self.custom.delete_namespaced_custom_object(NAD_GROUP, NAD_VERSION, namespace,
                                                            NAD_PLURAL, name)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
        self._pods.clear()
        self._switches.clear()
        self._nads.clear()

    # --- Multus' side -----------------------------------------------------------------------

    def cni(self, pod: Pod, command: str, *, check: bool = True, stdin: str | None = None,
            env: Mapping[str, str] | None = None, cni_version: str = "0.3.1") -> CniOutcome:
        done = self.sb.exec(pod.node, [PLUGIN],
                            input=stdin if stdin is not None else json.dumps(
                                pod.network.config(cni_version)),
                            env=dict(env) if env is not None else pod.env(command),
                            check=False, timeout=120)
        output = json.loads(done.stdout) if done.stdout.strip() else None
        outcome = CniOutcome(done.exit_code, output, done.stderr)
        if check and done.exit_code != 0:
            raise AssertionError(f"CNI {command} of {pod.name} failed: {output} {done.stderr}")
        return outcome

    def ping(self, pod: Pod, address: str, *, count: int = 2, deadline: int = 5) -> bool:
        done = self.sb.exec(pod.node, ["ip", "netns", "exec", pod.netns_name, "ping", "-c",
                                       str(count), "-W", "1", "-w", str(deadline), address],
                            check=False, timeout=deadline + 30)
        return done.exit_code == 0

    def ovs_ports(self, node: str) -> list[str]:
        return self.sb.exec(node, "ovs-vsctl list-ports br-int").stdout.split()

    def iface_ids(self, node: str) -> list[str]:
        out = self.sb.exec(node, "ovs-vsctl --bare --columns=external_ids list interface").stdout
        return [item.split("=", 1)[1].strip('"') for item in out.split()
                if item.startswith("iface-id=")]


class Agent:
    """One `ovnk-secondary node-agent` process inside a chassis container."""

    def __init__(self, sb: cluster.Sandbox, node: str, *, kubeconfig: str,
                 mappings: str | None = None, annotation_timeout: float = 8,
                 binding_timeout: float = 20) -> None:
        self.sb = sb
        self.node = node
        self.kubeconfig = kubeconfig
        self.mappings = mappings
        self.annotation_timeout = annotation_timeout
        self.binding_timeout = binding_timeout

    @property
    def pidfile(self) -> str:
        return f"{AGENT_DIR}/agent.pid"

    @property
    def log(self) -> str:
        return f"{AGENT_DIR}/agent.log"

    def setup_files(self) -> None:
        self.sb.exec(self.node, f"mkdir -p {AGENT_DIR} && cat > {AGENT_DIR}/kubeconfig",
                     input=self.kubeconfig)
        if self.mappings is not None:
            self.write_mappings(self.mappings)

    def write_mappings(self, text: str) -> None:
        self.sb.exec(self.node, f"cat > {AGENT_DIR}/mappings.tmp && "
                     f"mv {AGENT_DIR}/mappings.tmp {AGENT_DIR}/bridge-mappings.yaml", input=text)

    def start(self) -> None:
        argv = ["ovnk-secondary", "node-agent", "--node-name", self.node,
                "--kubeconfig", f"{AGENT_DIR}/kubeconfig", "--socket", SOCKET,
                "--annotation-timeout", str(self.annotation_timeout),
                "--binding-timeout", str(self.binding_timeout),
                "--health-port", str(HEALTH_PORT), "--health-host", "127.0.0.1"]
        if self.mappings is not None:
            argv += ["--bridge-mappings", f"{AGENT_DIR}/bridge-mappings.yaml"]
        script = (f"echo $$ > {self.pidfile}; exec {shlex.join(argv)} >> {self.log} 2>&1")
        self.sb.exec(self.node, ["bash", "-c", script], detach=True)
        wait_until(lambda: self.sb.exec(self.node, ["test", "-S", SOCKET], check=False)
                   .exit_code == 0, timeout=30, what=f"the agent's socket on {self.node}",
                   interval=0.2)

    def stop(self) -> None:
        self.sb.exec(self.node, f"test -f {self.pidfile} && kill $(cat {self.pidfile}); "
                     f"for i in $(seq 50); do test -S {SOCKET} || break; sleep 0.1; done; "
                     f"rm -f {self.pidfile}", check=False)

    def readyz(self) -> tuple[int, str]:
        """(status, text) of the agent's /readyz, asked from inside its node."""
        probe = ("import urllib.request, urllib.error\n"
                 "try:\n"
                 f"    r = urllib.request.urlopen('http://127.0.0.1:{HEALTH_PORT}/readyz', "
                 "timeout=5); print(r.status); print(r.read().decode(), end='')\n"
                 "except urllib.error.HTTPError as e:\n"
                 "    print(e.code); print(e.read().decode(), end='')\n")
        done = self.sb.exec(self.node, ["/opt/venv/bin/python", "-c", probe], check=False)
        status, _, text = done.stdout.partition("\n")
        return (int(status), text) if status.isdigit() else (0, done.stderr)

    def log_text(self) -> str:
        return self.sb.exec(self.node, ["cat", self.log], check=False).stdout


@dataclasses.dataclass
class AgentSet:
    agents: dict[str, Agent]

    def __iter__(self) -> Iterator[Agent]:
        return iter(self.agents.values())

    def __getitem__(self, node: str) -> Agent:
        return self.agents[node]
