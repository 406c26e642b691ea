"""How a stage's artifacts become its config values: the one table of which input or output goes
to which config field (and into which subfolder of a model artifact), and the seed offsets. The
pipeline's components and the pipeline benchmark's direct run both call :func:`stage_values`.
"""

from __future__ import annotations

from typing import Any

from salmon.core.stages import STAGES

MODEL_ARTIFACTS = {"sft": "sft", "reward_model": "train_rm", "policy": "ppo"}
"""Artifact name -> the training stage that wrote it; its model is the stage's ``model_subdir``."""

SEED_OFFSETS = {"prompts": 0, "selfalign": 5, "sample": 1, "aggregate": 42, "pmp_data": 7}
"""Each seeded stage's offset from the pipeline's ``seed`` (``sample`` uses two seeds: +1 and +2)."""


def model_path(artifacts: dict[str, str], name: str) -> str:
    """The model folder inside the training artifact ``name`` (``sft`` -> ``<path>/adapter``)."""
    subdir = STAGES[MODEL_ARTIFACTS[name]].model_subdir
    return f"{artifacts[name]}/{subdir}"


def stage_values(stage: str, artifacts: dict[str, str], *, seed: int = 0, backend: str = "") -> dict[str, Any]:
    """Config values of ``stage`` from its artifacts' paths (by their names in the pipeline: the
    inputs it reads and the outputs it writes), the pipeline's ``seed`` and the stage's
    ``backend`` where it has one. Values that come from the plan (presets, overrides, principle
    sets) or from the run's server are not here."""
    a = artifacts
    seeded = seed + SEED_OFFSETS.get(stage, 0)
    table: dict[str, Any] = {
        "prompts": lambda: {"output": a["prompts"], "seed": seeded},
        "selfalign": lambda: {"prompts": a["prompts"], "model": a["base_model"], "output": a["sft_data"],
                              "backend": backend, "seed": seeded},
        "sft": lambda: {"data": a["sft_data"], "base_model": a["base_model"], "output_dir": a["sft"]},
        "sample": lambda: {"prompts": a["prompts"], "model": a["base_model"], "adapter": model_path(a, "sft"),
                           "output": a["pairs"], "backend": backend, "seeds": [seed + 1, seed + 2]},
        "label": lambda: {"pairs": a["pairs"], "model": a["base_model"], "adapter": model_path(a, "sft"),
                          "output": a["judgements"], "backend": backend},
        "aggregate": lambda: {"pairs": a["pairs"], "judgements": a["judgements"], "output": a["instances"],
                              "seed": seeded},
        "pmp_data": lambda: {"output": a["pairs"], "seed": seeded},
        "train_rm": lambda: {"instances": a["instances"], "base_model": a["base_model"],
                             "output_dir": a["reward_model"], **({"pmp_data": a["pmp_data"]} if "pmp_data" in a
                                                                else {})},
        "eval_rm": lambda: {"model": model_path(a, "reward_model"), "pairs": a["pairs"], "judgements": a["judgements"],
                            "output_dir": a["evaluation"]},
        "ppo": lambda: {"prompts": a["prompts"], "policy_model": a["base_model"],
                        "policy_adapter": model_path(a, "sft"), "reward_model": model_path(a, "reward_model"),
                        "output_dir": a["policy"]},
        "eval_policy": lambda: {"prompts": a["prompts"], "base_model": a["base_model"],
                                "baseline_adapter": model_path(a, "sft"), "policy_adapter": model_path(a, "policy"),
                                "reward_model": model_path(a, "reward_model"), "output_dir": a["evaluation"],
                                "policy_label": "ppo"},
    }
    values: dict[str, Any] = table[stage]()
    return values
