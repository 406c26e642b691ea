"""The pipeline parameters' checks that need no model, run before any GPU work: in the
pipeline's first task, by ``salmon pipeline run|submit`` and by ``salmon demo``."""

from __future__ import annotations

import json
from typing import Any

from salmon.core.config import LabelConfig, SampleConfig, SelfAlignConfig
from salmon.core.errors import SalmonInputError
from salmon.tasks.common import BASE_NAMES, CONFIGS, SAMPLER_MODES, check_executor, stage_value


def _param_error(key: str, value: Any, message: str, fix: str) -> SalmonInputError:
    return SalmonInputError(f"pipeline parameter {key}={json.dumps(value, default=str)}", message, fix)


def _param_number(params: dict[str, Any], key: str, *, low: float, high: float | None = None,
                  low_open: bool = False, fix: str) -> None:
    """``params[key]``, when present, must be a number in [low, high] (low excluded with ``low_open``)."""
    if key not in params or params[key] is None:
        return
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _param_error(key, value, f"must be a number, not {type(value).__name__}", fix)
    if (value <= low if low_open else value < low) or (high is not None and value > high):
        if high is not None:
            what = f"must be between {low:g} and {high:g}"
        elif low_open:
            what = f"must be greater than {low:g}"
        else:
            what = f"must be {low:g} or more"
        raise _param_error(key, value, what, fix)


def _param_principle_set(key: str, name: str) -> Any:
    """Load the principle set a pipeline parameter names, naming the parameter on failure."""
    from salmon.core.principles import load_principle_set

    try:
        return load_principle_set(name)
    except SalmonInputError as e:
        raise SalmonInputError(f"pipeline parameter {key}='{name}': {e.source}", e.message, e.fix) from None


def _check_override_values(stage: str, values: dict[str, Any]) -> None:
    """Validate the values of ``stage_overrides[stage]`` against the stage config's fields (the
    required paths, which the pipeline fills in, get placeholders)."""
    from pydantic import ValidationError

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


def validate_pipeline_params(params: dict[str, Any]) -> None:
    """Checks that need no model: run in the pipeline's first task (and by ``salmon pipeline
    run|submit`` and ``salmon demo`` before anything starts), before any GPU work.

    Every parameter present in ``params`` is checked; absent ones are not.

    Raises:
        SalmonInputError: naming the parameter, its value and what to give instead.
    """
    from salmon.core.config import PRESETS_DIR
    from salmon.core.io import non_finite

    for key, value in params.items():  # one policy for every number, nested ones included
        if non_finite(value):
            raise _param_error(key, value, f"holds a NaN or infinite number ({', '.join(non_finite(value, key))})",
                               "give a finite number")
    from salmon.cluster.names import check_name

    for key, kind in (("mlflow_secret", "secret"), ("s3_secret", "secret"), ("sampler_api_key_secret", "secret"),
                      ("model_cache_pvc", "persistent volume claim")):
        if key in params:
            check_name(params[key], kind, f"pipeline parameter {key}")

    sampler = params.get("sampler", "none")
    if sampler not in SAMPLER_MODES:
        raise SalmonInputError(f"pipeline parameter sampler='{sampler}'", "unknown sampler mode",
                               f"use one of {', '.join(SAMPLER_MODES)}")
    if sampler == "endpoint" and not str(params.get("sampler_endpoint", "")).startswith(("http://", "https://")):
        raise SalmonInputError("pipeline parameter sampler_endpoint",
                               f"'{params.get('sampler_endpoint', '')}' is not an http(s) URL",
                               "give the server's base URL, e.g. http://vllm.salmon.svc:8000/v1")
    if params.get("rollout_backend", "hf") not in ("hf", "openai"):
        raise SalmonInputError(f"pipeline parameter rollout_backend='{params['rollout_backend']}'",
                               "unknown rollout backend", "use hf or openai")
    for key in ("sample_backend", "label_backend", "rollout_backend"):
        if params.get(key) == "openai" and sampler == "none":
            raise SalmonInputError(f"pipeline parameter {key}='openai'", "needs a server",
                                   "set sampler=deploy (a vLLM server for this run) or sampler=endpoint "
                                   "with sampler_endpoint=URL")
    for key in ("sft_executor", "train_rm_executor", "ppo_executor"):
        if key in params:
            check_executor(key.removesuffix("_executor"), str(params[key]))
    backends = {"selfalign_backend": SelfAlignConfig, "sample_backend": SampleConfig, "label_backend": LabelConfig}
    for key, cls in backends.items():
        if key in params and params[key]:
            allowed = cls.model_fields["backend"].annotation.__args__  # a Literal
            if params[key] not in allowed:
                raise SalmonInputError(f"pipeline parameter {key}='{params[key]}'", "unknown backend",
                                       f"use one of {', '.join(allowed)}")

    # sizes, counts and gates
    _param_number(params, "rm_epochs", low=0, low_open=True, fix="e.g. rm_epochs=1; fractions are allowed")
    for key, fix in (("nano_prompts", "0 for none"), ("nano_pretrain_steps", "e.g. 300"),
                     ("ppo_steps", "0 keeps the preset's total_epochs"), ("eval_limit", "0 for all prompts"),
                     ("train_procs_per_node", "0 for one per GPU"), ("gpus", "0 for none"),
                     ("training_task_gpus", "0 when the training stages launch jobs")):
        _param_number(params, key, low=0, fix=fix)
    _param_number(params, "train_nodes", low=1, fix="1 or more pods per training job")
    rates = ("min_rm_accuracy", "min_rm_flip_rate", "min_policy_win_rate")
    for key in rates:
        _param_number(params, key, low=0, high=1, fix="a share, e.g. 0.8; 0 turns the gate off")
    _param_number(params, "max_policy_kl", low=0, fix="nats per response, e.g. 5.0")
    for key in params:  # any other gate
        if key.startswith(("min_", "max_")) and key not in (*rates, "max_policy_kl"):
            _param_number(params, key, low=0, high=1e6, fix="a non-negative number")

    # where the model, the presets and the prompts come from
    if "base_model_uri" in params:
        uri = str(params["base_model_uri"])
        from salmon.tracking import REGISTRY_URI

        registered = uri.startswith("models:/") and REGISTRY_URI.match(uri)
        if not uri or ("://" in uri and not uri.startswith("s3://")) or (
                uri.startswith(("models:/", "runs:/")) and not registered):
            raise _param_error("base_model_uri", uri, "not a supported model URI",
                               f"give 'nano', {BASE_NAMES}, a model folder (a PVC path), an s3:// prefix or "
                               "models:/<name>/<version> (or @<alias>)")
        if uri.startswith("s3://"):
            from salmon.storage import split_s3_uri

            split_s3_uri(uri.rstrip("/") + "/x")
    preset = params.get("preset")
    if preset and not (PRESETS_DIR / str(preset)).is_dir():
        known = sorted(p.name for p in PRESETS_DIR.iterdir() if p.is_dir())
        raise _param_error("preset", preset, "no such preset",
                           f"use one of {', '.join(known)}, or '' for the method's defaults")
    for uri in str(params.get("prompt_sources") or "").split(","):
        uri = uri.strip()
        if uri and "://" in uri and not uri.startswith("s3://"):
            raise _param_error("prompt_sources", params["prompt_sources"], f"'{uri}' is not a local path or s3:// URI",
                               "give comma-separated local paths or s3://bucket/key URIs")
        if uri.startswith("s3://"):
            from salmon.storage import split_s3_uri

            split_s3_uri(uri)

    overrides = params.get("stage_overrides") or {}
    if not isinstance(overrides, dict) or any(s not in CONFIGS for s in overrides):
        raise SalmonInputError("pipeline parameter stage_overrides",
                               f"must map stage names ({', '.join(CONFIGS)}) to config keys",
                               'e.g. {"ppo": {"kl_coef": 0.02}}')
    for stage, values in overrides.items():
        if not isinstance(values, dict):
            raise SalmonInputError(f"pipeline parameter stage_overrides.{stage}", "must be a mapping of config keys",
                                   'e.g. {"ppo": {"kl_coef": 0.02}}')
        fields = CONFIGS[stage].model_fields
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise SalmonInputError(f"pipeline parameter stage_overrides.{stage}", f"unknown keys {unknown}",
                                   f"see `salmon {stage} --help` for the keys")
        _check_override_values(stage, values)

    pmp = str(params.get("pmp_sources") or "")
    if pmp.strip():
        from salmon.core.pmp import parse_source_spec
        from salmon.storage import split_s3_uri

        try:
            for entry in parse_source_spec(pmp):
                if entry["uri"].startswith("s3://"):
                    split_s3_uri(entry["uri"])
        except SalmonInputError as e:
            raise _param_error("pmp_sources", pmp, f"{e.source}: {e.message}", e.fix or "") from None
        mode = stage_value("train_rm", preset or None, dict(overrides.get("train_rm", {})), "deepspeed")
        if mode != "off":
            raise _param_error("pmp_sources", pmp, f"train_rm trains with deepspeed={mode}, and its PMP phase "
                               "runs single-process only", "leave pmp_sources empty, or train the reward model "
                               'without DeepSpeed: stage_overrides {"train_rm": {"deepspeed": "off"}}')

    # principle sets and the ids chosen from them (as plan_task resolves them)
    for key in ("selfalign_rules", "label_principles", "rl_principles"):
        if params.get(key):
            _param_principle_set(key, str(params[key]))
    ids = params.get("rl_principle_ids")
    if ids:
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise _param_error("rl_principle_ids", ids, "must be a list of principle ids", "e.g. [concise]")
        ppo = dict(overrides.get("ppo", {}))
        if params.get("rl_principles"):
            ppo.setdefault("rl_principles", params["rl_principles"])
        name = str(stage_value("ppo", preset or None, ppo, "rl_principles"))
        pset = _param_principle_set("rl_principle_ids", name)
        try:
            pset.subset(ids)
        except SalmonInputError as e:
            raise SalmonInputError(f"pipeline parameter rl_principle_ids: {e.source}", e.message, e.fix) from None
    spec = params.get("policy_gate_principles")
    if spec:
        name, _, chosen = str(spec).partition(":")
        pset = _param_principle_set("policy_gate_principles", name)
        try:
            pset.subset([i.strip() for i in chosen.split(",") if i.strip()] if chosen else None)
        except SalmonInputError as e:
            raise SalmonInputError(f"pipeline parameter policy_gate_principles: {e.source}", e.message,
                                   e.fix) from None
        gate = params.get("min_policy_win_rate")
        measured = stage_value("eval_policy", preset or None, dict(overrides.get("eval_policy", {})),
                                "principle_sets")
        if gate and spec not in measured:
            raise _param_error("policy_gate_principles", spec, "eval_policy does not score under it, so the "
                               "win-rate gate could never pass",
                               f"use one of eval_policy's principle_sets ({', '.join(map(str, measured))}), or "
                               "min_policy_win_rate=0")
