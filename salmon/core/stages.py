"""The stage catalogue: every fact about a stage that more than one part of salmon reads, in one place.

The CLI takes its sub-commands and their help from here, the pipeline tasks their config
classes, tracking policy and model lineage, the cluster executor and the pipeline's pod settings
which stages train and which need a GPU, and the registry its model names. Adding a stage means
one entry in :data:`STAGES` (and its recipe in ``salmon.stages``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

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
)


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline.

    Attributes:
        name: the stage's name in its module (``salmon.stages.<name>``), CLI, component, config
            and MLflow run.
        config: its typed config class.
        help: one line for ``salmon --help``.
        tracking: what its pipeline task does when MLflow is down as it starts: ``defer`` (it runs
            a model: it goes on and writes its tracking at the end) or ``require`` (cheap
            bookkeeping: it fails before any work).
        gpu: its pipeline task asks for GPUs when the pipeline has them.
        model_subdir: for a stage that trains a model, the folder of its output that is the model
            (the rest is checkpoints); None for the others.
        registered_name: the model's name in the MLflow registry (training stages).
        model: one line on what the registered model is (training stages).
        lineage: the stages whose outputs the trained model descends from (training stages).
        principle_fields: config fields that name principle sets (for ``selfalign``, also the
            exemplar and identity files), which the plan resolves and digests.
        evaluates: for an evaluation stage, the input holding the model it measures.
    """

    name: str
    config: type[BaseModel]
    help: str
    tracking: Literal["require", "defer"] = "defer"
    gpu: bool = False
    model_subdir: str | None = None
    registered_name: str | None = None
    model: str = ""
    lineage: tuple[str, ...] = ()
    principle_fields: tuple[str, ...] = ()
    evaluates: str | None = None

    @property
    def trains_model(self) -> bool:
        return self.model_subdir is not None


_UP_TO_SFT = ("prompts", "selfalign", "sft")
_UP_TO_RM = (*_UP_TO_SFT, "sample", "label", "aggregate", "pmp_data", "train_rm")

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("prompts", PromptsConfig, "load, clean, dedupe and tag prompt sets (local or S3); red-teaming synthesis",
          tracking="require"),
    Stage("selfalign", SelfAlignConfig, "principle-driven answers in context (17 rules, 6 exemplars), filtered",
          principle_fields=("rules", "exemplars", "identity_file")),
    Stage("sft", SFTConfig, "principle engraving: LoRA/QLoRA SFT on instruction -> answer, loss on the answer",
          gpu=True, model_subdir="adapter", registered_name="salmon-sft", lineage=_UP_TO_SFT,
          model="SFT adapter (LoRA) of the principle-engraving step (SELF-ALIGN)"),
    Stage("sample", SampleConfig, "two responses per prompt (hf model or nano generator)"),
    Stage("label", LabelConfig, "AI feedback: judge each pair under each principle, both orders",
          principle_fields=("principles",)),
    Stage("aggregate", AggregateConfig, "principle-conditioned RM training instances", tracking="require",
          principle_fields=("principles",)),
    Stage("pmp_data", PMPDataConfig, "preference-model pre-training pairs from HH-RLHF / SHP files (local or S3)",
          tracking="require"),
    Stage("train_rm", TrainRMConfig, "train the principle-following reward model", gpu=True, model_subdir="model",
          registered_name="salmon-reward", lineage=_UP_TO_RM,
          model="instructable reward model (SALMON): scores a response under the principles it is shown"),
    Stage("eval_rm", EvalRMConfig, "accuracy, flip rate and principle sensitivity of an RM",
          principle_fields=("principles", "intervention_set"), evaluates="reward_model"),
    Stage("ppo", PPOConfig, "RL against the reward model under RL-time principles (ppo, grpo or rloo)", gpu=True,
          model_subdir="policy", registered_name="salmon-policy", lineage=(*_UP_TO_RM, "ppo"),
          principle_fields=("rl_principles", "interventions"),
          model="policy adapter (LoRA) trained with PPO against the instructable reward model (SALMON)"),
    Stage("eval_policy", EvalPolicyConfig,
          "a policy against its baseline: rewards, adherence, KL, length, win rate", gpu=True,
          principle_fields=("principle_sets",), evaluates="policy"),
)}
"""Every stage, in pipeline order."""

TRAINING_STAGES = tuple(name for name, s in STAGES.items() if s.trains_model)
"""The stages that train a model: ``sft``, ``train_rm``, ``ppo``."""

GPU_STAGES = tuple(name for name, s in STAGES.items() if s.gpu)
"""The stages whose pipeline tasks ask for GPUs."""
