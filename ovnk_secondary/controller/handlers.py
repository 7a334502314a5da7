"""kopf handlers: thin. Each hands the raw watch event to the reconciler and returns.

kopf watches NADs only; pods, the hot path, are watched by `podwatch` without kopf.

Raw event handlers (`kopf.on.event`) rather than change handlers: kopf then keeps no state
in the objects (no finalizers, no progress annotations), so watching 10,000 pods costs no
extra API writes; the reconciler's full sync covers whatever happened while it was down.
Without change handlers kopf needs no diff base either, yet it still builds one (a deep copy
of the object) per event: `NoDiffBase` skips that, a large share of kopf's cost per event.
"""

from __future__ import annotations

from typing import Any

import kopf

from ovnk_secondary.controller import apiclient, reconciler

NAD = ("k8s.cni.cncf.io", "v1", "network-attachment-definitions")


class NoDiffBase(kopf.DiffBaseStorage):
    """A diff base for operators with event handlers only: nothing to build or keep."""

    def build(self, *, body: kopf.Body,
              extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch,
              essence: kopf.BodyEssence) -> None:
        pass


def register(
    registry: kopf.OperatorRegistry,
    *,
    policy: reconciler.Reconciler,
    credentials: apiclient.Credentials,
) -> None:
    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(
            server=credentials.server,
            token=credentials.token,
            scheme="Bearer" if credentials.token else None,
            ca_path=credentials.ca_path,
            certificate_path=credentials.certificate_path,
            private_key_path=credentials.private_key_path,
            insecure=credentials.insecure,
        )

    @kopf.on.event(*NAD, registry=registry)
    async def nad_event(event: kopf.RawEvent, **_: Any) -> None:
        body = dict(event["object"])
        if event["type"] == "DELETED":
            await policy.nad_deleted(body)
        else:
            await policy.nad_changed(body)
