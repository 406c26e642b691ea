"""One exit-code contract for every command: 2 bad input, 3 a service out of reach, 4 a bug (one
line, the traceback in a log file), never a traceback on stderr unless --debug asks for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from salmon.cli import main
from salmon.core.errors import SalmonInputError

REPO = Path(__file__).resolve().parents[1]


def _one_line(err: str, prefix: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert "Traceback" not in err
    return lines[0]


def test_promote_without_a_tracking_server_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["registry", "promote", "salmon-policy", "1", "--reason", "test"]) == 2
    assert "no tracking server given" in _one_line(capsys.readouterr().err, "error:")
    assert list(tmp_path.iterdir()) == []  # MLflow would have made ./mlflow.db
    assert main(["registry", "promote", "salmon-policy", "1", "--reason", "test",
                 "--tracking-uri", f"sqlite:///{tmp_path / 'typo.db'}"]) == 2
    assert "no MLflow database at that path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_promote_to_a_reserved_alias_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    for alias in ("latest", "v3", "has space"):
        assert main(["registry", "promote", "salmon-policy", "1", "--reason", "test", "--alias", alias,
                     "--tracking-uri", "http://127.0.0.1:9"]) == 2
        assert "not an alias MLflow allows" in _one_line(capsys.readouterr().err, "error:")


def test_promote_against_an_unreachable_server_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    from servers import free_port

    assert main(["registry", "promote", "salmon-policy", "1", "--reason", "test",
                 "--tracking-uri", f"http://127.0.0.1:{free_port()}"]) == 3
    assert "cannot be reached" in _one_line(capsys.readouterr().err, "unavailable:")


def test_submit_to_an_unreachable_kfp_host_is_exit_3(tmp_path: Path) -> None:
    """A real process: the KFP client's connection error becomes one `unavailable:` line."""
    from servers import free_port

    r = subprocess.run([sys.executable, "-m", "salmon.cli", "pipeline", "submit", "--host",
                        f"http://127.0.0.1:{free_port()}"], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert r.returncode == 3, r.stderr
    _one_line(r.stderr, "unavailable:")


def _boom(error: BaseException):  # type: ignore[no-untyped-def]
    def run(cfg: object) -> object:
        raise error
    return run


def _aggregate_args(tmp_path: Path) -> list[str]:
    return ["aggregate", "pairs=p.jsonl", "judgements=j.jsonl", f"output={tmp_path / 'out.jsonl'}"]


def test_an_unexpected_error_is_one_line_and_a_log_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import salmon.stages.aggregate as stage

    monkeypatch.setattr(stage, "run", _boom(RuntimeError("the recipe fell over")))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    assert main(_aggregate_args(tmp_path)) == 4
    line = _one_line(capsys.readouterr().err, "internal error:")
    assert "RuntimeError: the recipe fell over" in line and "a bug in salmon" in line
    log = Path(line.split("the traceback is in ")[1].rstrip(")"))
    assert log.is_file() and log.parent == tmp_path / "salmon-errors"
    assert "Traceback" in log.read_text() and "the recipe fell over" in log.read_text()
    assert main(["--debug", *_aggregate_args(tmp_path)]) == 4
    assert "Traceback" in capsys.readouterr().err


def test_a_refused_path_is_bad_input_and_a_connection_error_is_a_service_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import salmon.stages.aggregate as stage

    monkeypatch.setattr(stage, "run", _boom(PermissionError(13, "Permission denied", "/data/pairs.jsonl")))
    assert main(_aggregate_args(tmp_path)) == 2
    assert _one_line(capsys.readouterr().err, "error:").startswith("error: /data/pairs.jsonl: Permission denied")
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except ConnectionRefusedError as cause:
        wrapped = RuntimeError("upload failed")
        wrapped.__cause__ = cause
    monkeypatch.setattr(stage, "run", _boom(wrapped))
    assert main(_aggregate_args(tmp_path)) == 3
    _one_line(capsys.readouterr().err, "unavailable:")


def test_stage_entry_points_share_the_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from salmon.core.config import AggregateConfig
    from salmon.stages.common import stage_main

    args = _aggregate_args(tmp_path)[1:]
    assert stage_main("aggregate", AggregateConfig, _boom(KeyError("x")), args) == 4
    _one_line(capsys.readouterr().err, "internal error:")
    assert stage_main("aggregate", AggregateConfig, _boom(TimeoutError("read timed out")), args) == 3
    _one_line(capsys.readouterr().err, "unavailable:")


def test_an_output_in_a_folder_this_user_cannot_write_is_refused(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Root writes anywhere, so the permission is simulated; the check asks os.access like any user."""
    from salmon.core.paths import check_output

    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked)
    with pytest.raises(SalmonInputError, match="the folder .*locked is not writable by this user"):
        check_output(locked / "sub" / "out.jsonl", "file", "--output")
    check_output(tmp_path / "elsewhere.jsonl", "file", "--output")
