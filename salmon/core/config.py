"""Typed stage configs: defaults, then a YAML preset or file, then ``key=value`` overrides.

Every field is documented; unknown keys are errors. The defaults are the original method's
values; the ``nano`` presets (``salmon/configs/nano/<stage>.yaml``) shrink them for CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from salmon.core.deepspeed_config import (
    DeepSpeedMode,
    Precision,
    check_deepspeed_settings,
    deepspeed_field,
    deepspeed_overrides_field,
    offload_optimizer_field,
    offload_param_field,
    precision_field,
)
from salmon.core.errors import SalmonInputError
from salmon.core.yamlio import safe_load

Device = Literal["auto", "cpu", "cuda"]
INPUT: dict[str, Any] = {"path": "input"}
"""Marks a field that names a file or folder the stage reads (never overwritten: see
:mod:`salmon.core.paths`)."""
OUTPUT: dict[str, Any] = {"path": "output"}
"""Marks a field that names a file the stage writes."""
OUTPUT_DIR: dict[str, Any] = {"path": "output_dir"}
"""Marks a field that names a folder the stage writes into."""
MODEL_REF: dict[str, Any] = {"model_ref": True, "path": "input"}
"""Marks a field that names a base model: a folder, or a packaged model (``smollm2``) that the
stage entry points resolve to its prepared folder (:func:`model_ref_fields`)."""
DType = Literal["float32", "bfloat16", "float16"]
GENERATION_DTYPE_HELP = (
    "dtype of the weights that generate (hf backend). bfloat16 halves the memory and, on GPUs and on "
    "CPUs with AVX512-BF16, generates faster (1.8x at batch 32 for SmolLM2-135M on 2 cores, docs/results.md).")


PromptFormat = Literal["dromedary", "chat_template"]
"""How a prompt to a model is written: the method's text format, or the tokenizer's chat template."""


def _check_dromedary_system(key: str, value: str | None) -> None:
    if value is not None and not value.rstrip().endswith("### User"):
        raise ValueError(f"{key} must end with '### User' with prompt_format dromedary (the instruction follows "
                         "the user-turn header); with chat_template it is the system message")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def prompt_format_field() -> Any:
    return Field(
        default="dromedary",
        description="dromedary: the method's '### User' / '### Dromedary' text (for base models); chat_template: "
                    "the tokenizer's own chat template, the turn ends at the tokenizer's eos (for chat models).")


END_OF_TURN_HELP = ("End-of-turn string: generation stops at it and the response is cut after it; default "
                    "'\\n\\n### User' with dromedary, none with chat_template (the turn ends at the tokenizer's eos). "
                    "A turn that ends at eos counts as stopped either way.")


class _PolicyPrompt(_Config):
    """How the policy's query is written: shared by every stage that prompts or reads the policy."""

    prompt_format: PromptFormat = prompt_format_field()
    system_prompt: str | None = Field(
        default=None,
        description="dromedary: text before the instruction, ending with '### User' (default: the concise "
                    "Dromedary prompt); chat_template: the system message (default: none, the template's own).")

    @model_validator(mode="after")
    def _system_prompt_fits_format(self) -> Self:
        if self.prompt_format == "dromedary":
            _check_dromedary_system("system_prompt", self.system_prompt)
        return self


class _DeepSpeedSettings(_Config):
    """The DeepSpeed fields shared by ``sft``, ``train_rm`` and ``ppo`` (docs/distributed.md)."""

    deepspeed: DeepSpeedMode = deepspeed_field()
    offload_optimizer: bool = offload_optimizer_field()
    offload_param: bool = offload_param_field()
    precision: Precision = precision_field()
    deepspeed_overrides: dict[str, Any] = deepspeed_overrides_field()

    @model_validator(mode="after")
    def _deepspeed_settings(self) -> Self:
        check_deepspeed_settings(self.deepspeed, self.offload_optimizer, self.offload_param, self.precision,
                                 self.deepspeed_overrides)
        return self


class _LoraSettings(_Config):
    """The LoRA adapter fields shared by ``sft`` and ``train_rm`` (peft's ``LoraConfig``)."""

    lora_r: int = Field(default=64, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(default=16, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(default=0.0, ge=0, lt=1, description="LoRA dropout.")
    lora_target: str = Field(
        default="all-linear", description="peft target_modules: 'all-linear' (every linear layer but lm_head) or a "
                                          "comma list of module names.")


class _OptimSettings(_Config):
    """The AdamW and schedule fields shared by ``sft`` and ``train_rm`` (each sets its own
    ``learning_rate``)."""

    lr_schedule: Literal["cosine", "linear", "constant"] = Field(default="cosine", description="Decay after warm-up.")
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1, description="Share of steps used for warm-up.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=0.3, gt=0, description="Gradient clipping norm.")


class _ServerConnection(_Config):
    """How a stage reaches an OpenAI-compatible server (its ``openai`` backend)."""

    endpoint: str | None = Field(
        default=None, description="openai backend: base URL of an OpenAI-compatible server, e.g. http://vllm:8000/v1.")
    api_key_env: str = Field(
        default="SALMON_SAMPLER_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="openai backend: NAME of the environment variable holding the API key (no key sent if unset).")
    concurrency: int = Field(default=8, ge=1, description="openai backend: requests in flight at once.")
    request_timeout_s: float = Field(default=300.0, gt=0, description="openai backend: timeout of one request.")
    max_retries: int = Field(
        default=5, ge=0, description="openai backend: retries of a request after connection errors, 429 or 5xx.")
    ready_timeout_s: float = Field(
        default=600.0, ge=0, description="openai backend: how long to wait for /v1/models to list a model.")


class _ServerRollouts(_ServerConnection):
    """Generation by a vLLM server that loads the policy's LoRA adapters at run time (``ppo``,
    ``eval_policy``): the adapters are written where the server can read them."""

    rollout_backend: Literal["hf", "openai"] = Field(
        default="hf",
        description="hf: generation in this process; openai: by the vLLM server at endpoint, which loads the "
                    "policy's LoRA adapter at run time (ppo: before every step; needs --enable-lora and "
                    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True). Log-probs are always computed here.")
    served_adapter_dir: str | None = Field(
        default=None,
        description="openai rollouts: folder where adapters are written for the server to read (a volume both "
                    "mount); default: output_dir/served_policy.")
    served_adapter_dir_on_server: str | None = Field(
        default=None, description="openai rollouts: the same folder as the server sees it; default: the same path.")

    @model_validator(mode="after")
    def _server_rollouts_need_an_endpoint(self) -> Self:
        if self.rollout_backend == "openai" and not self.endpoint:
            raise ValueError("rollout_backend=openai generates on a vLLM server: set endpoint=<base URL>, e.g. "
                             "endpoint=http://vllm:8000/v1 (or rollout_backend=hf)")
        return self


class _ServerClient(_ServerConnection):
    """Fields of the ``openai`` backend shared by ``sample`` and ``label``."""

    served_model: str | None = Field(
        default=None,
        description="openai backend: model name to request; default: the first listed by /v1/models, or the one "
                    "LoRA adapter listed when adapter is set.")


class SampleConfig(_ServerClient, _PolicyPrompt):
    """``sample``: two responses per prompt from the policy (method §2.1)."""

    prompts: str = Field(json_schema_extra=INPUT, description="PromptRecord JSONL to answer.")
    output: str = Field(json_schema_extra=OUTPUT, description="ResponsePair JSONL to write.")
    backend: Literal["hf", "openai", "nano"] = Field(
        default="hf", description="hf: generate with a local HF model; openai: an OpenAI-compatible server "
                                  "(vLLM); nano: the nano response generator.")
    model: str | None = Field(default=None, json_schema_extra=MODEL_REF,
                              description="HF model folder or packaged model name, e.g. smollm2 (hf backend).")
    adapter: str | None = Field(json_schema_extra=INPUT,
        default=None, description="PEFT adapter merged into the model (the SFT policy); with openai, the server "
                                  "serves it as a LoRA model (see served_model).")
    seeds: tuple[int, int] = Field(default=(42, 43), description="One sampling seed per response.")
    temperature: float = Field(default=0.7, gt=0, description="Sampling temperature.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(default=768, ge=1, description="Longest response in tokens.")
    min_chars: int = Field(default=16, ge=0, description="Drop a prompt if either response is shorter.")
    stop: str | None = Field(
        default=None, description="Responses are cut before this marker (and generation stops at it); default "
                                  "'###' with dromedary, none with chat_template (the turn ends at eos).")
    batch_size: int = Field(default=8, ge=1, description="Prompts per generate call (hf) or per request (openai).")
    device: Device = Field(default="auto", description="auto picks cuda when available.")
    dtype: DType = Field(default="float32", description=GENERATION_DTYPE_HELP)
    limit: int | None = Field(default=None, ge=1, description="Use only the first N prompts.")


class LabelConfig(_ServerClient):
    """``label``: the judge compares each pair under each principle, in both orders (method §2.2)."""

    pairs: str = Field(json_schema_extra=INPUT, description="ResponsePair JSONL to judge.")
    output: str = Field(json_schema_extra=OUTPUT, description="Judgement JSONL to write.")
    principles: str = Field(
        json_schema_extra=INPUT, default="reward_model", description="Principle set name or YAML path.")
    principle_ids: list[str] | None = Field(default=None, description="Judge only these principles.")
    backend: Literal["hf", "openai", "rules"] = Field(
        default="hf", description="hf: a local causal LM judges by logits; openai: a model server judges by "
                                  "logprobs (vLLM); rules: nano checkers score.")
    model: str | None = Field(
        default=None, json_schema_extra=MODEL_REF,
        description="HF model folder (or packaged model name) of the judge (hf); with openai, the served model's "
                    "folder, whose tokenizer builds the prompts.")
    adapter: str | None = Field(json_schema_extra=INPUT,
        default=None, description="PEFT adapter merged into the judge (the SFT policy); with openai, the server "
                                  "serves it as a LoRA model (see served_model).")
    prompt_format: PromptFormat = Field(
        default="dromedary",
        description="dromedary: the judge prompt as plain text (the method's); chat_template: the same text as a "
                    "user turn in the tokenizer's chat template, the answer stem opening the assistant turn.")
    letter_logprobs: Literal["token_ids", "top", "echo"] = Field(
        default="token_ids",
        description="openai backend: how log P(a) and log P(b) are read: token_ids asks for the two letters by id "
                    "(vLLM logprob_token_ids); top reads the top_logprobs likeliest tokens; echo scores prompt+letter. "
                    "Prompts whose letters are missing from an answer are scored by echo.")
    top_logprobs: int = Field(
        default=20, ge=1,
        description="openai backend, letter_logprobs=top: tokens read per prompt (--max-logprobs must allow it).")
    batch_size: int = Field(
        default=4, ge=1, description="Pairs per forward pass (hf) or per round of concurrent requests (openai).")
    max_length: int = Field(default=1536, ge=16, description="Longest judge prompt in tokens.")
    reuse_prefix: bool = Field(
        default=True, description="Share the KV cache of the instruction and outputs across principles and orders.")
    principle_groups: int = Field(
        default=4, ge=1,
        description="hf with reuse_prefix: the principle segments of a batch run in at most this many forward calls "
                    "of principles of similar length, each padded only to its own longest (1: one call, all padded "
                    "to the longest principle).")
    device: Device = Field(default="auto", description="auto picks cuda when available.")
    dtype: DType = Field(default="float32", description="Judge weights dtype.")
    flush_every: int = Field(default=8, ge=1, description="Batches between progress-file flushes.")
    limit: int | None = Field(default=None, ge=1, description="Judge only the first N pairs.")
    audit_pairs: int = Field(
        default=0, ge=0, description="With backend=rules: also judge the first N pairs with the hf judge (model, "
        "adapter) and report how often it agrees with the checkers and how often it is position-consistent; its "
        "verdicts are reported, never written.")
    progress: bool = Field(default=True, description="Show a progress line on stderr.")


class AggregateConfig(_Config):
    """``aggregate``: principle-conditioned RM instances from judgements (method §2.3)."""

    pairs: str = Field(json_schema_extra=INPUT, description="ResponsePair JSONL that was judged.")
    judgements: str = Field(json_schema_extra=INPUT, description="Judgement JSONL from label.")
    output: str = Field(json_schema_extra=OUTPUT, description="RMInstance JSONL to write.")
    principles: str = Field(
        json_schema_extra=INPUT, default="reward_model", description="Principle set name or YAML path.")
    dimensions: list[str] | None = Field(
        default=None, description="Principle ids to use; default: those with rm_training true (8 of 11).")
    holdout_principles: list[str] = Field(
        default=[], description="Principle ids kept out of every instance, so that the RM never sees them in "
        "training; eval_rm's zero_shot then measures how it follows them from their definition alone.")
    splits: list[Literal["train", "heldout"]] = Field(
        default=["train"], description="Use pairs whose prompt is in these splits.")
    normalizer: Literal["variance", "std"] = Field(
        default="variance", description="Divide each principle's scores by the variance (the method) or std.")
    passes: int = Field(default=4, ge=1, description="Augmentation passes over the data.")
    geometric_p: float = Field(default=0.2, gt=0, le=1, description="K ~ Geometric(p) principles per instance.")
    max_principles: int = Field(default=8, ge=1, description="K is redrawn until K <= this.")
    negation_p: float = Field(default=0.5, ge=0, le=1, description="Chance each shown principle is negated.")
    ai_phrase: str = Field(default="As an AI language model", description="Phrase that marks a worse output.")
    ai_phrase_p: float = Field(default=0.5, ge=0, le=1, description="Chance the AI-phrase rule sets the label.")
    language_rule: bool = Field(default=True, description="Prefer the output in the instruction's script.")
    label_noise: float = Field(default=0.10, ge=0, le=1, description="Label flip chance.")
    rule_label_noise: float = Field(default=0.25, ge=0, le=1, description="Label flip chance when a rule fired.")
    swap_p: float = Field(default=0.5, ge=0, le=1, description="Chance output_1 and output_2 are swapped.")
    seed: int = Field(default=42, description="Seed of the one RNG used.")
    export_preferences: bool = Field(
        default=True, description="Also write <output>.preferences.jsonl in prompt/chosen/rejected form.")


class PMPSource(_Config):
    """One JSONL file of public preference data to turn into PMP pairs."""

    uri: str = Field(
        json_schema_extra=INPUT, description="Local path or s3://bucket/key of a JSONL file, one object per line "
                                             "(uncompressed).")
    format: Literal["hh_rlhf", "shp"] = Field(
        description="hh_rlhf: Anthropic HH-RLHF lines (chosen, rejected transcripts); shp: Stanford SHP lines "
                    "(history, human_ref_A, human_ref_B, labels, score_ratio).")
    limit: int | None = Field(default=None, ge=1, description="Keep at most N pairs of this source (in file order).")


class PMPDataConfig(_Config):
    """``pmp_data``: generic preference pairs from HH-RLHF / SHP files for train_rm's PMP phase."""

    sources: list[PMPSource] = Field(min_length=1, description="Preference files to read, in order.")
    output: str = Field(json_schema_extra=OUTPUT, description="RMInstance JSONL to write (train_rm's pmp_data).")
    shp_min_score_ratio: float = Field(
        default=2.0, ge=0, description="shp: keep a pair only when its score_ratio is greater than this (the "
                                       "original's cleaning keeps score_ratio > 2).")
    dedupe: bool = Field(
        default=True, description="Drop a pair whose instruction and two answers equal an earlier one's (first wins).")
    shuffle: bool = Field(default=True, description="Shuffle the merged pairs (seeded) before max_pairs and writing.")
    max_pairs: int | None = Field(
        default=None, ge=1, description="Write at most N pairs (after the shuffle: a random subset); null for all.")
    seed: int = Field(default=42, description="Seed of the shuffle.")


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


class PromptSource(_Config):
    """One JSONL file of prompts to load."""

    uri: str = Field(
        json_schema_extra=INPUT, description="Local path or s3://bucket/key of a JSONL file, one object per line.")
    prompt_type: Literal["general", "reasoning", "red_teaming"] = Field(
        default="general", description="Type tag of every prompt of this source (picks the RL length multiplier).")
    instruction_field: str = Field(default="instruction", description="JSON key of the instruction.")
    input_field: str | None = Field(default=None, description="JSON key of an optional extra input.")
    clean_chat: bool = Field(
        default=False, description="Strip chat-export artefacts (n / m counters, 'Share Prompt', 'Language: X').")
    drop_phrases: list[str] = Field(
        default=[], description="Drop prompts containing any of these (case-insensitive), e.g. NLI items.")
    limit: int | None = Field(default=None, ge=1, description="Keep at most N prompts of this source.")


class RedTeamConfig(_Config):
    """Topic-guided red-teaming synthesis (TGRT, method §1.3) by a base model."""

    model: str = Field(description="Base model folder (or packaged model name) that brainstorms topics and writes "
                                   "questions.", json_schema_extra=MODEL_REF)
    seeds: str = Field(
        default="data/red_team_seeds.jsonl", json_schema_extra=INPUT,
        description="JSONL seeds, one per question type: {type, topic, question}; a relative path that is no file "
                    "is looked up in the principles folder (default: the 12 shipped question types; the method "
                    "ships about 20).")
    topic_rounds: int = Field(
        default=6, ge=1,
        description="Brainstorm rounds (each asks for new topics per type). The method's script brainstorms 9 "
                    "rounds but writes its questions from the topics after 6 (its 'epoch 5' file).")
    topics_shown: int = Field(default=5, ge=1, description="Known topics shown per brainstorm prompt.")
    examples_shown: int = Field(default=5, ge=1, description="Seed examples shown per question prompt.")
    hints_per_prompt: int = Field(default=5, ge=1, description="(type, topic) hints per question prompt.")
    max_topic_words: int = Field(default=3, ge=1, description="Longest topic kept, in words.")
    topic_tokens: int = Field(default=128, ge=1, description="New tokens per brainstorm.")
    question_tokens: int = Field(default=384, ge=1, description="New tokens per question prompt.")
    temperature: float = Field(default=1.0, ge=0, description="Sampling temperature of both steps.")
    topic_top_p: float = Field(default=0.98, gt=0, le=1, description="Nucleus sampling mass of the brainstorms.")
    question_top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling mass of the questions.")
    suppress_eos: bool = Field(
        default=True,
        description="Never sample an end token (eos and the model's other end ids) in either step, so that "
                    "every generation runs to its token limit and writes more list lines (the method's logit "
                    "bias of -100 on eos); the last, unfinished line of such a generation is dropped.")
    device: Device = Field(default="auto", description="auto picks cuda when available.")


class PromptsConfig(_Config):
    """``prompts``: load, clean, dedupe and tag prompt sets; optionally synthesise red-teaming prompts."""

    sources: list[PromptSource] = Field(default_factory=list, description="Prompt files to load, in order.")
    nano_prompts: int | None = Field(
        default=None, ge=1,
        description="Add N prompts of the synthetic nano world (kept as generated, with its held-out topics).")
    output: str = Field(json_schema_extra=OUTPUT, description="PromptRecord JSONL to write.")
    min_words: int = Field(
        default=2, ge=0, description="Drop prompts shorter than this, in whitespace words (without length_tokenizer).")
    max_words: int = Field(
        default=256, ge=1, description="Drop prompts longer than this, in whitespace words (without length_tokenizer).")
    length_tokenizer: str | None = Field(
        default=None, json_schema_extra=MODEL_REF,
        description="Count prompt lengths in tokens of this tokenizer (a model folder or packaged model name; "
                    "the method counts its base model's tokens, BOS included, and keeps 2-256) and apply "
                    "min_tokens/max_tokens instead of the word bounds. Default null: whitespace words, since this "
                    "stage needs no model and may run before one is chosen (English text runs about 1.3 "
                    "Llama tokens per word, so 256 words is a looser bound than 256 tokens).")
    min_tokens: int = Field(
        default=2, ge=0, description="Drop prompts shorter than this, in tokens of length_tokenizer (when set).")
    max_tokens: int = Field(
        default=256, ge=1, description="Drop prompts longer than this, in tokens of length_tokenizer (when set).")
    dedupe: Literal["exact", "normalized"] = Field(
        default="exact", description="exact text, or lower-cased with punctuation and spacing removed.")
    heldout_fraction: float = Field(
        default=0.0, ge=0, lt=1, description="Share of prompts marked heldout, chosen by a hash of the text.")
    red_team: RedTeamConfig | None = Field(default=None, description="TGRT synthesis; null to skip.")
    seed: int = Field(default=42, description="Seed of the synthesis draws.")

    @model_validator(mode="after")
    def _some_source(self) -> PromptsConfig:
        if not self.sources and not self.nano_prompts and self.red_team is None:
            raise ValueError("give at least one of sources, nano_prompts or red_team")
        return self


class SelfAlignConfig(_Config):
    """``selfalign``: principle-driven answers from a base model, filtered (method §1.3-1.4)."""

    prompts: str = Field(json_schema_extra=INPUT, description="PromptRecord JSONL to answer.")
    output: str = Field(json_schema_extra=OUTPUT, description="SFTExample JSONL to write.")
    backend: Literal["hf", "nano"] = Field(
        default="hf", description="hf: in-context generation by a base model; nano: the nano generator (fallback).")
    model: str | None = Field(default=None, json_schema_extra=MODEL_REF,
                              description="Base model folder or packaged model name (hf backend).")
    prompt_format: PromptFormat = Field(
        default="dromedary",
        description="dromedary: the rules, exemplars and request as one plain-text prompt (the method's); "
                    "chat_template: rules and exemplars as the system message, the request as the user turn, the "
                    "internal-thought header opening the assistant turn, which ends at the tokenizer's eos.")
    rules: str = Field(
        json_schema_extra=INPUT, default="self_align", description="Principle set of the rules shown in the prompt.")
    exemplars: str = Field(json_schema_extra=INPUT, default="exemplars/self_align.yaml",
                           description="Exemplar YAML; a relative path is looked up in the principles folder.")
    temperature: float = Field(default=0.7, ge=0, description="Sampling temperature.")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(default=512, ge=1, description="Longest generation (thought + answer).")
    min_chars: int = Field(
        default=160, ge=0,
        description="Shortest finished answer kept, counting the end-of-turn text appended to it (the method "
                    "checks after appending '\\n\\n### User\\n', so 149 characters of answer suffice with "
                    "dromedary; with chat_template nothing is appended).")
    dedupe: Literal["raw", "stripped"] = Field(
        default="raw",
        description="How the answer is cut at its first repeated segment (a piece ending in a newline or "
                    "punctuation): raw compares the segments as written (the method's); stripped compares them "
                    "without surrounding whitespace, so it also cuts a repeat that follows a different space.")
    keep_truncated: bool = Field(
        default=False,
        description="Keep an answer that ran out of tokens, minus its last word (the method's filter); by default "
                    "it is dropped, since a target that never ends its turn teaches the policy not to stop.")
    copy_min_chars: int = Field(default=16, ge=0, description="Instruction/input longer than this must not be copied.")
    final_name: str = Field(default="Dromedary",
                            description="The assistant's name in kept answers and in the identity conversations.")
    identity: bool = Field(
        default=True,
        description="Add identity conversations ('Who are you?' answered with final_name) to the output, as the "
                    "method mixes such conversations into its SFT data; they are added after the filters and "
                    "the kept-answer gate, with source 'identity'.")
    identity_file: str = Field(
        json_schema_extra=INPUT, default="data/identity.yaml",
        description="Identity conversation YAML (questions, answers with {name}); a relative path is looked up in "
                    "the principles folder.")
    identity_examples: int | None = Field(
        default=None, ge=1,
        description="How many identity conversations to add: null adds every (question, answer) pair of the file "
                    "once; N adds N, drawn by seed (every pair before any repeats).")
    generations_output: str | None = Field(json_schema_extra=OUTPUT,
        default=None, description="Also write every raw generation with its filter reason here (JSONL), to audit "
                                  "the filters; null: not written.")
    splits: list[Literal["train", "heldout"]] = Field(default=["train"], description="Prompts to answer.")
    limit: int | None = Field(default=None, ge=1, description="Answer only the first N prompts.")
    batch_size: int = Field(default=4, ge=1, description="Prompts per generate call.")
    reuse_prefix: bool = Field(
        default=True, description="Compute the KV cache of the rules-and-exemplars prefix, which every request "
        "shares, once and start each generation from it (hf backend); false encodes the whole prompt each time.")
    seed: int = Field(default=42, description="Sampling seed.")
    device: Device = Field(default="auto", description="auto picks cuda when available.")
    dtype: DType = Field(default="float32", description=GENERATION_DTYPE_HELP)


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


C = TypeVar("C", bound=BaseModel)


def model_ref_fields(cfg: BaseModel) -> list[tuple[BaseModel, str]]:
    """``(config, field name)`` of every field marked :data:`MODEL_REF`, nested configs included."""
    found: list[tuple[BaseModel, str]] = []
    for name, info in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("model_ref"):
            found.append((cfg, name))
        elif isinstance(value, BaseModel):
            found += model_ref_fields(value)
    return found

PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b": {"c": "x"}}``; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SalmonInputError(f"override '{item}'", "expected key=value",
                                   "write overrides as key=value, e.g. learning_rate=1e-4")
        try:
            value = safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def preset_path(preset: str, stage: str) -> Path:
    """``salmon/configs/<preset>/<stage>.yaml``."""
    return PRESETS_DIR / preset / f"{stage}.yaml"


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SalmonInputError(str(p), "config file not found", "check the path")
    try:
        data = safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise SalmonInputError(str(p), f"not UTF-8 text ({e.reason} at byte {e.start})",
                               "save the file as UTF-8") from None
    except yaml.YAMLError as e:
        raise SalmonInputError(str(p), f"not valid YAML ({e})".replace("\n", " "),
                               "fix the YAML syntax at the line shown") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SalmonInputError(str(p), f"a config file must be a mapping of key: value, not a {type(data).__name__}",
                               "write one key: value per line")
    return data


def build_config(
    cls: type[C],
    *,
    stage: str,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
) -> C:
    """Resolve a stage config: defaults -> preset -> config file -> ``values`` -> overrides."""
    data: dict[str, Any] = {}
    if preset:
        path = preset_path(preset, stage)
        if not path.is_file():
            raise SalmonInputError(f"preset '{preset}'", f"has no config for stage {stage}",
                                   f"expected {path}")
        data = _merge(data, load_yaml_mapping(path))
    if config_file:
        data = _merge(data, load_yaml_mapping(config_file))
    if values:
        data = _merge(data, values)
    data = _merge(data, parse_overrides(overrides or []))
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            if err["type"] == "extra_forbidden":
                parts.append(f"unknown key '{loc}'")
            elif err["type"] == "missing":
                parts.append(f"missing required key '{loc}'")
            elif not loc:  # a check across keys
                parts.append(err["msg"].removeprefix("Value error, "))
            else:
                parts.append(f"key '{loc}': {err['msg'].removeprefix('Value error, ')}")
        raise SalmonInputError(f"{stage} config", "; ".join(parts),
                               f"see `salmon {stage} --help` for the keys") from None
