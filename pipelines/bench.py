"""``salmon bench pipeline``: what running the nano pipeline under ``kfp.local`` costs over calling
the same stage recipes directly.

- baseline, **direct**: one Python process calls, in pipeline order, ``plan_task`` (without
  registering the principle sets), ``base_model_task`` and every stage's ``run(cfg)`` with the
  config each pipeline task would resolve (preset -> plan overrides -> principle values -> the
  values the component passes; :func:`stage_config` is ``salmon.tasks.run.resolve_stage_config``). No
  kfp, no MLflow, no caching, no digests; ``register`` (which only writes to the MLflow model
  registry) and the no-op sampler tasks are not run.
- salmon, **kfp.local**: :func:`pipelines.local.run_local` with the same parameters and caching
  off: every task a subprocess (imports paid per task), MLflow runs, datasets, digests and the
  model registry in an embedded sqlite store, the parent run.

The figure compared is the total wall time; the goal is kfp.local <= 1.2x direct. Per stage,
the recipe's own seconds inside the kfp task (the ``seconds`` metric every task records) are
reported next to the direct side's, and the rest of the kfp run (process start, imports,
MLflow, kfp.local's bookkeeping, ``plan``, ``register``) as overhead. The two sides run back to
back (kfp.local first), ``repeats`` times alternating; the medians are compared.

This module lives in ``pipelines`` because it imports kfp; the salmon package never does.
"""

from __future__ import annotations

import importlib
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from salmon.bench.common import BenchResult, Comparison
from salmon.core.stages import STAGES as CATALOGUE

TINY_PARAMS: dict[str, Any] = {
    # the quick variant: every task runs, on the smallest sizes that still produce every output
    "nano_prompts": 64,
    "nano_pretrain_steps": 10,
    "rm_epochs": 0.25,
    "ppo_steps": 1,
    "eval_limit": 8,
    "stage_overrides": {"ppo": {"rollout_batch_size": 4, "step_batch_size": 4}, "eval_rm": {"passes": 1}},
}
STAGES = tuple(CATALOGUE)
"""The stages the pipeline runs, in order (the catalogue's)."""


def pipeline_values(params: dict[str, Any]) -> dict[str, Any]:
    """Every pipeline parameter: the pipeline's defaults updated with ``params``."""
    from pipelines.cli import pipeline_parameters

    values = {k: p.default for k, p in pipeline_parameters().items()}
    values.update(params)
    return values


def stage_config(stage: str, plan: str, values: dict[str, Any]) -> Any:
    """The config ``run_stage_task`` resolves for ``stage`` (the same function resolves it)."""
    from salmon.tasks.run import resolve_stage_config

    return resolve_stage_config(stage, plan, values)[0]


def run_direct(out: Path, params: dict[str, Any]) -> dict[str, float]:
    """The pipeline's stages called in this process; returns seconds per stage (and ``total``)."""
    from salmon.tasks.infra import base_model_task
    from salmon.tasks.plan import plan_task

    p = pipeline_values(params)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()
    plans = plan_task(
        preset=p["preset"], stage_overrides=p["stage_overrides"], selfalign_rules=p["selfalign_rules"],
        label_principles=p["label_principles"], rl_principles=p["rl_principles"],
        params={"selfalign_backend": p["selfalign_backend"], "sample_backend": p["sample_backend"],
                "label_backend": p["label_backend"], "sft_executor": "local", "train_rm_executor": "local",
                "ppo_executor": "local", "sampler": p["sampler"], "sampler_endpoint": p["sampler_endpoint"],
                **{k: p[k] for k in ("rl_principle_ids", "ppo_steps", "rm_epochs", "eval_limit")}},
        register=False)
    seconds["plan"] = time.perf_counter() - t_all
    seed = int(p["seed"])
    t0 = time.perf_counter()
    base_model_task(p["base_model_uri"], str(out / "base_model"), nano_pretrain_steps=p["nano_pretrain_steps"],
                    seed=seed)
    seconds["base_model"] = time.perf_counter() - t0
    from salmon.core.pmp import parse_source_spec
    from salmon.tasks.wiring import stage_values

    pmp_sources = parse_source_spec(p["pmp_sources"])
    artifacts = {name: str(out / name) for name in (
        "base_model", "prompts", "sft_data", "sft", "pairs", "judgements", "instances", "reward_model", "policy")}
    if pmp_sources:
        artifacts["pmp_data"] = str(out / "pmp.jsonl")
    backends = {"selfalign": p["selfalign_backend"], "sample": p["sample_backend"], "label": p["label_backend"]}
    values: dict[str, dict[str, Any] | None] = {  # what each component passes (components/stages.py)
        stage: stage_values(stage, {**artifacts, "evaluation": str(out / stage)}, seed=seed,
                            backend=backends.get(stage, "")) for stage in STAGES if stage != "pmp_data"}
    values["prompts"] = {**(values["prompts"] or {}), "sources": [], "nano_prompts": p["nano_prompts"] or None}
    # without pmp_sources the pmp_data task only writes an empty file: nothing to run here
    values["pmp_data"] = ({**stage_values("pmp_data", {"pairs": artifacts["pmp_data"]}, seed=seed),
                           "sources": pmp_sources} if pmp_sources else None)
    for stage in STAGES:
        given = values[stage]
        if given is None:
            continue
        t0 = time.perf_counter()
        cfg = stage_config(stage, plans[stage], given)
        importlib.import_module(f"salmon.stages.{stage}").run(cfg)
        seconds[stage] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_all
    return seconds


def run_kfp(out: Path, params: dict[str, Any]) -> dict[str, float]:
    """The pipeline under kfp.local, caching off; total wall time and each stage's recipe seconds."""
    from pipelines.local import run_local

    t0 = time.perf_counter()
    result = run_local(out, params, cache=False, experiment="salmon-bench")
    seconds = {"total": time.perf_counter() - t0}
    for stage, info in result.summary.get("stages", {}).items():
        if info.get("metrics", {}).get("seconds") is not None:
            seconds[stage] = float(info["metrics"]["seconds"])
    return seconds


def run(quick: bool, work: Path) -> BenchResult:
    from pipelines.cli import QUICK_PARAMS

    params = TINY_PARAMS if quick else QUICK_PARAMS
    repeats = 1
    runs: dict[str, list[dict[str, float]]] = {"kfp": [], "direct": []}
    for i in range(repeats):
        for side, fn in (("kfp", run_kfp), ("direct", run_direct)):
            out = work / f"{side}-{i}"
            shutil.rmtree(out, ignore_errors=True)
            runs[side].append(fn(out, params))

    def med(side: str, key: str) -> float:
        vals = [r[key] for r in runs[side] if key in r]
        return statistics.median(vals) if vals else 0.0

    kfp_total, direct_total = med("kfp", "total"), med("direct", "total")
    in_stages = sum(med("kfp", s) for s in STAGES)
    result = BenchResult(name="pipeline", baseline="the stage recipes called directly in one process")
    result.setup = {"params": params, "repeats": repeats, "kfp": "kfp.local SubprocessRunner(use_venv=False), "
                    "caching off, MLflow on an embedded sqlite store", "direct": "plan_task + base_model_task + "
                    "each stage's run(cfg), no MLflow, no register"}
    result.comparisons = [
        Comparison("nano pipeline wall time", "s", direct_total, kfp_total, better="lower", goal=1 / 1.2,
                   note="goal: kfp.local <= 1.2x direct"),
    ]
    result.figures = {"kfp.total_s": round(kfp_total, 2), "direct.total_s": round(direct_total, 2),
                      "kfp.overhead_s": round(kfp_total - direct_total, 2),
                      "kfp.outside_stage_recipes_s": round(kfp_total - in_stages, 2),
                      "direct.plan_s": round(med("direct", "plan"), 2),
                      "direct.base_model_s": round(med("direct", "base_model"), 2)}
    for s in STAGES:
        if not any(s in r for r in runs["direct"]):  # a stage with nothing to do (pmp_data without sources)
            continue
        result.figures[f"kfp.{s}_s"] = round(med("kfp", s), 2)
        result.figures[f"direct.{s}_s"] = round(med("direct", s), 2)
    result.notes = [
        "kfp.<stage>_s is the stage's own seconds inside its task (recipe + MLflow logging of inputs; "
        "rounded to 0.1 s by the task); outside_stage_recipes_s is everything else of the kfp run "
        "(process start and imports per task, plan, base_model, register, MLflow, kfp.local).",
    ]
    return result
