"""An in-memory Kubernetes API (kmock's emulator) served on 127.0.0.1 from a background thread,
for the launcher tests. It stores objects and answers create/get/list/patch/delete like an API
server, but runs no controllers: the tests play the controller (job status, pods, logs)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

RESOURCES = ("v1/pods", "v1/services", "apps/v1/deployments", "trainer.kubeflow.org/v1alpha1/trainjobs",
             "kubeflow.org/v1/pytorchjobs")


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

    def api_client(self) -> Any:
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        return client.ApiClient(cfg)

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
