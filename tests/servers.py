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


def venv_without_salmon(dest: Path) -> Path:
    """A fresh virtualenv at ``dest`` where ``import salmon`` fails; returns its interpreter.

    Its third-party packages are this interpreter's (a path entry to its site-packages, so no
    network is needed), but path entries do not run ``.pth`` files: the editable install of
    salmon, which is a ``.pth`` hook, is not in it. A ``uvicorn`` script in its ``bin/`` (what
    ``mlflow models serve --env-manager local`` runs) uses the fresh interpreter."""
    import sysconfig
    import venv

    venv.EnvBuilder(with_pip=False, symlinks=True).create(dest)
    python = dest / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "third_party.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    uvicorn = dest / "bin" / "uvicorn"
    uvicorn.write_text(f"#!{python}\nimport sys\nfrom uvicorn.main import main\nsys.exit(main())\n")
    uvicorn.chmod(0o755)
    return python


_LOAD_SCRIPT = """
import importlib.metadata, importlib.util, json, os, sys, warnings
from packaging.requirements import Requirement
assert importlib.util.find_spec("salmon") is None, "salmon is importable in this venv"
import mlflow
out = {}
for uri in sys.argv[1:]:
    folder = mlflow.artifacts.download_artifacts(uri)
    for line in open(f"{folder}/requirements.txt").read().split():
        req = Requirement(line)
        assert req.specifier.contains(importlib.metadata.version(req.name), prereleases=True), line
    settings = json.load(open(f"{folder}/artifacts/salmon_model.json"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = mlflow.pyfunc.load_model(uri)
    if settings["kind"] == "train_rm":
        answer = model.predict([{"prompt": "What is 2 + 3?", "response": "2 + 3 = 5.", "principles": ["Be concise."]}])
    else:
        answer = model.predict(["What is 2 + 3?", "Name a fruit."])
    meta = model.metadata
    out[uri] = {"answer": answer, "settings": settings, "warnings": [str(w.message) for w in caught],
                "signature": meta.signature.to_dict() if meta.signature else None,
                "example": meta.saved_input_example_info, "code": "salmon" in os.listdir(folder + "/code")}
print(json.dumps(out))
"""


def load_in_venv(python: Path, uris: list[str], env: dict[str, str], cwd: Path) -> dict[str, dict[str, object]]:
    """Load each logged model ``uri`` with ``mlflow.pyfunc.load_model`` in the interpreter
    ``python`` (where salmon must not be importable, and each requirement the model lists must be
    installed), ask it two prompts (a policy) or one record (a reward model), and return per URI:
    the answers, its ``salmon_model.json``, the warnings loading raised, its signature, input
    example and whether it ships salmon's code."""
    import json

    r = subprocess.run([str(python), "-c", _LOAD_SCRIPT, *uris], capture_output=True, text=True, cwd=cwd,
                       env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    loaded: dict[str, dict[str, object]] = json.loads(r.stdout.strip().splitlines()[-1])
    return loaded
