"""The SALMON pipeline: prompts -> selfalign -> sft -> sample -> label -> aggregate -> train_rm ->
eval_rm -> ppo -> eval_policy -> register, after a ``plan`` task (parameter checks, principle
digests, per-stage plans) and a ``base_model`` task. ``pmp_data`` turns the ``pmp_sources``
files into pairs for train_rm's PMP phase; without them it writes an empty file and train_rm has
no PMP phase. The defaults run the nano world.

Compile with ``salmon pipeline compile``; run locally with ``salmon demo``.
"""

from kfp import dsl

import components as c
from pipelines import platform

PIPELINE_NAME = "salmon"
UNCACHED = ("plan", "serve_sampler", "stop_sampler", "stop_sampler_after_rollouts", "register")
"""Tasks that always run: plan re-reads the principle files; serve_sampler makes sure the server is
up for this run and stop_sampler removes it; register reflects the registry now."""


@dsl.pipeline(name=PIPELINE_NAME, description="SALMON: align a base model with principles, from "
              "synthetic preferences to a principle-following reward model to PPO.")
def salmon_pipeline(
    base_model_uri: str = "nano",
    preset: str = "nano",
    prompt_sources: str = "",
    pmp_sources: str = "",
    nano_prompts: int = 4000,
    nano_pretrain_steps: int = 300,
    seed: int = 0,
    selfalign_rules: str = "",
    label_principles: str = "",
    rl_principles: str = "",
    rl_principle_ids: list = ["concise"],  # noqa: B006 (a KFP default, never mutated)
    selfalign_backend: str = "nano",
    sample_backend: str = "nano",
    label_backend: str = "rules",
    sampler: str = "none",
    rollout_backend: str = "hf",
    sampler_endpoint: str = "",
    sampler_api_key_secret: str = "salmon-vllm-api-key",
    sft_executor: str = "local",
    train_rm_executor: str = "local",
    ppo_executor: str = "local",
    train_nodes: int = 1,
    train_procs_per_node: int = 0,
    train_cpu: str = "",
    train_memory: str = "",
    train_priority_class: str = "",
    train_queue: str = "",
    rm_epochs: float = 1.0,
    ppo_steps: int = 0,
    eval_limit: int = 0,
    min_rm_accuracy: float = 0.80,
    min_rm_flip_rate: float = 0.75,
    min_policy_win_rate: float = 0.60,
    max_policy_kl: float = 5.0,
    policy_gate_principles: str = "nano:concise",
    stage_overrides: dict = {},  # noqa: B006
    accelerator_type: str = "nvidia.com/gpu",
    gpus: int = 1,
    training_task_gpus: int = 1,
    mlflow_secret: str = "salmon-mlflow",
    s3_secret: str = "salmon-s3",
    model_cache_pvc: str = "salmon-model-cache",
) -> str:
    """Align a base model with principles the SALMON way.

    Args:
        base_model_uri: The base model: 'nano' builds the tiny nano-world model; 'smollm2' prepares SmolLM2-135M-Instruct from its Python package; otherwise a Hugging Face model folder (PVC path), an s3:// prefix, or models:/<name>/<version> (or @<alias>) for the model folder in a registered version's artifacts.
        preset: Config preset applied to every stage before the overrides ('nano' or '' for the method's defaults).
        prompt_sources: Comma-separated prompt JSONL files (local paths or s3:// URIs); empty for none.
        pmp_sources: Preference data for train_rm's PMP phase: comma-separated FORMAT:URI entries, FORMAT hh_rlhf (Anthropic HH-RLHF) or shp (Stanford SHP), URI a JSONL file (local path or s3:// URI), e.g. hh_rlhf:s3://data/hh-rlhf/train.jsonl; empty for no PMP phase. Needs train_rm without DeepSpeed.
        nano_prompts: Synthetic nano-world prompts to add (0 for none).
        nano_pretrain_steps: Pretraining steps of the nano base model.
        seed: Seed of every stage (each stage offsets it).
        selfalign_rules: Principle set of the self-alignment rules; empty keeps the preset's.
        label_principles: Principle set the AI judge labels with, the RM learns and eval_rm checks; empty keeps the preset's.
        rl_principles: Principle set sampled at RL time; empty keeps the preset's.
        rl_principle_ids: Principles of the RL-time set to use (empty list for all).
        selfalign_backend: Generator of the self-aligned answers: hf or nano.
        sample_backend: Generator of the response pairs: hf, nano, or openai (the run's sampler server).
        label_backend: Judge: hf (the model's own logits), openai (the same logits from the sampler server's logprobs) or rules (exact checkers, nano world).
        sampler: Server of the openai backends: none, endpoint (sampler_endpoint) or deploy (a vLLM Deployment serving the base model + SFT adapter for this run, removed when the run ends).
        rollout_backend: Where ppo and eval_policy generate: hf (in their own task or job) or openai (the sampler server, which loads the policy's LoRA adapter before every PPO step; the server then stays up until eval_policy ends).
        sampler_endpoint: Base URL of an existing OpenAI-compatible server (sampler=endpoint), e.g. http://vllm.salmon.svc:8000/v1.
        sampler_api_key_secret: Name of the Secret (key 'api-key') with the sampler server's API key.
        sft_executor: Where SFT training runs: local (in the task's pod), trainjob (Kubeflow Trainer v2) or pytorchjob (training-operator v1).
        train_rm_executor: Where reward-model training runs: local, trainjob or pytorchjob.
        ppo_executor: Where PPO runs: local, trainjob or pytorchjob.
        train_nodes: Pods per training job (trainjob / pytorchjob executors).
        train_procs_per_node: torchrun processes per training pod (0: one per GPU, or 1 without GPUs).
        train_cpu: CPU of each training pod, e.g. 8 or 500m ('': the training runtime's on a TrainJob without GPUs, else 8).
        train_memory: Memory of each training pod, e.g. 64Gi ('': the training runtime's on a TrainJob without GPUs, else 64Gi).
        train_priority_class: Priority class of the training jobs ('': the cluster's default).
        train_queue: Kueue LocalQueue the training jobs are submitted to ('': none).
        rm_epochs: Passes of train_rm over its instances.
        ppo_steps: PPO steps to schedule (0 keeps the preset's total_epochs).
        eval_limit: Held-out prompts eval_policy uses (0 for all).
        min_rm_accuracy: Gate: the RM's held-out accuracy needed to move the champion alias.
        min_rm_flip_rate: Gate: the RM's principle-flip rate needed to move the champion alias.
        min_policy_win_rate: Gate: the policy's win rate over the SFT policy under policy_gate_principles.
        max_policy_kl: Gate: the largest KL of the policy to the SFT policy (nats per response).
        policy_gate_principles: The eval_policy principle spec the win-rate gate reads, e.g. 'nano:concise'.
        stage_overrides: Advanced: config keys per stage, e.g. {"ppo": {"kl_coef": 0.02}}.
        accelerator_type: GPU resource name of the GPU stages.
        gpus: GPUs of eval_policy's pod and of each pod of a training job (trainjob / pytorchjob).
        training_task_gpus: GPUs the sft, train_rm and ppo tasks request themselves: their own with the local executor; 0 when they launch jobs.
        mlflow_secret: Name of the Secret with MLFLOW_TRACKING_URI (and credentials) for every task.
        s3_secret: Name of the Secret with the S3 credentials and endpoint for every task.
        model_cache_pvc: Name of the PVC mounted at /mnt/models in every task.
    """
    pod = dict(accelerator_type=accelerator_type, gpus=gpus, training_task_gpus=training_task_gpus,
               mlflow_secret=mlflow_secret, s3_secret=s3_secret, model_cache_pvc=model_cache_pvc,
               sampler_api_key_secret=sampler_api_key_secret)

    plan = c.plan(preset=preset, stage_overrides=stage_overrides, selfalign_rules=selfalign_rules,
                  label_principles=label_principles, rl_principles=rl_principles,
                  selfalign_backend=selfalign_backend, sample_backend=sample_backend, label_backend=label_backend,
                  sft_executor=sft_executor, train_rm_executor=train_rm_executor, ppo_executor=ppo_executor,
                  train_nodes=train_nodes, train_procs_per_node=train_procs_per_node, train_cpu=train_cpu,
                  train_memory=train_memory, train_priority_class=train_priority_class, train_queue=train_queue,
                  gpus=gpus,
                  accelerator_type=accelerator_type, model_cache_pvc=model_cache_pvc, mlflow_secret=mlflow_secret,
                  s3_secret=s3_secret, sampler_api_key_secret=sampler_api_key_secret, sampler=sampler,
                  sampler_endpoint=sampler_endpoint, rollout_backend=rollout_backend, base_model_uri=base_model_uri, prompt_sources=prompt_sources, pmp_sources=pmp_sources,
                  nano_prompts=nano_prompts,
                  nano_pretrain_steps=nano_pretrain_steps, rl_principle_ids=rl_principle_ids, rm_epochs=rm_epochs,
                  ppo_steps=ppo_steps, eval_limit=eval_limit, min_rm_accuracy=min_rm_accuracy,
                  min_rm_flip_rate=min_rm_flip_rate, min_policy_win_rate=min_policy_win_rate,
                  max_policy_kl=max_policy_kl, policy_gate_principles=policy_gate_principles,
                  training_task_gpus=training_task_gpus)
    plans = plan.outputs
    base = c.base_model(uri=base_model_uri, nano_pretrain_steps=nano_pretrain_steps, seed=seed).after(plan)
    model = base.outputs["model"]
    prompts = c.prompts(plan=plans["prompts"], sources=prompt_sources, nano_prompts=nano_prompts, seed=seed)
    selfalign = c.selfalign(plan=plans["selfalign"], backend=selfalign_backend, seed=seed,
                            prompts=prompts.outputs["prompts"], base_model=model)
    sft = c.sft(plan=plans["sft"], executor=sft_executor, sft_data=selfalign.outputs["sft_data"],
                base_model=model)
    serve = c.serve_sampler(mode=sampler, endpoint=sampler_endpoint, api_key_secret=sampler_api_key_secret,
                            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, gpus=gpus, accelerator_type=accelerator_type,
                            model_cache_pvc=model_cache_pvc, base_model=model, sft=sft.outputs["sft"])
    sampler_info = serve.output
    sample = c.sample(plan=plans["sample"], backend=sample_backend, sampler=sampler_info, seed=seed,
                      prompts=prompts.outputs["prompts"], base_model=model, sft=sft.outputs["sft"])
    label = c.label(plan=plans["label"], backend=label_backend, sampler=sampler_info,
                    pairs=sample.outputs["pairs"], base_model=model, sft=sft.outputs["sft"])
    aggregate = c.aggregate(plan=plans["aggregate"], seed=seed, pairs=sample.outputs["pairs"],
                            judgements=label.outputs["judgements"])
    pmp = c.pmp_data(plan=plans["pmp_data"], sources=pmp_sources, seed=seed)
    train_rm = c.train_rm(plan=plans["train_rm"], executor=train_rm_executor,
                          instances=aggregate.outputs["instances"], base_model=model,
                          pmp_data=pmp.outputs["pairs"])
    eval_rm = c.eval_rm(plan=plans["eval_rm"], reward_model=train_rm.outputs["reward_model"],
                        pairs=sample.outputs["pairs"], judgements=label.outputs["judgements"])
    ppo = c.ppo(plan=plans["ppo"], executor=ppo_executor, rollout_backend=rollout_backend, sampler=sampler_info,
                prompts=prompts.outputs["prompts"], base_model=model, sft=sft.outputs["sft"],
                reward_model=train_rm.outputs["reward_model"])
    eval_policy = c.eval_policy(plan=plans["eval_policy"], rollout_backend=rollout_backend,
                                sampler=sampler_info, prompts=prompts.outputs["prompts"],
                                base_model=model, sft=sft.outputs["sft"], policy=ppo.outputs["policy"],
                                reward_model=train_rm.outputs["reward_model"])
    register = c.register(prompts=prompts.outputs["Output"], selfalign=selfalign.outputs["Output"],
                          sft=sft.outputs["Output"], sample=sample.outputs["Output"], label=label.outputs["Output"],
                          aggregate=aggregate.outputs["Output"], pmp_data=pmp.outputs["Output"],
                          train_rm=train_rm.outputs["Output"],
                          eval_rm=eval_rm.outputs["Output"], ppo=ppo.outputs["Output"],
                          eval_policy=eval_policy.outputs["Output"], kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                          min_rm_accuracy=min_rm_accuracy, min_rm_flip_rate=min_rm_flip_rate,
                          min_policy_win_rate=min_policy_win_rate, max_policy_kl=max_policy_kl,
                          policy_gate_principles=policy_gate_principles)

    tasks = {"plan": plan, "base_model": base, "prompts": prompts, "selfalign": selfalign, "sft": sft,
             "serve_sampler": serve, "sample": sample, "label": label, "aggregate": aggregate,
             "pmp_data": pmp, "train_rm": train_rm, "eval_rm": eval_rm, "ppo": ppo, "eval_policy": eval_policy,
             "register": register}
    # Remove the vLLM server of sampler=deploy once its last user is done with it, whether they
    # succeeded or failed (in the other sampler modes the tasks do nothing): after label, unless
    # ppo and eval_policy generate on it too (rollout_backend=openai); then after eval_policy.
    stop = c.stop_sampler(mode=sampler, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                          rollout_backend=rollout_backend).after(serve, sample, label)
    stop.ignore_upstream_failure()
    tasks["stop_sampler"] = stop
    stop_after = c.stop_sampler_after_rollouts(mode=sampler, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                               rollout_backend=rollout_backend).after(serve, ppo, eval_policy)
    stop_after.ignore_upstream_failure()
    tasks["stop_sampler_after_rollouts"] = stop_after
    for name, task in tasks.items():
        task.set_display_name(name)
        task.set_caching_options(name not in UNCACHED)
        platform.apply(task, name, **pod)
    return register.output
