"""The pipeline's parameters as one typed model, checked before any GPU work: in the pipeline's
first task (``plan``), by ``salmon pipeline run|submit`` and by ``salmon demo``.

:class:`PipelineParams` is the one definition of the parameters' names, defaults, descriptions and
bounds; ``pipelines/salmon.py`` writes the same signature out for KFP (which needs it literally),
and a test holds the two equal. The checks that span parameters are its validators.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from salmon.core.config import LabelConfig, SampleConfig, SelfAlignConfig
from salmon.core.errors import SalmonInputError
from salmon.tasks.common import BASE_NAMES, CONFIGS, SAMPLER_MODES, check_executor, stage_value

SECRET_FIELDS = {"mlflow_secret": "secret", "s3_secret": "secret", "sampler_api_key_secret": "secret",
                 "model_cache_pvc": "persistent volume claim"}
BACKEND_CONFIGS = {"selfalign_backend": SelfAlignConfig, "sample_backend": SampleConfig, "label_backend": LabelConfig}


class PipelineParams(BaseModel):
    """Every parameter of the SALMON pipeline (field descriptions are the KFP UI's). Numbers are
    strict (no strings, no booleans); unknown names are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    base_model_uri: str = Field(
        default="nano",
        description="The base model: 'nano' builds the tiny nano-world model; 'smollm2' prepares "
                    "SmolLM2-135M-Instruct from its Python package; otherwise a Hugging Face model folder (PVC path),"
                    " an s3:// prefix, or models:/<name>/<version> (or @<alias>) for the model folder in a registered"
                    " version's artifacts.")
    preset: str = Field(
        default="nano",
        description="Config preset applied to every stage before the overrides ('nano' or '' for the method's "
                    "defaults).")
    prompt_sources: str = Field(
        default="",
        description="Comma-separated prompt JSONL files (local paths or s3:// URIs); empty for none.")
    pmp_sources: str = Field(
        default="",
        description="Preference data for train_rm's PMP phase: comma-separated FORMAT:URI entries, FORMAT hh_rlhf "
                    "(Anthropic HH-RLHF) or shp (Stanford SHP), URI a JSONL file (local path or s3:// URI), e.g. "
                    "hh_rlhf:s3://data/hh-rlhf/train.jsonl; empty for no PMP phase. Needs train_rm without DeepSpeed.")
    nano_prompts: int = Field(
        default=4000, ge=0, json_schema_extra={"fix": "0 for none"},
        description="Synthetic nano-world prompts to add (0 for none).")
    nano_pretrain_steps: int = Field(
        default=300, ge=0, json_schema_extra={"fix": "e.g. 300"},
        description="Pretraining steps of the nano base model.")
    seed: int = Field(default=0, description="Seed of every stage (each stage offsets it).")
    selfalign_rules: str = Field(
        default="",
        description="Principle set of the self-alignment rules; empty keeps the preset's.")
    label_principles: str = Field(
        default="",
        description="Principle set the AI judge labels with, the RM learns and eval_rm checks; empty keeps the "
                    "preset's.")
    rl_principles: str = Field(default="", description="Principle set sampled at RL time; empty keeps the preset's.")
    rl_principle_ids: list[str] = Field(
        default_factory=lambda: ["concise"],
        description="Principles of the RL-time set to use (empty list for all).")
    selfalign_backend: str = Field(default="nano", description="Generator of the self-aligned answers: hf or nano.")
    sample_backend: str = Field(
        default="nano",
        description="Generator of the response pairs: hf, nano, or openai (the run's sampler server).")
    label_backend: str = Field(
        default="rules",
        description="Judge: hf (the model's own logits), openai (the same logits from the sampler server's logprobs) "
                    "or rules (exact checkers, nano world).")
    sampler: str = Field(
        default="none",
        description="Server of the openai backends: none, endpoint (sampler_endpoint) or deploy (a vLLM Deployment "
                    "serving the base model + SFT adapter for this run, removed when the run ends).")
    rollout_backend: str = Field(
        default="hf",
        description="Where ppo and eval_policy generate: hf (in their own task or job) or openai (the sampler server,"
                    " which loads the policy's LoRA adapter before every PPO step; the server then stays up until "
                    "eval_policy ends).")
    sampler_endpoint: str = Field(
        default="",
        description="Base URL of an existing OpenAI-compatible server (sampler=endpoint), e.g. "
                    "http://vllm.salmon.svc:8000/v1.")
    sampler_api_key_secret: str = Field(
        default="salmon-vllm-api-key",
        description="Name of the Secret (key 'api-key') with the sampler server's API key.")
    sft_executor: str = Field(
        default="local",
        description="Where SFT training runs: local (in the task's pod), trainjob (Kubeflow Trainer v2) or pytorchjob"
                    " (training-operator v1).")
    train_rm_executor: str = Field(
        default="local",
        description="Where reward-model training runs: local, trainjob or pytorchjob.")
    ppo_executor: str = Field(default="local", description="Where PPO runs: local, trainjob or pytorchjob.")
    train_nodes: int = Field(
        default=1, ge=1, json_schema_extra={"fix": "1 or more pods per training job"},
        description="Pods per training job (trainjob / pytorchjob executors).")
    train_procs_per_node: int = Field(
        default=0, ge=0, json_schema_extra={"fix": "0 for one per GPU"},
        description="torchrun processes per training pod (0: one per GPU, or 1 without GPUs).")
    train_cpu: str = Field(
        default="",
        description="CPU of each training pod, e.g. 8 or 500m ('': the training runtime's on a TrainJob without GPUs,"
                    " else 8).")
    train_memory: str = Field(
        default="",
        description="Memory of each training pod, e.g. 64Gi ('': the training runtime's on a TrainJob without GPUs, "
                    "else 64Gi).")
    train_priority_class: str = Field(
        default="",
        description="Priority class of the training jobs ('': the cluster's default).")
    train_queue: str = Field(default="", description="Kueue LocalQueue the training jobs are submitted to ('': none).")
    rm_epochs: float = Field(
        default=1.0, gt=0, json_schema_extra={"fix": "e.g. rm_epochs=1; fractions are allowed"},
        description="Passes of train_rm over its instances.")
    ppo_steps: int = Field(
        default=0, ge=0, json_schema_extra={"fix": "0 keeps the preset's total_epochs"},
        description="PPO steps to schedule (0 keeps the preset's total_epochs).")
    eval_limit: int = Field(
        default=0, ge=0, json_schema_extra={"fix": "0 for all prompts"},
        description="Held-out prompts eval_policy uses (0 for all).")
    min_rm_accuracy: float = Field(
        default=0.8, ge=0, le=1, json_schema_extra={"fix": "a share, e.g. 0.8; 0 turns the gate off"},
        description="Gate: the RM's held-out accuracy needed to move the champion alias.")
    min_rm_flip_rate: float = Field(
        default=0.75, ge=0, le=1, json_schema_extra={"fix": "a share, e.g. 0.8; 0 turns the gate off"},
        description="Gate: the RM's principle-flip rate needed to move the champion alias.")
    min_policy_win_rate: float = Field(
        default=0.6, ge=0, le=1, json_schema_extra={"fix": "a share, e.g. 0.8; 0 turns the gate off"},
        description="Gate: the policy's win rate over the SFT policy under policy_gate_principles.")
    max_policy_kl: float = Field(
        default=5.0, ge=0, json_schema_extra={"fix": "nats per response, e.g. 5.0"},
        description="Gate: the largest KL of the policy to the SFT policy (nats per response).")
    policy_gate_principles: str = Field(
        default="nano:concise",
        description="The eval_policy principle spec the win-rate gate reads, e.g. 'nano:concise'.")
    stage_overrides: dict[str, Any] = Field(
        default_factory=lambda: {},
        description="Advanced: config keys per stage, e.g. {\"ppo\": {\"kl_coef\": 0.02}}.")
    accelerator_type: str = Field(default="nvidia.com/gpu", description="GPU resource name of the GPU stages.")
    gpus: int = Field(
        default=1, ge=0, json_schema_extra={"fix": "0 for none"},
        description="GPUs of eval_policy's pod and of each pod of a training job (trainjob / pytorchjob).")
    training_task_gpus: int = Field(
        default=1, ge=0, json_schema_extra={"fix": "0 when the training stages launch jobs"},
        description="GPUs the sft, train_rm and ppo tasks request themselves: their own with the local executor; 0 "
                    "when they launch jobs.")
    mlflow_secret: str = Field(
        default="salmon-mlflow",
        description="Name of the Secret with MLFLOW_TRACKING_URI (and credentials) for every task.")
    s3_secret: str = Field(
        default="salmon-s3",
        description="Name of the Secret with the S3 credentials and endpoint for every task.")
    model_cache_pvc: str = Field(
        default="salmon-model-cache",
        description="Name of the PVC mounted at /mnt/models in every task.")

    # -- checks of one parameter, raised with the project's messages

    @field_validator(*SECRET_FIELDS)
    @classmethod
    def _kubernetes_names(cls, value: str, info: Any) -> str:
        from salmon.cluster.names import check_name

        check_name(value, SECRET_FIELDS[info.field_name], f"pipeline parameter {info.field_name}")
        return value

    @field_validator("sampler")
    @classmethod
    def _sampler_mode(cls, value: str) -> str:
        if value not in SAMPLER_MODES:
            raise SalmonInputError(f"pipeline parameter sampler='{value}'", "unknown sampler mode",
                                   f"use one of {', '.join(SAMPLER_MODES)}")
        return value

    @field_validator("rollout_backend")
    @classmethod
    def _rollout_backend(cls, value: str) -> str:
        if value not in ("hf", "openai"):
            raise SalmonInputError(f"pipeline parameter rollout_backend='{value}'", "unknown rollout backend",
                                   "use hf or openai")
        return value

    @field_validator("sft_executor", "train_rm_executor", "ppo_executor")
    @classmethod
    def _executor(cls, value: str, info: Any) -> str:
        check_executor(info.field_name.removesuffix("_executor"), value)
        return value

    @field_validator(*BACKEND_CONFIGS)
    @classmethod
    def _backend(cls, value: str, info: Any) -> str:
        allowed = BACKEND_CONFIGS[info.field_name].model_fields["backend"].annotation.__args__  # a Literal
        if value and value not in allowed:
            raise SalmonInputError(f"pipeline parameter {info.field_name}='{value}'", "unknown backend",
                                   f"use one of {', '.join(allowed)}")
        return value

    @field_validator("base_model_uri")
    @classmethod
    def _base_model_uri(cls, uri: str) -> str:
        from salmon.tracking.models import REGISTRY_URI

        registered = uri.startswith("models:/") and REGISTRY_URI.match(uri)
        if not uri or ("://" in uri and not uri.startswith("s3://")) or (
                uri.startswith(("models:/", "runs:/")) and not registered):
            raise _param_error("base_model_uri", uri, "not a supported model URI",
                               f"give 'nano', {BASE_NAMES}, a model folder (a PVC path), an s3:// prefix or "
                               "models:/<name>/<version> (or @<alias>)")
        if uri.startswith("s3://"):
            from salmon.storage import split_s3_uri

            split_s3_uri(uri.rstrip("/") + "/x")
        return uri

    @field_validator("preset")
    @classmethod
    def _preset(cls, preset: str) -> str:
        from salmon.core.config import PRESETS_DIR

        if preset and not (PRESETS_DIR / preset).is_dir():
            known = sorted(p.name for p in PRESETS_DIR.iterdir() if p.is_dir())
            raise _param_error("preset", preset, "no such preset",
                               f"use one of {', '.join(known)}, or '' for the method's defaults")
        return preset

    @field_validator("prompt_sources")
    @classmethod
    def _prompt_sources(cls, sources: str) -> str:
        for uri in (u.strip() for u in sources.split(",")):
            if uri and "://" in uri and not uri.startswith("s3://"):
                raise _param_error("prompt_sources", sources, f"'{uri}' is not a local path or s3:// URI",
                                   "give comma-separated local paths or s3://bucket/key URIs")
            if uri.startswith("s3://"):
                from salmon.storage import split_s3_uri

                split_s3_uri(uri)
        return sources

    @field_validator("selfalign_rules", "label_principles", "rl_principles")
    @classmethod
    def _principle_set(cls, name: str, info: Any) -> str:
        if name:
            _principle_set(info.field_name, name)
        return name

    @field_validator("stage_overrides")
    @classmethod
    def _stage_overrides(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        if any(s not in CONFIGS for s in overrides):
            raise SalmonInputError("pipeline parameter stage_overrides",
                                   f"must map stage names ({', '.join(CONFIGS)}) to config keys",
                                   'e.g. {"ppo": {"kl_coef": 0.02}}')
        for stage, values in overrides.items():
            if not isinstance(values, dict):
                raise SalmonInputError(f"pipeline parameter stage_overrides.{stage}",
                                       "must be a mapping of config keys", 'e.g. {"ppo": {"kl_coef": 0.02}}')
            unknown = sorted(set(values) - set(CONFIGS[stage].model_fields))
            if unknown:
                raise SalmonInputError(f"pipeline parameter stage_overrides.{stage}", f"unknown keys {unknown}",
                                       f"see `salmon {stage} --help` for the keys")
            _check_override_values(stage, values)
        return overrides

    # -- checks across parameters

    @model_validator(mode="after")
    def _servers(self) -> PipelineParams:
        if self.sampler == "endpoint" and not self.sampler_endpoint.startswith(("http://", "https://")):
            raise SalmonInputError("pipeline parameter sampler_endpoint",
                                   f"'{self.sampler_endpoint}' is not an http(s) URL",
                                   "give the server's base URL, e.g. http://vllm.salmon.svc:8000/v1")
        for key in ("sample_backend", "label_backend", "rollout_backend"):
            if getattr(self, key) == "openai" and self.sampler == "none":
                raise SalmonInputError(f"pipeline parameter {key}='openai'", "needs a server",
                                       "set sampler=deploy (a vLLM server for this run) or sampler=endpoint "
                                       "with sampler_endpoint=URL")
        return self

    @model_validator(mode="after")
    def _pmp_sources(self) -> PipelineParams:
        pmp = self.pmp_sources
        if not pmp.strip():
            return self
        from salmon.core.pmp import parse_source_spec
        from salmon.storage import split_s3_uri

        try:
            for entry in parse_source_spec(pmp):
                if entry["uri"].startswith("s3://"):
                    split_s3_uri(entry["uri"])
        except SalmonInputError as e:
            raise _param_error("pmp_sources", pmp, f"{e.source}: {e.message}", e.fix or "") from None
        mode = stage_value("train_rm", self.preset or None, dict(self.stage_overrides.get("train_rm", {})),
                           "deepspeed")
        if mode != "off":
            raise _param_error("pmp_sources", pmp, f"train_rm trains with deepspeed={mode}, and its PMP phase "
                               "runs single-process only", "leave pmp_sources empty, or train the reward model "
                               'without DeepSpeed: stage_overrides {"train_rm": {"deepspeed": "off"}}')
        return self

    @model_validator(mode="after")
    def _principle_choices(self) -> PipelineParams:
        """The RL-time ids and the win-rate gate's principles (as given) exist where they are read."""
        given = self.model_fields_set
        if "rl_principle_ids" in given and self.rl_principle_ids:
            ppo = dict(self.stage_overrides.get("ppo", {}))
            if self.rl_principles:
                ppo.setdefault("rl_principles", self.rl_principles)
            name = str(stage_value("ppo", self.preset or None, ppo, "rl_principles"))
            try:
                _principle_set("rl_principle_ids", name).subset(self.rl_principle_ids)
            except SalmonInputError as e:
                raise SalmonInputError(f"pipeline parameter rl_principle_ids: {e.source}", e.message, e.fix) from None
        spec = self.policy_gate_principles if "policy_gate_principles" in given else ""
        if spec:
            name, _, chosen = spec.partition(":")
            pset = _principle_set("policy_gate_principles", name)
            try:
                pset.subset([i.strip() for i in chosen.split(",") if i.strip()] if chosen else None)
            except SalmonInputError as e:
                raise SalmonInputError(f"pipeline parameter policy_gate_principles: {e.source}", e.message,
                                       e.fix) from None
            measured = stage_value("eval_policy", self.preset or None,
                                   dict(self.stage_overrides.get("eval_policy", {})), "principle_sets")
            if "min_policy_win_rate" in given and self.min_policy_win_rate and spec not in measured:
                raise _param_error("policy_gate_principles", spec, "eval_policy does not score under it, so the "
                                   "win-rate gate could never pass",
                                   f"use one of eval_policy's principle_sets ({', '.join(map(str, measured))}), or "
                                   "min_policy_win_rate=0")
        return self


def validate_pipeline_params(params: dict[str, Any]) -> PipelineParams:
    """The parameters as :class:`PipelineParams`: run in the pipeline's first task (and by
    ``salmon pipeline run|submit`` and ``salmon demo`` before anything starts), before any GPU work.
    Parameters that are not given keep their defaults, and the checks across parameters read only
    the ones given.

    Raises:
        SalmonInputError: naming the parameter, its value and what to give instead.
    """
    from salmon.core.io import non_finite

    for key, value in params.items():  # one policy for every number, nested ones included
        if non_finite(value):
            raise _param_error(key, value, f"holds a NaN or infinite number ({', '.join(non_finite(value, key))})",
                               "give a finite number")
    try:
        return PipelineParams.model_validate(params)
    except ValidationError as e:
        raise _from_validation(e, params) from None


def _param_error(key: str, value: Any, message: str, fix: str) -> SalmonInputError:
    return SalmonInputError(f"pipeline parameter {key}={json.dumps(value, default=str)}", message, fix)


def _from_validation(e: ValidationError, params: dict[str, Any]) -> SalmonInputError:
    """The first of pydantic's errors in the project's words: the parameter, its value, the fix."""
    err = e.errors()[0]
    key = str(err["loc"][0]) if err["loc"] else ""
    if err["type"] == "extra_forbidden":
        return SalmonInputError(f"parameter '{key}'", "not a pipeline parameter",
                                "see `salmon pipeline params` for the list")
    field = PipelineParams.model_fields[key]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    fix = str(extra.get("fix") or "see `salmon pipeline params`")
    value = params.get(key)
    if err["type"] in ("greater_than", "greater_than_equal", "less_than_equal"):
        bounds = {type(m).__name__: getattr(m, type(m).__name__.lower()) for m in field.metadata
                  if type(m).__name__ in ("Ge", "Gt", "Le")}
        if "Le" in bounds:
            what = f"must be between {bounds.get('Ge', bounds.get('Gt')):g} and {bounds['Le']:g}"
        elif "Gt" in bounds:
            what = f"must be greater than {bounds['Gt']:g}"
        else:
            what = f"must be {bounds['Ge']:g} or more"
        return _param_error(key, value, what, fix)
    if err["type"] in ("int_type", "float_type") or field.annotation in (int, float):
        return _param_error(key, value, f"must be a number, not {type(value).__name__}", fix)
    if key == "rl_principle_ids":
        return _param_error(key, value, "must be a list of principle ids", "e.g. [concise]")
    return _param_error(key, value, err["msg"], fix)


def _principle_set(key: str, name: str) -> Any:
    """Load the principle set a pipeline parameter names, naming the parameter on failure."""
    from salmon.core.principles import load_principle_set

    try:
        return load_principle_set(name)
    except SalmonInputError as e:
        raise SalmonInputError(f"pipeline parameter {key}='{name}': {e.source}", e.message, e.fix) from None


def _check_override_values(stage: str, values: dict[str, Any]) -> None:
    """Validate the values of ``stage_overrides[stage]`` against the stage config's fields (the
    required paths, which the pipeline fills in, get placeholders)."""
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
