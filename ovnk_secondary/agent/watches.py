"""Informers: the objects of one resource as the Kubernetes API last reported them.

A `Watch` lists, then watches from the list's resourceVersion, on a thread of its own; after any
failure (the API down or restarted, 410 Gone, the server ending a long watch) it lists again,
pausing longer each time it fails in a row. Readers get the cached objects as plain values
without an API round trip; waiters for one object are woken when it changes, and `on_change`
hears of every change (on the watch's thread: hand the work on). A list reports every object as
changed, so that whoever converges on `on_change` converges everything again after a lost watch.

Subclasses make the two API calls (list, then watch), so that each call stays visible as a call
of the Kubernetes client in their code: the RBAC test reads the calls from the source.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from kubernetes.watch import watch as k8s_watch

from ovnk_secondary import errors

LOG = logging.getLogger(__name__)
T = TypeVar("T")
Key = tuple[str, str]  # (namespace, name)


def key_of(obj: Mapping[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))


class Watch(Generic[T]):
    """Objects by (namespace, name), kept by list + watch on a thread (start, stop)."""

    what = "objects"  # for the log: what is watched

    def __init__(self, *, thread_name: str,
                 on_change: Callable[[set[Key]], None] | None = None) -> None:
        self.synced = threading.Event()
        self.on_change = on_change
        self._objects: dict[Key, T] = {}
        self._waiters: dict[Key, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    # --- what subclasses provide -------------------------------------------------------------

    def list_objects(self) -> Any:
        """The list call, made with `_preload_content=False` (its `data` is the JSON body)."""
        raise NotImplementedError

    def watch_objects(self, version: str) -> Any:
        """The watch call from `version`, made with `_preload_content=False` (a stream)."""
        raise NotImplementedError

    def convert(self, obj: Mapping[str, Any]) -> T:
        """The cached value of an object as the API sent it."""
        raise NotImplementedError

    # --- readers -----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def get(self, namespace: str, name: str) -> T | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def items(self) -> dict[Key, T]:
        """A copy of the cache."""
        with self._lock:
            return dict(self._objects)

    def subscribe(self, key: Key) -> asyncio.Event:
        """An event set (on the caller's loop) whenever the object `key` changes."""
        event = asyncio.Event()
        with self._lock:
            self._waiters.setdefault(key, set()).add((asyncio.get_running_loop(), event))
        return event

    def unsubscribe(self, key: Key, event: asyncio.Event) -> None:
        with self._lock:
            waiters = self._waiters.get(key, set())
            waiters.difference_update({w for w in waiters if w[1] is event})
            if not waiters:
                self._waiters.pop(key, None)

    # --- the thread ----------------------------------------------------------------------------

    def _changed(self, keys: Iterable[Key]) -> None:
        keys = set(keys)
        with self._lock:
            woken = [w for key in keys for w in self._waiters.get(key, ())]
        for loop, event in woken:
            loop.call_soon_threadsafe(event.set)
        if self.on_change is not None and keys:
            try:
                self.on_change(keys)
            except Exception:  # a listener's bug must not stop the watch
                LOG.exception("handling a change of %s failed", self.what)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                version = self._list()
                self.synced.set()
                failures = 0
                self._watch(version)
            except Exception as exc:  # API down or restarted: list again after a pause
                self.synced.clear()
                pause = min(30.0, 2.0 ** failures)
                failures += 1
                LOG.warning("watching %s failed (%s); listing again in %.0f s", self.what, exc,
                            pause)
                self._stop.wait(pause)

    def _list(self) -> str:
        body = json.loads(self.list_objects().data)
        objects = {key_of(item): self.convert(item) for item in body.get("items") or ()}
        with self._lock:
            changed = set(self._objects) | set(objects)
            self._objects = objects
        self._changed(changed)
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, version: str) -> None:
        response = self.watch_objects(version)
        try:
            for line in k8s_watch.iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if self._stop.is_set():
                    return
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":  # e.g. 410 Gone: our version is too old
                    raise errors.Unavailable(f"watch of {self.what}: {obj.get('message')}")
                if kind not in ("ADDED", "MODIFIED", "DELETED"):
                    continue
                key = key_of(obj)
                with self._lock:
                    if kind == "DELETED":
                        self._objects.pop(key, None)
                    else:
                        self._objects[key] = self.convert(obj)
                self._changed([key])
        finally:
            response.release_conn()
