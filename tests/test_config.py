"""Typed stage configs: defaults are the method's, unknown keys and bad values are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from salmon.core.config import (
    AggregateConfig,
    EvalRMConfig,
    LabelConfig,
    SampleConfig,
    TrainRMConfig,
    build_config,
    parse_overrides,
)
from salmon.core.errors import SalmonInputError

REQUIRED = {"pairs": "p.jsonl", "judgements": "j.jsonl", "output": "o.jsonl"}


def test_method_defaults() -> None:
    agg = build_config(AggregateConfig, stage="aggregate", values=REQUIRED)
    assert (agg.passes, agg.geometric_p, agg.max_principles, agg.negation_p) == (4, 0.2, 8, 0.5)
    assert (agg.label_noise, agg.rule_label_noise, agg.normalizer) == (0.10, 0.25, "variance")
    rm = build_config(TrainRMConfig, stage="train_rm",
                      values={"instances": "i", "output_dir": "o", "base_model": "m"})
    assert (rm.finetune, rm.lora_r, rm.lora_alpha, rm.learning_rate) == ("lora", 64, 16, 3e-5)
    assert (rm.model_max_length, rm.query_len, rm.response_len) == (1280, 128, 768)
    label = build_config(LabelConfig, stage="label", values={"pairs": "p", "output": "o"})
    assert label.max_length == 1536 and label.reuse_prefix
    sample = build_config(SampleConfig, stage="sample", values={"prompts": "p", "output": "o"})
    assert sample.temperature == 0.7 and sample.prompt_format == "dromedary" and sample.system_prompt is None


def test_precedence_preset_file_values_overrides(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("passes: 3\nseed: 5\n")
    cfg = build_config(AggregateConfig, stage="aggregate", preset="nano", config_file=str(cfg_file),
                       values={**REQUIRED, "seed": 6}, overrides=["negation_p=0.25"])
    assert cfg.principles == "nano"  # from the preset
    assert cfg.passes == 3 and cfg.seed == 6 and cfg.negation_p == 0.25


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pases=3"], "unknown key 'pases'"),
        (["passes=zero"], "key 'passes'"),
        (["negation_p=2"], "key 'negation_p'"),
        (["no-equals-sign"], "expected key=value"),
    ],
)
def test_bad_overrides_are_clear_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(SalmonInputError, match=message):
        build_config(AggregateConfig, stage="aggregate", values=REQUIRED, overrides=overrides)


def test_missing_required_key_and_missing_preset() -> None:
    with pytest.raises(SalmonInputError, match="missing required key 'judgements'"):
        build_config(AggregateConfig, stage="aggregate", values={"pairs": "p", "output": "o"})
    with pytest.raises(SalmonInputError, match="preset 'huge'"):
        build_config(EvalRMConfig, stage="eval_rm", preset="huge")


def test_overrides_parse_yaml_scalars() -> None:
    assert parse_overrides(["a=1", "b=0.5", "c=true", "d=x", "e=[1, 2]", "f.g=3"]) == {
        "a": 1, "b": 0.5, "c": True, "d": "x", "e": [1, 2], "f": {"g": 3}}


def test_every_field_is_documented() -> None:
    """Every field of every config model (the stages' and the nested ones) has a description."""
    import inspect

    from pydantic import BaseModel

    import salmon.core.config as config_mod
    from salmon.tasks.common import CONFIGS

    models = {cls for _, cls in inspect.getmembers(config_mod, inspect.isclass)
              if issubclass(cls, BaseModel) and cls.__module__.startswith(config_mod.__name__)}
    assert set(CONFIGS.values()) <= models and len(models) > len(CONFIGS)  # nested models (sources) too
    for cls in (SampleConfig, LabelConfig, AggregateConfig, TrainRMConfig, EvalRMConfig, *sorted(
            models, key=lambda c: c.__name__)):
        for name, field in cls.model_fields.items():
            assert field.description, f"{cls.__name__}.{name} has no description"
