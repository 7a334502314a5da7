"""The deployable manifests, checked offline against Kubernetes and against the code they deploy.

Built-in kinds are validated with `kubernetes-validate` (the API's OpenAPI schemas, strict: an
unknown field is an error); custom resources against the openAPIV3Schema of the CRDs shipped in
manifests/crds. Beyond schemas, the checks a reviewer would make by hand: the containers' command
lines parse with the project's own argparse, the probes hit the health port, the mounts hold
what the agent opens, the RBAC rules are exactly the documented least privilege and cover every
Kubernetes API call in the code, and the examples are the reference scenario as the controller
parses it. Nothing here needs a cluster; `kubectl kustomize` is used when kubectl is installed.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import importlib
import io
import ipaddress
import json
import os
import pathlib
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ovnk_secondary import cli, errors, ipam, nads, selections
from ovnk_secondary.agent import bridgemappings
from ovnk_secondary.cni import protocol
from ovnk_secondary.controller import apiclient
from ovnk_secondary.sandbox import cluster, images, kubeapi

REPO = pathlib.Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
EXAMPLES = MANIFESTS / "examples"
CRDS = MANIFESTS / "crds"
PACKAGE = REPO / "ovnk_secondary"
# The oldest release the manifests target (kubernetes-validate bundles its schemas).
KUBERNETES_VERSION = "1.30"
NAMESPACE = "ovnk-secondary"
BRIDGE_MAPPINGS_CONFIGMAP = "ovnk-secondary-bridge-mappings"
BRIDGE_MAPPINGS_KEY = "bridge-mappings.yaml"
SANDBOX_NODES = {"node-1", "node-2"}  # `sandbox up --nodes 2`
IMAGE = "ovnk-secondary"  # what `make image` builds

# The least privilege of each ServiceAccount: (scope, API group, resource) -> verbs, where scope
# is "cluster" or the namespace of a Role. The granted rules must be exactly this, and exactly
# what the code calls (see _code_calls): a new call without its rule, or a rule no code uses
# any more, fails.
EXPECTED_PERMISSIONS: dict[str, dict[tuple[str, str, str], set[str]]] = {
    "ovnk-secondary-controller": {
        ("cluster", "k8s.cni.cncf.io", "network-attachment-definitions"): {"list", "watch",
                                                                            "patch"},
        ("cluster", "", "pods"): {"list", "watch", "patch"},
        ("cluster", "", "events"): {"create"},
        ("cluster", "k8s.cni.cncf.io", "ipamclaims"): {"list", "watch"},
        ("cluster", "k8s.cni.cncf.io", "ipamclaims/status"): {"patch"},
        ("cluster", "k8s.cni.cncf.io", "multi-networkpolicies"): {"list", "watch"},
        ("cluster", "", "namespaces"): {"list", "watch"},
        ("ovnk-secondary", "coordination.k8s.io", "leases"): {"create", "get", "update"},
    },
    "ovnk-secondary-node-agent": {
        ("cluster", "", "pods"): {"get", "list", "watch"},
        ("cluster", "", "nodes"): {"patch"},
        ("cluster", "", "events"): {"create"},
        ("cluster", "k8s.cni.cncf.io", "network-attachment-definitions"): {"get", "list", "watch"},
    },
}
# Which ServiceAccount runs the code of which package (for the scan of API calls).
COMPONENT_OF_PACKAGE = {
    "agent": "ovnk-secondary-node-agent",
    "controller": "ovnk-secondary-controller",
    "northbound": "ovnk-secondary-controller",
}
# Packages that are not deployed by these manifests (`diagnose` runs with an admin's own
# kubeconfig: README, "Diagnosing a pod or a network").
NOT_DEPLOYED = {"sandbox", "cni", "diagnose"}


# --- loading ------------------------------------------------------------------------------------

def _documents(path: pathlib.Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _manifest_files() -> list[pathlib.Path]:
    """Every Kubernetes manifest under manifests/ (not kustomize's own files)."""
    return sorted(p for p in MANIFESTS.rglob("*.yaml") if p.name != "kustomization.yaml")


def _objects(root: pathlib.Path = MANIFESTS, *, recursive: bool = True) -> list[
        tuple[pathlib.Path, dict[str, Any]]]:
    files = root.rglob("*.yaml") if recursive else root.glob("*.yaml")
    return [(path, doc) for path in sorted(files) if path.name != "kustomization.yaml"
            for doc in _documents(path)]


def _label(path: pathlib.Path, obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    where = f"{meta.get('namespace')}/" if meta.get("namespace") else ""
    return f"{path.relative_to(MANIFESTS)}: {obj.get('kind')} {where}{meta.get('name')}"


@functools.cache
def _crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(group, kind) -> CRD, from manifests/crds (parsed once: treat as read-only)."""
    found = {}
    for _, doc in _objects(CRDS):
        assert doc["kind"] == "CustomResourceDefinition", f"{doc['kind']} in manifests/crds"
        found[(doc["spec"]["group"], doc["spec"]["names"]["kind"])] = doc
    return found


def _base_objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _objects(MANIFESTS, recursive=False) if doc["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in _base_objects(kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name} in manifests/, found {len(matches)}"
    return matches[0]


def _workload_containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload name, pod spec, container) for every container and init container of the base."""
    for kind in ("Deployment", "DaemonSet"):
        for workload in _base_objects(kind):
            spec = workload["spec"]["template"]["spec"]
            for container in spec.get("initContainers", []) + spec["containers"]:
                yield workload["metadata"]["name"], spec, container


def _short(error: kubernetes_validate.ValidationError) -> str:
    caught = error.caught
    path = "/".join(str(p) for p in getattr(caught, "absolute_path", ()))
    return f"{getattr(caught, 'message', caught)} (at /{path})"


# --- schemas ------------------------------------------------------------------------------------

BUILTIN = [(path, doc) for path, doc in _objects()
           if not doc["apiVersion"].startswith("k8s.cni.cncf.io/")]
CUSTOM = [(path, doc) for path, doc in _objects()
          if doc["apiVersion"].startswith("k8s.cni.cncf.io/")]


def test_every_manifest_is_a_kubernetes_object() -> None:
    files = _manifest_files()
    assert len(files) >= 10, f"manifests/ holds only {[str(f) for f in files]}"
    for path in files:
        docs = _documents(path)
        assert docs, f"{path} holds no object"
        for doc in docs:
            assert isinstance(doc, dict) and {"apiVersion", "kind", "metadata"} <= set(doc), (
                f"{path}: every document needs apiVersion, kind and metadata")
            assert doc["metadata"].get("name"), f"{path}: a {doc['kind']} without a name"


@pytest.mark.parametrize(("path", "obj"), BUILTIN, ids=[_label(p, o) for p, o in BUILTIN])
def test_builtin_objects_match_the_kubernetes_schema(path: pathlib.Path,
                                                     obj: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{_label(path, obj)}: {_short(exc)}")


def test_the_schema_validation_rejects_a_broken_object() -> None:
    """The validator is strict: an unknown field or a wrong type in a real manifest is caught."""
    daemonset = _one("DaemonSet", "ovnk-secondary-node-agent")
    broken = json.loads(json.dumps(daemonset))
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []  # typo'd field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    broken = json.loads(json.dumps(daemonset))
    broken["spec"]["template"]["spec"]["hostNetwork"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def _validator(obj: Mapping[str, Any]) -> jsonschema.Draft7Validator:
    group, _, version = obj["apiVersion"].partition("/")
    crd = _crds().get((group, obj["kind"]))
    assert crd is not None, f"no CRD in manifests/crds for {obj['apiVersion']} {obj['kind']}"
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    assert version in versions and versions[version]["served"], (
        f"{obj['kind']} {version} is not a served version of {crd['metadata']['name']}")
    return jsonschema.Draft7Validator(versions[version]["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize(("path", "obj"), CUSTOM, ids=[_label(p, o) for p, o in CUSTOM])
def test_custom_resources_match_their_crd_schema(path: pathlib.Path, obj: dict[str, Any]) -> None:
    errors_found = [f"{e.message} (at /{'/'.join(map(str, e.absolute_path))})"
                    for e in _validator(obj).iter_errors(obj)]
    assert not errors_found, f"{_label(path, obj)}: {'; '.join(errors_found)}"


def test_the_crd_schema_rejects_a_broken_nad() -> None:
    nad = next(doc for _, doc in CUSTOM if doc["kind"] == "NetworkAttachmentDefinition")
    broken = json.loads(json.dumps(nad))
    broken["spec"]["config"] = {"type": "ovn-k8s-cni-overlay"}  # an object, not a JSON string
    assert list(_validator(broken).iter_errors(broken))


def test_crds_carry_their_upstream_origin_and_valid_schemas() -> None:
    files = sorted(CRDS.glob("*.yaml"))
    for path in files:
        if path.name == "kustomization.yaml":
            continue
        header = path.read_text(encoding="utf-8").split("\n---\n", 1)[0]
        assert re.search(r"github\.com/k8snetworkplumbingwg/[\w.-]+", header), (
            f"{path.name}: the header must name the upstream repository")
        assert re.search(r"commit [0-9a-f]{40}", header), (
            f"{path.name}: the header must name the upstream commit")
        for doc in _documents(path):
            for version in doc["spec"]["versions"]:
                jsonschema.Draft7Validator.check_schema(version["schema"]["openAPIV3Schema"])
            storage = [v["name"] for v in doc["spec"]["versions"] if v["storage"]]
            assert len(storage) == 1, f"{path.name}: exactly one storage version, not {storage}"


# The custom resources the project uses, as their upstream projects define them (Multus'
# NetworkAttachmentDefinition, OVN-Kubernetes' IPAMClaim, multi-networkpolicy's
# MultiNetworkPolicy): (group, version, plural) -> (kind, singular, short names, status
# subresource).
CUSTOM_RESOURCES = {
    ("k8s.cni.cncf.io", "v1", "network-attachment-definitions"):
        ("NetworkAttachmentDefinition", "network-attachment-definition", {"net-attach-def"},
         False),
    ("k8s.cni.cncf.io", "v1alpha1", "ipamclaims"): ("IPAMClaim", "ipamclaim", set(), True),
    ("k8s.cni.cncf.io", "v1beta1", "multi-networkpolicies"):
        ("MultiNetworkPolicy", "multi-networkpolicy", {"multi-policy"}, False),
}


def test_crds_serve_the_resources_the_project_uses() -> None:
    """Group, version, names and scope agree with what the code uses and the upstream CRDs."""
    crds = _crds()
    assert len(crds) == len(CUSTOM_RESOURCES)
    for (group, version, plural), (kind, singular, shortnames, status) in (
            CUSTOM_RESOURCES.items()):
        crd = crds.get((group, kind))
        assert crd is not None, f"manifests/crds lacks {kind} ({group})"
        spec = crd["spec"]
        assert crd["metadata"]["name"] == f"{plural}.{group}"
        assert spec["names"]["plural"] == plural
        assert spec["names"]["singular"] == singular
        assert shortnames <= set(spec["names"].get("shortNames", ()))
        assert spec["scope"] == "Namespaced"
        served = {v["name"] for v in spec["versions"] if v["served"]}
        assert version in served, f"{kind}: {version} is not served (served: {served})"
        has_status = any("status" in (v.get("subresources") or {}) for v in spec["versions"])
        assert has_status == status, f"{kind}: status subresource {has_status}, not {status}"
    # the controller's path of NADs names the same resource
    assert apiclient.NAD_PATH == "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions"


def test_the_served_multi_network_policy_keeps_end_port() -> None:
    """Our one change to upstream's CRD: v1beta1's ports have `endPort` (else the API server
    prunes it and a port range silently narrows to its first port), defined exactly as in
    upstream's own v1beta2 (NetworkPolicy's); the header says so."""
    crd = _crds()[("k8s.cni.cncf.io", "MultiNetworkPolicy")]
    versions = {v["name"]: v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}
    def port(version: str, direction: str) -> dict[str, Any]:
        rules = versions[version]["properties"]["spec"]["properties"][direction]
        found: dict[str, Any] = rules["items"]["properties"]["ports"]["items"]
        return found

    for direction in ("ingress", "egress"):
        end_port = port("v1beta1", direction)["properties"]["endPort"]
        assert (end_port["type"], end_port["format"]) == ("integer", "int32")
        assert port("v1beta1", direction) == port("v1beta2", direction), (
            f"{direction}: only endPort was added")
    header = (CRDS / "multi-networkpolicies.yaml").read_text().split("\n---\n", 1)[0]
    assert "endPort" in header and "pruned" in header
    policy = {"apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy",
              "metadata": {"name": "range", "namespace": "test"},
              "spec": {"podSelector": {}, "egress": [
                  {"ports": [{"protocol": "TCP", "port": 8000, "endPort": 8080}]}]}}
    assert not list(_validator(policy).iter_errors(policy))
    policy["spec"]["egress"][0]["ports"][0]["endPort"] = "8080"
    assert list(_validator(policy).iter_errors(policy))


# --- kustomize ----------------------------------------------------------------------------------

def test_kustomizations_list_every_manifest() -> None:
    for directory in (MANIFESTS, CRDS):
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        listed = set(kustomization["resources"])
        present = {p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml"}
        present |= {p.parent.name for p in directory.glob("*/kustomization.yaml")
                    if p.parent.name != "crds"}  # crds/ is installed separately, on purpose
        assert listed == present, (
            f"{directory.relative_to(REPO)}/kustomization.yaml lists {sorted(listed)}, "
            f"the directory holds {sorted(present)}")
    base = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert base["namespace"] == NAMESPACE
    assert [image["name"] for image in base["images"]] == [IMAGE]
    # the tag `make image` gives it: the project's version
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert [image["newTag"] for image in base["images"]] == [version]


def _built_daemonset(tmp_path: pathlib.Path, component: str) -> dict[str, Any]:
    """The node-agent DaemonSet of an overlay of the base with `component`, built by kustomize
    as a user's overlay would be."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(MANIFESTS, overlay)],
        "components": [os.path.relpath(MANIFESTS / "components" / component, overlay)]}))
    built = subprocess.run([str(kubeapi.kubectl()), "kustomize", str(overlay)],
                           capture_output=True, text=True, check=True).stdout
    daemonset: dict[str, Any] = next(
        d for d in yaml.safe_load_all(built) if d and d["kind"] == "DaemonSet")
    return daemonset


def test_the_cni_binary_directory_is_a_setting_of_the_daemonset(tmp_path: pathlib.Path) -> None:
    """The component for OpenShift's Multus (/var/lib/cni/bin): the init container installs into
    that host directory and the agent keeps it there, nothing else moves."""
    pod_spec = _built_daemonset(tmp_path, "openshift-cni-bin-dir")["spec"]["template"]["spec"]
    init = next(c for c in pod_spec["initContainers"] if c["name"] == "install-cni")
    agent = next(c for c in pod_spec["containers"] if c["name"] == "node-agent")
    for container in (init, agent):
        directory = str(_parse_command(container).cni_bin_dir)
        assert _host_path_at(pod_spec, container, directory)[1] == "/var/lib/cni/bin"
    base = _one("DaemonSet", "ovnk-secondary-node-agent")["spec"]["template"]["spec"]
    assert [v for v in pod_spec["volumes"] if v["name"] != "cni-bin"] == [
        v for v in base["volumes"] if v["name"] != "cni-bin"]


def test_chaining_to_ovn_kubernetes_is_a_component_and_off_by_default(
        tmp_path: pathlib.Path) -> None:
    """Replacing OVN-Kubernetes' plugin (kept beside ours) is the admin's decision: the base
    refuses, the component ovn-kubernetes-primary chains, in the init container and the agent."""
    def modes(pod_spec: Mapping[str, Any]) -> set[str]:
        return {_parse_command(c).primary_plugin
                for c in pod_spec["initContainers"] + pod_spec["containers"]
                if c["name"] in ("install-cni", "node-agent")}

    base = _one("DaemonSet", "ovnk-secondary-node-agent")["spec"]["template"]["spec"]
    assert modes(base) == {"refuse"}
    built = _built_daemonset(tmp_path, "ovn-kubernetes-primary")["spec"]["template"]["spec"]
    assert modes(built) == {"chain"}
    assert built["volumes"] == base["volumes"]


def test_base_objects_live_in_the_ovnk_secondary_namespace() -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                      "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    seen = set()
    for path, doc in _objects(MANIFESTS, recursive=False):
        namespace = doc["metadata"].get("namespace")
        if doc["kind"] in cluster_scoped:
            assert namespace is None, f"{_label(path, doc)} is cluster-scoped"
        else:
            assert namespace == NAMESPACE, f"{_label(path, doc)}: namespace {namespace}"
        key = (doc["kind"], namespace, doc["metadata"]["name"])
        assert key not in seen, f"{_label(path, doc)} is defined twice"
        seen.add(key)
    for _, _, container in _workload_containers():
        assert container["image"].rpartition(":")[0] == IMAGE, container["image"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_base_and_the_crds() -> None:
    for directory, expected in ((MANIFESTS, _objects(MANIFESTS, recursive=False)),
                                (CRDS, _objects(CRDS))):
        built = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True,
                               text=True, timeout=60, check=False)
        assert built.returncode == 0, built.stderr
        names = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(built.stdout))
        assert names == sorted((d["kind"], d["metadata"]["name"]) for _, d in expected)


# --- command lines, probes, mounts --------------------------------------------------------------

def _parse_command(container: Mapping[str, Any]) -> argparse.Namespace:
    """The container's `ovnk-secondary ...` command line, parsed as `cli.main` would parse it."""
    argv = list(container.get("command", [])) + list(container.get("args", []))
    assert argv[0] == "ovnk-secondary", f"{container['name']}: runs {argv[0]}, not ovnk-secondary"
    defined = {env["name"] for env in container.get("env", [])}
    expanded = []
    for arg in argv[1:]:
        for variable in re.findall(r"\$\((\w+)\)", arg):
            assert variable in defined, (
                f"{container['name']}: $({variable}) is used in the command but not in env")
        # a plausible value per variable, so that typed flags (e.g. --resync-period) parse
        expanded.append(re.sub(r"\$\((\w+)\)", lambda m: _sample_value(container, m[1]), arg))
    subcommand, *rest = expanded
    assert subcommand in cli.SUBCOMMANDS, f"{subcommand} is not an ovnk-secondary subcommand"
    try:
        module = importlib.import_module(cli.SUBCOMMANDS[subcommand][0])
    except ImportError as exc:
        pytest.fail(f"ovnk-secondary {subcommand} cannot be imported ({exc}): the manifest runs it")
    # allow_abbrev=False: a manifest spells flags out (an abbreviation breaks when a flag is added)
    parser = argparse.ArgumentParser(prog=f"ovnk-secondary {subcommand}", allow_abbrev=False)
    module.add_arguments(parser)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parser.parse_args(rest)
    except SystemExit:
        pytest.fail(f"{container['name']}: `{' '.join(argv)}` does not parse: {stderr.getvalue()}")


def _sample_value(container: Mapping[str, Any], variable: str) -> str:
    env = next(e for e in container["env"] if e["name"] == variable)
    if "value" in env:
        return str(env["value"])
    ref = env["valueFrom"].get("configMapKeyRef")
    if ref:
        data = _one("ConfigMap", ref["name"])["data"]
        assert ref["key"] in data, f"ConfigMap {ref['name']} has no key {ref['key']}"
        return str(data[ref["key"]])
    return "node-1"  # a fieldRef (spec.nodeName, metadata.name, ...)


def test_every_ovnk_secondary_command_line_parses() -> None:
    parsed = []
    for _, _, container in _workload_containers():
        if container["command"][0] == "ovnk-secondary":
            _parse_command(container)
            parsed.append(container["command"][1])
    assert sorted(parsed) == ["controller", "install-cni", "node-agent"]


def test_the_command_line_check_catches_an_unknown_flag() -> None:
    container = json.loads(json.dumps(_one("DaemonSet", "ovnk-secondary-node-agent")["spec"][
        "template"]["spec"]["containers"][0]))
    container["command"].append("--bridge-mapping-file")
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        _parse_command(container)


def test_controller_runs_one_active_replica_with_probes_on_its_health_port() -> None:
    deployment = _one("Deployment", "ovnk-secondary-controller")
    assert deployment["spec"]["replicas"] == 1
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = _parse_command(container)
    # replicas overlap during a rolling update: only the Lease holder may work
    assert args.leader_elect, "the controller must run with --leader-elect"
    assert (args.leader_elect_namespace or NAMESPACE) == NAMESPACE, (
        "the Lease must live where the leader-election Role grants it")
    assert args.ovn_nb.startswith(("tcp:", "ssl:", "unix:"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = container[probe]["httpGet"]
        assert http["path"] == path
        assert ports.get(http["port"], http["port"]) == args.health_port, (
            f"{probe} must hit --health-port {args.health_port}")


def _mounts(pod_spec: Mapping[str, Any],
            container: Mapping[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """mountPath -> (volumeMount, volume)."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    result = {}
    for mount in container.get("volumeMounts", []):
        assert mount["name"] in volumes, f"{container['name']}: no volume {mount['name']}"
        result[mount["mountPath"]] = (mount, volumes[mount["name"]])
    return result


def _host_path_at(pod_spec: Mapping[str, Any], container: Mapping[str, Any],
                  path: str) -> tuple[dict[str, Any], str]:
    """The mount holding `path` in the container, and the host path it comes from."""
    for mount_path, (mount, volume) in _mounts(pod_spec, container).items():
        if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
            assert "hostPath" in volume, f"{path} is mounted from {volume}, not from the host"
            return mount, volume["hostPath"]["path"] + path[len(mount_path):]
    pytest.fail(f"{container['name']}: nothing is mounted at {path}")


def _same_host_path(a: str, b: str) -> bool:
    """/var/run is /run on every distribution the agent runs on."""
    def normal(p: str) -> str:
        return re.sub(r"^/var/run/", "/run/", p.rstrip("/") + "/")
    return normal(a) == normal(b)


def test_node_agent_sees_the_host_as_the_cni_plugin_and_ovs_do() -> None:
    daemonset = _one("DaemonSet", "ovnk-secondary-node-agent")
    pod_spec = daemonset["spec"]["template"]["spec"]
    container = next(c for c in pod_spec["containers"] if c["name"] == "node-agent")
    args = _parse_command(container)
    assert pod_spec["hostNetwork"] is True
    assert container["securityContext"]["privileged"] is True
    assert args.node_name == "node-1"  # $(NODE_NAME) ...
    node_name = next(e for e in container["env"] if e["name"] == "NODE_NAME")
    assert node_name["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"  # ... is the node's

    # The CNI socket: where the plugin on the host connects (no override in the plugin's env).
    assert args.socket == protocol.DEFAULT_SOCKET
    _, host = _host_path_at(pod_spec, container, args.socket)
    assert _same_host_path(host, protocol.DEFAULT_SOCKET)
    # The local OVSDB.
    assert args.ovs_db.startswith("unix:")
    _, host = _host_path_at(pod_spec, container, args.ovs_db.removeprefix("unix:"))
    assert _same_host_path(host, "/var/run/openvswitch/db.sock")
    # Pod network namespaces, bind-mounted on the host after the agent started.
    mount, host = _host_path_at(pod_spec, container, "/var/run/netns/cni-1234")
    assert _same_host_path(host, "/var/run/netns/cni-1234")
    assert mount.get("mountPropagation") in ("HostToContainer", "Bidirectional"), (
        "netns mounts made on the host after start must propagate into the agent")

    # The bridge-mappings file comes from the ConfigMap key the base ships.
    volume = next(v for path, (_, v) in _mounts(pod_spec, container).items()
                  if args.bridge_mappings.startswith(path.rstrip("/") + "/"))
    relative = args.bridge_mappings.split("/")[-1]
    items = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])}
    assert volume["configMap"]["name"] == BRIDGE_MAPPINGS_CONFIGMAP
    assert items.get(relative, relative) in _one("ConfigMap", BRIDGE_MAPPINGS_CONFIGMAP)["data"]


def _install_command() -> tuple[dict[str, Any], str]:
    """The init container and the CNI binary directory it installs into (the host's
    /opt/cni/bin), as the container sees it."""
    daemonset = _one("DaemonSet", "ovnk-secondary-node-agent")
    pod_spec = daemonset["spec"]["template"]["spec"]
    init = next(c for c in pod_spec["initContainers"] if c["name"] == "install-cni")
    directory = str(_parse_command(init).cni_bin_dir)
    _, host = _host_path_at(pod_spec, init, directory)
    assert host.rstrip("/") == "/opt/cni/bin"
    return init, directory


def _elf_interpreter(data: bytes) -> bytes | None:
    """The program interpreter (PT_INTERP) of a 64-bit little-endian ELF executable: None for
    a static one."""
    assert data[:6] == b"\x7fELF\x02\x01", "not a 64-bit little-endian ELF file"
    phoff = int.from_bytes(data[0x20:0x28], "little")
    entsize = int.from_bytes(data[0x36:0x38], "little")
    for index in range(int.from_bytes(data[0x38:0x3A], "little")):
        header = data[phoff + index * entsize:phoff + (index + 1) * entsize]
        if int.from_bytes(header[:4], "little") == 3:  # PT_INTERP
            offset = int.from_bytes(header[8:16], "little")
            size = int.from_bytes(header[32:40], "little")
            return data[offset:offset + size].rstrip(b"\0")
    return None


def test_install_cni_installs_a_plugin_that_needs_nothing_on_the_host(
        tmp_path: pathlib.Path) -> None:
    """The init container, run from the product image as the kubelet would (its command, its
    CNI_BIN_DIR on a host directory): what lands on the host is a static binary that answers
    as Multus expects, run here with an empty environment (no Python, no library needed)."""
    init, container_dir = _install_command()
    product = images.ensure().product
    bin_dir = tmp_path / "opt-cni-bin"
    bin_dir.mkdir()
    environment = [f"--env={e['name']}={e['value']}" for e in init.get("env", [])]

    def install() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "run", "--rm", "--user", "0", "-v", f"{bin_dir}:{container_dir}",
             *environment, "--entrypoint", init["command"][0], product,
             *[re.sub(r"\$\((\w+)\)", lambda m: _sample_value(init, m[1]), arg)
               for arg in init["command"][1:]]],
            capture_output=True, text=True, timeout=120, check=False)

    # a node whose plugin of that name is another product's (OVN-Kubernetes'): left alone
    foreign = bin_dir / "ovn-k8s-cni-overlay"
    foreign.write_bytes(b"#!/bin/sh\necho OVN-Kubernetes\n")
    refused = install()
    assert refused.returncode != 0 and "refusing to replace" in refused.stderr, refused.stderr
    assert foreign.read_bytes() == b"#!/bin/sh\necho OVN-Kubernetes\n"
    foreign.unlink()
    done = install()
    assert done.returncode == 0, done.stderr
    plugin = bin_dir / "ovn-k8s-cni-overlay"
    assert os.access(plugin, os.X_OK)
    assert sorted(p.name for p in bin_dir.iterdir()) == ["ovn-k8s-cni-overlay"]
    assert _elf_interpreter(plugin.read_bytes()) is None, "dynamically linked"

    def run(command: str, stdin: str) -> subprocess.CompletedProcess[str]:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x",
               "CNI_IFNAME": "net1", "CNI_PATH": str(bin_dir),
               "CNI_ARGS": "K8S_POD_NAMESPACE=test;K8S_POD_NAME=p;K8S_POD_UID=u",
               "OVNK_SECONDARY_CNI_SOCKET": str(tmp_path / "absent.sock")}
        return subprocess.run([str(plugin)], input=stdin, env=env, capture_output=True,
                              text=True, timeout=30, check=False)

    # installed again over its own (an upgrade): replaced
    plugin.write_bytes(plugin.read_bytes() + b"\0older")
    assert install().returncode == 0 and not plugin.read_bytes().endswith(b"older")
    version = run("VERSION", '{"cniVersion": "1.0.0"}')
    assert version.returncode == 0, version.stdout + version.stderr
    assert json.loads(version.stdout)["supportedVersions"] == list(protocol.SUPPORTED_VERSIONS)
    config = EXAMPLE_NADS["nad-layer2"]["spec"]["config"]
    add = run("ADD", config)  # no agent on this socket: "try again later"
    assert add.returncode != 0
    assert json.loads(add.stdout)["code"] == protocol.TRY_AGAIN_LATER, add.stdout + add.stderr


# --- RBAC ---------------------------------------------------------------------------------------

def _granted() -> dict[str, dict[tuple[str, str, str], set[str]]]:
    """ServiceAccount -> (scope, group, resource) -> verbs, through the bindings of the base."""
    roles = {("ClusterRole", None, d["metadata"]["name"]): d for d in _base_objects("ClusterRole")}
    roles |= {("Role", d["metadata"]["namespace"], d["metadata"]["name"]): d
              for d in _base_objects("Role")}
    accounts = {d["metadata"]["name"] for d in _base_objects("ServiceAccount")}
    granted: dict[str, dict[tuple[str, str, str], set[str]]] = {a: {} for a in accounts}
    for binding in _base_objects("ClusterRoleBinding") + _base_objects("RoleBinding"):
        namespace = binding["metadata"].get("namespace")
        ref = binding["roleRef"]
        role = roles.get((ref["kind"], namespace if ref["kind"] == "Role" else None, ref["name"]))
        assert role is not None, f"{binding['metadata']['name']} binds a missing {ref}"
        scope = namespace if binding["kind"] == "RoleBinding" else "cluster"
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount" and subject["name"] in accounts, subject
            assert subject["namespace"] == NAMESPACE
            for rule in role["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        granted[subject["name"]].setdefault((scope, group, resource), set()).update(
                            rule["verbs"])
    return granted


def test_rbac_has_no_wildcards_and_nothing_dangerous() -> None:
    for role in _base_objects("ClusterRole") + _base_objects("Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: * in {field}"
            assert "nonResourceURLs" not in rule
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])
            assert not {"secrets", "serviceaccounts/token", "pods/exec"} & set(rule["resources"])


def test_rbac_grants_exactly_the_documented_least_privilege() -> None:
    assert _granted() == EXPECTED_PERMISSIONS


def test_workloads_run_as_their_service_accounts() -> None:
    assert {n: s["serviceAccountName"] for n, s, _ in _workload_containers()} == {
        "ovnk-secondary-controller": "ovnk-secondary-controller",
        "ovnk-secondary-node-agent": "ovnk-secondary-node-agent"}


# The kubernetes client's method names: <verb>_[namespaced_]<resource>[_status][_for_all_namespaces]
_CLIENT_CALL = re.compile(r"^(read|list|create|patch|replace|delete)_(namespaced_)?([a-z_]+?)"
                          r"(_status)?(_for_all_namespaces)?$")
_VERBS = {"read": "get", "list": "list", "create": "create", "patch": "patch",
          "replace": "update", "delete": "delete"}
_CLIENT_RESOURCES = {"pod": ("", "pods"), "node": ("", "nodes"), "event": ("", "events"),
                     "namespace": ("", "namespaces"), "config_map": ("", "configmaps"),
                     "lease": ("coordination.k8s.io", "leases")}
_KOPF_WATCH_ONLY = {"event", "index"}  # kopf handlers that never patch the object
_HTTP_VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}
# the controller's ApiClient methods that take an API path first, and their HTTP method
_CLIENT_METHODS = {"get": "GET", "create": "POST", "replace": "PUT"}
# /api/v1/[namespaces/NS/]RESOURCE[/NAME[/SUBRESOURCE]], /apis/GROUP/VERSION/... likewise
_API_PATH = re.compile(r"^/api(?:/v1|s/(?P<group>[^/]+)/[^/]+)"
                       r"(?:/namespaces/(?P<ns>[^/]+)(?=/))?/(?P<resource>[^/?]+)"
                       r"(?:/(?P<name>[^/?]+)(?:/(?P<sub>[^/?]+))?)?")


def _module_constants(tree: ast.Module) -> dict[str, str]:
    return {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for target in node.targets if isinstance(target, ast.Name)}


def _path_call(method: str, path: str) -> tuple[str, str, str]:
    """A raw HTTP call on an API path -> (group, resource, verb)."""
    match = _API_PATH.match(path)
    assert match, f"{path} is not a Kubernetes API path"
    if match["ns"] is None and match["resource"] == "namespaces" and match["name"] and match["sub"]:
        pytest.fail(f"cannot tell the resource of {path}")
    resource = match["resource"] + (f"/{match['sub']}" if match["sub"] else "")
    verb = _HTTP_VERBS.get(method) or ("get" if match["name"] else "list")
    return (match["group"] or "", resource, verb)


def _api_calls(source: str, *,
               shared: Mapping[str, str] | None = None) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) of every Kubernetes API call in a module's source.

    Reads kubernetes-client calls (`core.patch_node(...)`, `custom.get_namespaced_custom_object(
    group, version, ns, plural, name)`, `watch.stream(core.list_...)`), raw HTTP calls on API
    paths (`_request("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}")`, `api.list(PODS_PATH)`),
    kopf decorators (`@kopf.on.event("", "v1", "pods")`) and what `kopf.operator` itself needs.
    `shared` holds the string constants of the other modules (`apiclient.NAD_PATH`). A call it
    cannot attribute to a resource fails the test: teach this function, then check the RBAC.
    """
    tree = ast.parse(source)
    constants = {**(shared or {}), **_module_constants(tree)}

    def text(node: ast.expr) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name | ast.Attribute):
            return constants.get(node.id if isinstance(node, ast.Name) else node.attr)
        if isinstance(node, ast.JoinedStr):  # f"/api/v1/namespaces/{ns}/pods/{name}"
            return "".join(
                v.value if isinstance(v, ast.Constant)
                else (isinstance(v, ast.FormattedValue) and text(v.value)) or "X"  # {CONSTANT}
                for v in node.values)
        return None

    calls: set[tuple[str, str, str]] = set()
    crd_groups = {(g, c["spec"]["names"]["plural"]) for (g, _), c in _crds().items()}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name = node.func.attr
        dotted = ast.unparse(node.func)
        strings = [text(a) for a in node.args]
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if dotted in ("kopf.on.login", "kopf.on.startup", "kopf.on.cleanup", "kopf.on.probe"):
            continue  # operator-level handlers: no resource
        if dotted.startswith("kopf.on.") or dotted in ("kopf.index", "kopf.daemon", "kopf.timer"):
            plural = text(keywords["plural"]) if "plural" in keywords else (
                strings[-1] if strings else None)
            if len(node.args) == 1 and isinstance(node.args[0], ast.Starred):
                plural = None  # kopf.on.event(*NAD): resolved below from a tuple constant
                starred = node.args[0].value
                for assign in tree.body:
                    if (isinstance(assign, ast.Assign) and isinstance(assign.value, ast.Tuple)
                            and any(ast.unparse(tg) == ast.unparse(starred)
                                    for tg in assign.targets)):
                        plural = text(assign.value.elts[-1])
            assert plural, f"cannot tell the resource of {ast.unparse(node)}"
            group = next((g for g, p in crd_groups if p == plural), "")
            verbs = {"list", "watch"} | (set() if name in _KOPF_WATCH_ONLY else {"patch"})
            calls |= {(group, plural, verb) for verb in verbs}
        elif dotted in ("kopf.operator", "kopf.run"):
            calls |= {("apiextensions.k8s.io", "customresourcedefinitions", v)
                      for v in ("list", "watch")}  # kopf's resource observation
            clusterwide = keywords.get("clusterwide")
            if not (isinstance(clusterwide, ast.Constant) and clusterwide.value is True):
                calls |= {("", "namespaces", v) for v in ("list", "watch")}
            standalone = keywords.get("standalone")
            if not (isinstance(standalone, ast.Constant) and standalone.value is True):
                calls |= {("kopf.dev", "clusterkopfpeerings", v)
                          for v in ("get", "list", "watch", "patch")}
            if "posting.enabled = False" not in source:
                calls.add(("", "events", "create"))  # kopf posts handler Events
        elif name == "stream" and node.args and isinstance(node.args[0], ast.Attribute):
            match = _CLIENT_CALL.match(node.args[0].attr)
            if match and match[1] == "list":
                group, resource = _CLIENT_RESOURCES[match[3]]
                calls.add((group, resource, "watch"))
        elif match := re.match(r"^(get|list|create|patch|replace|delete)_(namespaced|cluster)_"
                               r"custom_object(_status)?$", name):
            position = 3 if match[2] == "namespaced" else 2
            group = text(keywords["group"]) if "group" in keywords else (
                strings[0] if strings else None)
            plural = text(keywords["plural"]) if "plural" in keywords else (
                strings[position] if len(strings) > position else None)
            assert group is not None and plural, f"cannot tell the resource of {dotted}"
            verb = {"replace": "update"}.get(match[1], match[1])
            watch = keywords.get("watch")
            if verb == "list" and isinstance(watch, ast.Constant) and watch.value is True:
                verb = "watch"
            calls.add((group, plural + ("/status" if match[3] else ""), verb))
        elif (match := _CLIENT_CALL.match(name)) and match[3] in _CLIENT_RESOURCES:
            group, resource = _CLIENT_RESOURCES[match[3]]
            watch = keywords.get("watch")
            verb = ("watch" if match[1] == "list" and isinstance(watch, ast.Constant)
                    and watch.value is True else _VERBS[match[1]])
            calls.add((group, resource + ("/status" if match[4] else ""), verb))
        elif match and (match[2] or match[5]):  # a namespaced client call on an unknown resource
            pytest.fail(f"unknown Kubernetes API call {dotted}: add its resource to the test")
        elif len(strings) >= 2 and strings[0] in ("GET", *_HTTP_VERBS) and (
                strings[1] or "").startswith("/api"):
            calls.add(_path_call(str(strings[0]), str(strings[1])))
        elif name in ("list", "pages") and strings and (strings[0] or "").startswith("/api"):
            calls.add(_path_call("GET", str(strings[0])))
        elif dotted == "informers.run" and len(strings) > 1 and (strings[1] or "").startswith(
                "/api"):  # informers.run(api, PATH, ...): list + watch of PATH
            calls |= {(*_path_call("GET", str(strings[1]))[:2], v) for v in ("list", "watch")}
        elif name == "watch" and strings and (strings[0] or "").startswith("/api"):
            calls.add((*_path_call("GET", str(strings[0]))[:2], "watch"))
        elif name in _CLIENT_METHODS and strings and (strings[0] or "").startswith("/api"):
            calls.add(_path_call(_CLIENT_METHODS[name], str(strings[0])))
    return calls


@functools.cache
def _code_calls() -> dict[str, set[tuple[str, str, str]]]:
    """ServiceAccount -> the API calls in the code it runs (scanned once: read-only)."""
    sources = {path: path.read_text(encoding="utf-8") for path in sorted(PACKAGE.rglob("*.py"))
               if path.relative_to(PACKAGE).parts[0] not in NOT_DEPLOYED}
    shared = {name: value for source in sources.values()
              for name, value in _module_constants(ast.parse(source)).items()
              if name.isupper() and value.startswith("/api")}
    found: dict[str, set[tuple[str, str, str]]] = {a: set() for a in EXPECTED_PERMISSIONS}
    for path, source in sources.items():
        calls = _api_calls(source, shared=shared)
        if not calls:
            continue
        parts = path.relative_to(PACKAGE).parts
        assert len(parts) > 1 and parts[0] in COMPONENT_OF_PACKAGE, (
            f"{path.relative_to(REPO)} calls the Kubernetes API ({sorted(calls)}): say in "
            "COMPONENT_OF_PACKAGE which component runs it")
        found[COMPONENT_OF_PACKAGE[parts[0]]] |= calls
    return found


def test_the_api_call_scan_recognises_each_form_of_call() -> None:
    """The scan finds each kind of call (else the RBAC tests below would prove nothing)."""
    calls = _code_calls()
    assert {("", "pods", "get"), ("", "nodes", "patch")} <= calls["ovnk-secondary-node-agent"]
    assert ("", "pods", "patch") in calls["ovnk-secondary-controller"]
    source = """
NAD = ("k8s.cni.cncf.io", "v1", "network-attachment-definitions")
@kopf.on.event(*NAD)
def f(**_): pass
@kopf.on.update("", "v1", "namespaces")
def g(**_): pass
kopf.operator(registry=r, clusterwide=True, standalone=True)
core.read_namespaced_pod(name, namespace)
custom.patch_namespaced_custom_object_status("k8s.cni.cncf.io", "v1alpha1", ns, "ipamclaims", n, b)
custom.list_cluster_custom_object("k8s.cni.cncf.io", "v1beta1", "multi-networkpolicies", watch=True)
w.stream(core.list_pod_for_all_namespaces)
api._request("POST", f"/api/v1/namespaces/{ns}/events", json=body)
api._request("PUT", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}", json=b)
api.list("/apis/k8s.cni.cncf.io/v1alpha1/ipamclaims")
api.get(f"{LEASES}/namespaces/{ns}/leases/{name}")
api.create(f"/api/v1/namespaces/{ns}/configmaps", body)
api.watch("/api/v1/nodes", resource_version=v)
api.pages("/api/v1/services", limit=5)
LEASES = "/apis/coordination.k8s.io/v1"
"""
    nad = ("k8s.cni.cncf.io", "network-attachment-definitions")
    assert _api_calls(source) == {
        (*nad, "list"), (*nad, "watch"),
        ("", "namespaces", "list"), ("", "namespaces", "watch"), ("", "namespaces", "patch"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "events", "create"),  # kopf's posting (not disabled in this source) and ours
        ("", "pods", "get"), ("", "pods", "watch"),
        ("k8s.cni.cncf.io", "ipamclaims/status", "patch"),
        ("coordination.k8s.io", "leases", "update"), ("coordination.k8s.io", "leases", "get"),
        ("", "configmaps", "create"), ("", "nodes", "watch"), ("", "services", "list"),
        ("k8s.cni.cncf.io", "ipamclaims", "list"),
        ("k8s.cni.cncf.io", "multi-networkpolicies", "watch"),
    }


def _granted_calls(account: str) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for (_, group, resource), verbs
            in _granted()[account].items() for verb in verbs}


def test_rbac_grants_every_api_call_in_the_code() -> None:
    for account, calls in _code_calls().items():
        missing = calls - _granted_calls(account)
        assert not missing, f"{account} calls the API without RBAC for {sorted(missing)}"


def test_rbac_grants_nothing_the_code_does_not_call() -> None:
    for account, calls in _code_calls().items():
        unused = _granted_calls(account) - calls
        assert not unused, f"{account} is granted {sorted(unused)} that no code uses: remove it"


# --- bridge mappings ----------------------------------------------------------------------------

def _bridge_mappings(configmap: Mapping[str, Any],
                     source: str) -> tuple[bridgemappings.BridgeMapping, ...]:
    return bridgemappings.parse_file(configmap["data"][BRIDGE_MAPPINGS_KEY], source=source)


def test_base_bridge_mappings_are_empty_and_valid() -> None:
    """Nothing is bridged until an admin says so (uplinks move NICs into OVS bridges)."""
    configmap = _one("ConfigMap", BRIDGE_MAPPINGS_CONFIGMAP)
    assert _bridge_mappings(configmap, source="manifests/bridge-mappings.yaml") == ()


def _example(kind: str, root: pathlib.Path = EXAMPLES) -> list[dict[str, Any]]:
    """What `kubectl apply -f <root>` applies of `kind` (not recursive, as kubectl)."""
    return [doc for _, doc in _objects(root, recursive=False) if doc["kind"] == kind]


EXAMPLE_NADS = {d["metadata"]["name"]: d for d in _example("NetworkAttachmentDefinition")}
EXAMPLE_PODS = {d["metadata"]["name"]: d for d in _example("Pod")}
# the KubeVirt VM stand-in's NADs (`sandbox vm create`), applied on their own
VM_NADS = {d["metadata"]["name"]: d
           for d in _example("NetworkAttachmentDefinition", EXAMPLES / "vms")}


def test_vm_nads_parse_and_their_pools_stay_clear_of_the_static_addresses() -> None:
    """The VM NADs: persistent IPs from subnets (layer2 and VLAN 33 on localnet2's bridge
    mapping) and the IPAM-less cloud-init one; the localnet pool never hands out an address
    the scenario's pods or the external host hold statically on that VLAN."""
    assert set(VM_NADS) == {"nad-vm-l2", "nad-vm-localnet", "nad-vm-static"}
    assert not set(VM_NADS) & set(EXAMPLE_NADS)
    configs = {name: nads.parse_nad(nad) for name, nad in VM_NADS.items()}
    assert all(c is not None for c in configs.values())
    l2, localnet, static = (configs[n] for n in ("nad-vm-l2", "nad-vm-localnet",
                                                 "nad-vm-static"))
    assert l2 is not None and localnet is not None and static is not None
    assert l2.allow_persistent_ips and localnet.allow_persistent_ips and l2.has_ipam
    assert (localnet.vlan_id, localnet.physical_network) == (33, "localnet2")
    assert (static.vlan_id, static.physical_network, static.has_ipam) == (33, "localnet2",
                                                                         False)
    pool = ipam.Pool(network=localnet.name, subnets=localnet.subnets,
                     exclude_subnets=localnet.exclude_subnets)
    held = {ipaddress.ip_interface(ip).ip for pod in EXAMPLE_PODS.values()
            for s in _selections(pod) for ip in s.ips}
    held.add(ipaddress.ip_address(cluster.EXTERNAL_HOSTS[33][1]))
    owner = ipam.Owner(nad_key="test/nad-vm-localnet", namespace="test", name="x")
    handed = set()
    while True:
        try:
            handed.add(ipaddress.ip_interface(pool.allocate(owner=owner)[0]).ip)
        except errors.IpamError:
            break
        owner = ipam.Owner(nad_key=owner.nad_key, namespace="test", name=f"x{len(handed)}")
    assert handed and not handed & held


def test_example_bridge_mappings_are_the_sandbox_nodes_and_serve_every_localnet() -> None:
    [configmap] = [d for d in _example("ConfigMap")
                   if d["metadata"]["name"] == BRIDGE_MAPPINGS_CONFIGMAP]
    assert configmap["metadata"]["namespace"] == NAMESPACE  # it replaces the base's ConfigMap
    mappings = _bridge_mappings(configmap, source="examples")
    sandbox_file = REPO / "ovn-sandbox" / "bridge-mappings.yaml"
    assert mappings == bridgemappings.parse_file(sandbox_file.read_text(), source="sandbox")
    by_network = {m.physical_network: m for m in mappings}
    assert by_network["localnet1"].bridge == "br-ex"
    assert (by_network["localnet2"].bridge, by_network["localnet2"].uplinks) == (
        "ovs-br1", ("enp2s0",))
    for name, nad in EXAMPLE_NADS.items():
        config = nads.parse_nad(nad)
        assert config is not None
        if config.topology == "localnet":
            assert config.physical_network in by_network, f"{name}: no bridge mapping"


# --- the reference scenario ---------------------------------------------------------------------

SCENARIO = {  # NAD -> (network name, topology, vlanID), as in scenario.md
    "nad-layer2": ("l2-network", "layer2", None),
    "nad-localnet1": ("localnet1", "localnet", 34),
    "nad-localnet2": ("localnet2", "localnet", 33),
}


def test_example_nads_are_the_talks_as_the_controller_parses_them() -> None:
    assert set(EXAMPLE_NADS) == set(SCENARIO)
    for name, nad in EXAMPLE_NADS.items():
        assert nad["metadata"]["namespace"] == "test"
        config = nads.parse_nad(nad)  # raises errors.InvalidConfig on a bad config
        assert config is not None, f"{name} is not an ovn-k8s-cni-overlay NAD"
        assert (config.name, config.topology, config.vlan_id) == SCENARIO[name]
        assert config.nad_key == f"test/{name}"
        assert config.cni_version == "0.3.1"
        assert not config.has_ipam, f"{name}: the talk's NADs have no subnets"


def _selections(pod: Mapping[str, Any]) -> tuple[selections.NetworkSelection, ...]:
    meta = pod["metadata"]
    annotation = meta["annotations"][selections.ANNOTATION]
    assert annotation.lstrip().startswith("["), f"{meta['name']}: use the JSON form"
    return tuple(selections.parse(annotation, pod_namespace=meta["namespace"],
                                  pod_name=meta["name"]))


def test_example_pods_select_example_nads_with_static_ips() -> None:
    assert EXAMPLE_PODS
    configs = {f"test/{n}": nads.parse_nad(nad) for n, nad in EXAMPLE_NADS.items()}
    addresses: dict[str, set[ipaddress.IPv4Address | ipaddress.IPv6Address]] = {}
    for name, pod in EXAMPLE_PODS.items():
        assert pod["spec"]["nodeName"] in SANDBOX_NODES, f"{name}: not on a sandbox node"
        chosen = _selections(pod)
        interfaces = [s.interface for s in chosen]
        assert interfaces == [f"net{i + 1}" for i in range(len(chosen))], (
            f"{name}: interfaces {interfaces}, expected net1, net2, ... as Multus names them")
        for selection in chosen:
            config = configs.get(selection.nad_key)
            assert config is not None, f"{name} selects {selection.nad_key}, not an example NAD"
            assert selection.ips and not config.has_ipam, (
                f"{name}: static ips are needed (no IPAM) and allowed only without subnets")
            for ip in selection.ips:
                address = ipaddress.ip_interface(ip).ip
                assert address not in addresses.setdefault(config.name, set()), (
                    f"{name}: {address} is used twice on {config.name}")
                addresses[config.name].add(address)


def test_example_pods_cover_the_scenario() -> None:
    by_nad: dict[str, list[tuple[str, str]]] = {}
    for name, pod in EXAMPLE_PODS.items():
        for selection in _selections(pod):
            by_nad.setdefault(selection.name, []).append((name, pod["spec"]["nodeName"]))
    layer2_nodes = {node for pod, node in by_nad["nad-layer2"] if len(
        _selections(EXAMPLE_PODS[pod])) == 1}
    assert len(layer2_nodes) == 2, "two layer2-only pods on different nodes"
    for nad in ("nad-localnet1", "nad-localnet2"):
        assert any(len(_selections(EXAMPLE_PODS[p])) == 1 for p, _ in by_nad[nad]), (
            f"a pod on {nad} alone")
    two = [p for p in EXAMPLE_PODS.values() if len(_selections(p)) == 2]
    assert len(two) == 1
    assert [(s.name, s.interface) for s in _selections(two[0])] == [
        ("nad-layer2", "net1"), ("nad-localnet2", "net2")]
    assert "172.17.33.250/24" in {ip for s in _selections(EXAMPLE_PODS["localnet2-pod"])
                                  for ip in s.ips}, "the talk's VM address on localnet2"


def test_localnet_pods_share_a_subnet_with_the_external_host_of_their_vlan_only() -> None:
    for name, pod in EXAMPLE_PODS.items():
        for selection in _selections(pod):
            config = nads.parse_nad(EXAMPLE_NADS[selection.name])
            assert config is not None
            for ip in selection.ips:
                network = ipaddress.ip_interface(ip).network
                if config.topology != "localnet":
                    continue
                for vlan, (_, host) in cluster.EXTERNAL_HOSTS.items():
                    on_link = ipaddress.ip_address(host) in network
                    assert on_link == (vlan == config.vlan_id), (
                        f"{name}: {ip} on VLAN {config.vlan_id} vs external host {host} "
                        f"on VLAN {vlan}")
