"""Reading the facts `chain` judges: the Kubernetes API (the pod, its NADs, their Warning
Events, the node agents), OVN NB and SB (a few rows by name: `ovsdb.select`), and the node's
OVSDB through its agent's pod (`diagnose node` run there with the API's exec).
"""

from __future__ import annotations

import json
import os
from typing import Any

import kubernetes
import kubernetes.stream

from ovnk_secondary import errors, nads, naming
from ovnk_secondary.diagnose import chain, ovsdb

NAD_GROUP, NAD_VERSION, NAD_PLURAL = "k8s.cni.cncf.io", "v1", "network-attachment-definitions"
AGENT_SELECTOR = "app.kubernetes.io/name=ovnk-secondary,app.kubernetes.io/component=node-agent"
AGENT_CONTAINER = "node-agent"
NB, SB = "OVN_Northbound", "OVN_Southbound"


class Facts:
    def __init__(self, *, kubeconfig: str | None, ovn_nb: str, ovn_sb: str,
                 agent_namespace: str) -> None:
        try:
            if kubeconfig is None and _in_cluster():
                kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
            else:
                kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig)
        except Exception as exc:
            raise errors.InvalidConfig(f"cannot load the Kubernetes client configuration: "
                                       f"{exc}; pass --kubeconfig") from None
        self.core = kubernetes.client.CoreV1Api()
        self.custom = kubernetes.client.CustomObjectsApi()
        self.ovn_nb = ovn_nb
        self.ovn_sb = ovn_sb
        self.agent_namespace = agent_namespace

    # -- Kubernetes ---------------------------------------------------------------------

    def pod(self, namespace: str, name: str) -> chain.Pod:
        try:
            body = self._plain(self.core.read_namespaced_pod(name, namespace))
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                raise errors.InvalidConfig(f"pod {namespace}/{name} not found") from None
            raise
        metadata = body["metadata"]
        return chain.Pod(namespace=namespace, name=name, uid=metadata["uid"],
                         node=body["spec"].get("nodeName"),
                         annotations=metadata.get("annotations") or {},
                         warnings=self._warnings(namespace, metadata["uid"]))

    def nad(self, key: str) -> chain.Nad:
        namespace, name = key.split("/", 1)
        try:
            body = self._plain(self.custom.get_namespaced_custom_object(
                NAD_GROUP, NAD_VERSION, namespace, NAD_PLURAL, name))
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return chain.Nad(key=key, body=None)
            raise
        return chain.Nad(key=key, body=body,
                         warnings=self._warnings(namespace, body["metadata"]["uid"]))

    def nads_of_network(self, network: str) -> list[chain.Nad]:
        """Every NAD whose config names `network` (invalid ones by their netAttachDefName
        cannot be told apart: NADs that fail to parse are left out)."""
        found = []
        listed = self._plain(self.custom.list_cluster_custom_object(NAD_GROUP, NAD_VERSION,
                                                                    NAD_PLURAL))
        for body in listed.get("items", []):
            try:
                config = nads.parse_nad(body)
            except errors.OvnkSecondaryError:
                continue
            if config is not None and config.name == network:
                metadata = body["metadata"]
                found.append(chain.Nad(key=f"{metadata['namespace']}/{metadata['name']}",
                                       body=body,
                                       warnings=self._warnings(metadata["namespace"],
                                                               metadata["uid"])))
        return sorted(found, key=lambda n: n.key)

    def node_names(self) -> list[str]:
        return sorted(n["metadata"]["name"] for n in self._plain(self.core.list_node())["items"])

    def _warnings(self, namespace: str, uid: str) -> tuple[str, ...]:
        events = self._plain(self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.uid={uid},type=Warning"))["items"]
        events.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        return tuple(f"{e.get('reason')}: {e.get('message')}" for e in events)

    def _plain(self, obj: object) -> dict[str, Any]:
        """An API answer as the JSON the API server sent (camelCase keys)."""
        plain: dict[str, Any] = self.core.api_client.sanitize_for_serialization(obj)
        return plain

    # -- OVN ----------------------------------------------------------------------------

    def northbound(self, network: nads.NetworkConfig, port_name: str | None) -> chain.Northbound:
        switch_name = naming.switch_name(network.name, network.topology)
        switches = ovsdb.select(self.ovn_nb, NB, "Logical_Switch", [["name", "==", switch_name]],
                                ["name", "external_ids", "ports"])
        port = holder = None
        if port_name is not None:
            ports = ovsdb.select(self.ovn_nb, NB, "Logical_Switch_Port",
                                 [["name", "==", port_name]],
                                 ["_uuid", "name", "addresses", "external_ids", "options"])
            if ports:
                port = ports[0]
                holders = ovsdb.select(self.ovn_nb, NB, "Logical_Switch",
                                       [["ports", "includes", ["uuid", port["_uuid"]]]],
                                       ["name"])
                holder = holders[0]["name"] if holders else None
        localnet = None
        if network.topology == naming.LOCALNET:
            rows = ovsdb.select(self.ovn_nb, NB, "Logical_Switch_Port",
                                [["name", "==", naming.localnet_port_name(network.name)]],
                                ["name", "options", "tag_request"])
            localnet = rows[0] if rows else None
        return chain.Northbound(switch=switches[0] if switches else None, port=port,
                                localnet_port=localnet, switch_holding_port=holder)

    def southbound(self, port_name: str) -> chain.Southbound:
        rows = ovsdb.select(self.ovn_sb, SB, "Port_Binding", [["logical_port", "==", port_name]],
                            ["logical_port", "chassis", "additional_chassis", "up"])
        if not rows:
            return chain.Southbound(binding=None)
        binding: dict[str, Any] = dict(rows[0])
        chassis = binding["chassis"]
        binding["chassis"] = self._chassis(chassis) if chassis else None
        additional = binding["additional_chassis"]  # a set: one uuid is decoded as itself
        binding["additional_chassis"] = [self._chassis(uuid) for uuid in (
            [additional] if isinstance(additional, str) else additional or [])]
        return chain.Southbound(binding=binding)

    def _chassis(self, uuid: str) -> dict[str, Any]:
        """SB Chassis `uuid`'s name and hostname (its uuid as name when the row is gone)."""
        found = ovsdb.select(self.ovn_sb, SB, "Chassis", [["_uuid", "==", ["uuid", uuid]]],
                             ["name", "hostname"])
        return found[0] if found else {"name": uuid}

    # -- the node, through its agent ----------------------------------------------------

    def node(self, name: str, *, iface_id: str | None) -> chain.Node:
        agents = self._plain(self.core.list_namespaced_pod(
            self.agent_namespace, label_selector=AGENT_SELECTOR,
            field_selector=f"spec.nodeName={name}"))["items"]
        running = [p for p in agents if p.get("status", {}).get("phase") == "Running"]
        if not running:
            return chain.Node(name=name, report=None, unreachable=(
                f"no running node-agent pod on {name} in namespace {self.agent_namespace}"))
        command = ["ovnk-secondary", "diagnose", "node"]
        if iface_id:
            command += ["--iface-id", iface_id]
        try:
            stream = kubernetes.stream.stream(
                self.core.connect_get_namespaced_pod_exec, running[0]["metadata"]["name"],
                self.agent_namespace, container=AGENT_CONTAINER, command=command,
                stdin=False, stdout=True, stderr=True, tty=False, _preload_content=False)
            stream.run_forever(timeout=60)
            stdout, stderr = stream.read_stdout(), stream.read_stderr()
            code = stream.returncode
            stream.close()
        except Exception as exc:  # exec refused (RBAC: pods/exec) or the connection failed
            return chain.Node(name=name, report=None, unreachable=f"exec failed: {exc}")
        if code != 0:
            return chain.Node(name=name, report=None,
                              unreachable=f"`{' '.join(command)}` failed ({code}): {stderr}")
        try:
            return chain.Node(name=name, report=json.loads(stdout))
        except ValueError:
            return chain.Node(name=name, report=None,
                              unreachable=f"unexpected output of the agent: {stdout[:200]!r}")


def _in_cluster() -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ
