"""``salmon bench stopping``: tokens generated per rollout on a real chat model, with and without
stopping each sequence at the end of its turn.

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
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from salmon.bench.common import BenchResult, Comparison

QUICK_SIZES = {"prompts": 8, "batch": 4, "response_len": 64, "repeats": 1}
FULL_SIZES = {"prompts": 32, "batch": 8, "response_len": 256, "repeats": 2}


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
    result = BenchResult(name="stopping", baseline="generate to the token limit (no stop string)")
    result.setup = {"model": "SmolLM2-135M-Instruct", **sizes, "temperature": 0.7}
    result.comparisons = [
        Comparison("tokens per rollout (dromedary)", "tokens", sum(before) / n, sum(after) / n, better="lower"),
        Comparison("seconds per rollout (dromedary)", "s", before_s / n, after_s / n, better="lower"),
    ]
    result.figures = {
        "dromedary_stopped_share": sum(after_ended) / n,
        "chat_template_tokens_per_rollout": sum(chat_tokens) / n,
        "chat_template_seconds_per_rollout": chat_s / n,
        "chat_template_ended_at_eos_share": sum(chat_ended) / n,
    }
    result.notes.append("tokens per rollout: ids each sequence generated before padding (its eos included)")
    return result
