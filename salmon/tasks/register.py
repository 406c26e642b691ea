"""The pipeline's last task: register the SFT adapter, the reward model and the policy in
MLflow's model registry, each version with its model card; move ``champion`` where the gates pass."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from salmon.core.errors import SalmonInputError
from salmon.core.stages import TRAINING_STAGES
from salmon.stages.common import log
from salmon.tasks.common import MODEL_LINEAGE, git_sha
from salmon.tasks.tracked import require_tracking


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
    from salmon.tracking import models as tracking_models

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
        name = tracking_models.MODEL_NAMES[stage]
        tags = {"kfp.run_id": kfp_run_id, "salmon.git_sha": sha, "salmon.stage": stage,
                "salmon.source_run": res["mlflow_run_id"], "salmon.base_model": res.get("base_model", ""),
                "salmon.base_model_digest": res.get("base_model_digest", "")}
        for upstream in MODEL_LINEAGE[stage]:  # the principles of every stage the model descends from
            tags.update(parsed.get(upstream, {}).get("principles", {}))
            if upstream in parsed:
                tags[f"salmon.run.{upstream}"] = parsed[upstream]["mlflow_run_id"]
        for upstream in ("eval_rm", "eval_policy"):
            tags[f"salmon.{upstream}_run"] = parsed[upstream]["mlflow_run_id"]
        version = tracking_models.register_model(res["model_uri"], name, tags)
        audit = {"by": "register", "kfp_run_id": kfp_run_id, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tracking_models.set_alias(name, "candidate", version, audit)
        passed, reasons = gates[stage]
        if passed:
            tracking_models.set_alias(name, "champion", version, audit)
            log("register", f"{name} v{version}: candidate and champion")
        else:
            log("register", f"{name} v{version}: candidate; champion NOT moved ({'; '.join(reasons)})")
        tracking_models.tag_version(name, version, {"salmon.gate.passed": str(passed).lower(),
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
    from salmon.tracking import models as tracking_models

    datasets = [DatasetLine(up, n, d, r) for up in MODEL_LINEAGE[stage] if up != stage and up in parsed
                for n, d, r in tracking.run_datasets(parsed[up]["mlflow_run_id"])]
    card = model_card(name=name, version=version, stage=stage, kfp_run_id=kfp_run_id, git_sha=sha,
                      base_source=res.get("base_model", ""), base_reference=res.get("base_model_reference", ""),
                      base_digest=res.get("base_model_digest", ""), tags=tags, datasets=datasets,
                      gates=[GateFigure(*c) for c in checks], champion=passed, reasons=reasons)
    tracking_models.describe(name, version, card)
    tracking_models.describe(name, None, f"salmon: the {WHAT[stage]}. Each version's description is its model card; "
                                  "`champion` is the version that passed the evaluation gates.")


def promote(name: str, version: str, alias: str = "champion", *, reason: str, user: str | None = None) -> None:
    """Move ``name@alias`` to ``version`` by hand, with an audit tag (who, when, why)."""
    from salmon.tracking import models as tracking_models

    if not reason.strip():
        raise SalmonInputError("--reason", "empty", "say why the version is promoted by hand")
    who = user or os.environ.get("USER") or "unknown"
    tracking_models.set_alias(name, alias, version, {
        "by": f"manual:{who}", "reason": reason,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
