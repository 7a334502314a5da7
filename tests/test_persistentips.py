"""Persistent IPs: which claim applies, what is reserved and written, who may share a claim,
and when a claim's addresses are free."""

from __future__ import annotations

from typing import Any

import hypothesis
import netaddr
import pytest
from hypothesis import strategies as st

from ovnk_secondary import errors, nads, persistentips, selections

NETWORK = nads.NetworkConfig(name="vmnet", topology="layer2", nad_key="ns/vmnet",
                             subnets=(netaddr.IPNetwork("10.0.0.0/29"),),
                             allow_persistent_ips=True)
PLAIN = nads.NetworkConfig(name="plain", topology="layer2", nad_key="ns/plain",
                           subnets=(netaddr.IPNetwork("10.1.0.0/29"),))


def _claim(name: str = "vm-a.net", *, network: str = "vmnet", ips: tuple[str, ...] = (),
           uid: str = "u1", version: str = "7") -> persistentips.Claim:
    return persistentips.Claim(namespace="ns", name=name, uid=uid, version=version,
                               network=network, interface="pod16367aacb67", ips=ips)


def _selection(claim: str | None = "vm-a.net", nad: str = "vmnet") -> selections.NetworkSelection:
    return selections.NetworkSelection(namespace="ns", name=nad, ipam_claim_reference=claim)


def _user(name: str, vm: str | None, uid: str = "") -> persistentips.User:
    return persistentips.User(namespace="ns", name=name, uid=uid or f"uid-{name}", vm=vm)


def test_a_claim_object_is_read_as_the_crd_defines_it() -> None:
    body: dict[str, Any] = {
        "apiVersion": "k8s.cni.cncf.io/v1alpha1", "kind": "IPAMClaim",
        "metadata": {"namespace": "ns", "name": "vm-a.net", "uid": "u1",
                     "resourceVersion": "42"},
        "spec": {"network": "vmnet", "interface": "pod16367aacb67"},
        "status": {"ips": ["10.0.0.1/29", "fd00::1/64"], "ownerPod": "virt-launcher-a"}}
    claim = persistentips.parse(body)
    assert claim == persistentips.Claim(
        namespace="ns", name="vm-a.net", uid="u1", version="42", network="vmnet",
        interface="pod16367aacb67", ips=("10.0.0.1/29", "fd00::1/64"),
        owner_pod="virt-launcher-a")
    assert claim.owner == persistentips.ClaimOwner("ns", "vm-a.net", "u1")
    assert str(claim.owner) == "IPAMClaim ns/vm-a.net"
    assert claim.involved()["kind"] == "IPAMClaim"
    # a new claim has no status; a malformed one reads as empty, never raises
    assert persistentips.parse({"metadata": {"name": "x"}, "spec": {"network": "n"}}).ips == ()
    assert persistentips.parse({"status": {"ips": "10.0.0.1/29"}, "spec": []}).ips == ()


def test_the_claim_is_named_in_the_pods_namespace() -> None:
    selection = selections.NetworkSelection(namespace="nads", name="vmnet",
                                            ipam_claim_reference="vm-a.net")
    assert persistentips.reference(selection, pod_namespace="vms") == ("vms", "vm-a.net")
    assert persistentips.reference(_selection(None), pod_namespace="vms") is None


def test_resolution_of_an_elements_claim() -> None:
    claim = _claim()
    assert persistentips.resolve(NETWORK, _selection(None), pod_namespace="ns",
                                 claim=None) == persistentips.Resolution()
    used = persistentips.resolve(NETWORK, _selection(), pod_namespace="ns", claim=claim)
    assert used == persistentips.Resolution(claim=claim)

    # a network without allowPersistentIPs: a Warning, and the pool as for any pod
    ignored = persistentips.resolve(PLAIN, _selection(nad="plain"), pod_namespace="ns",
                                    claim=_claim(network="plain"))
    assert ignored.claim is None and ignored.attach and ignored.problem is not None
    assert ignored.problem[0] == persistentips.IGNORED
    assert "network plain does not allow persistent IPs" in ignored.problem[1]

    # a missing claim: the pod waits for it
    missing = persistentips.resolve(NETWORK, _selection(), pod_namespace="ns", claim=None)
    assert not missing.attach and missing.problem is not None
    assert missing.problem == (persistentips.NOT_FOUND, (
        "IPAMClaim ns/vm-a.net (ipam-claim-reference of ns/vmnet) does not exist; the pod "
        "waits for it: create it with spec.network vmnet"))

    # another network's claim: nothing attached on this one
    other = persistentips.resolve(NETWORK, _selection(), pod_namespace="ns",
                                  claim=_claim(network="elsewhere"))
    assert not other.attach and other.claim is None and other.problem is not None
    assert other.problem[0] == persistentips.NETWORK_MISMATCH
    assert "is for network 'elsewhere', not 'vmnet'" in other.problem[1]


def test_only_a_claim_of_a_persistent_network_is_reserved() -> None:
    claim = _claim(ips=("10.0.0.1/29",))
    assert persistentips.reserved(claim, NETWORK) == ("10.0.0.1/29",)
    assert persistentips.reserved(claim, None) == ()
    assert persistentips.reserved(_claim(network="plain", ips=("10.1.0.1/29",)), PLAIN) == ()
    assert persistentips.reserved(_claim(network="elsewhere", ips=claim.ips), NETWORK) == ()


def test_recorded_addresses_are_the_claims_when_they_match_or_it_has_none() -> None:
    full = _claim(ips=("10.0.0.1/29", "fd00::1/64"))
    assert persistentips.holds(full, recorded=("fd00::1/64", "10.0.0.1/29"), held=None)
    assert not persistentips.holds(full, recorded=("10.0.0.2/29",), held=full.ips)
    empty = _claim()
    assert persistentips.holds(empty, recorded=("10.0.0.3/29",), held=None)  # adopted
    assert persistentips.holds(empty, recorded=("10.0.0.3/29",), held=("10.0.0.3/29",))
    # another pod's allocation, not yet written to the claim, is not this pod's
    assert not persistentips.holds(empty, recorded=("10.0.0.4/29",), held=("10.0.0.3/29",))


def test_the_status_is_written_once_and_never_replaced() -> None:
    empty = _claim(version="7")
    assert persistentips.status_patch(empty, ips=("10.0.0.1/29",), pod="launcher") == {
        "status": {"ips": ["10.0.0.1/29"], "ownerPod": "launcher"},
        "metadata": {"resourceVersion": "7"}}
    full = _claim(ips=("10.0.0.1/29", "fd00::1/64"))
    assert persistentips.status_patch(full, ips=("fd00::1/64", "10.0.0.1/29"), pod="x") is None
    with pytest.raises(errors.IpamError, match="never replaced: delete the claim"):
        persistentips.status_patch(full, ips=("10.0.0.2/29",), pod="x")


def test_pods_of_one_vm_share_a_claim_and_nobody_else() -> None:
    source = _user("virt-launcher-a-1", "vm-a")
    target = _user("virt-launcher-a-2", "vm-a")
    intruder = _user("virt-launcher-b-1", "vm-b")
    plain = _user("plain", None)
    assert persistentips.blocking_user(target, [source]) is None
    assert persistentips.blocking_user(source, [source]) is None  # itself
    assert persistentips.blocking_user(intruder, [source, target]) == source
    assert persistentips.blocking_user(plain, [source]) == source
    assert persistentips.blocking_user(source, [plain]) == plain
    assert persistentips.blocking_user(plain, []) is None
    message = persistentips.in_use_message(_claim(ips=("10.0.0.1/29",)), nad_key="ns/vmnet",
                                           holder=source)
    assert message.startswith("IPAMClaim ns/vm-a.net (10.0.0.1/29) of ns/vmnet is in use by pod "
                              "ns/virt-launcher-a-1 (VM vm-a)")
    assert "(no VM: no label vm.kubevirt.io/name)" in str(plain)


_vms = st.sampled_from([None, "vm-a", "vm-b"])
_users = st.builds(_user, st.sampled_from(["p0", "p1", "p2", "p3"]), _vms)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(pod=_users, users=st.lists(_users, max_size=5))
def test_a_claim_is_refused_exactly_when_another_vms_pod_uses_it(
        pod: persistentips.User, users: list[persistentips.User]) -> None:
    others = [u for u in users if u.key != pod.key]
    holder = persistentips.blocking_user(pod, users)
    shareable = all(pod.vm is not None and u.vm == pod.vm for u in others)
    assert (holder is None) == shareable
    if holder is not None:
        assert holder in others and (pod.vm is None or holder.vm != pod.vm)


def test_a_deleted_claims_addresses_are_free_with_its_last_user() -> None:
    book = persistentips.Book([_claim(ips=("10.0.0.1/29",))])
    owner = _claim().owner
    source, target = _user("a1", "vm-a"), _user("a2", "vm-a")
    book.use(owner, source)
    book.use(owner, target)
    assert book.delete(("ns", "vm-a.net"), "u1") is None  # still used: kept as deleted
    assert book.get(("ns", "vm-a.net")) is None
    assert book.deleted(("ns", "vm-a.net")) is not None
    assert book.release(source.key, source.uid) == ([owner], [])
    assert book.release(target.key, "another incarnation") == ([], [])
    used, freed = book.release(target.key, target.uid)
    assert used == [owner] and [c.owner for c in freed] == [owner]
    assert book.deleted(("ns", "vm-a.net")) is None


def test_a_claim_created_again_under_its_name_is_another_claim() -> None:
    book = persistentips.Book([_claim(ips=("10.0.0.1/29",), uid="u1")])
    freed = book.put(_claim(uid="u2"))
    assert freed is not None and freed.uid == "u1"  # no user: free at once
    assert book.get(("ns", "vm-a.net")) == _claim(uid="u2")
    assert book.delete(("ns", "vm-a.net"), "u1") is None  # not that incarnation any more
    assert [c.name for c in book.claims("vmnet")] == ["vm-a.net"]
    assert book.claims("elsewhere") == []


_ops = st.lists(st.one_of(
    # a new version of the claim in force, or a new claim of that name (uids are never reused)
    st.tuples(st.just("put"), st.sampled_from(["c0", "c1"]), st.sampled_from(["same", "new"])),
    # a deletion of the claim in force, by its uid or any, or of an older incarnation
    st.tuples(st.just("delete"), st.sampled_from(["c0", "c1"]),
              st.sampled_from(["live", "any", "stale"])),
    st.tuples(st.just("use"), st.sampled_from(["c0", "c1"]), st.sampled_from(["p0", "p1"])),
    st.tuples(st.just("release"), st.sampled_from(["p0", "p1"]), st.just("")),
), max_size=30)


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(ops=_ops)
def test_a_claims_addresses_are_freed_once_and_never_while_a_live_pod_uses_them(
        ops: list[tuple[str, str, str]]) -> None:
    """Against a model: every claim incarnation that existed is freed at most once, only once it
    is deleted (or replaced) and no pod uses it any more."""
    book = persistentips.Book()
    live: dict[str, persistentips.ClaimOwner] = {}  # claim name -> the incarnation in force
    users: dict[persistentips.ClaimOwner, set[str]] = {}
    gone: set[persistentips.ClaimOwner] = set()  # deleted or replaced
    freed: list[persistentips.ClaimOwner] = []
    created = 0

    def free(claims: list[persistentips.Claim]) -> None:
        for claim in claims:
            assert claim.owner in gone and not users.get(claim.owner)
            freed.append(claim.owner)

    for op, a, b in ops:
        if op == "put":
            if b == "same" and a in live:
                uid = live[a].uid
            else:
                created += 1
                uid = f"uid{created}"
            claim = _claim(a, uid=uid)
            if a in live and live[a] != claim.owner:
                gone.add(live[a])
            free([c for c in [book.put(claim)] if c is not None])
            live[a] = claim.owner
        elif op == "delete":
            owner = live.get(a)
            if owner is None or b == "stale":
                assert book.delete(("ns", a), "uid0") is None
                continue
            gone.add(owner)
            del live[a]
            uid = owner.uid if b == "live" else ""
            free([c for c in [book.delete(("ns", a), uid)] if c is not None])
        elif op == "use":
            if a in live:
                book.use(live[a], _user(b, "vm"))
                users.setdefault(live[a], set()).add(b)
        else:
            used, claims = book.release(("ns", a), f"uid-{a}")
            for owner in used:
                users[owner].discard(a)
            free(claims)
    assert len(freed) == len(set(freed))
    # what is neither freed nor live is gone and still used
    for owner in gone - set(freed):
        assert users.get(owner), f"{owner} was deleted, is used by nobody, and never freed"
