"""When MLflow, its artifact store or S3 cannot be reached, and when an input artifact is damaged.

The policy (docs/reliability.md): stages that run a model go on without MLflow and write their
tracking when they end, waiting for the server; bookkeeping stages fail at once; training stages
fail before training when the artifact store refuses the run's first artifact. Real servers
(MLflow, moto) run on 127.0.0.1 and are stopped by PID.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from servers import mlflow_server, moto_server

from salmon.core.errors import SalmonInputError, ServiceUnavailable
from salmon.core.io import digest_path, write_jsonl
from salmon.nano.world import make_pairs, make_prompts
from salmon.processes import free_port

N_NANO = 6
"""Principles in the nano set: label writes one judgement per pair and principle."""


@dataclass
class Art:
    """A KFP artifact as run_stage_task sees one: a path and a metadata dict."""

    path: str
    metadata: dict[str, Any] = field(default_factory=dict)


def use_tracking_uri(monkeypatch: pytest.MonkeyPatch, uri: str) -> None:
    """Point MLflow at ``uri`` for this test (environment and MLflow's process-wide setting,
    which earlier tests may have set)."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)


@pytest.fixture()
def tracking_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No parent run or injected run from the environment; no long MLflow HTTP retries; the
    working folder is the test's own (MLflow's relative defaults land there, not in the repo)."""
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_RUN_ID", "SALMON_MLFLOW_PARENT_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "faults")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    monkeypatch.setenv("SALMON_TRACKING_CHECK_S", "1")
    import mlflow

    before = mlflow.get_tracking_uri()
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(before)


def _pairs(tmp: Path) -> Art:
    path = tmp / "pairs.jsonl"
    write_jsonl(path, make_pairs(make_prompts(8, seed=3), seed=4))
    return Art(str(path))


def _label(tmp: Path, pairs: Art) -> tuple[str, Art]:
    from salmon.tasks.run import run_stage_task

    out = Art(str(tmp / "out" / "judgements.jsonl"))
    text = run_stage_task("label", plan="", values={"backend": "rules", "principles": "nano", "progress": False,
                                                    "pairs": pairs.path, "output": out.path},
                          inputs={"pairs": pairs}, outputs={"judgements": out})
    return text, out


def test_the_probe_tells_an_answering_server_from_a_dead_port(monkeypatch: pytest.MonkeyPatch,
                                                              tracking_env: None) -> None:
    """Any HTTP answer counts as reachable (a 401 from an auth proxy too); a refused port does not;
    a local store needs no probe."""
    import http.server

    from salmon import tracking

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            self.send_response(200 if self.path == "/health" else 401)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        use_tracking_uri(monkeypatch, f"http://127.0.0.1:{server.server_port}")
        assert tracking.tracking_problem(attempts=1) is None
        use_tracking_uri(monkeypatch, f"http://127.0.0.1:{server.server_port}/prefix")
        assert tracking.tracking_problem(attempts=1) is None  # 401 at /prefix/health: it answered
    finally:
        server.shutdown()
    use_tracking_uri(monkeypatch, f"http://127.0.0.1:{free_port()}")
    problem = tracking.tracking_problem(timeout_s=1, attempts=2, pause_s=0.1)
    assert problem is not None and "unreachable" in problem and "refused" in problem.lower()
    use_tracking_uri(monkeypatch, "sqlite:///nowhere.db")
    assert tracking.tracking_problem() is None


def test_a_bookkeeping_stage_fails_before_any_work_without_mlflow(tmp_path: Path, tracking_env: None,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from salmon.tasks.run import run_stage_task

    use_tracking_uri(monkeypatch, f"http://127.0.0.1:{free_port()}")
    pairs = _pairs(tmp_path)
    judgements = tmp_path / "judgements.jsonl"
    write_jsonl(judgements, [])
    out = Art(str(tmp_path / "out" / "instances.jsonl"))
    with pytest.raises(ServiceUnavailable, match=r"MLflow tracking server: http://127\.0\.0\.1:\d+ unreachable .*; "
                                                 r"aggregate needs it and stopped before doing any work"):
        run_stage_task("aggregate", plan="", values={"pairs": pairs.path, "judgements": str(judgements),
                                                     "output": out.path},
                       inputs={"pairs": pairs}, outputs={"instances": out})
    assert not (tmp_path / "out").exists()


def test_a_model_stage_runs_without_mlflow_and_tracks_when_the_server_comes_back(
        tmp_path: Path, tracking_env: None, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    """The server is down when label starts; label runs, then waits; the server comes up on the
    same port; the run appears there with the stage's metrics and output dataset."""
    import mlflow

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    use_tracking_uri(monkeypatch, uri)
    monkeypatch.setenv("SALMON_TRACKING_WAIT_S", "180")
    pairs = _pairs(tmp_path)
    up = threading.Event()
    stop = threading.Event()

    def serve() -> None:
        with mlflow_server(tmp_path, str(tmp_path / "artifacts"), port=port):
            up.set()
            stop.wait(300)

    import salmon.tasks.tracked as task_mod
    from salmon import tracking

    assert tracking.tracking_problem(attempts=1) is not None  # down before the stage starts
    server = threading.Thread(target=serve, daemon=True)
    real_begin = task_mod.TrackedRun.begin

    def begin_then_start_the_server(self: Any, *args: Any) -> None:
        real_begin(self, *args)  # the probe finds no server: the stage goes on without one
        server.start()

    monkeypatch.setattr(task_mod.TrackedRun, "begin", begin_then_start_the_server)
    try:
        text, out = _label(tmp_path, pairs)
        info = json.loads(text)
        run = mlflow.MlflowClient(uri).get_run(info["mlflow_run_id"])
    finally:
        stop.set()
    server.join(60)
    err = capfd.readouterr().err
    assert "label runs anyway" in err and "waiting up to 180 s" in err
    assert up.is_set() and info["metrics"]["judgements"] == 8 * N_NANO
    assert run.data.metrics["judgements"] == 8 * N_NANO and run.data.tags["salmon.stage"] == "label"
    assert run.data.params["backend"] == "rules" and run.info.status == "FINISHED"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["pairs", "judgements"]
    assert out.metadata["digest"].startswith("sha256:") and out.metadata["mlflow_run_id"] == info["mlflow_run_id"]


def test_a_model_stage_whose_server_never_returns_fails_after_its_work_with_outputs_intact(
        tmp_path: Path, tracking_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    use_tracking_uri(monkeypatch, f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("SALMON_TRACKING_WAIT_S", "2")
    pairs = _pairs(tmp_path)
    with pytest.raises(ServiceUnavailable, match="after label finished; its outputs are complete on disk"):
        _label(tmp_path, pairs)
    out = tmp_path / "out" / "judgements.jsonl"
    assert out.is_file() and digest_path(out).is_file()
    from salmon.core.io import read_jsonl
    from salmon.core.records import Judgement

    assert len(read_jsonl(out, Judgement)) == 8 * N_NANO  # complete, and its digest matches


def test_a_training_stage_stops_before_training_when_the_artifact_store_is_down(
        tmp_path: Path, tracking_env: None, monkeypatch: pytest.MonkeyPatch, tiny_model: str) -> None:
    """MLflow answers, but its S3 artifact store does not: sft fails before its first step."""
    from salmon.core.records import SFTExample
    from salmon.tasks.run import run_stage_task

    data = tmp_path / "sft.jsonl"
    write_jsonl(data, [SFTExample(example_id="e", instruction="Hi?", response="Hello.", source="nano")])
    dead_s3 = f"http://127.0.0.1:{free_port()}"
    env = {"MLFLOW_S3_ENDPOINT_URL": dead_s3, "AWS_ENDPOINT_URL": dead_s3, "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    with mlflow_server(tmp_path, "s3://salmon-artifacts/mlflow", env=env) as uri:
        use_tracking_uri(monkeypatch, uri)
        out_dir = tmp_path / "sft"
        art = Art(str(out_dir))
        with pytest.raises(ServiceUnavailable, match=r"artifact store .*sft logs its model there and stopped "
                                                     r"before training"):
            run_stage_task("sft", plan="", values={"data": str(data), "base_model": tiny_model,
                                                   "output_dir": str(out_dir), "lora_r": 4},
                           inputs={"sft_data": Art(str(data))}, outputs={"sft": art})
        assert not out_dir.exists()
        import mlflow

        runs = mlflow.search_runs(experiment_names=["faults"], output_format="list")
        assert [r.info.status for r in runs] == ["FAILED"]


def test_plan_and_register_fail_at_once_without_mlflow(tmp_path: Path, tracking_env: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The first task (it records the principle sets in MLflow) and register (it only talks to
    MLflow) stop with exit-3 errors in seconds, not after MLflow's retries."""
    import time

    from salmon.tasks.plan import plan_task
    from salmon.tasks.register import register_task

    use_tracking_uri(monkeypatch, f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="plan needs it and stopped before doing any work"):
        plan_task(preset="nano", stage_overrides={}, selfalign_rules="", label_principles="", rl_principles="",
                  params={})
    with pytest.raises(ServiceUnavailable, match="register needs it and stopped before doing any work"):
        register_task({}, kfp_run_id="r", min_rm_accuracy=None, min_rm_flip_rate=None, min_policy_win_rate=None,
                      max_policy_kl=None, policy_gate_principles="")
    assert time.monotonic() - started < 30


def test_a_damaged_input_artifact_is_refused_before_any_work(tmp_path: Path) -> None:
    """The digest its producer stamped on the artifact must match its content."""
    from salmon.tasks.common import artifact_digest, checked_input_digest

    pairs = _pairs(tmp_path)
    pairs.metadata["digest"] = artifact_digest(pairs.path)
    assert checked_input_digest("pairs", pairs) == pairs.metadata["digest"]
    with open(pairs.path, "ab") as f:
        f.write(b"\n")
    with pytest.raises(SalmonInputError, match=r"input artifact pairs \(.*pairs\.jsonl\): its content digest "
                                               r"sha256:\w+ differs from the sha256:\w+ its producer recorded"):
        checked_input_digest("pairs", pairs)


def test_an_unreachable_s3_endpoint_is_a_service_error_and_a_missing_bucket_is_bad_input(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Through the CLI: exit 3 and one ``unavailable:`` line; exit 2 for a bucket that does not
    exist; no output file either way."""
    from salmon.cli import main

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    out = tmp_path / "prompts.jsonl"
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    args = ["prompts", f"output={out}", "sources=[{uri: s3://salmon-data/prompts.jsonl}]"]
    assert main(args) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("unavailable: S3 endpoint http://127.0.0.1:")
    assert "s3://salmon-data/prompts.jsonl" in err[0] and not out.exists()
    with moto_server() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: s3://salmon-data/prompts.jsonl: cannot read the object")
    assert not out.exists()
