"""An in-memory Kubernetes API (kmock's emulator) served on 127.0.0.1 from a background thread,
for the launcher tests. It stores objects and answers create/get/list/patch/delete like an API
server, but runs no controllers: the tests play the controllers (job status, pods, logs, and the
garbage collector through :meth:`Emulator.collect_garbage`). It ignores label selectors, which
is why salmon filters listed objects by label again.

Every request is recorded; :meth:`Emulator.verbs` turns the requests of one client (told apart by
its User-Agent) into RBAC verbs, so a test can compare what the code does with what its Role
grants."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

RESOURCES = ("v1/pods", "v1/services", "apps/v1/deployments", "trainer.kubeflow.org/v1alpha1/trainjobs",
             "kubeflow.org/v1/pytorchjobs", "argoproj.io/v1alpha1/workflows")


class Emulator:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self.handler: Any = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        import kmock

        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as handler, kmock.Server(handler) as server:
            for resource in RESOURCES:  # listable even while empty
                handler.resources[resource] = {}
            self.handler = handler
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def start(self) -> Emulator:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes emulator did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def api_client(self, agent: str = "") -> Any:
        """A client of this API; ``agent`` (its User-Agent) tells its requests apart in :meth:`verbs`."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        api = client.ApiClient(cfg)
        if agent:
            api.user_agent = agent
        return api

    def verbs(self, agent: str) -> set[tuple[str, str, str]]:
        """``(apiGroup, resource[/subresource], verb)`` of every request the client ``agent`` sent,
        with the verbs RBAC would check (get, list, watch, create, update, patch, delete,
        deletecollection)."""
        found = set()
        for request in list(self.handler):
            if request.headers.get("User-Agent") != agent or request.resource is None:
                continue
            method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
            if method == "GET":
                verb = "get" if request.name else ("watch" if request.params.get("watch") in ("true", "1") else "list")
            else:
                verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                        "DELETE": "delete" if request.name else "deletecollection"}[method]
            resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
            found.add((request.resource.group or "", resource, verb))
        return found

    def _live(self) -> list[tuple[str, dict[str, Any]]]:
        """(API path, object) of every stored object, read on the server's loop."""
        async def snapshot() -> list[tuple[str, dict[str, Any]]]:
            out = []
            for (resource, namespace, name), obj in list(self.handler.objects.items()):
                if obj.deleted:
                    continue
                prefix = f"/apis/{resource.group}/{resource.version}" if resource.group else f"/api/{resource.version}"
                ns = f"/namespaces/{namespace}" if namespace else ""
                out.append((f"{prefix}{ns}/{resource.plural}/{name}", dict(obj.raw)))
            return out

        return asyncio.run_coroutine_threadsafe(snapshot(), self.loop).result(10)

    def collect_garbage(self) -> list[str]:
        """Play Kubernetes' garbage collector (background propagation): delete, through the API,
        every object whose ownerReferences all name objects (by uid) that no longer exist; repeat
        until nothing changes. Returns the deleted objects' paths."""
        deleted: list[str] = []
        while True:
            live = self._live()
            uids = {obj.get("metadata", {}).get("uid") for _, obj in live} - {None}
            orphans = [path for path, obj in live
                       if (refs := obj.get("metadata", {}).get("ownerReferences"))
                       and not any(ref.get("uid") in uids for ref in refs)]
            if not orphans:
                return deleted
            for path in orphans:
                urllib.request.urlopen(urllib.request.Request(self.url + path, method="DELETE"), timeout=10).close()
                deleted.append(path)

    def serve_log(self, namespace: str, pod: str, text: str) -> None:
        """Answer the pod's log endpoint with ``text`` (the emulator has no kubelet)."""
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/log"

        def add() -> None:
            self.handler["get", path] << text.encode()

        self.loop.call_soon_threadsafe(add)


@contextmanager
def emulator() -> Iterator[Emulator]:
    emu = Emulator().start()
    try:
        yield emu
    finally:
        emu.stop()
