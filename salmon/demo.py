"""``salmon demo``: every stage that exists, end to end in the nano world, on CPU.

The run builds the nano model, generates prompts, writes SFT data with ``selfalign`` (its nano
fallback: the answers come from the nano response generator, since a 0.9 M model cannot follow
in-context rules), engraves them into an SFT adapter (``sft``), samples response pairs, labels
them with the exact ``rules`` judge (and a few with the nano model itself through the ``hf``
judge, to exercise that path), aggregates RM instances, trains the principle-following reward
model, evaluates it on held-out prompts, runs PPO from the SFT adapter under one RL-time
principle (``--rl-principle``, default ``concise``) and compares the PPO policy with the SFT
policy on held-out prompts (``eval_policy``). ``<out>/summary.json`` lists, per stage, its
outputs (paths) and metrics; ``headline`` holds the numbers a person looks at first.

Stages reuse finished outputs: the nano model is rebuilt only when its folder is missing, and
``sft``, ``train_rm`` and ``ppo`` resume from their checkpoints. Delete ``<out>`` for a clean run.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salmon.core.config import (
    AggregateConfig,
    EvalPolicyConfig,
    EvalRMConfig,
    LabelConfig,
    PPOConfig,
    SampleConfig,
    SelfAlignConfig,
    SFTConfig,
    TrainRMConfig,
    build_config,
)
from salmon.core.io import read_jsonl, write_json, write_jsonl
from salmon.core.records import Judgement
from salmon.stages.common import StageResult, log


@dataclass(frozen=True)
class DemoOptions:
    """What ``salmon demo`` runs."""

    out: str
    prompts: int = 4000
    seed: int = 0
    quick: bool = False
    hf_judge_pairs: int = 32
    rm_epochs: float | None = None
    """Passes of train_rm over the instances; None keeps the nano preset's value."""
    rl_principle: str = "concise"
    """The nano principle PPO is steered by at RL time."""


def before_after_table(metrics: dict[str, Any], before: str, after: str) -> str:
    """A plain-text table of eval_policy's per-model metrics."""
    rows = [(k, metrics[before][k], metrics[after][k]) for k in metrics[after]]
    width = max(len(k) for k, _, _ in rows)
    lines = [f"{'metric':<{width}}  {before:>10}  {after:>12}"]
    for k, b, a in rows:
        fb = "n/a" if b is None else f"{b:.3f}"
        fa = "n/a" if a is None else f"{a:.3f}"
        lines.append(f"{k:<{width}}  {fb:>10}  {fa:>12}")
    lines.append(f"{'kl_to_baseline':<{width}}  {'':>10}  {metrics['kl_to_baseline']:>12.3f}")
    return "\n".join(lines)


def _agreement(rules: list[Judgement], hf: list[Judgement]) -> dict[str, float | int]:
    """How often the hf judge's label equals the rules judge's, among pairs the rules decide."""
    truth = {(j.pair_id, j.principle_id): j.label for j in rules}
    decided = [(j.label, truth[(j.pair_id, j.principle_id)]) for j in hf
               if truth.get((j.pair_id, j.principle_id), 0) != 0]
    agree = sum(a == b for a, b in decided)
    consistent = sum(j.consistent for j in hf)
    return {"hf_rules_agreement": round(agree / len(decided), 4) if decided else float("nan"),
            "hf_decided_by_rules": len(decided),
            "hf_position_consistent_rate": round(consistent / max(1, len(hf)), 4)}


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    """Run the nano chain into ``opts.out``; returns (and writes) the summary."""
    from salmon.core.principles import load_principle_set
    from salmon.nano.model import NanoModelSpec, build_nano_model
    from salmon.nano.world import make_prompts
    from salmon.stages import aggregate, eval_policy, eval_rm, label, ppo, sample, selfalign, sft, train_rm

    load_principle_set("nano").get(opts.rl_principle)  # a bad --rl-principle fails before any work
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    n_prompts = min(opts.prompts, 160) if opts.quick else opts.prompts
    stages: dict[str, Any] = {}
    started = time.monotonic()

    def record(name: str, fn: Callable[[], StageResult]) -> StageResult:
        t0 = time.monotonic()
        result = fn()
        result.metrics.setdefault("seconds", round(time.monotonic() - t0, 1))
        stages[name] = result.as_dict()
        return result

    model_dir = out / "nano_model"

    def build() -> StageResult:
        spec = NanoModelSpec(seed=opts.seed, pretrain_steps=40 if opts.quick else 300)
        if (model_dir / "nano_model.json").is_file():
            log("nano", f"reusing {model_dir}")
            info = json.loads((model_dir / "nano_model.json").read_text())
        else:
            info = build_nano_model(model_dir, spec, log=lambda m: log("nano", m))
        return StageResult("nano_model", outputs={"model": str(model_dir)},
                           metrics={k: info[k] for k in ("parameters", "vocab_size",
                                                         "pretrain_loss_last") if k in info})

    record("nano_model", build)

    prompts_path = out / "prompts.jsonl"

    def prompts() -> StageResult:
        n = write_jsonl(prompts_path, make_prompts(n_prompts, opts.seed))
        log("prompts", f"wrote {n} nano prompts to {prompts_path}")
        return StageResult("prompts", outputs={"prompts": str(prompts_path)}, metrics={"prompts": n})

    record("prompts", prompts)
    sft_data = out / "sft_data.jsonl"
    record("selfalign", lambda: selfalign.run(build_config(
        SelfAlignConfig, stage="selfalign", preset="nano",
        values={"prompts": str(prompts_path), "output": str(sft_data), "seed": opts.seed + 5})))
    sft_dir = out / "sft"
    record("sft", lambda: sft.run(build_config(
        SFTConfig, stage="sft", preset="nano",
        values={"data": str(sft_data), "base_model": str(model_dir), "output_dir": str(sft_dir)})))
    pairs_path = out / "pairs.jsonl"
    record("sample", lambda: sample.run(build_config(
        SampleConfig, stage="sample", preset="nano",
        values={"prompts": str(prompts_path), "output": str(pairs_path),
                "seeds": (opts.seed + 1, opts.seed + 2)})))
    judgements_path = out / "judgements.jsonl"
    record("label", lambda: label.run(build_config(
        LabelConfig, stage="label", preset="nano",
        values={"pairs": str(pairs_path), "output": str(judgements_path)})))
    if opts.hf_judge_pairs:
        hf_path = out / "judgements_hf.jsonl"
        hf = record("label_hf", lambda: label.run(build_config(
            LabelConfig, stage="label", preset="nano",
            values={"pairs": str(pairs_path), "output": str(hf_path), "backend": "hf",
                    "model": str(model_dir), "limit": opts.hf_judge_pairs, "batch_size": 8})))
        hf.metrics.update(_agreement(read_jsonl(judgements_path, Judgement),
                                     read_jsonl(hf_path, Judgement)))
        stages["label_hf"] = hf.as_dict()
    instances_path = out / "instances.jsonl"
    record("aggregate", lambda: aggregate.run(build_config(
        AggregateConfig, stage="aggregate", preset="nano",
        values={"pairs": str(pairs_path), "judgements": str(judgements_path),
                "output": str(instances_path)})))
    rm_dir = out / "train_rm"
    rm_values: dict[str, Any] = {"instances": str(instances_path), "base_model": str(model_dir),
                                 "output_dir": str(rm_dir)}
    if opts.rm_epochs is not None:
        rm_values["epochs"] = opts.rm_epochs
    elif opts.quick:
        rm_values["epochs"] = 0.5
    record("train_rm", lambda: train_rm.run(build_config(
        TrainRMConfig, stage="train_rm", preset="nano", values=rm_values)))
    record("eval_rm", lambda: eval_rm.run(build_config(
        EvalRMConfig, stage="eval_rm", preset="nano",
        values={"model": str(rm_dir / "model"), "pairs": str(pairs_path),
                "judgements": str(judgements_path), "output_dir": str(out / "eval_rm")})))

    ppo_dir = out / f"ppo_{opts.rl_principle}"  # one run per RL-time principle, side by side
    ppo_values: dict[str, Any] = {"prompts": str(prompts_path), "policy_model": str(model_dir),
                                  "policy_adapter": str(sft_dir / "adapter"), "reward_model": str(rm_dir / "model"),
                                  "output_dir": str(ppo_dir), "rl_principle_ids": [opts.rl_principle]}
    if opts.quick:
        ppo_values.update(rollout_batch_size=8, step_batch_size=8, total_epochs=16 / n_prompts)
    record("ppo", lambda: ppo.run(build_config(PPOConfig, stage="ppo", preset="nano", values=ppo_values)))
    eval_values: dict[str, Any] = {"prompts": str(prompts_path), "base_model": str(model_dir),
                                   "baseline_adapter": str(sft_dir / "adapter"),
                                   "policy_adapter": str(ppo_dir / "policy"), "reward_model": str(rm_dir / "model"),
                                   "output_dir": str(out / f"eval_policy_{opts.rl_principle}"),
                                   "policy_label": "ppo"}
    if opts.quick:
        eval_values["limit"] = 16
    record("eval_policy", lambda: eval_policy.run(build_config(
        EvalPolicyConfig, stage="eval_policy", preset="nano", values=eval_values)))
    policy_metrics = json.loads((out / f"eval_policy_{opts.rl_principle}" / "metrics.json").read_text())
    print(f"[demo] PPO under '{opts.rl_principle}' against the SFT policy, held-out prompts:\n"
          + before_after_table(policy_metrics, "sft", "ppo"), file=sys.stderr)

    ev = stages["eval_rm"]["metrics"]
    summary: dict[str, Any] = {
        "world": "nano",
        "options": {"prompts": n_prompts, "seed": opts.seed, "quick": opts.quick,
                    "hf_judge_pairs": opts.hf_judge_pairs, "rm_epochs": opts.rm_epochs,
                    "rl_principle": opts.rl_principle},
        "headline": {
            "rm_heldout_accuracy": ev["accuracy"],
            "rm_flip_rate": ev["flip_rate"],
            "rm_principle_sensitivity": ev["sensitivity"],
            "rm_instances": stages["aggregate"]["metrics"]["instances"],
            "rl_principle": opts.rl_principle,
            "sft_words": policy_metrics["sft"]["response_words"],
            "ppo_words": policy_metrics["ppo"]["response_words"],
            "sft_correct_arithmetic": policy_metrics["sft"]["adherence/correct_arithmetic"],
            "ppo_correct_arithmetic": policy_metrics["ppo"]["adherence/correct_arithmetic"],
            "ppo_kl_to_sft": policy_metrics["kl_to_baseline"],
            "seconds": round(time.monotonic() - started, 1),
        },
        "stages": stages,
    }
    write_json(out / "summary.json", summary)
    print(f"[demo] summary written to {out / 'summary.json'}", file=sys.stderr)
    return summary
