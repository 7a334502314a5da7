"""Identity is exact: distinct Kubernetes names never share a switch, a port or a pool owner.

OVN-K's northbound names map '-' and '/' to '.', so they are lossy: these properties run the
controller's own decisions (no NB, no API) over names drawn from what Kubernetes allows, with
a small alphabet so that names that mangle alike come up often.
"""

from __future__ import annotations

import json
import types
from typing import Any

import hypothesis
from hypothesis import strategies as st

from ovnk_secondary import ipam, naming
from ovnk_secondary.controller import model, reconciler
from ovnk_secondary.northbound import desired

# DNS-1123 labels (namespaces) and subdomains (NAD and pod names), from a tiny alphabet
_LABEL = st.from_regex(r"\A[ab]([-ab]{0,3}[ab])?\Z")
_SUBDOMAIN = st.from_regex(r"\A[ab]([-.ab]{0,4}[ab])?\Z").filter(
    lambda n: ".." not in n and ".-" not in n and "-." not in n)
_TOKENS = st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=4)


@st.composite
def _network(draw: st.DrawFn) -> str:
    """A network name; names that differ only in '-' and '.' (which mangle alike) are common."""
    tokens = draw(_TOKENS)
    return tokens[0] + "".join(draw(st.sampled_from("-.")) + t for t in tokens[1:])


@st.composite
def _nad_key(draw: st.DrawFn) -> tuple[str, str]:
    """(namespace, name) of a NAD; keys like q-m/x and q/m-x (which mangle alike) are common."""
    tokens = draw(st.lists(st.sampled_from(["a", "b"]), min_size=2, max_size=4))
    cut = draw(st.integers(1, len(tokens) - 1))
    name = tokens[cut] + "".join(draw(st.sampled_from("-.")) + t for t in tokens[cut + 1:])
    return "-".join(tokens[:cut]), name


def _reconciler() -> reconciler.Reconciler:
    return reconciler.Reconciler(northbound=types.SimpleNamespace(), api=None)  # type: ignore[arg-type]


def _nad(namespace: str, name: str, network: str, topology: str, **more: Any) -> dict[str, Any]:
    config = {"cniVersion": "0.3.1", "type": "ovn-k8s-cni-overlay", "name": network,
              "topology": topology, "netAttachDefName": f"{namespace}/{name}", **more}
    text = json.dumps(config)
    # as the controller leaves it once accepted (else its pods wait for that annotation)
    return {"metadata": {"namespace": namespace, "name": name, "uid": f"{namespace}/{name}",
                         "annotations": {model.ACCEPTED_CONFIG: text}},
            "spec": {"config": text}}


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.lists(st.tuples(_LABEL, _SUBDOMAIN, _network(),
                                     st.sampled_from(["layer2", "localnet"])),
                           max_size=12))
def test_accepted_networks_never_share_a_switch_or_a_localnet_port(
    nads: list[tuple[str, str, str, str]]
) -> None:
    policy = _reconciler()
    for namespace, name, network, topology in nads:
        policy._decide_nad(_nad(namespace, name, network, topology))
        # as `nad_changed` does when a switch is freed: the refused decide again, in order
        for key in list(policy._conflicted):
            policy._decide_nad(policy._nads[key].body)
    networks = list(policy._networks.values())
    rows = desired.state(networks, [])
    assert len(rows.switches) == len(networks), "two accepted networks share a switch"
    localnets = [n for n in networks if n.topology == "localnet"]
    assert len([p for p in rows.ports.values() if p.type == "localnet"]) == len(localnets)
    for nad in policy._nads.values():  # a refused NAD collides with an accepted network
        if nad.config is not None and nad.reason == reconciler.NETWORK_CONFLICT:
            holder = policy._switch_owner.get(desired.switch_name(nad.config))
            disagrees = "disagrees" in (nad.problem or "")
            assert disagrees or holder not in (None, nad.config.name), nad.problem


@hypothesis.settings(max_examples=500, deadline=None)
@hypothesis.given(st.tuples(_LABEL, _SUBDOMAIN, _LABEL, _SUBDOMAIN),
                  st.tuples(_LABEL, _SUBDOMAIN, _LABEL, _SUBDOMAIN))
def test_a_port_name_maps_back_to_exactly_one_pod(
    first: tuple[str, str, str, str], second: tuple[str, str, str, str]
) -> None:
    """Port names can collide only for one pod on two NADs whose keys mangle alike (which
    the controller refuses); the pod a port belongs to is recovered exactly."""
    ports = []
    for nad_ns, nad, pod_ns, pod in (first, second):
        port = naming.pod_port_name(f"{nad_ns}/{nad}", pod_ns, pod)
        ids = {naming.NAD_KEY: f"{nad_ns}/{nad}", "namespace": pod_ns}
        assert model.pod_of_port(port, ids) == (pod_ns, pod)
        ports.append(port)
    if ports[0] == ports[1]:
        assert first[2:] == second[2:]
        assert naming.prefix("/".join(first[:2])) == naming.prefix("/".join(second[:2]))


@hypothesis.settings(max_examples=500, deadline=None)
@hypothesis.given(st.tuples(_LABEL, _SUBDOMAIN, _LABEL, _SUBDOMAIN),
                  st.tuples(_LABEL, _SUBDOMAIN, _LABEL, _SUBDOMAIN))
def test_a_vm_port_is_never_a_pods_and_names_one_vm(
    first: tuple[str, str, str, str], second: tuple[str, str, str, str]
) -> None:
    """A KubeVirt VM's own port (multi-chassis live migration) never takes the name of a
    pod's port, is never read back as a pod's, and two VMs share one only as two pods would:
    the same VM on NADs whose keys mangle alike (refused per pod by the controller)."""
    nad_ns, nad, vm_ns, vm = first
    vm_port = naming.vm_port_name(f"{nad_ns}/{nad}", vm_ns, vm)
    for other_nad_ns, other_nad, pod_ns, pod in (first, second):
        assert vm_port != naming.pod_port_name(f"{other_nad_ns}/{other_nad}", pod_ns, pod)
        ids = {naming.NAD_KEY: f"{nad_ns}/{nad}", "namespace": vm_ns}
        assert model.pod_of_port(vm_port, ids) is None
    if vm_port == naming.vm_port_name("/".join(second[:2]), *second[2:]):
        assert first[2:] == second[2:]
        assert naming.prefix("/".join(first[:2])) == naming.prefix("/".join(second[:2]))


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.lists(_nad_key(), min_size=1, max_size=6, unique=True),
                  st.lists(st.tuples(_LABEL, _SUBDOMAIN), min_size=1, max_size=8, unique=True),
                  st.data())
def test_pods_on_nads_that_mangle_alike_get_distinct_addresses_and_macs(
    nad_keys: list[tuple[str, str]], pods: list[tuple[str, str]], data: st.DataObject
) -> None:
    policy = _reconciler()
    for namespace, name in nad_keys:
        policy._decide_nad(_nad(namespace, name, "s", "layer2", subnets="10.0.0.0/24"))
    held: dict[str, ipam.Owner] = {}
    macs: dict[str, ipam.Owner] = {}
    for number, (pod_ns, pod_name) in enumerate(pods):
        chosen = data.draw(st.lists(st.sampled_from(nad_keys), min_size=1, unique=True))
        selection = ",".join(f"{ns}/{name}" for ns, name in chosen)
        pod = model.pod({"metadata": {
            "namespace": pod_ns, "name": pod_name, "uid": str(number),
            "annotations": {"k8s.v1.cni.cncf.io/networks": selection}},
            "spec": {"nodeName": "n"}})
        problems: list[tuple[str, str]] = []
        found = policy._attachments(pod, {}, problems)
        ports = [a.port_name for _, a in found]
        assert len(set(ports)) == len(ports), "two attachments of one pod share a port"
        assert len(found) + len(problems) == len(chosen), "an element neither attached nor refused"
        assert all(reason == reconciler.NETWORK_CONFLICT for reason, _ in problems), problems
        for _, attachment in found:
            owner = ipam.Owner(nad_key=attachment.nad_key, namespace=pod_ns, name=pod_name)
            for ip in attachment.ips or ():
                assert held.setdefault(ip, owner) == owner, f"{ip} handed out twice"
            assert macs.setdefault(attachment.mac, owner) == owner, "a MAC handed out twice"
    owners = [o for pool in policy._pools.values() for o in pool.owners()]
    assert len(owners) == len(set(owners)) == len(held)
