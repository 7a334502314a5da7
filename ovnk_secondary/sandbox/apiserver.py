"""A Kubernetes API emulator for tests and for the sandbox, built on kmock.

No kube-apiserver can be installed on these machines, so the controller, kopf, the official
`kubernetes` client and `kubectl` talk to this emulator instead. It serves, over plain HTTP:

- discovery (`/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`, `/version`) for the
  built-in resources bundled with kmock (pods, nodes, events, namespaces, ...) plus the
  CRD-backed resources of our field: NetworkAttachmentDefinition (`k8s.cni.cncf.io/v1`,
  `network-attachment-definitions`), IPAMClaim (`k8s.cni.cncf.io/v1alpha1`, `ipamclaims`),
  MultiNetworkPolicy (`k8s.cni.cncf.io/v1beta1`, `multi-networkpolicies`);
- create (answered with 201), get, list, watch, merge/strategic-merge/JSON patch, replace
  (PUT) and delete (with finalizers: `deletionTimestamp` first, removal once they are gone)
  of objects of any declared resource.

kmock (by kopf's author) supplies discovery, request parsing and error rendering. Its own
in-memory store (`kmock.KubernetesEmulator`) is not used because it lacks what controllers
depend on: it stamps no `resourceVersion`/`uid`/`generation`/`creationTimestamp`, answers
creates with 200 (the official client then returns None), ignores `generateName` (kopf's
Events use it), scans every object on each request (too slow at 10,000 pods), replays every
object on every watch regardless of `resourceVersion`, and can miss events that happen
while a watch replays its initial objects. The store here keeps objects by key, stamps
metadata on every write (one cluster-wide `resourceVersion` counter), and keeps a bounded
log of events so that a watch from a `resourceVersion` gets exactly what it missed (or
410 Gone when that is too old, as a real API server answers).

Gaps against a real API server (keep them in mind when a test passes here):
- no authentication, authorisation (RBAC), admission, or schema validation: any JSON is
  accepted (use `kubectl --validate=false`; validate manifests separately);
- strategic merge patch is treated as a JSON merge patch (lists are replaced, not merged
  by key); server-side apply (`application/apply-patch+yaml`) is refused with 415;
- label selectors support `=`, `==`, `!=`, `in`, `notin`, `key`, `!key`; field selectors
  only `=`, `==`, `!=` on dotted paths (`metadata.name`, `spec.nodeName`, ...);
- no garbage collection (ownerReferences are ignored), no namespace lifecycle (creating an
  object in a namespace creates the Namespace; deleting it deletes nothing), no defaulting
  except `status.phase: Pending` on new pods, no `deletecollection`;
- lists are paginated (`limit`, `continue`, objects in namespace/name order), but each page
  shows the objects as they are when it is asked for, not as they were at the first page
  (a real server serves every page from the first page's snapshot);
- no controllers behind the API: pods are never scheduled, started or completed unless a
  test patches them so;
- objects live in memory only and vanish with the process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import collections
import contextlib
import copy
import dataclasses
import datetime
import json
import logging
import pathlib
import re
import secrets
import signal
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

import aiohttp.web
import jsonpatch
import kmock

logger = logging.getLogger(__name__)

# (group, version, plural); group "" is the core API.
ResourceId = tuple[str, str, str]
# (namespace or None for cluster-scoped objects, name)
ObjectKey = tuple[str | None, str]

NAD_RESOURCE: ResourceId = ("k8s.cni.cncf.io", "v1", "network-attachment-definitions")
IPAMCLAIM_RESOURCE: ResourceId = ("k8s.cni.cncf.io", "v1alpha1", "ipamclaims")
MULTI_NETWORK_POLICY_RESOURCE: ResourceId = ("k8s.cni.cncf.io", "v1beta1", "multi-networkpolicies")

_CRD_VERBS = {"create", "delete", "get", "list", "patch", "update", "watch"}
CUSTOM_RESOURCES: dict[ResourceId, kmock.ResourceInfo] = {
    NAD_RESOURCE: kmock.ResourceInfo(
        kind="NetworkAttachmentDefinition",
        singular="network-attachment-definition",
        namespaced=True,
        shortnames={"net-attach-def"},
        verbs=_CRD_VERBS,
    ),
    IPAMCLAIM_RESOURCE: kmock.ResourceInfo(
        kind="IPAMClaim",
        singular="ipamclaim",
        namespaced=True,
        verbs=_CRD_VERBS,
        subresources={"status"},
    ),
    MULTI_NETWORK_POLICY_RESOURCE: kmock.ResourceInfo(
        kind="MultiNetworkPolicy",
        singular="multi-networkpolicy",
        namespaced=True,
        shortnames={"multi-policy"},
        verbs=_CRD_VERBS,
    ),
}

_NAMESPACES: ResourceId = ("", "v1", "namespaces")

# How many past events a watch can resume from; older resourceVersions get 410 Gone.
EVENT_LOG_SIZE = 200_000
# kmock's handler records every request for test assertions; a long-running server forgets them.
_REQUESTS_KEPT = 100


def _sort_key(key: ObjectKey | tuple[str, str]) -> tuple[str, str]:
    return key[0] or "", key[1]


def _continue_key(token: str) -> tuple[str, str]:
    """The (namespace, name) a continue token names: the last object of the previous page."""
    key = json.loads(base64.urlsafe_b64decode(token))
    if not (isinstance(key, list) and len(key) == 2 and all(isinstance(k, str) for k in key)):
        raise ValueError(token)
    return key[0], key[1]


def _object_key(obj: Mapping[str, Any]) -> ObjectKey:
    metadata = obj.get("metadata") or {}
    return metadata.get("namespace"), str(metadata.get("name") or "")


class _Gone(Exception):
    """A watch asked for a resourceVersion older than the event log holds."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Event:
    resource: ResourceId
    resource_version: int
    obj: dict[str, Any]
    line: bytes  # the JSON line as sent to watchers, serialised once for all of them


@dataclasses.dataclass(kw_only=True, eq=False)  # hashed by identity: kept in a set
class _Watcher:
    resource: ResourceId
    matches: Callable[[Mapping[str, Any]], bool]
    queue: asyncio.Queue[_Event | None] = dataclasses.field(default_factory=asyncio.Queue)


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=status, reason=reason, message=message, details=details or {}
    )


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _dotted(obj: Mapping[str, Any], path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


_LABEL_TERM = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)


def _split_terms(selector: str) -> list[str]:
    """Split at commas that are not inside `in (a,b)` parentheses."""
    terms: list[str] = []
    depth = 0
    current = ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        terms.append(current)
    return terms


def _label_check(term: str) -> Callable[[Mapping[str, str]], bool]:
    found = _LABEL_TERM.match(term)
    if found is None:
        raise _error(400, "BadRequest", f"unable to parse label selector term {term!r}")
    key: str = found["key"]
    value: str = found["value"] or ""
    values = {v.strip() for v in (found["values"] or "").split(",")}
    operator = found["op"] or found["setop"] or ("absent" if found["neg"] else "present")

    def check(labels: Mapping[str, str]) -> bool:
        if operator in ("=", "=="):
            return labels.get(key) == value
        if operator == "!=":
            return labels.get(key) != value
        if operator == "in":
            return labels.get(key) in values
        if operator == "notin":
            return labels.get(key) not in values
        return (key in labels) == (operator == "present")

    return check


def _label_matcher(selector: str) -> Callable[[Mapping[str, Any]], bool]:
    checks = [_label_check(term) for term in _split_terms(selector)]

    def matches(obj: Mapping[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return matches


def _field_matcher(selector: str) -> Callable[[Mapping[str, Any]], bool]:
    checks: list[tuple[str, str, bool]] = []
    for term in _split_terms(selector):
        found = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if found is None:
            raise _error(400, "BadRequest", f"unable to parse field selector term {term!r}")
        checks.append((found[1], found[3], found[2] != "!="))

    def matches(obj: Mapping[str, Any]) -> bool:
        for path, value, equal in checks:
            actual = _dotted(obj, path)
            text = "" if actual is None else str(actual)
            if (text == value) != equal:
                return False
        return True

    return matches


def _parse_path(
    path: str,
) -> tuple[ResourceId, str | None, str | None, str | None] | None:
    """`/api/v1/namespaces/ns/pods/name/status` -> (resource, namespace, name, subresource).

    kmock's own parser reads `/api/v1/namespaces/<name>` as a namespace prefix, not as the
    Namespace object `kubectl` fetches to explain a NotFound, hence this one.
    """
    parts = [part for part in path.split("/") if part]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace: str | None = None
    if rest[0] == "namespaces" and (len(rest) <= 2 or rest[2] in ("status", "finalize")):
        rid: ResourceId = (group, version, "namespaces")
        return rid, None, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None
    if rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    rid = (group, version, rest[0])
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return rid, namespace, name, subresource


class Emulator(kmock.KubernetesScaffold):
    """kmock's Kubernetes scaffold (discovery, routing, errors) plus a store that behaves.

    Everything here runs on one event loop and no store operation awaits, so each write is
    atomic with respect to every other request and every watch registration.
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()
        # kmock's bundle comes from a cluster with metrics-server, whose `metrics.k8s.io` pods and
        # nodes shadow the core ones for kubectl (`kubectl delete pods x` went there): a cluster
        # of ours has no metrics-server.
        for rid in [rid for rid in self.resources if rid.group == "metrics.k8s.io"]:
            del self.resources[rid]
        for (group, version, plural), info in CUSTOM_RESOURCES.items():
            self.resources[kmock.resource(group, version, plural)] = info
        self._objects: dict[ResourceId, dict[ObjectKey, dict[str, Any]]] = collections.defaultdict(
            dict
        )
        self._revision = 0
        self._log: collections.deque[_Event] = collections.deque(maxlen=EVENT_LOG_SIZE)
        self._watchers: set[_Watcher] = set()

    # -- reading, for tests and tools in the same process ------------------------------

    def stored(
        self, resource: ResourceId, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """A deep copy of a stored object, or None."""
        obj = self._objects[resource].get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def stored_all(self, resource: ResourceId) -> list[dict[str, Any]]:
        """Deep copies of all stored objects of one resource."""
        return [copy.deepcopy(obj) for obj in self._objects[resource].values()]

    def close_watches(self) -> None:
        """End every open watch stream (clients reconnect), e.g. before shutting down."""
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)

    # -- HTTP entry points --------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.path.rstrip("/") == "/api/v1/namespaces":
            return await self._namespaces(raw_request)
        try:
            return await super().__call__(raw_request)
        finally:
            # kmock keeps every request and error for test assertions; a server must forget them.
            if len(self._requests) > 2 * _REQUESTS_KEPT:
                del self._requests[:-_REQUESTS_KEPT]
                for payload in self._payloads:
                    del payload._requests[:-_REQUESTS_KEPT]
                for errors in self._errors:
                    del errors[:-_REQUESTS_KEPT]

    async def _namespaces(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.Response:
        """The Namespace collection, which kmock's path parser cannot read (`kubectl apply` of a
        Namespace posts there): list and create."""
        info = self._info(_NAMESPACES)
        try:
            query = raw_request.query
            if raw_request.method == "GET" and query.get("watch") not in ("true", "1"):
                return aiohttp.web.json_response(self._list(_NAMESPACES, info, None, query))
            if raw_request.method == "POST":
                raw = await raw_request.read()
                if raw.startswith(b"k8s\x00"):  # kubectl's protobuf encoding of built-in kinds
                    raise _error(415, "UnsupportedMediaType", "protobuf is not served: send JSON")
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise _error(400, "BadRequest", f"the body is not JSON: {exc}") from exc
                if not isinstance(body, dict):
                    raise _error(400, "BadRequest", "the request body must be a JSON object")
                created = self._create(_NAMESPACES, info, None, body)
                return aiohttp.web.json_response(created, status=201)
            raise _error(405, "MethodNotAllowed", f"{raw_request.method} on namespaces: not served")
        except kmock.KubernetesError as exc:
            return aiohttp.web.json_response(
                {
                    "apiVersion": "v1",
                    "kind": "Status",
                    "status": "Failure",
                    "code": exc.status,
                    "reason": exc.reason,
                    "message": exc.message,
                },
                status=exc.status,
            )

    async def _serve_version(self, request: Any) -> Any:
        """kmock names the core group version `/v1`; clients (kubectl) need `v1` to map `pods`."""
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and payload.get("groupVersion", "").startswith("/"):
            payload["groupVersion"] = payload["groupVersion"][1:]
        return payload

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        target = _parse_path(request.url.path)
        if target is None:
            return await super()._handle(request)  # discovery, /version, unknown paths
        rid, namespace, name, subresource = target
        info = self._info(rid)
        if not info.namespaced:
            namespace = None
        method = request.method.upper()
        params = request.params
        if method == "GET" and params.get("watch") in ("true", "1"):
            return await self._watch(request, rid, namespace, name)
        if method == "GET" and name is None:
            return aiohttp.web.json_response(self._list(rid, info, namespace, params))
        if name is None:
            if method == "POST":
                body = self._create(rid, info, namespace, self._body(request))
                return aiohttp.web.json_response(body, status=201)
            raise _error(405, "MethodNotAllowed", f"{method} on a collection is not supported here")
        key: ObjectKey = (namespace, name)
        if method == "GET":
            return aiohttp.web.json_response(self._existing(rid, info, key))
        if method == "PATCH":
            content_type = (
                next((v for k, v in request.headers.items() if k.lower() == "content-type"), "")
                .split(";")[0]
                .strip()
            )
            return aiohttp.web.json_response(
                self._patch(rid, info, key, content_type, request.data, subresource)
            )
        if method == "PUT":
            return aiohttp.web.json_response(
                self._replace(rid, info, key, self._body(request), subresource)
            )
        if method == "DELETE":
            return aiohttp.web.json_response(self._delete(rid, info, key))
        raise _error(405, "MethodNotAllowed", f"{method} is not supported on {request.url.path}")

    # -- the store ----------------------------------------------------------------------

    def _info(self, rid: ResourceId) -> kmock.ResourceInfo:
        res = kmock.resource(*rid)
        if res not in self.resources:
            group_version = "/".join(part for part in rid[:2] if part)
            raise _error(
                404,
                "NotFound",
                f"the server could not find the requested resource {rid[2]} in {group_version}",
            )
        return self.resources[res]

    @staticmethod
    def _body(request: kmock.Request) -> dict[str, Any]:
        if not isinstance(request.data, dict):
            raise _error(400, "BadRequest", "the request body must be a JSON object")
        return request.data

    def _existing(
        self, rid: ResourceId, info: kmock.ResourceInfo, key: ObjectKey
    ) -> dict[str, Any]:
        obj = self._objects[rid].get(key)
        if obj is None:
            raise _error(
                404,
                "NotFound",
                f'{rid[2]} "{key[1]}" not found',
                name=key[1],
                kind=rid[2],
                group=rid[0],
            )
        return obj

    def _next_revision(self) -> int:
        self._revision += 1
        return self._revision

    def _publish(self, rid: ResourceId, kind: str, obj: dict[str, Any]) -> None:
        revision = int(obj["metadata"]["resourceVersion"])
        line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
        event = _Event(resource=rid, resource_version=revision, obj=obj, line=line)
        self._log.append(event)
        for watcher in self._watchers:
            if watcher.resource == rid and watcher.matches(obj):
                watcher.queue.put_nowait(event)

    def _create(
        self, rid: ResourceId, info: kmock.ResourceInfo, namespace: str | None, body: dict[str, Any]
    ) -> dict[str, Any]:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise _error(400, "BadRequest", "metadata must be an object")
        if namespace is not None:
            if meta.get("namespace") not in (None, namespace):
                raise _error(
                    400,
                    "BadRequest",
                    f"the namespace of the object "
                    f"({meta['namespace']}) does not match the "
                    f"namespace of the request ({namespace})",
                )
            meta["namespace"] = namespace
        elif info.namespaced:
            raise _error(
                400, "BadRequest", f"{rid[2]} are namespaced: POST to /namespaces/<ns>/{rid[2]}"
            )
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise _error(422, "Invalid", "metadata.name or metadata.generateName is required")
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        key: ObjectKey = (namespace, meta["name"])
        if key in self._objects[rid]:
            raise _error(
                409,
                "AlreadyExists",
                f'{rid[2]} "{meta["name"]}" already exists',
                name=meta["name"],
                kind=rid[2],
                group=rid[0],
            )
        group_version = f"{rid[0]}/{rid[1]}" if rid[0] else rid[1]
        obj.setdefault("apiVersion", group_version)
        obj.setdefault("kind", info.kind or rid[2])
        meta.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=_now(),
            generation=1,
            resourceVersion=str(self._next_revision()),
        )
        meta.pop("deletionTimestamp", None)
        if rid == ("", "v1", "pods"):
            obj.setdefault("status", {}).setdefault("phase", "Pending")
        self._objects[rid][key] = obj
        self._publish(rid, "ADDED", obj)
        if namespace is not None and (None, namespace) not in self._objects[_NAMESPACES]:
            # No namespace lifecycle here: a namespace exists once something lives in it.
            self._create(
                _NAMESPACES,
                self._info(_NAMESPACES),
                None,
                {"metadata": {"name": namespace}, "status": {"phase": "Active"}},
            )
        return obj

    def _store_update(
        self,
        rid: ResourceId,
        key: ObjectKey,
        old: dict[str, Any],
        new: dict[str, Any],
        requested_version: Any,
    ) -> dict[str, Any]:
        """Commit a patched/replaced object: preconditions, immutable fields, stamps, event."""
        old_meta = old["metadata"]
        if requested_version not in (None, "", old_meta["resourceVersion"]):
            raise _error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {rid[2]} "{key[1]}": '
                "the object has been modified; please apply your "
                "changes to the latest version and try again",
            )
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            meta = new["metadata"] = {}
        for field in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
        ):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        if new == old:
            return old  # no change: no new resourceVersion and no event, as a real API server
        if {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
            k: v for k, v in old.items() if k not in ("metadata", "status")
        }:
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        meta["resourceVersion"] = str(self._next_revision())
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            del self._objects[rid][key]
            self._publish(rid, "DELETED", new)
        else:
            self._objects[rid][key] = new
            self._publish(rid, "MODIFIED", new)
        return new

    def _patch(
        self,
        rid: ResourceId,
        info: kmock.ResourceInfo,
        key: ObjectKey,
        content_type: str,
        patch: Any,
        subresource: str | None,
    ) -> dict[str, Any]:
        old = self._existing(rid, info, key)
        requested_version = None
        try:
            if content_type == "application/json-patch+json":
                if not isinstance(patch, list):
                    raise _error(400, "BadRequest", "a JSON patch must be a list of operations")
                new = jsonpatch.apply_patch(old, patch, in_place=False)
            elif content_type in (
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ):
                if not isinstance(patch, dict):
                    raise _error(400, "BadRequest", "a merge patch must be a JSON object")
                requested_version = (patch.get("metadata") or {}).get("resourceVersion")
                new = _merge_patch(old, patch)
            else:
                raise _error(
                    415,
                    "UnsupportedMediaType",
                    f"patch content type {content_type!r} is not supported here; use "
                    "application/merge-patch+json or application/json-patch+json",
                )
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise _error(422, "Invalid", f"the JSON patch cannot be applied: {exc}") from exc
        if subresource == "status":
            new = dict(old, status=new.get("status"))
        return self._store_update(rid, key, old, copy.deepcopy(new), requested_version)

    def _replace(
        self,
        rid: ResourceId,
        info: kmock.ResourceInfo,
        key: ObjectKey,
        body: dict[str, Any],
        subresource: str | None,
    ) -> dict[str, Any]:
        old = self._existing(rid, info, key)
        new = copy.deepcopy(body)
        requested_version = (new.get("metadata") or {}).get("resourceVersion")
        if subresource == "status":
            new = dict(old, status=new.get("status"))
        else:
            new.setdefault("apiVersion", old.get("apiVersion"))
            new.setdefault("kind", old.get("kind"))
            new_meta = new.setdefault("metadata", {})
            if new_meta.get("name", key[1]) != key[1]:
                raise _error(400, "BadRequest", "metadata.name does not match the URL")
        return self._store_update(rid, key, old, new, requested_version)

    def _delete(self, rid: ResourceId, info: kmock.ResourceInfo, key: ObjectKey) -> dict[str, Any]:
        old = self._existing(rid, info, key)
        meta = old["metadata"]
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return old
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["resourceVersion"] = str(self._next_revision())
            self._objects[rid][key] = new
            self._publish(rid, "MODIFIED", new)
            return new
        new = dict(old, metadata=dict(meta, resourceVersion=str(self._next_revision())))
        del self._objects[rid][key]
        self._publish(rid, "DELETED", new)
        return new

    def _matcher(
        self, namespace: str | None, name: str | None, params: Mapping[str, str]
    ) -> Callable[[Mapping[str, Any]], bool]:
        checks: list[Callable[[Mapping[str, Any]], bool]] = []
        if namespace is not None:
            checks.append(lambda obj: obj.get("metadata", {}).get("namespace") == namespace)
        if name is not None:
            checks.append(lambda obj: obj.get("metadata", {}).get("name") == name)
        if params.get("labelSelector"):
            checks.append(_label_matcher(params["labelSelector"]))
        if params.get("fieldSelector"):
            checks.append(_field_matcher(params["fieldSelector"]))
        return lambda obj: all(check(obj) for check in checks)

    def _list(
        self,
        rid: ResourceId,
        info: kmock.ResourceInfo,
        namespace: str | None,
        params: Mapping[str, str],
    ) -> dict[str, Any]:
        matches = self._matcher(namespace, None, params)
        objects = self._objects[rid]
        metadata = {"resourceVersion": str(self._revision)}
        limit_text, token = params.get("limit"), params.get("continue")
        if not limit_text and not token:
            items = [obj for obj in objects.values() if matches(obj)]
        else:  # a page: in key order, after the key the continue token names
            try:
                limit = int(limit_text) if limit_text else 0
                after = _continue_key(token) if token else None
            except (ValueError, TypeError) as exc:
                raise _error(400, "BadRequest", f"limit {limit_text!r} or continue {token!r} "
                             "is not valid: pass a number and the token of the last page") from exc
            keys = sorted(objects, key=_sort_key)
            start = bisect.bisect_right(keys, after, key=_sort_key) if after else 0
            items = []
            for key in keys[start:]:
                obj = objects[key]
                if not matches(obj):
                    continue
                if limit > 0 and len(items) == limit:  # more remain: say where to go on
                    last = _sort_key(_object_key(items[-1]))
                    metadata["continue"] = base64.urlsafe_b64encode(
                        json.dumps(last).encode()).decode()
                    break
                items.append(obj)
        return {
            "apiVersion": f"{rid[0]}/{rid[1]}" if rid[0] else rid[1],
            "kind": f"{info.kind or rid[2]}List",
            "metadata": metadata,
            "items": items,
        }

    def _backlog(self, watcher: _Watcher, since: str | None) -> Iterator[bytes]:
        """What a new watch gets first: all objects, or the events after `since`."""
        if since in (None, "", "0"):
            for obj in self._objects[watcher.resource].values():
                if watcher.matches(obj):
                    yield json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n"
            return
        try:
            revision = int(since)
        except ValueError as exc:
            raise _Gone from exc
        oldest = self._log[0].resource_version if self._log else self._revision + 1
        if revision < oldest - 1 and revision < self._revision:
            raise _Gone
        for event in self._log:
            if (
                event.resource_version > revision
                and event.resource == watcher.resource
                and watcher.matches(event.obj)
            ):
                yield event.line

    async def _watch(
        self,
        request: kmock.Request,
        rid: ResourceId,
        namespace: str | None,
        name: str | None,
    ) -> aiohttp.web.StreamResponse:
        params = request.params
        watcher = _Watcher(resource=rid, matches=self._matcher(namespace, name, params))
        # Snapshot and registration happen without an await in between: nothing is missed.
        try:
            backlog = list(self._backlog(watcher, params.get("resourceVersion")))
        except _Gone:
            backlog = [
                json.dumps(
                    {
                        "type": "ERROR",
                        "object": {
                            "apiVersion": "v1",
                            "kind": "Status",
                            "status": "Failure",
                            "code": 410,
                            "reason": "Expired",
                            "message": f"too old resource version: {params.get('resourceVersion')}",
                        },
                    }
                ).encode()
                + b"\n"
            ]
            watcher.queue.put_nowait(None)
        self._watchers.add(watcher)
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        assert request._raw_request is not None  # only None in kmock's own artificial tests
        try:
            await response.prepare(request._raw_request)
            for line in backlog:
                await response.write(line)
            async with asyncio.timeout(timeout):
                while (event := await watcher.queue.get()) is not None:
                    await response.write(event.line)
        except (TimeoutError, ConnectionError):
            pass  # server-side timeout reached, or the client went away
        finally:
            self._watchers.discard(watcher)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response


class ApiServer:
    """The emulator listening on HTTP: `async with ApiServer() as api: api.url`."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.emulator = Emulator()
        self._runner: aiohttp.web.ServerRunner | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
        return f"http://{host}:{self.port}"

    async def __aenter__(self) -> ApiServer:
        await self.emulator.__aenter__()
        server = aiohttp.web.Server(self.emulator)
        self._runner = aiohttp.web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.port
        logger.info("Kubernetes API emulator listening on %s", self.url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.emulator.close_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.emulator.__aexit__(exc_type, exc_value, traceback)

    def write_kubeconfig(
        self, path: str | pathlib.Path, *, server: str | None = None
    ) -> pathlib.Path:
        """Write a kubeconfig for this server (`server` overrides the URL, e.g. for containers)."""
        return write_kubeconfig(path, server=server or self.url)


def kubeconfig(*, server: str) -> dict[str, Any]:
    """A kubeconfig with one context `ovnk-sandbox` pointing at `server`."""
    name = "ovnk-sandbox"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server}}],
        "users": [{"name": name, "user": {"token": name}}],
        "contexts": [
            {"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}
        ],
        "current-context": name,
    }


def write_kubeconfig(path: str | pathlib.Path, *, server: str) -> pathlib.Path:
    """`kubeconfig` written to `path` (JSON is valid YAML), readable by its owner only."""
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(kubeconfig(server=server), indent=2) + "\n")
    target.chmod(0o600)
    return target


async def serve(
    *, host: str, port: int, kubeconfig: pathlib.Path | None, server: str | None
) -> None:
    """Serve until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with ApiServer(host=host, port=port) as api:
        if kubeconfig is not None:
            api.write_kubeconfig(kubeconfig, server=server)
        print(f"Kubernetes API emulator serving at {api.url}", flush=True)
        await stop.wait()
        logger.info("stopping the Kubernetes API emulator")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ovnk_secondary.sandbox.apiserver",
        description="Kubernetes API emulator (kmock-based) for the sandbox; serves until SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=6443, help="TCP port (0: any free port)")
    parser.add_argument("--kubeconfig", type=pathlib.Path, help="write a kubeconfig here")
    parser.add_argument("--server", help="URL to put in the kubeconfig (default: the listen URL)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(
        serve(host=args.host, port=args.port, kubeconfig=args.kubeconfig, server=args.server)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
