"""The pipeline's first task: check the parameters, resolve the principle sets every stage reads
and give each stage its plan.

A stage's plan (JSON: the preset, its config overrides, its principle refs) changes only when
something that stage reads changes, which is what keeps the pipeline's caching exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from salmon.core.digest import digest_file
from salmon.core.errors import SalmonInputError
from salmon.core.stages import TRAINING_STAGES
from salmon.stages.common import log
from salmon.tasks.common import CONFIGS, FILE_FIELDS, PRINCIPLE_FIELDS, REMOTE_EXECUTORS, StagePlan, stage_value
from salmon.tasks.params import PipelineParams, validate_pipeline_params
from salmon.tasks.tracked import require_tracking


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
            value = stage_value(stage, preset, overrides, field)
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
    checked = validate_pipeline_params({**params, "stage_overrides": stage_overrides})
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
    for stage, values in stage_knobs(checked).items():  # they win over stage_overrides
        overrides[stage].update(values)
    refs = principle_refs(preset or None, overrides, register=register)
    plans = {}
    for stage in CONFIGS:
        plan = StagePlan(preset=preset, principles=refs.get(stage, {}), overrides={
            k: v for k, v in overrides[stage].items() if k not in PRINCIPLE_FIELDS.get(stage, ())})
        if params.get(f"{stage}_executor") in REMOTE_EXECUTORS:
            # only remote training stages carry the cluster settings: a local stage's cache key
            # does not change with them
            plan.cluster = dict(cluster or {})
        plans[stage] = plan.to_json()
    for stage, r in refs.items():
        names = ", ".join(f"{n} {e['digest'][7:19]}" for f in r.values() for n, e in f["sets"].items())
        log("plan", f"{stage}: {names}")
    return plans


def stage_knobs(params: PipelineParams) -> dict[str, dict[str, Any]]:
    """The stage config values that pipeline parameters set, among those given: ``rl_principle_ids``
    and ``ppo_steps`` (``total_steps``) for ppo, ``rm_epochs`` (``epochs``) for train_rm,
    ``eval_limit`` (``limit``) for eval_policy; 0 and [] keep the stage's own value."""
    given = params.model_fields_set
    knobs: dict[str, dict[str, Any]] = {"ppo": {}, "train_rm": {}, "eval_policy": {}}
    if "rl_principle_ids" in given and params.rl_principle_ids:
        knobs["ppo"]["rl_principle_ids"] = list(params.rl_principle_ids)
    if "ppo_steps" in given and params.ppo_steps > 0:
        knobs["ppo"]["total_steps"] = params.ppo_steps
    if "rm_epochs" in given:
        knobs["train_rm"]["epochs"] = params.rm_epochs
    if "eval_limit" in given and params.eval_limit > 0:
        knobs["eval_policy"]["limit"] = params.eval_limit
    return knobs


def check_refs(stage: str, refs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
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
