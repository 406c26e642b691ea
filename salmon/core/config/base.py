"""What every stage config is built from: the base model with unknown keys refused, the path
markers the pipeline and the checks read, and the field groups several stages share (the
policy's prompt, DeepSpeed, LoRA, the optimiser, an OpenAI-compatible server)."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
