"""Thin KFP components, one per SALMON stage, plus the pipeline's plan, base_model, register and
serve_sampler / stop_sampler (the vLLM server of the openai backend) tasks. Each imports
``salmon`` inside its function and calls the stage recipe through ``salmon.tasks``; nothing here
holds algorithm code.

Every component is a lightweight Python component with ``base_image`` set to the project's
runtime image and ``install_kfp_package=False``: on a cluster it runs in that image, and under
``kfp.local.SubprocessRunner(use_venv=False)`` it runs in the developer's venv, where salmon is
installed. The same code path covers both.
"""

from components.stages import (
    aggregate,
    base_model,
    eval_policy,
    eval_rm,
    label,
    plan,
    pmp_data,
    ppo,
    prompts,
    register,
    sample,
    selfalign,
    serve_sampler,
    sft,
    stop_sampler,
    stop_sampler_after_rollouts,
    train_rm,
)

__all__ = ["aggregate", "base_model", "eval_policy", "eval_rm", "label", "plan", "pmp_data", "ppo", "prompts",
           "register", "sample", "selfalign", "serve_sampler", "sft", "stop_sampler",
           "stop_sampler_after_rollouts", "train_rm"]
