"""Servers the tests need, started on 127.0.0.1 and stopped by PID (children too)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc), deepest last."""
    out: list[int] = []
    try:
        kids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return out
    for k in kids.split():
        out.append(int(k))
        out += _children(int(k))
    return out


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process and all its descendants by PID; SIGKILL what is left after 10 s."""
    pids = [proc.pid, *_children(proc.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            if pid == proc.pid and proc.poll() is not None:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    proc.wait(timeout=10)


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = log.read_text()[-2000:] if log and log.is_file() else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {detail}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


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
def mlflow_server(workdir: Path, artifacts_destination: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``mlflow server`` with a sqlite store, serving artifacts from ``artifacts_destination``
    (a folder or an s3:// URI); yields its URL. The server's children (uvicorn, the job runner)
    are stopped by PID with it."""
    port = free_port()
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
