"""MLflow lineage: one parent run per pipeline run, one nested run per stage, params, metrics,
datasets and principle sets in the prompt registry (logged models and the model registry:
:mod:`salmon.tracking.models`).

Where the tracking server is:

- ``MLFLOW_TRACKING_URI`` when set (a real server; artifacts on S3 use ``MLFLOW_S3_ENDPOINT_URL``
  and the AWS variables through boto3);
- otherwise ``sqlite:///<out>/mlflow.db`` with artifacts in ``<out>/mlartifacts`` (the embedded
  default of ``salmon demo``).

Which run a stage logs into, first match wins:

1. ``MLFLOW_RUN_ID``: a run made for this task by the orchestrator (KFP 2.17's native MLflow
   integration injects one per task);
2. a run under the parent ``SALMON_MLFLOW_PARENT_RUN_ID`` tagged with the same stage and task
   key: a retried task reopens its own run instead of adding a second one;
3. a new run named after the stage, nested under the parent when there is one.

mlflow is imported inside the functions: the package imports without it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PARENT_ENV = "SALMON_MLFLOW_PARENT_RUN_ID"
KFP_RUN_ENV = "SALMON_KFP_RUN_ID"
DEFAULT_EXPERIMENT = "salmon"
def embedded_uri(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def setup_tracking(out_dir: str | Path, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at ``MLFLOW_TRACKING_URI`` or the embedded database under ``out_dir``,
    make sure ``experiment`` exists (artifacts in ``<out>/mlartifacts`` for the embedded store)
    and export both so that child processes (pipeline tasks) log to the same place."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri(out_dir)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None
        if uri.startswith("sqlite:"):
            location = (Path(out_dir).resolve() / "mlartifacts").as_uri()
        mlflow.create_experiment(experiment, artifact_location=location)
    os.environ["MLFLOW_EXPERIMENT_NAME"] = experiment
    mlflow.set_experiment(experiment)
    return uri


def start_parent_run(name: str, tags: dict[str, str]) -> str:
    """Create the parent run of one pipeline run; returns its id (also exported to children)."""
    import mlflow

    client = mlflow.MlflowClient()
    exp = mlflow.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT))
    assert exp is not None, "setup_tracking() first"
    run = client.create_run(exp.experiment_id, run_name=name, tags={"salmon.kind": "pipeline", **tags})
    os.environ[PARENT_ENV] = run.info.run_id
    return str(run.info.run_id)


def end_parent_run(run_id: str, status: str = "FINISHED") -> None:
    import mlflow

    mlflow.MlflowClient().set_terminated(run_id, status=status)


def _find_task_run(client: Any, experiment_id: str, parent: str, stage: str, task_key: str) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=(f"tags.mlflow.parentRunId = '{parent}' and tags.`salmon.stage` = '{stage}' "
                       f"and tags.`salmon.task_key` = '{task_key}'"),
        max_results=1)
    return str(runs[0].info.run_id) if runs else None


def start_stage_run(stage: str, task_key: str, tags: dict[str, str] | None = None) -> str:
    """Start (or reopen) the MLflow run of one stage task as the active run and return its id;
    the caller ends it with ``mlflow.end_run(status)``. See the module docstring for which run.

    ``task_key`` identifies the task's work (a digest of its config and inputs): a retry with
    the same key reopens the same run."""
    import mlflow

    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
    if mlflow.get_experiment_by_name(experiment) is None and not os.environ.get("MLFLOW_EXPERIMENT_ID"):
        mlflow.create_experiment(experiment)
    exp = mlflow.set_experiment(experiment_name=None if os.environ.get("MLFLOW_EXPERIMENT_ID") else experiment,
                                experiment_id=os.environ.get("MLFLOW_EXPERIMENT_ID"))
    client = mlflow.MlflowClient()
    parent = os.environ.get(PARENT_ENV)
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id and parent:
        run_id = _find_task_run(client, exp.experiment_id, parent, stage, task_key)
    all_tags = {"salmon.stage": stage, "salmon.task_key": task_key, **(tags or {})}
    if kfp_run := os.environ.get(KFP_RUN_ENV):
        all_tags["kfp.run_id"] = kfp_run
    if run_id:
        active = mlflow.start_run(run_id=run_id)
        mlflow.set_tags(all_tags)
    elif parent:
        active = mlflow.start_run(run_name=stage, parent_run_id=parent, nested=True, tags=all_tags)
    else:
        active = mlflow.start_run(run_name=stage, tags=all_tags)
    return str(active.info.run_id)


@contextmanager
def stage_run(stage: str, task_key: str, tags: dict[str, str] | None = None) -> Iterator[str]:
    """The MLflow run of one stage task as a context (``start_stage_run``); yields its id and
    ends the run FINISHED, or FAILED when the block raises."""
    import mlflow

    run_id = start_stage_run(stage, task_key, tags)
    try:
        yield run_id
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def tracking_problem(timeout_s: float = 5.0, attempts: int = 3, pause_s: float = 2.0) -> str | None:
    """Why the tracking server cannot be reached, or ``None`` when it can (or the store is a
    local database or folder). Any HTTP answer from ``<uri>/health`` counts as reachable; a
    refused connection, a DNS failure or a timeout, ``attempts`` times in a row, does not."""
    import time
    import urllib.error
    import urllib.request

    import mlflow

    uri = str(mlflow.get_tracking_uri())  # what MLflow will use: set_tracking_uri(), else the env
    if not uri.startswith(("http://", "https://")):
        return None
    reason = ""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):  # noqa: S310 (http(s) only)
                return None
        except urllib.error.HTTPError:
            return None  # the server answered
        except (urllib.error.URLError, OSError) as e:
            reason = str(getattr(e, "reason", e))
        if attempt + 1 < attempts:
            time.sleep(pause_s)
    return f"{uri} unreachable ({reason})"


def wait_for_tracking(timeout_s: float, poll_s: float = 5.0) -> str | None:
    """Wait up to ``timeout_s`` for the tracking server; returns the last problem, or ``None``."""
    import time

    deadline = time.monotonic() + timeout_s
    while (problem := tracking_problem(attempts=1)) is not None and time.monotonic() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
    return problem


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A config as MLflow params: nested keys joined with '.', values as JSON text."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, name + "."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


def numeric_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers among (nested) metrics, with '/'-joined names; booleans become 0/1."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(numeric_metrics(value, name + "/"))
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, int | float) and math.isfinite(value):  # drop NaN and infinities
            out[name] = float(value)
    return out


def log_stage_config(config: dict[str, Any]) -> None:
    import mlflow

    mlflow.log_params(flat_params(config))


def log_metrics(metrics: dict[str, Any], step: int | None = None, model_id: str | None = None) -> None:
    """Numeric ``metrics`` on the active run; with ``model_id`` also on that logged model."""
    import mlflow

    values = numeric_metrics(metrics)
    if values:
        mlflow.log_metrics(values, step=step, model_id=model_id)


def log_train_log(path: str | Path) -> int:
    """Per-step metrics from a stage's ``train_log.jsonl`` (one JSON object per step)."""
    import mlflow

    p = Path(path)
    if not p.is_file():
        return 0
    from mlflow.entities import Metric

    rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    import time

    now = int(time.time() * 1000)
    batch = [Metric(f"train/{k}", v, now, int(row["step"]))
             for row in rows for k, v in numeric_metrics({x: y for x, y in row.items() if x != "step"}).items()]
    client = mlflow.MlflowClient()
    run = mlflow.active_run()
    assert run is not None
    for start in range(0, len(batch), 900):
        client.log_batch(run.info.run_id, metrics=batch[start:start + 900])
    return len(rows)


def _dataset_source(uri: str) -> Any:
    """MLflow's own dataset source for ``uri``: ``s3`` for ``s3://``, ``local`` for a path or
    ``file://`` URI (``http`` only for http(s) URLs)."""
    from mlflow.data.dataset_source_registry import _dataset_source_registry

    kind = "s3" if uri.startswith("s3://") else "http" if uri.startswith(("http://", "https://")) else "local"
    cls = next(c for c in _dataset_source_registry.sources if c._get_source_type() == kind)
    return cls(uri)


def log_dataset(name: str, uri: str, digest: str, context: str, rows: int | None = None) -> None:
    """Record a dataset the stage read (``context`` input) or wrote (``output``) with its digest."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset

    # MLflow keeps at most 36 characters of a dataset digest; the full one goes in a tag.
    ds = MetaDataset(source=_dataset_source(uri), name=name, digest=digest.removeprefix("sha256:")[:32])
    tags = {"salmon.digest": digest}
    if rows is not None:
        tags["salmon.rows"] = str(rows)
    mlflow.log_input(ds, context=context, tags=tags)


def log_model_input(model_id: str) -> None:
    """Record a logged model the active run read (MLflow 3 model inputs; the client call, as the
    fluent ``mlflow.log_inputs(models=...)`` is refused outside Databricks)."""
    import mlflow
    from mlflow.entities import LoggedModelInput

    run = mlflow.active_run()
    assert run is not None, "log_model_input needs an active run"
    mlflow.MlflowClient().log_inputs(run.info.run_id, models=[LoggedModelInput(model_id)])


def register_principle_set(name: str, digest: str, text: str, version: str) -> str:
    """The prompt-registry URI of a principle set: an existing version with the same digest, or a
    new version of ``salmon-principles-<name>`` holding the set's text."""
    import mlflow

    prompt_name = f"salmon-principles-{name}".replace("_", "-")
    client = mlflow.MlflowClient()
    try:
        found = client.search_prompt_versions(prompt_name)
    except mlflow.exceptions.MlflowException:  # the prompt does not exist yet
        found = []
    versions = list(getattr(found, "prompt_versions", found))
    for v in versions:
        if (v.tags or {}).get("salmon.digest") == digest:
            return f"prompts:/{prompt_name}/{v.version}"
    pv = mlflow.genai.register_prompt(
        name=prompt_name, template=text,
        commit_message=f"principle set {name} v{version} ({digest[:19]})",
        tags={"salmon.digest": digest, "salmon.set": name, "salmon.set_version": version})
    return f"prompts:/{prompt_name}/{pv.version}"


def run_datasets(run_id: str, context: str = "output") -> list[tuple[str, str, str]]:
    """``(name, digest, rows)`` of the datasets run ``run_id`` logged with ``context``."""
    import mlflow

    out = []
    for d in mlflow.MlflowClient().get_run(run_id).inputs.dataset_inputs:
        tags = {t.key: t.value for t in d.tags}
        if tags.get("mlflow.data.context") == context:
            out.append((d.dataset.name, tags.get("salmon.digest", d.dataset.digest), tags.get("salmon.rows", "")))
    return out


