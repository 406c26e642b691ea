"""Run the SALMON pipeline on this machine with ``kfp.local`` (no cluster, no Docker).

``run_local`` points MLflow at ``MLFLOW_TRACKING_URI`` or the embedded ``<out>/mlflow.db``,
opens the parent run, runs every task as a subprocess of the current Python
(``SubprocessRunner(use_venv=False)``: the tasks import the installed salmon), with caching in
``<out>/pipeline_root/.kfp_cache`` so that a rerun skips what has not changed, and closes the
parent run with the outcome.

What kfp.local prints (each task's executor input, streamed logs, outputs, colour codes) goes to
``<out>/pipeline.log``; the console gets one line as each task starts and one as it ends, the
progress lines of long stages (with their ETA) and, when a task fails, its last lines
(:class:`TaskConsole`). ``verbose`` prints everything instead.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LocalRun:
    """What a local pipeline run produced."""

    out: Path
    parent_run_id: str
    tracking_uri: str
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)
    """register's output: model versions and aliases, every stage's MLflow run and metrics."""
    cached: list[str] = field(default_factory=list)
    """Tasks served from the cache in this run."""


TASKS = ("plan", "base-model", "prompts", "selfalign", "sft", "sample", "label", "aggregate", "pmp-data", "train-rm",
         "eval-rm", "ppo", "eval-policy", "register")


def cached_tasks(root: Path, before: set[str]) -> list[str]:
    """Tasks of the newest run under ``root`` that did not execute: kfp.local writes a task's
    folder (``executor_output.json``) only when it runs the task, not on a cache hit."""
    runs = sorted((p for p in root.glob("salmon-*") if p.name not in before), key=lambda p: p.stat().st_mtime)
    if not runs:
        return []
    return [t for t in TASKS if not (runs[-1] / t / "executor_output.json").is_file()]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_PROGRESS = re.compile(r"^\s*(\S.*?\s{2}\d+/\d+ \S+\s+\d+%.*eta \S+|\[\w+\] (?:\w+ )?step \d+/\d+.*)$")
"""salmon's progress lines inside a task: ``sample  32/320 responses  10% ... eta 381s`` and
``[ppo] step 3/6 ...`` / ``[train_rm] ft step 20/59 ...``."""


def plain(text: str) -> str:
    """``text`` without terminal colour codes (kfp.local colours task names and statuses)."""
    return _ANSI.sub("", text)


class TaskConsole(io.TextIOBase):
    """Stands in for ``sys.stdout`` while kfp.local runs the pipeline: everything is written to
    ``log``; ``console`` gets, without colour codes, a line when a task starts, one when it ends
    (with its seconds), the progress lines of long stages (at most one per task every
    ``interval`` seconds, and always a stage's last) and, when a task fails, its last ``tail``
    lines."""

    def __init__(self, log: Any, console: Any, interval: float = 30.0, tail: int = 40) -> None:
        self.log, self.console, self.interval = log, console, interval
        self._partial = ""
        self._task: str | None = None
        self._started: dict[str, float] = {}
        self._last_progress = 0.0
        self._tail: collections.deque[str] = collections.deque(maxlen=tail)
        self._json_indent: int | None = None
        self._after_input = False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(plain(line).rstrip("\r"))
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()

    def _skip(self, line: str) -> bool:
        """kfp's own lines in a task's output (its executor messages and the executor-input JSON
        dump): kept out of a failing task's tail."""
        indent = len(line) - len(line.lstrip())
        if self._json_indent is not None:
            if line.strip() == "}" and indent == self._json_indent:
                self._json_indent = None
            return True
        if line.strip() == "{" and self._after_input:
            self._json_indent = indent
            return True
        self._after_input = "Got executor_input" in line
        return "[KFP Executor" in line

    def _say(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", file=self.console, flush=True)

    def _line(self, line: str) -> None:
        now = time.monotonic()
        if m := _START.search(line):
            self._task = m[1]
            self._started[m[1]] = now
            self._tail.clear()
            self._last_progress = 0.0
            self._say(f"{m[1]} started")
        elif m := _END.search(line):
            task, status = m[1], m[2]
            seconds = now - self._started.get(task, now)
            if status != "SUCCESS":
                self._say(f"{task} {status.lower()} after {seconds:.0f} s; its last lines:")
                for kept in self._tail:
                    print(f"    {kept}", file=self.console)
            else:
                self._say(f"{task} done in {seconds:.0f} s")
            self._task = None
        elif self._task is not None and line.strip():
            if self._skip(line):
                return
            self._tail.append(line.strip())
            if _PROGRESS.match(line):
                done = re.search(r"(\d+)/(\d+)", line)
                last = bool(done and done[1] == done[2])
                if last or now - self._last_progress >= self.interval:
                    self._last_progress = now
                    self._say(f"  {line.strip()}")


@contextlib.contextmanager
def quiet_console(out: Path, console: Any = None) -> Iterator[Path]:
    """Route kfp.local's output (and the warnings raised meanwhile) to ``out/pipeline.log``,
    leaving the console a :class:`TaskConsole` view of it."""
    path = out / "pipeline.log"
    console = console or sys.stderr
    with open(path, "a", encoding="utf-8") as log, warnings.catch_warnings():
        def to_log(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                   line: str | None = None) -> None:
            log.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = to_log
        view = TaskConsole(log, console)
        saved = sys.stdout
        sys.stdout = view  # kfp.local's logging handler and its task output both write here
        try:
            print(f"{time.strftime('%H:%M:%S')} full log: {path}", file=console, flush=True)
            yield path
        finally:
            sys.stdout = saved


def run_local(out: str | Path, params: dict[str, Any], *, cache: bool = True,
              experiment: str = "salmon", verbose: bool = True) -> LocalRun:
    """Run the pipeline with ``params`` into ``out``; raises RuntimeError when a task fails.
    Without ``verbose`` the console shows a line per task (:func:`quiet_console`) and the full
    output goes to ``out/pipeline.log``."""

    from salmon import tracking

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", tracking.PARENT_ENV,
                                             tracking.KFP_RUN_ENV)}
    try:
        if verbose:
            return _run_local(out, params, cache, experiment)
        with quiet_console(out):
            return _run_local(out, params, cache, experiment)
    finally:  # the tasks needed these; the caller's environment is left as it was
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_local(out: Path, params: dict[str, Any], cache: bool, experiment: str) -> LocalRun:
    from kfp import local

    from pipelines.salmon import salmon_pipeline
    from salmon import tracking

    uri = tracking.setup_tracking(out, experiment)
    local_id = f"local-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    parent = tracking.start_parent_run(local_id, {"kfp.run_id": local_id, "salmon.runner": "kfp.local",
                                                  "salmon.params": json.dumps(params, sort_keys=True)[:5000]})
    os.environ[tracking.KFP_RUN_ENV] = local_id
    root = out / "pipeline_root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               enable_caching=cache, cache_root=str(root / ".kfp_cache"))
    before = {p.name for p in root.glob("salmon-*")}
    t0 = time.monotonic()
    status = "FAILED"
    try:
        task = salmon_pipeline(**params)
        summary = json.loads(task.output)
        status = "FINISHED"
    finally:
        tracking.end_parent_run(parent, status)
    seconds = round(time.monotonic() - t0, 1)
    run = LocalRun(out=out, parent_run_id=parent, tracking_uri=uri, seconds=seconds, summary=summary,
                   cached=cached_tasks(root, before))
    _finish_parent(run)
    return run


def _finish_parent(run: LocalRun) -> None:
    """Headline metrics and links to every stage run on the parent run; summary.json in ``out``."""
    import mlflow

    from salmon import tracking
    from salmon.core.io import write_json

    client = mlflow.MlflowClient()
    for stage, info in run.summary.get("stages", {}).items():
        client.set_tag(run.parent_run_id, f"salmon.stage_run.{stage}", info["mlflow_run_id"])
    for name, m in run.summary.get("models", {}).items():
        client.set_tag(run.parent_run_id, f"salmon.model.{name}", m["uri"])
    head = headline(run.summary)
    values = tracking.numeric_metrics(head)
    for k, v in values.items():
        client.log_metric(run.parent_run_id, k, v)
    write_json(run.out / "summary.json", {
        "parent_run_id": run.parent_run_id, "tracking_uri": run.tracking_uri, "seconds": run.seconds,
        "cached": run.cached, "headline": head, **run.summary})


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers a person looks at first."""
    stages = summary.get("stages", {})
    ev = stages.get("eval_rm", {}).get("metrics", {})
    pol = stages.get("eval_policy", {}).get("metrics", {})
    praise = ev.get("self_praise") or {}
    out: dict[str, Any] = {
        "rm_heldout_accuracy": ev.get("accuracy"), "rm_flip_rate": ev.get("flip_rate"),
        "rm_principle_sensitivity": ev.get("sensitivity"),
        "rm_prefers_plain_with_intervention": praise.get("prefers_plain_on"),
        "rm_prefers_plain_without": praise.get("prefers_plain_off"),
        "ppo_kl_to_sft": pol.get("kl_to_baseline")}
    if "zero_shot" in ev:
        out["rm_zero_shot_accuracy"] = ev.get("zero_shot_accuracy")
        out["rm_zero_shot_flip_rate"] = ev.get("zero_shot_flip_rate")
        for pid, z in ev["zero_shot"].items():
            out[f"rm_zero_shot/{pid}"] = z.get("accuracy")
    lab = stages.get("label", {}).get("metrics", {})
    if "audit_agreement" in lab:
        out["self_judge_agreement"] = lab.get("audit_agreement")
        out["self_judge_consistency"] = lab.get("audit_position_consistent_rate")
        out["self_judge_mean_agreement"] = lab.get("audit_mean_agreement")
    for side in ("sft", "ppo"):
        out[f"{side}_words"] = pol.get(f"{side}/response_words")
        out[f"{side}_correct_arithmetic"] = pol.get(f"{side}/adherence/correct_arithmetic")
    sft_words, ppo_words = out["sft_words"], out["ppo_words"]
    if isinstance(sft_words, int | float) and isinstance(ppo_words, int | float) and sft_words > 0:
        out["ppo_words_change"] = round(ppo_words / sft_words - 1, 4)
    for key, value in pol.items():
        side, _, rest = key.partition("/")
        if key.startswith("win_rate/"):
            out[f"ppo_{key}"] = value
        elif side in ("sft", "ppo") and (rest.startswith("adherence/") or rest == "stop_rate"):
            out[f"{side}_{rest}"] = value
    return out


def print_report(run: LocalRun, stream: Any = None) -> None:
    """The end-of-run summary (on ``stream``, default stderr): stages, metrics, models and
    aliases, where to look next."""
    stream = stream or sys.stderr
    p = lambda s="": print(s, file=stream)  # noqa: E731
    stages = run.summary.get("stages", {})
    p(f"\nSALMON pipeline finished in {run.seconds:.0f} s; cached tasks: {', '.join(run.cached) or 'none'}")
    p(f"{'stage':<12} {'seconds':>8}  MLflow run")
    for stage, info in stages.items():
        secs = info["metrics"].get("seconds")
        cached = " (cached)" if stage.replace("_", "-") in run.cached else ""
        p(f"{stage:<12} {secs if secs is not None else '':>8}  {info['mlflow_run_id']}{cached}")
    p()
    for k, v in headline(run.summary).items():
        p(f"{k:<26} {v:.3f}" if isinstance(v, float) else f"{k:<26} {v}")
    p()
    for name, m in run.summary.get("models", {}).items():
        state = "champion + candidate" if m["champion"] else f"candidate only ({'; '.join(m['reasons'])})"
        p(f"{name:<15} v{m['version']:<4} {state}")
    p()
    reports = sorted(run.out.glob("pipeline_root/**/eval-policy/evaluation/report.md"), key=lambda x: x.stat().st_mtime)
    if reports:
        p(f"report:     {reports[-1]}")
        pngs = sorted(reports[-1].parent.glob("*.png"))
        if pngs:
            p(f"plots:      {pngs[0].parent}/*.png ({len(pngs)})")
    p(f"summary:    {run.out / 'summary.json'}")
    p(f"tracking:   {run.tracking_uri}")
    if run.tracking_uri.startswith("sqlite:"):
        p(f"browse:     mlflow ui --backend-store-uri {run.tracking_uri}")
