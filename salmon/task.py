"""A stage as one pipeline task: what the thin KFP components in ``components/`` call.

``run_stage_task`` resolves the stage config (preset -> per-stage overrides -> pipeline values),
checks the principle sets it reads against the digests the ``principles`` task recorded, opens
the stage's MLflow run, logs the config, input and output datasets with digests, per-step and
final metrics and (training stages) the model, runs the stage recipe, and stamps the output
artifacts with their content digests. It returns a small JSON text: the MLflow run id, the
logged model URI and the metrics, which ``register`` reads.

Artifacts arrive duck-typed (anything with ``.path`` and a ``.metadata`` dict), so this module
never imports kfp. The layer rules put it above ``salmon.stages`` and below the CLI.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol

from salmon.base_models import PACKAGED, is_packaged
from salmon.core.config import (
    AggregateConfig,
    EvalPolicyConfig,
    EvalRMConfig,
    LabelConfig,
    PMPDataConfig,
    PPOConfig,
    PromptsConfig,
    SampleConfig,
    SelfAlignConfig,
    SFTConfig,
    TrainRMConfig,
    build_config,
    load_yaml_mapping,
    preset_path,
)
from salmon.core.digest import digest_dir, digest_file, digest_value
from salmon.core.errors import SalmonInputError
from salmon.core.io import finite_or_none
from salmon.core.paths import check_config_paths
from salmon.stages.common import log

BASE_NAMES = ", ".join(f"'{n}'" for n in PACKAGED)
"""The packaged base models a pipeline accepts by name, for error messages."""


class ArtifactLike(Protocol):
    path: str
    metadata: dict[str, Any]


CONFIGS: dict[str, type[Any]] = {
    "prompts": PromptsConfig, "selfalign": SelfAlignConfig, "sft": SFTConfig, "sample": SampleConfig,
    "label": LabelConfig, "aggregate": AggregateConfig, "pmp_data": PMPDataConfig, "train_rm": TrainRMConfig,
    "eval_rm": EvalRMConfig, "ppo": PPOConfig, "eval_policy": EvalPolicyConfig,
}
TRAINING_STAGES = ("sft", "train_rm", "ppo")
EXECUTORS = ("local", "trainjob", "pytorchjob")
MODEL_LINEAGE = {
    # the stages whose outputs each trained model descends from
    "sft": ("prompts", "selfalign", "sft"),
    "train_rm": ("prompts", "selfalign", "sft", "sample", "label", "aggregate", "pmp_data", "train_rm"),
    "ppo": ("prompts", "selfalign", "sft", "sample", "label", "aggregate", "pmp_data", "train_rm", "ppo"),
}
MODEL_SUBDIR = {"sft": "adapter", "train_rm": "model", "ppo": "policy"}
"""The folder inside a training stage's output that is the model (the rest is checkpoints)."""

PRINCIPLE_FIELDS: dict[str, tuple[str, ...]] = {
    # stage: config fields naming principle sets (or, for selfalign, the exemplar and identity files)
    "selfalign": ("rules", "exemplars", "identity_file"),
    "label": ("principles",),
    "aggregate": ("principles",),
    "eval_rm": ("principles", "intervention_set"),
    "ppo": ("rl_principles", "interventions"),
    "eval_policy": ("principle_sets",),
}


FILE_FIELDS = {"exemplars": "exemplar file", "identity_file": "identity file"}
"""Fields of PRINCIPLE_FIELDS that name a data file (digested as a file) rather than a principle set."""


REMOTE_EXECUTORS = ("trainjob", "pytorchjob")
"""Executors that run the stage as a Kubernetes job (``salmon.cluster``) instead of in the task."""


def check_executor(stage: str, executor: str) -> None:
    if executor not in EXECUTORS:
        raise SalmonInputError(f"{stage} executor '{executor}'", f"unknown; use one of {', '.join(EXECUTORS)}")


# ----------------------------------------------------------------------------- principles

def _stage_value(stage: str, preset: str | None, overrides: dict[str, Any], field: str) -> Any:
    """A config field's value before paths are known: override, else preset, else default."""
    if field in overrides:
        return overrides[field]
    if preset and preset_path(preset, stage).is_file():
        data = load_yaml_mapping(preset_path(preset, stage))
        if field in data:
            return data[field]
    return CONFIGS[stage].model_fields[field].get_default(call_default_factory=True)


def _set_names(field: str, value: Any) -> list[str]:
    if value is None:
        return []
    if field == "principle_sets":  # eval_policy: "set" or "set:id,id"
        return sorted({str(v).partition(":")[0] for v in value})
    return [str(value)]


def principle_refs(preset: str | None, stage_overrides: dict[str, dict[str, Any]],
                   register: bool = True) -> dict[str, dict[str, Any]]:
    """For each stage that reads principles: a mapping of each principle field to
    ``{"value", "sets": {name: {"digest", "version", "uri"}}}``.

    It goes into the stage task's plan, so a principle change reaches exactly the
    stages that read the changed set (their cache keys change) and no others. With ``register``
    each set is also put in MLflow's prompt registry when its digest is new."""
    from salmon.core.principles import load_principle_set, principles_dir

    seen: dict[str, dict[str, str]] = {}

    def ref(name: str, field: str) -> dict[str, str]:
        if name in seen:
            return seen[name]
        if field in FILE_FIELDS:
            p = Path(name)
            path = p if p.is_absolute() or p.is_file() else principles_dir() / p
            if not path.is_file():
                raise SalmonInputError(f"{FILE_FIELDS[field]} '{name}'", "not found",
                                       "give a path, or a name under principles/")
            entry = {"digest": digest_file(path), "version": "file", "uri": ""}
        else:
            pset = load_principle_set(name)
            import yaml

            text = yaml.safe_dump(pset.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
            entry = {"digest": pset.digest(), "version": str(pset.version), "uri": ""}
            if register:
                from salmon.tracking import register_principle_set

                entry["uri"] = register_principle_set(pset.name, entry["digest"], text, entry["version"])
        seen[name] = entry
        return entry

    out: dict[str, dict[str, Any]] = {}
    for stage, fields in PRINCIPLE_FIELDS.items():
        overrides = stage_overrides.get(stage, {})
        refs = {}
        for field in fields:
            value = _stage_value(stage, preset, overrides, field)
            refs[field] = {"value": value, "sets": {n: ref(n, field) for n in _set_names(field, value)}}
        out[stage] = refs
    return out


def plan_task(*, preset: str, stage_overrides: dict[str, dict[str, Any]], selfalign_rules: str,
              label_principles: str, rl_principles: str, params: dict[str, Any],
              cluster: dict[str, Any] | None = None, register: bool = True) -> dict[str, str]:
    """The pipeline's first task: validate the parameters, resolve the principle sets each stage
    reads (digests, prompt-registry URIs) and give every stage its plan, a JSON text with the
    preset, its own config overrides and its principle refs. A stage's plan changes only when
    something it reads changes, which is what keeps caching exact."""
    validate_pipeline_params({**params, "stage_overrides": stage_overrides})
    if register:  # the principle sets go to MLflow's prompt registry
        require_tracking("plan")
    if cluster is not None and any(params.get(f"{s}_executor") in REMOTE_EXECUTORS for s in TRAINING_STAGES):
        from pydantic import ValidationError

        from salmon.cluster.executor import ClusterSettings

        try:
            ClusterSettings(**cluster)
        except ValidationError as e:
            first = e.errors()[0]
            raise SalmonInputError(f"pipeline parameter for the training jobs ({first['loc'][0]})",
                                   first["msg"]) from None
    overrides = {stage: dict(stage_overrides.get(stage, {})) for stage in CONFIGS}
    if selfalign_rules:
        overrides["selfalign"].setdefault("rules", selfalign_rules)
    if label_principles:
        for stage in ("label", "aggregate", "eval_rm"):
            overrides[stage].setdefault("principles", label_principles)
    if rl_principles:
        overrides["ppo"].setdefault("rl_principles", rl_principles)
    refs = principle_refs(preset or None, overrides, register=register)
    plans = {}
    for stage in CONFIGS:
        ov = {k: v for k, v in overrides[stage].items() if k not in PRINCIPLE_FIELDS.get(stage, ())}
        plan: dict[str, Any] = {"preset": preset, "overrides": ov, "principles": refs.get(stage, {})}
        if params.get(f"{stage}_executor") in REMOTE_EXECUTORS:
            # only remote training stages carry the cluster settings: a local stage's cache key
            # does not change with them
            plan["cluster"] = dict(cluster or {})
        plans[stage] = json.dumps(plan, sort_keys=True)
    for stage, r in refs.items():
        names = ", ".join(f"{n} {e['digest'][7:19]}" for f in r.values() for n, e in f["sets"].items())
        log("plan", f"{stage}: {names}")
    return plans


def _check_refs(stage: str, refs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Config values from the refs, and run tags; fails if a set changed since it was recorded."""
    from salmon.core.principles import load_principle_set

    values: dict[str, Any] = {}
    tags: dict[str, str] = {}
    for field, r in refs.items():
        values[field] = r["value"]
        for name, entry in r["sets"].items():
            if field not in FILE_FIELDS:
                now = load_principle_set(name).digest()
                if now != entry["digest"]:
                    raise SalmonInputError(f"principle set '{name}'",
                                           f"changed during the run (recorded {entry['digest'][:19]}, now {now[:19]})",
                                           "rerun the pipeline")
            tags[f"salmon.principles.{name}.digest"] = entry["digest"]
            if entry.get("uri"):
                tags[f"salmon.principles.{name}.uri"] = entry["uri"]
    return values, tags


# ----------------------------------------------------------------------------- the task

def publish_report(evaluation: str | Path, report: str | Path) -> None:
    """Copy an evaluation folder's ``report.md`` to the task's Markdown output (which the KFP UI
    renders); a missing report is an empty page that says so."""
    from salmon.core.io import write_text

    src = Path(evaluation) / "report.md"
    text = src.read_text(encoding="utf-8") if src.is_file() else f"No report.md in {evaluation}.\n"
    write_text(report, text)


def git_sha() -> str:
    """The source revision: ``$SALMON_GIT_SHA`` (set in images), else git, else 'unknown'."""
    if sha := os.environ.get("SALMON_GIT_SHA"):
        return sha
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def artifact_digest(path: str | Path) -> str:
    p = Path(path)
    return digest_dir(p) if p.is_dir() else digest_file(p)


def checked_input_digest(name: str, art: ArtifactLike) -> str:
    """The content digest of an input artifact, which must equal the digest its producer stamped
    on it (a truncated upload, a damaged volume or a hand edit is refused before any work)."""
    actual = artifact_digest(art.path)
    recorded = art.metadata.get("digest")
    if recorded and recorded != actual:
        raise SalmonInputError(
            f"input artifact {name} ({art.path})",
            f"its content digest {actual[:19]} differs from the {recorded[:19]} its producer recorded: it was "
            "truncated or changed after it was written",
            "rerun the task that produced it (with caching off for that task)")
    return actual


def _count_lines(path: Path) -> int | None:
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return sum(1 for _ in f)


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

    if stage in TRAINING_STAGES:
        check_executor(stage, executor)
    stage_plan = json.loads(plan) if plan else {}
    principle_values, principle_tags = _check_refs(stage, stage_plan.get("principles", {}))
    merged = {**stage_plan.get("overrides", {}), **principle_values, **values}
    cfg = build_config(CONFIGS[stage], stage=stage, preset=stage_plan.get("preset") or None, values=merged)
    check_config_paths(cfg, stage)
    inputs = inputs or {}
    outputs = outputs or {}
    input_digests = {k: checked_input_digest(k, a) for k, a in inputs.items()}
    base_source = inputs["base_model"].metadata.get("source", "") if "base_model" in inputs else ""
    task_key = digest_value({"stage": stage, "config": cfg.model_dump(mode="json"), "inputs": input_digests})
    run_tags = {**principle_tags, **(tags or {}), "salmon.git_sha": git_sha(), "salmon.executor": executor}
    config_json = cfg.model_dump(mode="json")
    run = _TrackedRun(stage, task_key, run_tags, base_source=base_source,
                      prompt_format=str(config_json.get("prompt_format") or ""))
    run.begin(cfg.model_dump(mode="json"), inputs, input_digests)
    started = time.monotonic()
    try:
        if executor in REMOTE_EXECUTORS:
            result = _run_remote(stage, cfg, executor, stage_plan.get("cluster", {}), task_key, inputs, outputs,
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
        rows = _count_lines(Path(art.path))
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
            model_uri = tracking.log_model(stage, p / MODEL_SUBDIR[stage], model_tags, base_model=run.base_reference,
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


TRACKING_POLICY: dict[str, str] = {
    # what a task does when MLflow cannot be reached as it starts (docs/reliability.md):
    # "defer": the stage runs a model (GPU time): it runs, says so, and writes its tracking at
    #          the end, waiting up to SALMON_TRACKING_WAIT_S for the server;
    # "require": bookkeeping that is cheap to repeat: it fails at once, before any work.
    "prompts": "require", "aggregate": "require", "pmp_data": "require",
    "selfalign": "defer", "sft": "defer", "sample": "defer", "label": "defer", "train_rm": "defer",
    "eval_rm": "defer", "ppo": "defer", "eval_policy": "defer",
}
ARTIFACT_STORE_REQUIRED = TRAINING_STAGES
"""Stages whose result is a model logged to MLflow's artifact store: when the store refuses the
run's first artifact (the resolved config), they fail before training."""


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        raise SalmonInputError(f"environment variable {name}={raw!r}", "not a number of seconds") from None


def require_tracking(step: str) -> None:
    """Fail now (``ServiceUnavailable``, exit 3) when the tracking server cannot be reached."""
    from salmon import tracking
    from salmon.core.errors import ServiceUnavailable

    problem = tracking.tracking_problem(timeout_s=_env_seconds("SALMON_TRACKING_CHECK_S", 5.0))
    if problem is not None:
        raise ServiceUnavailable("MLflow tracking server", f"{problem}; {step} needs it and stopped before doing "
                                 "any work", "check the server and MLFLOW_TRACKING_URI, then retry the run")


EVALUATED_INPUT = {"eval_rm": "reward_model", "eval_policy": "policy"}
"""The input holding the model an evaluation stage measures: its metrics go to that logged model."""


class _TrackedRun:
    """The MLflow side of one stage task, written so that an outage costs no work.

    ``begin`` checks the tracking server: reachable, the run opens now with the config (also
    uploaded as ``config.json``, which proves the artifact store works) and the input datasets;
    unreachable, a ``require`` stage stops here and a ``defer`` stage goes on without MLflow.
    ``ensure_open`` (after the stage) waits for the server if needed and opens the run and
    writes what ``begin`` could not; ``finish`` / ``fail`` end it.

    Inputs are recorded as what they are: the base model and the models of upstream stages as
    model inputs (MLflow 3 logged models; the base is logged once as ``salmon-base``, see
    :func:`salmon.tracking.base_model_reference`), everything else as datasets."""

    def __init__(self, stage: str, task_key: str, tags: dict[str, str], *, base_source: str = "",
                 prompt_format: str = "") -> None:
        self.stage, self.task_key, self.tags = stage, task_key, tags
        self.base_source, self.prompt_format = base_source, prompt_format
        self.run_id: str | None = None
        self.base_reference = ""
        """The portable reference of the base model input (set when the run opens)."""
        self.model_ids: dict[str, str] = {}
        """Input name -> id of the logged model it is."""

    def begin(self, config: dict[str, Any], inputs: dict[str, ArtifactLike], digests: dict[str, str]) -> None:
        from salmon import tracking

        if TRACKING_POLICY.get(self.stage, "require") == "require":
            require_tracking(self.stage)  # fails here when the server is down
            problem = None
        else:
            problem = tracking.tracking_problem(timeout_s=_env_seconds("SALMON_TRACKING_CHECK_S", 5.0))
        if problem is not None:
            log(self.stage, f"MLflow {problem}: {self.stage} runs anyway; its tracking is written when it ends "
                            f"(waiting up to {_env_seconds('SALMON_TRACKING_WAIT_S', 600.0):.0f} s for the server)")
            return
        self._open(config, inputs, digests)

    def _open(self, config: dict[str, Any], inputs: dict[str, ArtifactLike], digests: dict[str, str]) -> None:
        import mlflow

        from salmon import tracking
        from salmon.core.errors import ServiceUnavailable

        self.run_id = tracking.start_stage_run(self.stage, self.task_key, self.tags)
        tracking.log_stage_config(config)
        try:
            mlflow.log_dict(config, "config.json")
        except Exception as e:  # any failure of the artifact store (S3 errors, HTTP 5xx from the proxy)
            if self.stage in ARTIFACT_STORE_REQUIRED:
                self.fail()
                raise ServiceUnavailable(
                    f"MLflow artifact store of run {self.run_id}",
                    f"refused the run's first artifact ({type(e).__name__}: {str(e)[:200]}); {self.stage} "
                    "logs its model there and stopped before training",
                    "check the artifact store (S3 endpoint, bucket, credentials), then retry") from None
            log(self.stage, f"MLflow artifact store refused config.json ({type(e).__name__}); continuing")
        for name, art in inputs.items():
            p = Path(art.path)
            model_id = None
            if name == "base_model":
                self.base_reference, model_id = tracking.base_model_reference(
                    self.base_source or str(p), p, digests[name], self.prompt_format)
            elif uri := art.metadata.get("model_uri"):
                model_id = tracking.logged_model_id(str(uri))
            if model_id:
                self.model_ids[name] = model_id
                tracking.log_model_input(model_id)
            else:
                tracking.log_dataset(name, p.as_uri() if p.is_absolute() else str(p), digests[name], "input",
                                     _count_lines(p))

    def ensure_open(self, config: dict[str, Any], inputs: dict[str, ArtifactLike], digests: dict[str, str]) -> str:
        from salmon import tracking
        from salmon.core.errors import ServiceUnavailable

        wait_s = _env_seconds("SALMON_TRACKING_WAIT_S", 600.0)
        problem = tracking.tracking_problem(attempts=1)
        if problem is not None:
            log(self.stage, f"MLflow {problem}: waiting up to {wait_s:.0f} s to write this stage's tracking")
            problem = tracking.wait_for_tracking(wait_s)
        if problem is not None:
            raise ServiceUnavailable(
                f"MLflow tracking server {os.environ.get('MLFLOW_TRACKING_URI', '')}",
                f"{problem} for {wait_s:.0f} s after {self.stage} finished; its outputs are complete on disk but "
                "not tracked", "retry the task once the server is back (training stages resume from their "
                "last checkpoint), or raise SALMON_TRACKING_WAIT_S")
        if self.run_id is None:
            self._open(config, inputs, digests)
        assert self.run_id is not None
        return self.run_id

    def finish(self) -> None:
        import mlflow

        mlflow.end_run("FINISHED")

    def fail(self) -> None:
        """End the run FAILED when it was opened; never hides the stage's own error."""
        if self.run_id is None:
            return
        import mlflow

        try:
            mlflow.end_run("FAILED")
        except Exception as e:
            log(self.stage, f"could not mark MLflow run {self.run_id} FAILED ({type(e).__name__})")


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

    entries = parse_source_spec(sources)
    if entries:
        return run_stage_task("pmp_data", plan=plan, values={"sources": entries, "output": pairs.path, "seed": seed},
                              outputs={"pairs": pairs})
    from salmon.core.io import write_text

    write_text(pairs.path, "")
    pairs.metadata.update(digest=artifact_digest(pairs.path), rows=0)
    log("pmp_data", "no pmp_sources: nothing to do (train_rm runs without its PMP phase)")
    return ""


def has_pmp_pairs(pmp_data: ArtifactLike) -> bool:
    """Whether the ``pmp_data`` task wrote pairs (and ``train_rm`` gets them as ``pmp_data``)."""
    p = Path(pmp_data.path)
    return p.is_file() and p.stat().st_size > 0


# ----------------------------------------------------------------------------- utility tasks

SAMPLER_MODES = ("none", "endpoint", "deploy")


def serve_sampler_task(mode: str, *, endpoint: str, base_model: str, adapter: str, run_id: str,
                       cluster: dict[str, Any], api_key_secret: str, api_client: Any = None) -> str:
    """The OpenAI-compatible server that ``sample`` and ``label`` use with the ``openai`` backend
    (and ``ppo`` / ``eval_policy`` with ``rollout_backend=openai``), as JSON ``{"endpoint",
    "served_model", "adapter_dir"}``: ``none`` -> ``{}``; ``endpoint`` -> the given URL; ``deploy``
    -> a vLLM Deployment + Service serving the base model with the SFT adapter as LoRA ``sft``
    and runtime LoRA loading on (``salmon.cluster.sampler``), removed by
    :func:`stop_sampler_task`."""
    if mode == "none":
        return "{}"
    if mode == "endpoint":
        return json.dumps({"endpoint": endpoint})
    from salmon.cluster.executor import ClusterSettings, copy_replacing
    from salmon.cluster.launch import kube_api_client, own_pod_owner
    from salmon.cluster.sampler import deploy_server, server_name
    from salmon.cluster.spec import OwnerRef, VLLMServerSpec, gpu_tolerations

    settings = ClusterSettings(**cluster)
    name = server_name(artifact_digest(base_model), artifact_digest(adapter))
    folder = Path(settings.mount_path) / "salmon-serve" / name
    for src, dst in ((base_model, folder / "base"), (adapter, folder / "sft")):
        if not dst.exists():
            copy_replacing(Path(src), dst)
    spec = VLLMServerSpec(
        name=name, namespace=settings.resolved_namespace(), model=str(folder / "base"), served_model_name="base",
        model_pvc=settings.pvc, model_mount=settings.mount_path, gpus=settings.gpus,
        gpu_resource=settings.gpu_resource, lora_modules={"sft": str(folder / "sft")},
        runtime_lora_updates=True,  # ppo / eval_policy with rollout_backend=openai load adapters at run time
        api_key_secret=api_key_secret,
        tolerations=gpu_tolerations(settings.gpus, settings.gpu_resource))
    api = api_client or kube_api_client()
    owner = own_pod_owner(api, spec.namespace, os.environ.get("KFP_POD_NAME"))
    if owner:  # deleting the run's Workflow garbage-collects the server too
        spec = spec.model_copy(update={"owner": OwnerRef(**owner)})
    url = deploy_server(spec, api_client=api, run_id=run_id, out=lambda line: log("sampler", line))
    # adapters written under adapter_dir (on the model cache, which the server mounts at the same
    # path) are loaded at run time by rollout_backend=openai
    return json.dumps({"endpoint": url, "served_model": "sft", "adapter_dir": str(folder / "served")})


def rollout_values(rollout_backend: str, sampler: str) -> dict[str, Any]:
    """Config values of ``ppo`` / ``eval_policy`` for the pipeline's ``rollout_backend``: with
    ``openai``, the run's server (``sampler``: :func:`serve_sampler_task`'s JSON) and the folder
    on the model cache where it reads the adapters; nothing with ``hf``."""
    if rollout_backend != "openai":
        return {}
    server = json.loads(sampler or "{}")
    values: dict[str, Any] = {"rollout_backend": "openai", "endpoint": server.get("endpoint")}
    if server.get("adapter_dir"):
        values["served_adapter_dir"] = server["adapter_dir"]
    return values


def stop_sampler_task(mode: str, *, run_id: str, namespace: str = "", api_client: Any = None,
                      keep: bool = False) -> list[str]:
    """Exit handler: remove the vLLM server this run deployed (nothing for other modes, or when
    ``keep``: a later stage still needs it)."""
    if mode != "deploy" or keep:
        if keep and mode == "deploy":
            log("sampler", "kept up for the rollouts of ppo and eval_policy (rollout_backend=openai)")
        return []
    from salmon.cluster.executor import ClusterSettings
    from salmon.cluster.launch import kube_api_client
    from salmon.cluster.sampler import delete_servers

    ns = ClusterSettings(namespace=namespace).resolved_namespace()
    return delete_servers(api_client=api_client or kube_api_client(), namespace=ns, run_id=run_id,
                          out=lambda line: log("sampler", line))


def _param_error(key: str, value: Any, message: str, fix: str) -> SalmonInputError:
    return SalmonInputError(f"pipeline parameter {key}={json.dumps(value, default=str)}", message, fix)


def _param_number(params: dict[str, Any], key: str, *, low: float, high: float | None = None,
                  low_open: bool = False, fix: str) -> None:
    """``params[key]``, when present, must be a number in [low, high] (low excluded with ``low_open``)."""
    if key not in params or params[key] is None:
        return
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _param_error(key, value, f"must be a number, not {type(value).__name__}", fix)
    if (value <= low if low_open else value < low) or (high is not None and value > high):
        if high is not None:
            what = f"must be between {low:g} and {high:g}"
        elif low_open:
            what = f"must be greater than {low:g}"
        else:
            what = f"must be {low:g} or more"
        raise _param_error(key, value, what, fix)


def _param_principle_set(key: str, name: str) -> Any:
    """Load the principle set a pipeline parameter names, naming the parameter on failure."""
    from salmon.core.principles import load_principle_set

    try:
        return load_principle_set(name)
    except SalmonInputError as e:
        raise SalmonInputError(f"pipeline parameter {key}='{name}': {e.source}", e.message, e.fix) from None


def _check_override_values(stage: str, values: dict[str, Any]) -> None:
    """Validate the values of ``stage_overrides[stage]`` against the stage config's fields (the
    required paths, which the pipeline fills in, get placeholders)."""
    from pydantic import ValidationError

    cls = CONFIGS[stage]
    placeholders = {name: "x" for name, f in cls.model_fields.items() if f.is_required()}
    try:
        cls.model_validate({**placeholders, **values})
    except ValidationError as e:
        for err in e.errors():
            if err["loc"] and err["loc"][0] in values:
                loc = ".".join(str(x) for x in err["loc"])
                raise SalmonInputError(f"pipeline parameter stage_overrides.{stage}.{loc}",
                                       err["msg"].removeprefix("Value error, "),
                                       f"see `salmon {stage} --help` for the keys and their ranges") from None


def validate_pipeline_params(params: dict[str, Any]) -> None:
    """Checks that need no model: run in the pipeline's first task (and by ``salmon pipeline
    run|submit`` and ``salmon demo`` before anything starts), before any GPU work.

    Every parameter present in ``params`` is checked; absent ones are not.

    Raises:
        SalmonInputError: naming the parameter, its value and what to give instead.
    """
    from salmon.core.config import PRESETS_DIR
    from salmon.core.io import non_finite

    for key, value in params.items():  # one policy for every number, nested ones included
        if non_finite(value):
            raise _param_error(key, value, f"holds a NaN or infinite number ({', '.join(non_finite(value, key))})",
                               "give a finite number")
    from salmon.cluster.names import check_name

    for key, kind in (("mlflow_secret", "secret"), ("s3_secret", "secret"), ("sampler_api_key_secret", "secret"),
                      ("model_cache_pvc", "persistent volume claim")):
        if key in params:
            check_name(params[key], kind, f"pipeline parameter {key}")

    sampler = params.get("sampler", "none")
    if sampler not in SAMPLER_MODES:
        raise SalmonInputError(f"pipeline parameter sampler='{sampler}'", "unknown sampler mode",
                               f"use one of {', '.join(SAMPLER_MODES)}")
    if sampler == "endpoint" and not str(params.get("sampler_endpoint", "")).startswith(("http://", "https://")):
        raise SalmonInputError("pipeline parameter sampler_endpoint",
                               f"'{params.get('sampler_endpoint', '')}' is not an http(s) URL",
                               "give the server's base URL, e.g. http://vllm.salmon.svc:8000/v1")
    if params.get("rollout_backend", "hf") not in ("hf", "openai"):
        raise SalmonInputError(f"pipeline parameter rollout_backend='{params['rollout_backend']}'",
                               "unknown rollout backend", "use hf or openai")
    for key in ("sample_backend", "label_backend", "rollout_backend"):
        if params.get(key) == "openai" and sampler == "none":
            raise SalmonInputError(f"pipeline parameter {key}='openai'", "needs a server",
                                   "set sampler=deploy (a vLLM server for this run) or sampler=endpoint "
                                   "with sampler_endpoint=URL")
    for key in ("sft_executor", "train_rm_executor", "ppo_executor"):
        if key in params:
            check_executor(key.removesuffix("_executor"), str(params[key]))
    backends = {"selfalign_backend": SelfAlignConfig, "sample_backend": SampleConfig, "label_backend": LabelConfig}
    for key, cls in backends.items():
        if key in params and params[key]:
            allowed = cls.model_fields["backend"].annotation.__args__  # a Literal
            if params[key] not in allowed:
                raise SalmonInputError(f"pipeline parameter {key}='{params[key]}'", "unknown backend",
                                       f"use one of {', '.join(allowed)}")

    # sizes, counts and gates
    _param_number(params, "rm_epochs", low=0, low_open=True, fix="e.g. rm_epochs=1; fractions are allowed")
    for key, fix in (("nano_prompts", "0 for none"), ("nano_pretrain_steps", "e.g. 300"),
                     ("ppo_steps", "0 keeps the preset's total_epochs"), ("eval_limit", "0 for all prompts"),
                     ("train_procs_per_node", "0 for one per GPU"), ("gpus", "0 for none"),
                     ("training_task_gpus", "0 when the training stages launch jobs")):
        _param_number(params, key, low=0, fix=fix)
    _param_number(params, "train_nodes", low=1, fix="1 or more pods per training job")
    rates = ("min_rm_accuracy", "min_rm_flip_rate", "min_policy_win_rate")
    for key in rates:
        _param_number(params, key, low=0, high=1, fix="a share, e.g. 0.8; 0 turns the gate off")
    _param_number(params, "max_policy_kl", low=0, fix="nats per response, e.g. 5.0")
    for key in params:  # any other gate
        if key.startswith(("min_", "max_")) and key not in (*rates, "max_policy_kl"):
            _param_number(params, key, low=0, high=1e6, fix="a non-negative number")

    # where the model, the presets and the prompts come from
    if "base_model_uri" in params:
        uri = str(params["base_model_uri"])
        from salmon.tracking import REGISTRY_URI

        registered = uri.startswith("models:/") and REGISTRY_URI.match(uri)
        if not uri or ("://" in uri and not uri.startswith("s3://")) or (
                uri.startswith(("models:/", "runs:/")) and not registered):
            raise _param_error("base_model_uri", uri, "not a supported model URI",
                               f"give 'nano', {BASE_NAMES}, a model folder (a PVC path), an s3:// prefix or "
                               "models:/<name>/<version> (or @<alias>)")
        if uri.startswith("s3://"):
            from salmon.storage import split_s3_uri

            split_s3_uri(uri.rstrip("/") + "/x")
    preset = params.get("preset")
    if preset and not (PRESETS_DIR / str(preset)).is_dir():
        known = sorted(p.name for p in PRESETS_DIR.iterdir() if p.is_dir())
        raise _param_error("preset", preset, "no such preset",
                           f"use one of {', '.join(known)}, or '' for the method's defaults")
    for uri in str(params.get("prompt_sources") or "").split(","):
        uri = uri.strip()
        if uri and "://" in uri and not uri.startswith("s3://"):
            raise _param_error("prompt_sources", params["prompt_sources"], f"'{uri}' is not a local path or s3:// URI",
                               "give comma-separated local paths or s3://bucket/key URIs")
        if uri.startswith("s3://"):
            from salmon.storage import split_s3_uri

            split_s3_uri(uri)

    overrides = params.get("stage_overrides") or {}
    if not isinstance(overrides, dict) or any(s not in CONFIGS for s in overrides):
        raise SalmonInputError("pipeline parameter stage_overrides",
                               f"must map stage names ({', '.join(CONFIGS)}) to config keys",
                               'e.g. {"ppo": {"kl_coef": 0.02}}')
    for stage, values in overrides.items():
        if not isinstance(values, dict):
            raise SalmonInputError(f"pipeline parameter stage_overrides.{stage}", "must be a mapping of config keys",
                                   'e.g. {"ppo": {"kl_coef": 0.02}}')
        fields = CONFIGS[stage].model_fields
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise SalmonInputError(f"pipeline parameter stage_overrides.{stage}", f"unknown keys {unknown}",
                                   f"see `salmon {stage} --help` for the keys")
        _check_override_values(stage, values)

    pmp = str(params.get("pmp_sources") or "")
    if pmp.strip():
        from salmon.core.pmp import parse_source_spec
        from salmon.storage import split_s3_uri

        try:
            for entry in parse_source_spec(pmp):
                if entry["uri"].startswith("s3://"):
                    split_s3_uri(entry["uri"])
        except SalmonInputError as e:
            raise _param_error("pmp_sources", pmp, f"{e.source}: {e.message}", e.fix or "") from None
        mode = _stage_value("train_rm", preset or None, dict(overrides.get("train_rm", {})), "deepspeed")
        if mode != "off":
            raise _param_error("pmp_sources", pmp, f"train_rm trains with deepspeed={mode}, and its PMP phase "
                               "runs single-process only", "leave pmp_sources empty, or train the reward model "
                               'without DeepSpeed: stage_overrides {"train_rm": {"deepspeed": "off"}}')

    # principle sets and the ids chosen from them (as plan_task resolves them)
    for key in ("selfalign_rules", "label_principles", "rl_principles"):
        if params.get(key):
            _param_principle_set(key, str(params[key]))
    ids = params.get("rl_principle_ids")
    if ids:
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise _param_error("rl_principle_ids", ids, "must be a list of principle ids", "e.g. [concise]")
        ppo = dict(overrides.get("ppo", {}))
        if params.get("rl_principles"):
            ppo.setdefault("rl_principles", params["rl_principles"])
        name = str(_stage_value("ppo", preset or None, ppo, "rl_principles"))
        pset = _param_principle_set("rl_principle_ids", name)
        try:
            pset.subset(ids)
        except SalmonInputError as e:
            raise SalmonInputError(f"pipeline parameter rl_principle_ids: {e.source}", e.message, e.fix) from None
    spec = params.get("policy_gate_principles")
    if spec:
        name, _, chosen = str(spec).partition(":")
        pset = _param_principle_set("policy_gate_principles", name)
        try:
            pset.subset([i.strip() for i in chosen.split(",") if i.strip()] if chosen else None)
        except SalmonInputError as e:
            raise SalmonInputError(f"pipeline parameter policy_gate_principles: {e.source}", e.message,
                                   e.fix) from None
        gate = params.get("min_policy_win_rate")
        measured = _stage_value("eval_policy", preset or None, dict(overrides.get("eval_policy", {})),
                                "principle_sets")
        if gate and spec not in measured:
            raise _param_error("policy_gate_principles", spec, "eval_policy does not score under it, so the "
                               "win-rate gate could never pass",
                               f"use one of eval_policy's principle_sets ({', '.join(map(str, measured))}), or "
                               "min_policy_win_rate=0")


def base_model_task(uri: str, out_dir: str, *, nano_pretrain_steps: int = 300, seed: int = 0) -> dict[str, Any]:
    """Materialise the base model into ``out_dir``: ``nano`` builds the nano model; a packaged
    model (``smollm2``) is prepared once into the model cache and copied; a local folder is
    copied; ``s3://bucket/prefix`` is downloaded (boto3); ``models:/<name>/<version>`` (or
    ``@<alias>``) is the Hugging Face folder in that registered version's artifacts. Returns a
    summary."""
    import shutil

    from salmon.core.io import atomic_dir

    if uri == "nano":
        from salmon.nano.model import NanoModelSpec, build_nano_model

        info = build_nano_model(out_dir, NanoModelSpec(seed=seed, pretrain_steps=nano_pretrain_steps),
                                log=lambda m: log("base_model", m))
        return {"source": "nano", **{k: info[k] for k in ("parameters", "vocab_size", "pretrain_loss_last")}}
    if uri.startswith("s3://"):
        from salmon.storage import download_prefix

        with atomic_dir(out_dir) as tmp:
            n = download_prefix(uri, tmp)
        return {"source": uri, "files": n}
    if uri.startswith("models:/"):
        from salmon.tracking import download_model_folder

        with atomic_dir(out_dir) as tmp:
            n = download_model_folder(uri, tmp)
        return {"source": uri, "files": n}
    if is_packaged(uri):  # prepared once into the model cache, then copied like a folder
        from salmon.base_models import prepare

        prepare(uri, out_dir, log=lambda m: log("base_model", m))
        return {"source": uri, "files": sum(1 for p in Path(out_dir).rglob("*") if p.is_file())}
    src = Path(uri)
    if not (src / "config.json").is_file():
        raise SalmonInputError(f"base model '{uri}'", "not a Hugging Face model folder (no config.json)",
                               f"give 'nano', {BASE_NAMES}, a local model folder, an s3:// prefix or a models:/ "
                               "URI")
    with atomic_dir(out_dir) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    return {"source": uri, "files": sum(1 for p in Path(out_dir).rglob("*") if p.is_file())}


def _gate(checks: list[tuple[str, float | None, float | None, str]]) -> tuple[bool, list[str]]:
    """``(name, value, threshold, 'min'|'max')`` checks -> (all passed, reasons for failures)."""
    failures = []
    for name, value, threshold, kind in checks:
        if threshold is None:
            continue
        if value is None:
            failures.append(f"{name} missing (threshold {threshold})")
        elif (kind == "min" and value < threshold) or (kind == "max" and value > threshold):
            op = "<" if kind == "min" else ">"
            failures.append(f"{name} {value:.4g} {op} {threshold:.4g}")
    return not failures, failures


def policy_gate_metric(eval_metrics: dict[str, Any], principle_spec: str) -> float | None:
    """The policy's win rate over its baseline under ``principle_spec`` (eval_policy's key)."""
    value = eval_metrics.get(f"win_rate/{principle_spec}")
    return None if value is None else float(value)


def register_task(
    results: dict[str, str],
    *,
    kfp_run_id: str,
    min_rm_accuracy: float | None,
    min_rm_flip_rate: float | None,
    min_policy_win_rate: float | None,
    max_policy_kl: float | None,
    policy_gate_principles: str,
) -> dict[str, Any]:
    """Register the SFT adapter, the RM and the policy; alias ``candidate`` on every new version;
    move ``champion`` only where the evaluation gates pass. ``results`` maps stage names to the
    JSON returned by :func:`run_stage_task`."""
    from salmon import tracking

    require_tracking("register")
    # one run id across the lineage: the local runner's id where it set one (the stage runs carry it)
    kfp_run_id = os.environ.get(tracking.KFP_RUN_ENV) or kfp_run_id
    parsed = {k: json.loads(v) for k, v in results.items() if v}  # "": a task with nothing to do (pmp_data)
    eval_rm = parsed["eval_rm"]["metrics"]
    eval_policy = parsed["eval_policy"]["metrics"]
    rm_checks = [("eval_rm accuracy", eval_rm.get("accuracy"), min_rm_accuracy, "min"),
                 ("eval_rm flip_rate", eval_rm.get("flip_rate"), min_rm_flip_rate, "min")]
    pol_checks = [(f"eval_policy win_rate[{policy_gate_principles}]",
                   policy_gate_metric(eval_policy, policy_gate_principles), min_policy_win_rate, "min"),
                  ("eval_policy kl_to_baseline", eval_policy.get("kl_to_baseline"), max_policy_kl, "max")]
    rm_ok, rm_fail = _gate(rm_checks)
    pol_ok, pol_fail = _gate(pol_checks)
    gates = {"train_rm": (rm_ok, rm_fail), "ppo": (rm_ok and pol_ok, rm_fail + pol_fail),
             "sft": (rm_ok and pol_ok, rm_fail + pol_fail)}
    sha = git_sha()
    summary: dict[str, Any] = {
        "models": {},
        "stages": {k: {"mlflow_run_id": v["mlflow_run_id"], "metrics": v["metrics"]} for k, v in parsed.items()}}
    for stage in TRAINING_STAGES:
        res = parsed[stage]
        name = tracking.MODEL_NAMES[stage]
        tags = {"kfp.run_id": kfp_run_id, "salmon.git_sha": sha, "salmon.stage": stage,
                "salmon.source_run": res["mlflow_run_id"], "salmon.base_model": res.get("base_model", ""),
                "salmon.base_model_digest": res.get("base_model_digest", "")}
        for upstream in MODEL_LINEAGE[stage]:  # the principles of every stage the model descends from
            tags.update(parsed.get(upstream, {}).get("principles", {}))
            if upstream in parsed:
                tags[f"salmon.run.{upstream}"] = parsed[upstream]["mlflow_run_id"]
        for upstream in ("eval_rm", "eval_policy"):
            tags[f"salmon.{upstream}_run"] = parsed[upstream]["mlflow_run_id"]
        version = tracking.register_model(res["model_uri"], name, tags)
        audit = {"by": "register", "kfp_run_id": kfp_run_id, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tracking.set_alias(name, "candidate", version, audit)
        passed, reasons = gates[stage]
        if passed:
            tracking.set_alias(name, "champion", version, audit)
            log("register", f"{name} v{version}: candidate and champion")
        else:
            log("register", f"{name} v{version}: candidate; champion NOT moved ({'; '.join(reasons)})")
        tracking.tag_version(name, version, {"salmon.gate.passed": str(passed).lower(),
                                             "salmon.gate.reasons": "; ".join(reasons) or "all gates passed"})
        checks = rm_checks if stage == "train_rm" else rm_checks + pol_checks
        _describe(name, version, stage, res, parsed, tags, checks, passed, reasons, kfp_run_id, sha)
        summary["models"][name] = {"version": version, "champion": passed, "reasons": reasons,
                                   "uri": f"models:/{name}/{version}"}
    return summary


def _describe(name: str, version: str, stage: str, res: dict[str, Any], parsed: dict[str, Any],
              tags: dict[str, str], checks: list[tuple[str, float | None, float | None, str]], passed: bool,
              reasons: list[str], kfp_run_id: str, sha: str) -> None:
    """Write the model card into the version's description and a one-line summary into the
    registered model's."""
    from salmon import tracking
    from salmon.core.model_card import WHAT, DatasetLine, GateFigure, model_card

    datasets = [DatasetLine(up, n, d, r) for up in MODEL_LINEAGE[stage] if up != stage and up in parsed
                for n, d, r in tracking.run_datasets(parsed[up]["mlflow_run_id"])]
    card = model_card(name=name, version=version, stage=stage, kfp_run_id=kfp_run_id, git_sha=sha,
                      base_source=res.get("base_model", ""), base_reference=res.get("base_model_reference", ""),
                      base_digest=res.get("base_model_digest", ""), tags=tags, datasets=datasets,
                      gates=[GateFigure(*c) for c in checks], champion=passed, reasons=reasons)
    tracking.describe(name, version, card)
    tracking.describe(name, None, f"salmon: the {WHAT[stage]}. Each version's description is its model card; "
                                  "`champion` is the version that passed the evaluation gates.")


def promote(name: str, version: str, alias: str = "champion", *, reason: str, user: str | None = None) -> None:
    """Move ``name@alias`` to ``version`` by hand, with an audit tag (who, when, why)."""
    from salmon import tracking

    if not reason.strip():
        raise SalmonInputError("--reason", "empty", "say why the version is promoted by hand")
    who = user or os.environ.get("USER") or "unknown"
    tracking.set_alias(name, alias, version, {
        "by": f"manual:{who}", "reason": reason,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
