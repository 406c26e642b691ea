"""Servers the tests need, started on 127.0.0.1 and stopped by PID (children too)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from salmon.processes import free_port, stop_process_tree, wait_http

# One implementation of the process plumbing, shared with `salmon bench` (salmon.processes).
stop = stop_process_tree
_wait_http = wait_http


@contextmanager
def moto_server() -> Iterator[str]:
    """An S3-compatible endpoint (moto) on 127.0.0.1; yields its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url, proc, 30)
        yield url
    finally:
        stop(proc)


@contextmanager
def mlflow_server(workdir: Path, artifacts_destination: str, env: dict[str, str] | None = None,
                  port: int | None = None) -> Iterator[str]:
    """``mlflow server`` with a sqlite store, serving artifacts from ``artifacts_destination``
    (a folder or an s3:// URI), on ``port`` (a free one by default); yields its URL. The server's
    children (uvicorn, the job runner) are stopped by PID with it."""
    port = port or free_port()
    log = workdir / "mlflow-server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{workdir / 'server.db'}",
           "--artifacts-destination", artifacts_destination, "--serve-artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/health", proc, 120, log)
        yield url
    finally:
        stop(proc)
