"""``salmon bench stopping``: tokens generated per rollout on a real chat model, with and without
stopping each sequence at the end of its turn, and the PPO step time either way.

The model is SmolLM2-135M-Instruct (``salmon base prepare smollm2``), sampling as PPO does
(temperature 0.7, top-p 1, ``batch`` rollouts per ``generate`` call, ``response_len`` new tokens at
most) on nano-world prompts.

- baseline: the Dromedary query and ``generate`` with ``max_new_tokens`` only, as rollouts were
  generated before stop handling (transformers' default still ends a sequence at the model's eos,
  which this model never writes in that format, so every rollout runs to the limit);
- salmon: the same queries, each sequence stopping at the stop string (and the method's cut
  markers) or at eos, as :class:`salmon.turns.PolicyTurns` generates them.

Tokens per rollout count the ids each sequence generated before padding (its eos included;
:meth:`salmon.turns.PolicyTurns.text_of`). Both sides sample the
same prompts with the same seed, back to back in one process; seconds are the median of the
repeats after a warm-up. The ``chat_template`` format (the turn ends at eos) is measured as a
figure of its own.

The PPO comparison runs the ``ppo`` stage twice on SmolLM2 in the Dromedary format, with
``stop_rollouts: false`` (every rollout to ``response_len``, as the released code generated) and
``true`` (the default), and compares the stage's own per-step seconds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from salmon.bench.common import BenchResult, Comparison

QUICK_SIZES = {"prompts": 8, "batch": 4, "response_len": 64, "repeats": 1}
FULL_SIZES = {"prompts": 32, "batch": 8, "response_len": 256, "repeats": 2}
# the PPO steps: rollouts per step (and per generate call), new tokens at most, steps (the first is a warm-up)
QUICK_PPO = {"rollouts": 4, "forward_batch": 4, "response_len": 64, "steps": 2}
FULL_PPO = {"rollouts": 8, "forward_batch": 4, "response_len": 128, "steps": 3}


def ppo_steps(work: Path, model: str, sizes: dict[str, int]) -> dict[str, dict[str, float]]:
    """Median rollout and step seconds of the ``ppo`` stage on ``model`` (Dromedary format, the
    shared layout with an untrained LoRA RM on the same base), with rollouts that stop at the end
    of their turn and with rollouts to the token limit (``stop_rollouts: false``)."""
    from salmon.bench.ppo import build_lora_rm
    from salmon.bench.ppo_rollouts import step_seconds
    from salmon.core.config import PPOConfig, build_config
    from salmon.core.io import write_jsonl
    from salmon.nano.world import make_prompts
    from salmon.stages import ppo

    rm = build_lora_rm(model, work / "rm-lora", lora_r=8)
    write_jsonl(work / "prompts.jsonl", make_prompts(4 * sizes["rollouts"], seed=5, heldout_fraction=0.0))
    values = dict(prompts=str(work / "prompts.jsonl"), policy_model=model, reward_model=rm, prompt_format="dromedary",
                  rl_principles="nano", interventions="interventions", principles_per_rollout=2,
                  rollout_batch_size=sizes["rollouts"], step_batch_size=sizes["rollouts"],
                  forward_batch_size=sizes["forward_batch"], micro_batch_size=sizes["forward_batch"],
                  total_steps=sizes["steps"], query_len=128, response_len=sizes["response_len"], rm_max_length=512,
                  lora_r=8, lora_alpha=16, ppo_epochs=1, save_every=10_000, seed=3, device="cpu",
                  prompt_splits=None)
    seconds = {}
    for name, stop in (("to_limit", False), ("stopping", True)):
        out = work / f"ppo-{name}"
        ppo.run(build_config(PPOConfig, stage="ppo", values={**values, "stop_rollouts": stop, "output_dir": str(out)}))
        seconds[name] = step_seconds(out)
    return seconds


def rollouts(model: Any, turns: Any, queries: list[list[int]], sizes: dict[str, int], *, stop: bool,
             seed: int = 0) -> tuple[list[int], float, list[bool]]:
    """(tokens generated per rollout, seconds, whether each turn ended) for one side."""
    import torch

    from salmon.turns import generate_ids

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    raw = generate_ids(model, turns.tokenizer, queries, temperature=0.7, top_p=1.0,
                       max_new_tokens=sizes["response_len"], batch_size=sizes["batch"],
                       stop_strings=turns.stop_strings if stop else (), end_ids=turns.end_ids if stop else ())
    seconds = time.perf_counter() - t0
    counts = [turns.text_of(ids, turns.stop_strings if stop else [])[1] for ids in raw]
    ended = [turns.read(ids).stopped for ids in raw]
    return counts, seconds, ended


def run(quick: bool, work: Path) -> BenchResult:
    import statistics

    import torch

    from salmon.base_models import prepare
    from salmon.modeling import generation_end_ids, load_causal_lm, load_tokenizer
    from salmon.nano.world import make_prompts
    from salmon.turns import PolicyTurns

    sizes = QUICK_SIZES if quick else FULL_SIZES
    path = str(prepare("smollm2"))
    tok = load_tokenizer(path)
    model = load_causal_lm(path, device=torch.device("cpu"))
    prompts = [p.full_instruction() for p in make_prompts(sizes["prompts"], seed=11)]
    dromedary = PolicyTurns(tok, "dromedary", end_ids=generation_end_ids(path))
    chat = PolicyTurns(tok, "chat_template", end_ids=generation_end_ids(path))
    d_queries = [dromedary.query_ids(p) for p in prompts]
    c_queries = [chat.query_ids(p) for p in prompts]
    rollouts(model, dromedary, d_queries[: sizes["batch"]], {**sizes, "response_len": 4}, stop=True)  # warm-up

    def median_run(turns: Any, queries: list[list[int]], stop: bool) -> tuple[list[int], float, list[bool]]:
        runs = [rollouts(model, turns, queries, sizes, stop=stop) for _ in range(sizes["repeats"])]
        return runs[0][0], statistics.median(r[1] for r in runs), runs[0][2]

    before, before_s, _ = median_run(dromedary, d_queries, stop=False)
    after, after_s, after_ended = median_run(dromedary, d_queries, stop=True)
    chat_tokens, chat_s, chat_ended = median_run(chat, c_queries, stop=True)
    n = len(prompts)
    ppo_sizes = QUICK_PPO if quick else FULL_PPO
    steps = ppo_steps(work, path, ppo_sizes)
    result = BenchResult(name="stopping", baseline="generate to the token limit (no stop string)")
    result.setup = {"model": "SmolLM2-135M-Instruct", **sizes, "temperature": 0.7,
                    **{f"ppo_{k}": v for k, v in ppo_sizes.items()}}
    result.comparisons = [
        Comparison("tokens per rollout (dromedary)", "tokens", sum(before) / n, sum(after) / n, better="lower"),
        Comparison("seconds per rollout (dromedary)", "s", before_s / n, after_s / n, better="lower"),
        Comparison("PPO step time (dromedary, stop_rollouts false vs true)", "s", steps["to_limit"]["step"],
                   steps["stopping"]["step"], better="lower"),
        Comparison("PPO rollout phase (same runs)", "s", steps["to_limit"]["rollout"], steps["stopping"]["rollout"],
                   better="lower"),
    ]
    result.figures = {
        "dromedary_stopped_share": sum(after_ended) / n,
        "chat_template_tokens_per_rollout": sum(chat_tokens) / n,
        "chat_template_seconds_per_rollout": chat_s / n,
        "chat_template_ended_at_eos_share": sum(chat_ended) / n,
    }
    result.notes.append("tokens per rollout: ids each sequence generated before padding (its eos included)")
    result.notes.append("PPO steps: the ppo stage itself, shared layout, an untrained LoRA RM on SmolLM2; median "
                        "over the steps after the first (resources.jsonl). Both sides learn from the same cut "
                        "turns; only generation differs.")
    return result
