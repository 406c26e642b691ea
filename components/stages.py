"""The components. Each body only maps KFP artifacts and parameters onto ``salmon.tasks``."""

import inspect
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import RUNTIME_IMAGE

INPUT_HELP = {
    "plan": "This stage's plan from the plan task (JSON): preset, config overrides, principle sets.",
    "executor": "Where a training stage runs: task (in this step's pod), trainjob or pytorchjob.",
    "backend": "Model backend of the stage: nano, hf or openai (the sampler server).",
    "sampler": "The openai backend's server: none, endpoint or deploy (sampler_endpoint, serve_sampler).",
    "rollout_backend": "Where ppo and eval_policy generate: hf (in the task or job) or openai (the sampler server, "
                       "which loads the policy's LoRA adapter at run time).",
    "seed": "Seed of the stage's random choices.",
    "sources": "Comma-separated input sources, local paths or s3:// URIs (pmp_data: FORMAT:URI); '' for none.",
    "nano_prompts": "Nano-world prompts to generate (0: none).",
    "uri": "The base model: nano, a folder, s3://bucket/prefix or models:/name@alias.",
    "nano_pretrain_steps": "Pretraining steps of the nano model.",
    "mode": "The sampler mode: none, endpoint or deploy.",
    "endpoint": "The OpenAI-compatible /v1 URL (sampler=endpoint).",
    "api_key_secret": "Secret holding the sampler server's API key.",
    "run_id": "The pipeline run's id (names and owns what the task launches).",
    "gpus": "GPUs per pod.",
    "accelerator_type": "Extended resource name of the GPUs.",
    "model_cache_pvc": "PVC mounted at /mnt/models, shared with launched pods.",
    "rl_principle_ids": "RL-time principle ids to sample from ([] for the whole set).",
    "prompts": "Prompt records (JSONL).",
    "base_model": "The base model folder.",
    "sft_data": "Self-aligned SFT examples (JSONL).",
    "sft": "The SFT stage's output (its adapter/ folder).",
    "pairs": "Response pairs (JSONL).",
    "judgements": "Judge verdicts for the pairs (JSONL).",
    "instances": "Principle-conditioned RM training instances (JSONL).",
    "pmp_data": "Preference-model pre-training pairs (JSONL; empty: no PMP phase).",
    "reward_model": "The reward model (its model/ folder).",
    "policy": "The PPO policy (its policy/ adapter).",
    "evaluation": "The evaluation folder: metrics.json, report.md (and plots).",
    "report": "The evaluation report, rendered by the KFP UI.",
    "metrics": "The stage's scalar metrics.",
    "job_manifest": "The TrainJob / PyTorchJob launched (executor trainjob or pytorchjob).",
    "model": "The base model folder.",
    "judgement_audit": "The self-judge audit of label (JSONL).",
}
"""Descriptions of the components' inputs and outputs, shown by the KFP UI (one per name)."""


def _described(fn):  # type: ignore[no-untyped-def]
    """``fn`` with an ``Args:`` section listing INPUT_HELP's text for each of its parameters."""
    names = [n for n in inspect.signature(fn).parameters if n in INPUT_HELP]
    if names and "Args:" not in (fn.__doc__ or ""):
        fn.__doc__ = (inspect.getdoc(fn) or "") + "\n\nArgs:\n" + "".join(
            f"    {n}: {INPUT_HELP[n]}\n" for n in names)
    return fn


def _component(fn=None, **kwargs):  # type: ignore[no-untyped-def]
    if fn is None:
        return lambda f: _component(f, **kwargs)
    return dsl.component(_described(fn), base_image=RUNTIME_IMAGE, install_kfp_package=False, **kwargs)


@_component
def plan(
    preset: str,
    stage_overrides: dict,
    selfalign_rules: str,
    label_principles: str,
    rl_principles: str,
    selfalign_backend: str,
    sample_backend: str,
    label_backend: str,
    sft_executor: str,
    train_rm_executor: str,
    ppo_executor: str,
    train_nodes: int,
    train_procs_per_node: int,
    train_cpu: str,
    train_memory: str,
    train_priority_class: str,
    train_queue: str,
    gpus: int,
    accelerator_type: str,
    model_cache_pvc: str,
    mlflow_secret: str,
    s3_secret: str,
    sampler_api_key_secret: str,
    sampler: str,
    sampler_endpoint: str,
    rollout_backend: str,
    base_model_uri: str,
    prompt_sources: str,
    pmp_sources: str,
    nano_prompts: int,
    nano_pretrain_steps: int,
    rl_principle_ids: list,
    rm_epochs: float,
    ppo_steps: int,
    eval_limit: int,
    min_rm_accuracy: float,
    min_rm_flip_rate: float,
    min_policy_win_rate: float,
    max_policy_kl: float,
    policy_gate_principles: str,
    training_task_gpus: int,
) -> NamedTuple("Plans", [("prompts", str), ("selfalign", str), ("sft", str), ("sample", str), ("label", str),
                          ("aggregate", str), ("pmp_data", str), ("train_rm", str), ("eval_rm", str),
                          ("ppo", str), ("eval_policy", str)]):
    """Validate every parameter (before any GPU work), record the principle sets, give each stage
    its plan. Parameters that only the validation reads do not change any plan."""
    from salmon.tasks.plan import plan_task

    params = {"preset": preset, "selfalign_rules": selfalign_rules, "label_principles": label_principles,
              "rl_principles": rl_principles, "selfalign_backend": selfalign_backend,
              "sample_backend": sample_backend, "label_backend": label_backend, "sft_executor": sft_executor,
              "train_rm_executor": train_rm_executor, "ppo_executor": ppo_executor, "sampler": sampler,
              "sampler_api_key_secret": sampler_api_key_secret,
              "sampler_endpoint": sampler_endpoint, "rollout_backend": rollout_backend,
              "base_model_uri": base_model_uri,
              "prompt_sources": prompt_sources, "pmp_sources": pmp_sources, "nano_prompts": nano_prompts,
              "nano_pretrain_steps": nano_pretrain_steps, "rl_principle_ids": rl_principle_ids,
              "rm_epochs": rm_epochs, "ppo_steps": ppo_steps, "eval_limit": eval_limit,
              "min_rm_accuracy": min_rm_accuracy, "min_rm_flip_rate": min_rm_flip_rate,
              "min_policy_win_rate": min_policy_win_rate, "max_policy_kl": max_policy_kl,
              "policy_gate_principles": policy_gate_principles, "train_nodes": train_nodes,
              "train_procs_per_node": train_procs_per_node, "gpus": gpus,
              "training_task_gpus": training_task_gpus}
    cluster = {"nodes": train_nodes, "procs_per_node": train_procs_per_node, "gpus": gpus,
               "gpu_resource": accelerator_type, "pvc": model_cache_pvc, "mlflow_secret": mlflow_secret,
               "s3_secret": s3_secret, "sampler_api_key_secret": sampler_api_key_secret or None,
               "cpu": train_cpu, "memory": train_memory, "priority_class": train_priority_class,
               "queue": train_queue}
    p = plan_task(preset=preset, stage_overrides=stage_overrides, selfalign_rules=selfalign_rules,
                  label_principles=label_principles, rl_principles=rl_principles, params=params, cluster=cluster)
    return (p["prompts"], p["selfalign"], p["sft"], p["sample"], p["label"], p["aggregate"], p["pmp_data"],
            p["train_rm"], p["eval_rm"], p["ppo"], p["eval_policy"])


@_component
def base_model(uri: str, nano_pretrain_steps: int, seed: int, model: Output[Model]) -> str:
    """The base model as an artifact: 'nano' builds the nano model; a folder or s3:// prefix is copied."""
    import json

    from salmon.tasks.common import artifact_digest
    from salmon.tasks.infra import base_model_task

    info = base_model_task(uri, model.path, nano_pretrain_steps=nano_pretrain_steps, seed=seed)
    model.metadata.update(source=uri, digest=artifact_digest(model.path))
    return json.dumps(info)


@_component
def prompts(plan: str, sources: str, nano_prompts: int, seed: int, prompts: Output[Dataset]) -> str:
    """Load, clean, dedupe and tag the prompts (comma-separated URIs), plus nano-world prompts."""
    from salmon.tasks.run import run_stage_task
    from salmon.tasks.wiring import stage_values

    values = {**stage_values("prompts", {"prompts": prompts.path}, seed=seed), "nano_prompts": nano_prompts or None,
              "sources": [{"uri": u.strip()} for u in sources.split(",") if u.strip()]}
    return run_stage_task("prompts", plan=plan, values=values, outputs={"prompts": prompts})


@_component
def selfalign(plan: str, backend: str, seed: int, prompts: Input[Dataset], base_model: Input[Model],
              sft_data: Output[Dataset]) -> str:
    """Principle-driven answers in context, filtered: the SFT data."""
    from salmon.tasks.run import run_stage_task
    from salmon.tasks.wiring import stage_values

    inputs, outputs = {"prompts": prompts, "base_model": base_model}, {"sft_data": sft_data}
    values = stage_values("selfalign", {k: a.path for k, a in {**inputs, **outputs}.items()}, seed=seed,
                          backend=backend)
    return run_stage_task("selfalign", plan=plan, values=values, inputs=inputs, outputs=outputs)


@_component
def sft(plan: str, executor: str, sft_data: Input[Dataset], base_model: Input[Model], sft: Output[Model],
        metrics: Output[Metrics], job_manifest: Output[Artifact]) -> str:
    """Principle engraving: the SFT LoRA adapter (in this task, or as a TrainJob / PyTorchJob)."""
    from salmon.tasks.run import run_stage_task
    from salmon.tasks.wiring import stage_values

    inputs, outputs = {"sft_data": sft_data, "base_model": base_model}, {"sft": sft}
    values = stage_values("sft", {k: a.path for k, a in {**inputs, **outputs}.items()})
    return run_stage_task("sft", plan=plan, executor=executor, values=values, inputs=inputs, outputs=outputs,
                          metrics=metrics, job_manifest=job_manifest)


@_component
def serve_sampler(mode: str, endpoint: str, api_key_secret: str, run_id: str, gpus: int, accelerator_type: str,
                  model_cache_pvc: str, base_model: Input[Model], sft: Input[Model]) -> str:
    """The OpenAI-compatible server of the openai backend: none, a given endpoint, or a vLLM
    Deployment serving the base model with the SFT adapter (removed by stop_sampler)."""
    from salmon.tasks.infra import serve_sampler_task
    from salmon.tasks.wiring import model_path

    cluster = {"gpus": gpus, "gpu_resource": accelerator_type, "pvc": model_cache_pvc}
    return serve_sampler_task(mode, endpoint=endpoint, base_model=base_model.path,
                              adapter=model_path({"sft": sft.path}, "sft"), run_id=run_id, cluster=cluster,
                              api_key_secret=api_key_secret)


@_component
def stop_sampler(mode: str, run_id: str, rollout_backend: str) -> str:
    """Remove the vLLM server this run deployed once sample and label succeeded or failed, unless
    ppo and eval_policy generate on it too (rollout_backend openai). A cancelled run skips this
    task; the salmon-sweeper CronJob removes the server then (docs/deploy.md)."""
    from salmon.tasks.infra import stop_sampler_task

    return ", ".join(stop_sampler_task(mode, run_id=run_id, keep=rollout_backend == "openai"))


@_component
def stop_sampler_after_rollouts(mode: str, run_id: str, rollout_backend: str) -> str:
    """With rollout_backend openai, remove the vLLM server this run deployed once ppo and
    eval_policy succeeded or failed (with hf, stop_sampler removed it after label)."""
    from salmon.tasks.infra import stop_sampler_task

    return ", ".join(stop_sampler_task(mode, run_id=run_id, keep=rollout_backend != "openai"))


def _server_values(backend: str, sampler: str) -> dict:
    """Config values that point the openai backend at the run's server."""
    import json

    server = json.loads(sampler or "{}")
    return {k: v for k, v in server.items() if k in ("endpoint", "served_model")} if backend == "openai" else {}


@_component(additional_funcs=[_server_values])
def sample(plan: str, backend: str, sampler: str, seed: int, prompts: Input[Dataset], base_model: Input[Model],
           sft: Input[Model], pairs: Output[Dataset]) -> str:
    """Two responses per prompt from the SFT policy."""
    from salmon.tasks.run import run_stage_task
    from salmon.tasks.wiring import stage_values

    inputs, outputs = {"prompts": prompts, "base_model": base_model, "sft": sft}, {"pairs": pairs}
    values = stage_values("sample", {k: a.path for k, a in {**inputs, **outputs}.items()}, seed=seed, backend=backend)
    return run_stage_task("sample", plan=plan, values={**values, **_server_values(backend, sampler)}, inputs=inputs,
                          outputs=outputs)


@_component(additional_funcs=[_server_values])
def label(plan: str, backend: str, sampler: str, pairs: Input[Dataset], base_model: Input[Model], sft: Input[Model],
          judgements: Output[Dataset]) -> str:
    """AI feedback: the SFT policy judges each pair under each principle, both orders."""
    from salmon.tasks.run import run_stage_task
    from salmon.tasks.wiring import stage_values

    inputs, outputs = {"pairs": pairs, "base_model": base_model, "sft": sft}, {"judgements": judgements}
    values = stage_values("label", {k: a.path for k, a in {**inputs, **outputs}.items()}, backend=backend)
    return run_stage_task("label", plan=plan, values={**values, **_server_values(backend, sampler)}, inputs=inputs,
                          outputs=outputs)


@_component
def aggregate(plan: str, seed: int, pairs: Input[Dataset], judgements: Input[Dataset],
              instances: Output[Dataset]) -> str:
    """Principle-conditioned reward-model training instances."""
    from salmon.tasks.run import run_stage_task
    from salmon.tasks.wiring import stage_values

    inputs, outputs = {"pairs": pairs, "judgements": judgements}, {"instances": instances}
    values = stage_values("aggregate", {k: a.path for k, a in {**inputs, **outputs}.items()}, seed=seed)
    return run_stage_task("aggregate", plan=plan, values=values, inputs=inputs, outputs=outputs)


@_component
def pmp_data(plan: str, sources: str, seed: int, pairs: Output[Dataset]) -> str:
    """Preference-model pre-training pairs from the pmp_sources files; with none, an empty file."""
    from salmon.tasks.run import pmp_data_task

    return pmp_data_task(plan, sources, seed, pairs)


@_component
def train_rm(plan: str, executor: str, instances: Input[Dataset], base_model: Input[Model],
             pmp_data: Input[Dataset], reward_model: Output[Model], metrics: Output[Metrics],
             job_manifest: Output[Artifact]) -> str:
    """The principle-following reward model (in this task, or as a TrainJob / PyTorchJob), after a
    PMP phase on the pmp_data pairs when there are any."""
    from salmon.tasks.run import has_pmp_pairs, run_stage_task
    from salmon.tasks.wiring import stage_values

    inputs, outputs = {"instances": instances, "base_model": base_model}, {"reward_model": reward_model}
    if has_pmp_pairs(pmp_data):
        inputs["pmp_data"] = pmp_data
    values = stage_values("train_rm", {k: a.path for k, a in {**inputs, **outputs}.items()})
    return run_stage_task("train_rm", plan=plan, executor=executor, values=values, inputs=inputs, outputs=outputs,
                          metrics=metrics, job_manifest=job_manifest)


@_component
def eval_rm(plan: str, reward_model: Input[Model], pairs: Input[Dataset], judgements: Input[Dataset],
            evaluation: Output[Artifact], report: Output[Markdown], metrics: Output[Metrics]) -> str:
    """Held-out accuracy, principle-flip rate, sensitivity and the self-praise check of the RM."""
    from salmon.tasks.common import publish_report
    from salmon.tasks.run import run_stage_task
    from salmon.tasks.wiring import stage_values

    inputs = {"reward_model": reward_model, "pairs": pairs, "judgements": judgements}
    outputs = {"evaluation": evaluation}
    values = stage_values("eval_rm", {k: a.path for k, a in {**inputs, **outputs}.items()})
    result = run_stage_task("eval_rm", plan=plan, values=values, inputs=inputs, outputs=outputs, metrics=metrics)
    publish_report(evaluation.path, report.path)
    return result


@_component
def ppo(plan: str, executor: str, rollout_backend: str, sampler: str, prompts: Input[Dataset],
        base_model: Input[Model], sft: Input[Model], reward_model: Input[Model], policy: Output[Model],
        metrics: Output[Metrics], job_manifest: Output[Artifact]) -> str:
    """RL against the reward model, steered by the RL-time principles (in this task, or as a job)."""
    from salmon.tasks.infra import rollout_values
    from salmon.tasks.run import run_stage_task
    from salmon.tasks.wiring import stage_values

    inputs = {"prompts": prompts, "base_model": base_model, "sft": sft, "reward_model": reward_model}
    outputs = {"policy": policy}
    values = stage_values("ppo", {k: a.path for k, a in {**inputs, **outputs}.items()})
    return run_stage_task("ppo", plan=plan, executor=executor, values={**values, **rollout_values(
        rollout_backend, sampler)}, inputs=inputs, outputs=outputs, metrics=metrics, job_manifest=job_manifest)


@_component
def eval_policy(plan: str, rollout_backend: str, sampler: str, prompts: Input[Dataset],
                base_model: Input[Model], sft: Input[Model], policy: Input[Model], reward_model: Input[Model],
                evaluation: Output[Artifact], report: Output[Markdown], metrics: Output[Metrics]) -> str:
    """The policy against the SFT policy: rewards, adherence, KL, length, win rate, plots."""
    from salmon.tasks.common import publish_report
    from salmon.tasks.infra import rollout_values
    from salmon.tasks.run import run_stage_task
    from salmon.tasks.wiring import stage_values

    inputs = {"prompts": prompts, "sft": sft, "policy": policy, "reward_model": reward_model}
    outputs = {"evaluation": evaluation}
    values = stage_values("eval_policy", {"base_model": base_model.path,
                                          **{k: a.path for k, a in {**inputs, **outputs}.items()}})
    result = run_stage_task("eval_policy", plan=plan, values={**values, **rollout_values(rollout_backend, sampler)},
                            inputs=inputs, outputs=outputs, metrics=metrics)
    publish_report(evaluation.path, report.path)
    return result


@_component
def register(prompts: str, selfalign: str, sft: str, sample: str, label: str, aggregate: str, pmp_data: str,
             train_rm: str, eval_rm: str, ppo: str, eval_policy: str, kfp_run_id: str,
             min_rm_accuracy: float, min_rm_flip_rate: float, min_policy_win_rate: float, max_policy_kl: float,
             policy_gate_principles: str) -> str:
    """Register the three models (alias candidate); move champion where the gates pass.

    Args:
        prompts: The prompts task's result (JSON: outputs, metrics, MLflow run), as every stage's below.
        selfalign: The selfalign task's result.
        sft: The sft task's result (the SFT adapter is registered).
        sample: The sample task's result.
        label: The label task's result.
        aggregate: The aggregate task's result.
        pmp_data: The pmp_data task's result ('' when it had no sources).
        train_rm: The train_rm task's result (the reward model is registered).
        eval_rm: The eval_rm task's result (the reward model's gates read it).
        ppo: The ppo task's result (the policy is registered).
        eval_policy: The eval_policy task's result (the policy's gates read it).
        kfp_run_id: The pipeline run's id, tagged on every version.
        min_rm_accuracy: Gate: the reward model's held-out accuracy at least this.
        min_rm_flip_rate: Gate: the reward model's flip rate at least this.
        min_policy_win_rate: Gate: the policy's RM win rate over SFT at least this.
        max_policy_kl: Gate: the policy's KL to SFT at most this.
        policy_gate_principles: The principle set (set or set:id,...) the win-rate gate reads.
    """
    import json

    from salmon.tasks.register import register_task

    summary = register_task(
        {"prompts": prompts, "selfalign": selfalign, "sft": sft, "sample": sample, "label": label,
         "aggregate": aggregate, "pmp_data": pmp_data, "train_rm": train_rm, "eval_rm": eval_rm, "ppo": ppo,
         "eval_policy": eval_policy},
        kfp_run_id=kfp_run_id, min_rm_accuracy=min_rm_accuracy, min_rm_flip_rate=min_rm_flip_rate,
        min_policy_win_rate=min_policy_win_rate, max_policy_kl=max_policy_kl,
        policy_gate_principles=policy_gate_principles)
    return json.dumps(summary)
