"""The configs of the stages that train a model: sft, train_rm, ppo."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from salmon.core.config.base import (
    END_OF_TURN_HELP,
    INPUT,
    MODEL_REF,
    OUTPUT_DIR,
    Device,
    DType,
    PromptFormat,
    _check_dromedary_system,
    _DeepSpeedSettings,
    _LoraSettings,
    _OptimSettings,
    _PolicyPrompt,
    _ServerRollouts,
    prompt_format_field,
)


class SFTConfig(_DeepSpeedSettings, _LoraSettings, _OptimSettings):
    """``sft``: principle engraving, LoRA (or QLoRA) SFT on instruction -> answer (method §1.4)."""

    @model_validator(mode="after")
    def _system_prompts_fit_format(self) -> Self:
        if self.prompt_format == "dromedary":
            for i, text in enumerate(self.system_prompts or []):
                _check_dromedary_system(f"system_prompts[{i}]", text)
        return self

    data: str = Field(json_schema_extra=INPUT, description="SFTExample JSONL (selfalign's output).")
    base_model: str = Field(description="HF causal LM folder (or packaged model name) to train an adapter on.",
                            json_schema_extra=MODEL_REF)
    output_dir: str = Field(
        json_schema_extra=OUTPUT_DIR, description="Folder for the adapter (adapter/), checkpoints and the train log.")
    prompt_format: PromptFormat = prompt_format_field()
    system_prompts: list[str] | None = Field(
        default=None, min_length=1,
        description="Distilled system prompts, alternated by example index. dromedary: each ends with '### User' "
                    "(default: the concise and the standard Dromedary prompts); chat_template: system messages "
                    "(default: none, the template's own).")
    quantize: Literal["none", "4bit"] = Field(
        default="none", description="4bit: QLoRA (NF4, double quantization); needs bitsandbytes and a GPU.")
    learning_rate: float = Field(default=1e-4, gt=0, description="Peak learning rate.")
    epochs: float = Field(default=1.0, gt=0, description="Passes over the data (fractions allowed).")
    batch_size: int = Field(default=128, ge=1, description="Examples per optimizer step.")
    micro_batch_size: int = Field(default=4, ge=1, description="Examples per forward pass.")
    source_max_len: int = Field(default=512, ge=1, description="Prompt tokens kept, from the right end.")
    target_max_len: int = Field(default=512, ge=1, description="Answer tokens kept, from the start.")
    save_every: int = Field(default=50, ge=1, description="Checkpoint every N optimizer steps.")
    log_every: int = Field(default=10, ge=1, description="Log every N optimizer steps.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop this invocation after N steps; a rerun continues.")
    seed: int = Field(default=42, description="Seed of the data order and adapter init.")
    device: Device = Field(default="auto", description="auto picks cuda when available.")
    dtype: DType = Field(default="float32", description="Base weights dtype.")



class TrainRMConfig(_DeepSpeedSettings, _LoraSettings, _OptimSettings):
    """``train_rm``: the principle-following reward model, Bradley-Terry loss (method §3)."""

    instances: str = Field(json_schema_extra=INPUT, description="RMInstance JSONL from aggregate.")
    output_dir: str = Field(json_schema_extra=OUTPUT_DIR, description="Folder for the trained RM and checkpoints.")
    base_model: str = Field(description="HF causal LM folder (or packaged model name) to start from.",
                            json_schema_extra=MODEL_REF)
    finetune: Literal["lora", "full"] = Field(default="lora", description="LoRA adapters or all weights.")
    lora_layers: int | None = Field(
        default=None, ge=1,
        description="LoRA on the last N transformer layers only; null: every layer (the method). Backpropagation "
                    "then stops at the lowest adapted layer, so a step costs less (docs/results.md: SmolLM2).")
    learning_rate: float = Field(default=3e-5, gt=0, description="Peak learning rate.")
    epochs: float = Field(default=1.0, gt=0, description="Passes over the instances (fractions allowed).")
    batch_size: int = Field(default=64, ge=1, description="Pairs per optimizer step.")
    micro_batch_size: int = Field(default=4, ge=1, description="Pairs per forward pass.")
    model_max_length: int = Field(default=1280, ge=32, description="Longest RM input in tokens.")
    query_len: int = Field(default=128, ge=1, description="Instruction kept (from the right end) in tokens.")
    response_len: int = Field(default=768, ge=1, description="Response kept (from the start) in tokens.")
    save_every: int = Field(default=40, ge=1, description="Checkpoint every N optimizer steps.")
    log_every: int = Field(default=10, ge=1, description="Log every N optimizer steps.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop this invocation after N optimizer steps (checkpointed); a rerun "
                                        "continues. The LR schedule still spans the whole run.")
    seed: int = Field(default=42, description="Seed for head init and data order.")
    device: Device = Field(default="auto", description="auto picks cuda when available.")
    dtype: DType = Field(default="float32", description="Base weights dtype; the head stays float32.")
    quantize: Literal["none", "4bit"] = Field(
        default="none",
        description="4bit: QLoRA, the LoRA body on an NF4 base (the method's); needs finetune=lora, bitsandbytes "
                    "and a GPU.")
    pmp_data: str | None = Field(json_schema_extra=INPUT,
        default=None,
        description="Generic preference pairs (RMInstance JSONL, principles ignored) for a PMP stage first.")
    pmp_learning_rate: float = Field(default=5e-5, gt=0, description="PMP peak learning rate.")
    pmp_warmup_ratio: float = Field(default=0.01, ge=0, lt=1, description="PMP warm-up share.")
    pmp_epochs: float = Field(default=1.0, gt=0, description="PMP passes.")
    pmp_model_max_length: int = Field(default=1024, ge=32, description="PMP longest input.")
    pmp_query_len: int = Field(default=256, ge=1, description="PMP instruction tokens kept.")
    pmp_response_len: int = Field(default=640, ge=1, description="PMP response tokens kept.")

    @model_validator(mode="after")
    def _lora_layers_need_lora(self) -> Self:
        if self.lora_layers is not None and self.finetune != "lora":
            raise ValueError("lora_layers applies to finetune=lora only; set lora_layers=null with finetune=full")
        if self.quantize == "4bit" and self.finetune != "lora":
            raise ValueError("quantize=4bit trains LoRA adapters on a frozen 4-bit base; set finetune=lora, or "
                             "quantize=none to fine-tune every weight")
        return self



class PPOConfig(_DeepSpeedSettings, _PolicyPrompt, _ServerRollouts):
    """``ppo``: RL against the principle-following reward model (method §4). Defaults: the method.

    The fields come in sections: inputs and outputs; the four roles (layout, precision, memory);
    RL-time principles; rollouts (with ``rollout_backend`` and the server fields of
    ``_ServerRollouts``); reward shaping; advantages and losses; optimisation; run length,
    checkpoints and seed; the DeepSpeed fields (``_DeepSpeedSettings``)."""

    # -- inputs and outputs
    prompts: str = Field(json_schema_extra=INPUT, description="PromptRecord JSONL to roll out on.")
    policy_model: str = Field(
        description="HF causal LM folder or packaged model name (or the base of policy_adapter) to start the policy "
                    "from.", json_schema_extra=MODEL_REF)
    reward_model: str = Field(json_schema_extra=INPUT, description="RM folder written by train_rm.")
    output_dir: str = Field(
        json_schema_extra=OUTPUT_DIR, description="Folder for the policy, checkpoints and rollout dumps.")
    policy_adapter: str | None = Field(
        json_schema_extra=INPUT, default=None, description="SFT LoRA adapter to start policy and reference from.")

    # -- the four roles: layout, precision, memory
    role_layout: Literal["shared", "separate"] = Field(
        default="shared",
        description="shared: the four roles as LoRA adapters on one base (needs a LoRA RM on policy_model); "
                    "separate: four modules (any RM).")
    quantize: Literal["none", "4bit"] = Field(
        default="none",
        description="4bit: the shared base in NF4 under all four adapters (QLoRA, the method's); needs "
                    "role_layout=shared, bitsandbytes and a GPU.")
    gradient_checkpointing: bool = Field(
        default=False,
        description="Recompute the decoder layers' activations in the backward pass of the learning passes "
                    "instead of keeping them (the method's backbone does): less memory, about a third more "
                    "learning time. Off by default; the passes without gradients are never checkpointed.")
    merge_for_generation: bool = Field(
        default=False,
        description="Generate rollouts (rollout_backend=hf) from a plain copy of the base with the policy adapter "
                    "merged in, refreshed before every step: faster generation than through the unmerged "
                    "adapter, for one more copy of the base weights. Not with quantize=4bit or ZeRO-3.")
    lora_r: int = Field(default=64, ge=1, description="LoRA rank of new policy/value adapters.")
    lora_alpha: int = Field(default=16, ge=1, description="LoRA alpha of new adapters.")
    init_value_with_reward: bool = Field(default=True, description="Value body starts from the RM; value head at 0.")

    # -- RL-time principles (method §4.4)
    rl_principles: str = Field(
        json_schema_extra=INPUT, default="rl", description="Principle set sampled at RL time (steers the policy).")
    interventions: str | None = Field(json_schema_extra=INPUT,
        default="interventions", description="Principle set always shown first; null for none.")
    rl_principle_ids: list[str] | None = Field(
        default=None, description="Use only these principles of rl_principles; null for all.")
    intervention_ids: list[str] | None = Field(
        default=None, description="Use only these principles of interventions; null for all.")
    principles_per_rollout: int = Field(default=3, ge=0, description="Principles drawn by weight per RM call.")
    prompt_splits: list[Literal["train", "heldout"]] | None = Field(
        default=None, description="Roll out only on prompts of these splits; null for all.")

    # -- rollouts (rollout_backend and the server fields: above)
    rollout_batch_size: int = Field(default=576, ge=1, description="Rollouts per PPO step.")
    forward_batch_size: int = Field(
        default=6, ge=1,
        description="Rollouts per forward without gradients: generation, RM scoring, and the old policy, "
                    "reference and value passes.")
    temperature: float = Field(default=0.7, gt=0, description="Sampling temperature; log-probs use it too.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass.")
    query_len: int = Field(default=256, ge=1, description="Longest templated query; longer prompts are dropped.")
    response_len: int = Field(default=1024, ge=1, description="Most new tokens per rollout.")
    stop: str | None = Field(default=None, description=END_OF_TURN_HELP)
    stop_rollouts: bool = Field(
        default=True,
        description="Stop each rollout at the end of its turn (stop string or end id). false generates every "
                    "rollout of rollout_backend=hf to response_len (the model's own eos still ends one), as the "
                    "released code did; the turn is read up to its end either way. For comparisons.")

    # -- reward shaping (method §4.3)
    rm_max_length: int = Field(
        default=1664, ge=32,
        description="Longest RM input at RL time; it holds the instruction (up to query_len tokens) and the whole "
                    "response (up to response_len), whatever limits the RM was trained with.")
    no_stop_penalty: float = Field(default=-6.0, description="Added to the score when the stop string is missing.")
    length_bonus: float = Field(default=5.0, description="Length bonus scale.")
    length_cap: float = Field(default=0.8, description="Upper bound of the length term before scaling.")
    length_multipliers: dict[str, float] = Field(
        default={"general": 1.0, "reasoning": -0.4, "red_teaming": 0.0},
        description="Length multiplier per prompt type.")
    kl_coef: float = Field(default=0.01, ge=0, description="Per-token KL penalty (k1, clamped at 0).")
    reward_scale: float = Field(default=10.0, gt=0, description="All shaped rewards are multiplied by this.")

    # -- advantages and losses
    algorithm: Literal["ppo", "grpo", "rloo"] = Field(
        default="ppo", description="ppo (value model, GAE) or a critic-free variant on the same rewards.")
    group_size: int = Field(default=4, ge=2, description="Samples per prompt for grpo and rloo.")
    gamma: float = Field(default=1.0, ge=0, le=1, description="GAE discount.")
    lam: float = Field(default=1.0, ge=0, le=1, description="GAE lambda.")
    whiten_advantages: bool = Field(default=True, description="Whiten advantages over the whole batch.")
    whiten_over: Literal["all_slots", "real_tokens"] = Field(
        default="all_slots",
        description="all_slots (the original code): every rollout counts response_len slots, those after its end "
                    "as 0, population variance; real_tokens: the real tokens only, unbiased variance.")
    clip_range: float = Field(default=0.2, gt=0, description="Policy ratio clip.")
    clip_range_value: float = Field(default=0.2, gt=0, description="Value clip around the old values.")
    vf_coef: float = Field(default=0.1, ge=0, description="Value loss coefficient.")

    # -- optimisation
    step_batch_size: int = Field(default=288, ge=1, description="Rollouts per optimizer step.")
    micro_batch_size: int = Field(
        default=6, ge=1,
        description="Rollouts per forward/backward in an update; gradients accumulate over the micro-batches of "
                    "each step_batch_size minibatch (the method: 6 per device). Memory grows with this, not with "
                    "the rollout batch.")
    ppo_epochs: int = Field(default=2, ge=1, description="Passes over each step's rollouts.")
    learning_rate: float = Field(default=2e-5, gt=0, description="Peak LR (policy, value and value head together).")
    warmup_steps: int = Field(default=5, ge=0, description="Warm-up PPO steps; the schedule steps once per PPO step.")
    lr_schedule: Literal["cosine", "linear", "constant"] = Field(default="cosine", description="Decay after warm-up.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")

    # -- run length, checkpoints, seed
    total_epochs: float = Field(default=2.0, gt=0, description="Passes over the prompt set.")
    total_steps: int | None = Field(
        default=None, ge=1,
        description="Schedule exactly N PPO steps (the LR schedule spans them) instead of total_epochs.")
    max_steps: int | None = Field(
        default=None, ge=1,
        description="Stop this invocation after N PPO steps (checkpointed); a rerun continues. The LR "
                    "schedule still spans the whole run.")
    save_every: int = Field(default=10, ge=1, description="Checkpoint every N PPO steps.")
    seed: int = Field(default=42, description="Seed of sampling, principle draws and data order.")
    device: Device = Field(default="auto", description="auto picks cuda when available.")

    @model_validator(mode="after")
    def _quantize_needs_the_shared_base(self) -> Self:
        if self.quantize == "4bit" and self.role_layout != "shared":
            raise ValueError("quantize=4bit quantizes the one base that the shared layout's four adapters sit on; "
                             "set role_layout=shared, or quantize=none")
        return self

    @model_validator(mode="after")
    def _merged_generation_copy_fits(self) -> Self:
        if not self.merge_for_generation:
            return self
        if self.quantize == "4bit":
            raise ValueError("merge_for_generation merges the adapter into a full-precision copy of the base, which "
                             "a 4-bit base does not have; set merge_for_generation=false")
        if self.deepspeed == "zero3":
            raise ValueError("merge_for_generation merges the adapter into a whole copy of the base on every rank, "
                             "and ZeRO-3 partitions the weights it reads; use deepspeed=zero2, or "
                             "merge_for_generation=false")
        if self.rollout_backend != "hf":
            raise ValueError("merge_for_generation applies to rollouts generated in the trainer; set "
                             "merge_for_generation=false with rollout_backend=openai")
        return self
