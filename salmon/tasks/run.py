"""A stage as one pipeline task: what the thin KFP components in ``components/`` call.

:func:`run_stage_task` resolves the stage config (:func:`resolve_stage_config`: preset ->
per-stage overrides -> principle values -> the component's values), checks the principle sets it
reads against the digests the plan recorded, opens the stage's MLflow run, logs the config, input
and output datasets with digests, per-step and final metrics and (training stages) the model,
runs the stage recipe (in the task, or as a Kubernetes job), and stamps the output artifacts with
their content digests. It returns a small JSON text: the MLflow run id, the logged model URI and
the metrics, which ``register`` reads.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any

from salmon.core.config import build_config
from salmon.core.digest import digest_dir, digest_value
from salmon.core.io import finite_or_none
from salmon.core.paths import check_config_paths
from salmon.core.stages import TRAINING_STAGES
from salmon.stages.common import log
from salmon.tasks.common import (
    CONFIGS,
    EVALUATED_INPUT,
    MODEL_SUBDIR,
    REMOTE_EXECUTORS,
    ArtifactLike,
    StagePlan,
    artifact_digest,
    check_executor,
    checked_input_digest,
    count_lines,
    git_sha,
)
from salmon.tasks.plan import check_refs
from salmon.tasks.tracked import TrackedRun


def resolve_stage_config(stage: str, plan: str, values: dict[str, Any]) -> tuple[Any, StagePlan, dict[str, str]]:
    """The config ``stage`` runs with: its preset, then its plan's overrides, then the principle
    values the plan recorded (checked against the sets' digests now), then ``values`` (what the
    component passes: paths and pipeline values). Returns ``(config, plan, principle tags)``."""
    stage_plan = StagePlan.from_json(plan)
    principle_values, principle_tags = check_refs(stage, stage_plan.principles)
    merged = {**stage_plan.overrides, **principle_values, **values}
    cfg = build_config(CONFIGS[stage], stage=stage, preset=stage_plan.preset or None, values=merged)
    return cfg, stage_plan, principle_tags


def run_stage_task(
    stage: str,
    *,
    plan: str,
    values: dict[str, Any],
    inputs: dict[str, ArtifactLike] | None = None,
    outputs: dict[str, ArtifactLike] | None = None,
    metrics: Any = None,
    executor: str = "local",
    tags: dict[str, str] | None = None,
    job_manifest: ArtifactLike | None = None,
) -> str:
    """Run ``stage`` as a pipeline task (see the module docstring); returns the task's JSON."""
    from salmon import tracking
    from salmon.tracking import models as tracking_models

    if stage in TRAINING_STAGES:
        check_executor(stage, executor)
    cfg, stage_plan, principle_tags = resolve_stage_config(stage, plan, values)
    check_config_paths(cfg, stage)
    inputs = inputs or {}
    outputs = outputs or {}
    input_digests = {k: checked_input_digest(k, a) for k, a in inputs.items()}
    base_source = inputs["base_model"].metadata.get("source", "") if "base_model" in inputs else ""
    task_key = digest_value({"stage": stage, "config": cfg.model_dump(mode="json"), "inputs": input_digests})
    run_tags = {**principle_tags, **(tags or {}), "salmon.git_sha": git_sha(), "salmon.executor": executor}
    config_json = cfg.model_dump(mode="json")
    run = TrackedRun(stage, task_key, run_tags, base_source=base_source,
                      prompt_format=str(config_json.get("prompt_format") or ""))
    run.begin(cfg.model_dump(mode="json"), inputs, input_digests)
    started = time.monotonic()
    try:
        if executor in REMOTE_EXECUTORS:
            result = _run_remote(stage, cfg, executor, stage_plan.cluster or {}, task_key, inputs, outputs,
                                 job_manifest)
        else:
            module = importlib.import_module(f"salmon.stages.{stage}")
            result = module.run(cfg)
            if job_manifest is not None:
                from salmon.core.io import write_text

                write_text(job_manifest.path, f"# {stage} ran in the pipeline task's own process "
                                              "(executor local); no Kubernetes job\n")
    except BaseException:
        run.fail()
        raise
    seconds = round(time.monotonic() - started, 1)
    result.metrics.setdefault("seconds", seconds)
    for art in outputs.values():  # the digests need no tracking server
        art.metadata["digest"] = artifact_digest(art.path)
        rows = count_lines(Path(art.path))
        if rows is not None:
            art.metadata["rows"] = rows
    run_id = run.ensure_open(cfg.model_dump(mode="json"), inputs, input_digests)
    # an evaluation's figures belong to the model it evaluated too (MLflow 3 model metrics)
    tracking.log_metrics(result.metrics, model_id=run.model_ids.get(EVALUATED_INPUT.get(stage, "")))
    model_uri = ""
    for name, art in outputs.items():
        p = Path(art.path)
        art.metadata["mlflow_run_id"] = run_id
        if stage in TRAINING_STAGES:
            tracking.log_train_log(p / "train_log.jsonl")
            model_tags = {**principle_tags, "salmon.stage": stage, "salmon.git_sha": git_sha(),
                          "salmon.base_model": base_source or str(values.get("base_model")
                                                                  or values.get("policy_model")),
                          "salmon.digest": digest_dir(p / MODEL_SUBDIR[stage])}
            model_uri = tracking_models.log_model(stage, p / MODEL_SUBDIR[stage], model_tags,
                                                  base_model=run.base_reference,
                                                  base_model_digest=input_digests.get("base_model", ""),
                                                  prompt_format=run.prompt_format)
            art.metadata["model_uri"] = model_uri
        else:
            tracking.log_dataset(name, p.as_uri(), art.metadata["digest"], "output", art.metadata.get("rows"))
    if metrics is not None:
        numbers = {k.replace("/", "."): v for k, v in tracking.numeric_metrics(result.metrics).items()}
        for k, v in numbers.items():
            metrics.log_metric(k, v)
        # The artifact gets a file too: a cached output must exist on disk (kfp.local treats
        # a missing artifact file as a cache miss), and the file is what a cluster uploads.
        from salmon.core.io import write_json

        Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
        write_json(metrics.path, numbers)
    run.finish()
    log(stage, f"finished in {seconds:.1f} s (MLflow run {run_id})")
    base = values.get("base_model") or values.get("policy_model") or values.get("model")
    return json.dumps({"stage": stage, "mlflow_run_id": run_id, "model_uri": model_uri,
                       "base_model": base_source or (str(base) if base else ""),
                       "base_model_reference": run.base_reference,
                       "base_model_digest": input_digests.get("base_model", ""),
                       "metrics": finite_or_none(result.metrics), "outputs": result.outputs,
                       "principles": principle_tags}, default=str)


def _run_remote(stage: str, cfg: Any, executor: str, cluster: dict[str, Any], task_key: str,
                inputs: dict[str, ArtifactLike], outputs: dict[str, ArtifactLike],
                job_manifest: ArtifactLike | None) -> Any:
    """The stage as a TrainJob / PyTorchJob (``salmon.cluster.executor``). The job name derives
    from the task key (config + input digests): a retry adopts its job, and two runs asking for
    the same work share one."""
    from salmon.cluster.executor import ClusterSettings, run_stage_remote
    from salmon.stages.common import StageResult

    res = run_stage_remote(stage, cfg, executor, ClusterSettings(**cluster), run_id=task_key, task=stage,
                           inputs={k: a.path for k, a in inputs.items()},
                           outputs={k: a.path for k, a in outputs.items()},
                           manifest_out=job_manifest.path if job_manifest is not None else None,
                           out=lambda line: log(stage, line))
    return StageResult(stage, outputs=res.get("outputs", {}), metrics=res.get("metrics", {}))


def pmp_data_task(plan: str, sources: str, seed: int, pairs: ArtifactLike) -> str:
    """The pipeline's ``pmp_data`` task. With ``sources`` (the ``pmp_sources`` parameter,
    ``FORMAT:URI`` entries separated by commas) the stage runs like any other and returns the
    task's JSON; without, it writes an empty ``pairs`` file, returns ``""`` (which ``register``
    skips) and ``train_rm`` trains without its PMP phase, as before there was PMP data."""
    from salmon.core.pmp import parse_source_spec
    from salmon.tasks.wiring import stage_values

    entries = parse_source_spec(sources)
    if entries:
        values = {**stage_values("pmp_data", {"pairs": pairs.path}, seed=seed), "sources": entries}
        return run_stage_task("pmp_data", plan=plan, values=values, outputs={"pairs": pairs})
    from salmon.core.io import write_text

    write_text(pairs.path, "")
    pairs.metadata.update(digest=artifact_digest(pairs.path), rows=0)
    log("pmp_data", "no pmp_sources: nothing to do (train_rm runs without its PMP phase)")
    return ""


def has_pmp_pairs(pmp_data: ArtifactLike) -> bool:
    """Whether the ``pmp_data`` task wrote pairs (and ``train_rm`` gets them as ``pmp_data``)."""
    p = Path(pmp_data.path)
    return p.is_file() and p.stat().st_size > 0
