"""Typed stage configs: defaults, then a YAML preset or file, then ``key=value`` overrides.

Every field is documented; unknown keys are errors. The defaults are the original method's
values; the ``nano`` presets (``salmon/configs/nano/<stage>.yaml``) shrink them for CPU.

- :mod:`.base`: the base model, path markers and the shared field groups;
- :mod:`.data`: prompts, selfalign, sample, label, aggregate, pmp_data;
- :mod:`.training`: sft, train_rm, ppo;
- :mod:`.evaluation`: eval_rm, eval_policy;
- :mod:`.loading`: presets, files and overrides into a config.
"""

from salmon.core.config.data import (
    AggregateConfig,
    LabelConfig,
    PMPDataConfig,
    PMPSource,
    PromptsConfig,
    PromptSource,
    RedTeamConfig,
    SampleConfig,
    SelfAlignConfig,
)
from salmon.core.config.evaluation import EvalPolicyConfig, EvalRMConfig
from salmon.core.config.loading import (
    PRESETS_DIR,
    build_config,
    load_yaml_mapping,
    model_ref_fields,
    parse_overrides,
    preset_path,
)
from salmon.core.config.training import PPOConfig, SFTConfig, TrainRMConfig

__all__ = [
    "PRESETS_DIR", "AggregateConfig", "EvalPolicyConfig", "EvalRMConfig", "LabelConfig", "PMPDataConfig", "PMPSource",
    "PPOConfig", "PromptSource", "PromptsConfig", "RedTeamConfig", "SFTConfig", "SampleConfig", "SelfAlignConfig",
    "TrainRMConfig", "build_config", "load_yaml_mapping", "model_ref_fields", "parse_overrides", "preset_path",
]
