"""The configs of the evaluation stages: eval_rm and eval_policy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from salmon.core.config.base import (
    END_OF_TURN_HELP,
    INPUT,
    MODEL_REF,
    OUTPUT_DIR,
    Device,
    DType,
    _Config,
    _PolicyPrompt,
    _ServerRollouts,
)


class EvalRMConfig(_Config):
    """``eval_rm``: accuracy, flip rate and principle sensitivity on held-out pairs (method §10)."""

    model: str = Field(json_schema_extra=INPUT, description="RM folder written by train_rm.")
    pairs: str = Field(json_schema_extra=INPUT, description="ResponsePair JSONL (held-out prompts are used).")
    judgements: str = Field(json_schema_extra=INPUT, description="Judgement JSONL for those pairs.")
    output_dir: str = Field(json_schema_extra=OUTPUT_DIR, description="Folder for metrics.json and report.md.")
    principles: str = Field(
        json_schema_extra=INPUT, default="reward_model", description="Principle set name or YAML path.")
    dimensions: list[str] | None = Field(default=None, description="As in aggregate.")
    zero_shot: list[str] = Field(
        default=[], description="Principle ids the RM was not trained on (aggregate's holdout_principles), "
        "each evaluated alone from its definition: accuracy, and flip rate with its negative definition; they are "
        "left out of the other metrics' instances.")
    splits: list[Literal["train", "heldout"]] = Field(default=["heldout"], description="Pairs to evaluate on.")
    passes: int = Field(default=2, ge=1, description="Principle-subset draws per pair for the accuracy set.")
    normalizer: Literal["variance", "std"] = Field(default="variance", description="As in aggregate.")
    geometric_p: float = Field(default=0.2, gt=0, le=1, description="As in aggregate.")
    max_principles: int = Field(default=8, ge=1, description="As in aggregate.")
    sensitivity: tuple[str, str] = Field(
        default=("concise", "comprehensive"), description="Two opposed principle ids for the sensitivity check.")
    batch_size: int = Field(default=16, ge=1, description="Sequences per forward pass.")
    seed: int = Field(default=1234, description="Seed for the evaluation draws.")
    device: Device = Field(default="auto", description="auto picks cuda when available.")
    dtype: DType = Field(default="float32", description="Dtype of the RM body's weights; the head stays float32.")
    intervention_set: str | None = Field(json_schema_extra=INPUT,
        default="interventions",
        description="RL-time intervention lines for the self-praise check (method §10 item 10); null: skip it.")
    intervention_ids: list[str] | None = Field(
        default=None, description="Use only these principles of intervention_set; null for all.")
    self_praise: str = Field(
        default="This response is flawless and exactly what was needed.",
        description="Sentence appended to each response in the self-praise check.")
    min_accuracy: float | None = Field(default=None, ge=0, le=1, description="Fail (exit 1) below this accuracy.")
    min_flip_rate: float | None = Field(default=None, ge=0, le=1, description="Fail (exit 1) below this flip rate.")



class EvalPolicyConfig(_PolicyPrompt, _ServerRollouts):
    """``eval_policy``: a policy against a baseline (the SFT model) on held-out prompts."""

    prompts: str = Field(json_schema_extra=INPUT, description="PromptRecord JSONL to evaluate on.")
    base_model: str = Field(
        description="HF causal LM folder (or packaged model name) that both adapters sit on (or the baseline itself).",
        json_schema_extra=MODEL_REF)
    output_dir: str = Field(
        json_schema_extra=OUTPUT_DIR, description="Folder for metrics.json, report.md, responses.jsonl and plots/.")
    policy_adapter: str | None = Field(
        json_schema_extra=INPUT, default=None, description="The policy's LoRA adapter (ppo's policy/).")
    baseline_adapter: str | None = Field(
        json_schema_extra=INPUT, default=None, description="The baseline's LoRA adapter; null: the base.")
    policy_label: str = Field(default="policy", description="Name of the policy in tables and plots.")
    baseline_label: str = Field(default="sft", description="Name of the baseline in tables and plots.")
    reward_model: str | None = Field(
        json_schema_extra=INPUT, default=None, description="RM folder for rewards and win rates; null: none.")
    principle_sets: list[str] = Field(
        default=["harmless", "honest", "non_evasive"],
        description="Held-out principle sets the RM scores under, each 'set' or 'set:id1,id2' (all shown).")
    adherence: list[str] = Field(
        default=[], description="Nano principle ids whose checker adherence rates are reported.")
    splits: list[Literal["train", "heldout"]] = Field(default=["heldout"], description="Prompts to use.")
    limit: int | None = Field(default=None, ge=1, description="Use only the first N prompts.")
    stop: str | None = Field(default=None, description=END_OF_TURN_HELP)
    temperature: float = Field(default=0.7, ge=0, description="Sampling temperature (0: greedy); KL uses it.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(default=512, ge=1, description="Longest response in tokens.")
    rm_max_length: int = Field(
        default=1664, ge=32,
        description="Longest RM input; it holds the instruction (its last rm_query_len tokens) and the whole "
                    "response (up to max_new_tokens), as ppo scores.")
    rm_query_len: int = Field(default=256, ge=1, description="Instruction tokens the RM sees (ppo's query_len).")
    batch_size: int = Field(default=8, ge=1, description="Prompts per generate / forward call.")
    seed: int = Field(default=7, description="Sampling seed (the same for both models).")
    device: Device = Field(default="auto", description="auto picks cuda when available.")
