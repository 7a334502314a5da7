"""The controller's calls to the Kubernetes API: list, watch, patch annotations and IPAMClaim
status, post Events. Listed and watched: NADs, pods, IPAMClaims, MultiNetworkPolicies and
namespaces (their labels, for policies' namespaceSelectors).

Plain async HTTP (aiohttp) on the controller's loop, so they stay off any thread pool. The
connection comes from a kubeconfig (or the in-cluster service account), read once; the
in-cluster token is read again from its file at most once a minute, as client-go does: the
kubelet rotates the projected token (KEP-1205) and an old one is eventually refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import kubernetes

from ovnk_secondary import errors

NAD_PATH = "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions"
PODS_PATH = "/api/v1/pods"
IPAMCLAIMS_PATH = "/apis/k8s.cni.cncf.io/v1alpha1/ipamclaims"
MULTI_NETWORK_POLICIES_PATH = "/apis/k8s.cni.cncf.io/v1beta1/multi-networkpolicies"
NAMESPACES_PATH = "/api/v1/namespaces"
WATCH_EVENTS_PER_TURN = 50
TOKEN_FILE_TTL = 60.0  # seconds between reads of the in-cluster token file (client-go: 1 min)
Objects = list[dict[str, Any]]  # (`list` is a method of ApiClient)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Credentials:
    server: str
    token: str | None = None
    token_file: str | None = None  # in-cluster: the projected token, read again as it rotates
    ca_path: str | None = None
    certificate_path: str | None = None
    private_key_path: str | None = None
    insecure: bool = False


def load_credentials(kubeconfig: str | None) -> Credentials:
    """From `kubeconfig`, else $KUBECONFIG/~/.kube/config, else the in-cluster account."""
    configuration = kubernetes.client.Configuration()
    try:
        if kubeconfig:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, client_configuration=configuration)
        else:
            try:
                kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration)
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration)
    except (kubernetes.config.ConfigException, OSError, ValueError) as exc:
        where = kubeconfig or "$KUBECONFIG, ~/.kube/config or the in-cluster service account"
        raise errors.InvalidConfig(f"cannot load Kubernetes credentials from {where}: {exc}; "
                                   "pass --kubeconfig PATH") from exc
    header = configuration.get_api_key_with_prefix("BearerToken") or \
        configuration.get_api_key_with_prefix("authorization") or ""
    # the in-cluster loader writes "bearer <token>", a kubeconfig's loader "Bearer <token>"
    scheme, _, rest = header.partition(" ")
    token = rest if scheme.lower() == "bearer" and rest else (header or None)
    token_file = None
    if not kubeconfig and configuration.refresh_api_key_hook is not None:  # in-cluster
        token_file = kubernetes.config.incluster_config.SERVICE_TOKEN_FILENAME
    return Credentials(
        server=configuration.host.rstrip("/"),
        token=token,
        token_file=token_file,
        ca_path=configuration.ssl_ca_cert,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        insecure=not configuration.verify_ssl,
    )


class ApiClient:
    """An aiohttp session bound to one API server."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self._session: aiohttp.ClientSession | None = None
        self._token = credentials.token
        self._token_read = time.monotonic()

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.credentials.server.startswith("https"):
            return False
        context = ssl.create_default_context(cafile=self.credentials.ca_path)
        if self.credentials.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.credentials.certificate_path:
            context.load_cert_chain(self.credentials.certificate_path,
                                    self.credentials.private_key_path)
        return context

    def _headers(self) -> dict[str, str]:
        path = self.credentials.token_file
        if path is not None and time.monotonic() - self._token_read >= TOKEN_FILE_TTL:
            try:
                with open(path, encoding="utf-8") as file:
                    self._token = file.read().strip() or self._token
            except OSError:
                pass  # keep the token we have; the API server says when it is no longer good
            self._token_read = time.monotonic()
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                base_url=self.credentials.server,
                connector=aiohttp.TCPConnector(ssl=self._ssl(), limit=32),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        return self._session

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = self._headers() | kwargs.pop("headers", {})
        async with self._open().request(method, path, headers=headers, **kwargs) as response:
            body = await response.json(content_type=None)
            if response.status >= 400:
                message = body.get("message") if isinstance(body, dict) else body
                raise ApiError(response.status, f"{method} {path}: {response.status} {message}")
            return body

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def list(self, path: str) -> list[dict[str, Any]]:
        body = await self._request("GET", path)
        return list(body.get("items") or [])

    async def watch(self, path: str, *, resource_version: str = "",
                    timeout: int = 300) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch of the collection at `path`, until the server ends it.

        Without `resource_version` the server first sends every existing object as ADDED (a
        list and a watch in one stream, read as it arrives: no list held in memory whole).
        """
        params = {"watch": "true", "timeoutSeconds": str(timeout),
                  "allowWatchBookmarks": "true"}
        if resource_version:
            params["resourceVersion"] = resource_version
        async with self._open().get(
            path, params=params, headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout + 30),
        ) as response:
            if response.status >= 400:
                raise ApiError(response.status, f"watch {path}: {response.status} "
                               f"{(await response.text())[:200]}")
            buffer = b""
            async for chunk in response.content.iter_any():  # lines may exceed any line limit
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for number, line in enumerate(lines, 1):
                    if line.strip():
                        yield json.loads(line)
                    if number % WATCH_EVENTS_PER_TURN == 0:
                        # a chunk read during a burst holds thousands of events: let the
                        # loop's other work (the Lease's renewal too) run between them
                        await asyncio.sleep(0)

    async def get(self, path: str) -> dict[str, Any]:
        body: dict[str, Any] = await self._request("GET", path)
        return body

    async def create(self, collection: str, body: Mapping[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self._request("POST", collection, json=body)
        return created

    async def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT: refused with 409 when `body`'s resourceVersion is no longer the current one."""
        replaced: dict[str, Any] = await self._request("PUT", path, json=body)
        return replaced

    async def pages(self, path: str, *, limit: int) -> AsyncIterator[tuple[Objects, str]]:
        """The list at `path`, `limit` objects at a time (a page is dropped before the next),
        each with the list's resourceVersion (the pages of one list are one snapshot)."""
        token = ""
        while True:
            params = {"limit": str(limit), **({"continue": token} if token else {})}
            body = await self._request("GET", path, params=params)
            metadata = body.get("metadata") or {}
            token = metadata.get("continue") or ""
            items: Objects = body.get("items") or []
            del body
            yield items, str(metadata.get("resourceVersion") or "")
            if not token:
                return

    async def annotate_pod(self, *, namespace: str, name: str, key: str, value: str) -> None:
        await self._request(
            "PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}",
            json={"metadata": {"annotations": {key: value}}},
            headers={"Content-Type": "application/merge-patch+json"},
        )

    async def annotate_nad(self, *, namespace: str, name: str, key: str, value: str) -> None:
        await self._request(
            "PATCH", f"/apis/k8s.cni.cncf.io/v1/namespaces/{namespace}/"
                     f"network-attachment-definitions/{name}",
            json={"metadata": {"annotations": {key: value}}},
            headers={"Content-Type": "application/merge-patch+json"},
        )

    async def patch_ipamclaim_status(self, *, namespace: str, name: str,
                                     patch: Mapping[str, Any]) -> dict[str, Any]:
        """A merge patch of an IPAMClaim's status subresource; the claim as stored after it."""
        patched: dict[str, Any] = await self._request(
            "PATCH", f"/apis/k8s.cni.cncf.io/v1alpha1/namespaces/{namespace}/ipamclaims/{name}"
                     "/status",
            json=patch, headers={"Content-Type": "application/merge-patch+json"},
        )
        return patched

    async def post_event(
        self, *, involved: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        metadata = involved.get("metadata", {})
        namespace = metadata.get("namespace") or "default"
        now = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        await self._request("POST", f"/api/v1/namespaces/{namespace}/events", json={
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{metadata.get('name')}.{uuid.uuid4().hex[:12]}",
                         "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                "name": metadata.get("name"), "namespace": metadata.get("namespace"),
                "uid": metadata.get("uid"), "resourceVersion": metadata.get("resourceVersion"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "ovnk-secondary-controller"},
            "reportingComponent": "ovnk-secondary-controller",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        })


class ApiError(errors.OvnkSecondaryError):
    """The Kubernetes API refused a request."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
