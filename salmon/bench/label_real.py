"""``salmon bench label_real``: the prefix-shared judge on SmolLM2-135M-Instruct and pairs of a
realistic length, against the original layout padded only to the longest prompt of each forward.

The method's pairs are an instruction and two responses of hundreds of tokens, judged under
about ten principles of about a hundred tokens each; the nano pairs of ``salmon bench label``
are far shorter, which caps what sharing the prefix can save there (docs/benchmarks.md). Here
each response is 150 to 300 tokens of plain English prose, written from a fixed list of
sentences with a seeded RNG (what the words say does not change the cost), under the 11
``reward_model`` principles in both orders.

- **salmon**: :meth:`HFJudge.judge` (``reuse_prefix``), with the principle segments grouped by
  length into ``principle_groups`` calls (4, the label stage's default), and with one call
  (``principle_groups=1``, every principle padded to the longest) as a second figure;
- **baseline**: :func:`salmon.bench.label.judge_original_layout` padded to the longest prompt of
  each forward (4 pairs x 2 orders per forward, one forward per principle).

``--quick`` runs the same on the nano bench model and nano pairs (a smoke run; the goals are for
the full run). Reported: prefill tokens (padding included), wall time (interleaved medians), and
the largest difference between the sides' deltas.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from salmon.bench.common import BenchResult, Comparison, interleaved_medians
from salmon.bench.label import judge_original_layout, max_delta_difference
from salmon.judge.hf import JudgeStats

SENTENCES = [
    "The first step is to read the question carefully and note what it actually asks for.",
    "A short answer is often enough, but some questions need a worked example to be clear.",
    "Water boils at a lower temperature at high altitude because the air pressure is lower there.",
    "When two numbers are added, the order in which they are written does not change the sum.",
    "Many recipes can be halved, although baking times rarely scale in a straight line.",
    "If the result looks surprising, it is worth checking each step again before trusting it.",
    "Historians usually compare several sources, since any single account may be incomplete.",
    "A list can make the steps easier to follow, as long as each item says one thing.",
    "Plants turn light, water and carbon dioxide into sugar, and release oxygen as they do.",
    "It helps to define any technical term the first time it appears in an explanation.",
    "Some of these details depend on local rules, so the reader should confirm them nearby.",
    "In short, the method works, but it is slower than the alternative on very large inputs.",
    "Regular practice matters more than long sessions when learning a new instrument.",
    "The map shows the river running north, which explains why the old town grew on its east bank.",
]


def prose(rng: random.Random, tokenizer: Any, low: int, high: int) -> str:
    """Sentences from :data:`SENTENCES` until the text is between ``low`` and ``high`` tokens."""
    target = rng.randint(low, high)
    words: list[str] = []
    while len(tokenizer.encode(" ".join(words), add_special_tokens=False)) < target:
        words.append(rng.choice(SENTENCES))
    return " ".join(words)


def long_pairs(n: int, tokenizer: Any, seed: int = 7) -> list[Any]:
    """``n`` response pairs on nano prompts, each response 150 to 300 tokens of prose."""
    from salmon.core.records import ResponsePair
    from salmon.nano.world import make_prompts

    rng = random.Random(seed)
    return [ResponsePair(pair_id=f"long-{i}", prompt=p, output_1=prose(rng, tokenizer, 150, 300),
                         output_2=prose(rng, tokenizer, 150, 300))
            for i, p in enumerate(make_prompts(n, seed=seed))]


def run(quick: bool, work: Path) -> BenchResult:
    import torch

    from salmon.core.principles import load_principle_set
    from salmon.judge.hf import HFJudge
    from salmon.modeling import load_causal_lm, load_tokenizer
    from salmon.nano.world import make_pairs, make_prompts

    if quick:
        from salmon.bench.models import bench_model

        path, prompt_format = bench_model(work, True), "dromedary"
    else:
        from salmon.base_models import prepare

        path, prompt_format = str(prepare("smollm2")), "chat_template"
    tok = load_tokenizer(path)
    model = load_causal_lm(path, device=torch.device("cpu"))
    judge = HFJudge(model, tok, max_length=2048, prompt_format=prompt_format, principle_groups=4)
    one_call = HFJudge(model, tok, max_length=2048, prompt_format=prompt_format, principle_groups=1)
    principles = list(load_principle_set("reward_model").principles)
    n_pairs, repeats = 4, 3
    pairs = make_pairs(make_prompts(n_pairs, seed=7), seed=8) if quick else long_pairs(n_pairs, tok)
    toks, p_ids = judge.tokens.batch(pairs, principles)
    last: dict[str, Any] = {}

    def salmon_side() -> None:
        last["fast"], last["fast_stats"] = judge.judge(pairs, principles, reuse_prefix=True)

    def one_call_side() -> None:
        last["one"], last["one_stats"] = one_call.judge(pairs, principles, reuse_prefix=True)

    def longest_side() -> None:
        last["slow"], last["slow_stats"] = judge_original_layout(model, toks, p_ids, judge.id_a, judge.id_b)

    salmon_side()  # warm-up
    times = interleaved_medians({"salmon": salmon_side, "one_call": one_call_side, "longest": longest_side},
                                repeats=repeats, warmup=0)
    fast_stats: JudgeStats = last["fast_stats"]
    one_stats: JudgeStats = last["one_stats"]
    slow_stats: JudgeStats = last["slow_stats"]
    diff = max_delta_difference(last["fast"], last["slow"], len(principles))
    diff_one = max(abs(a.delta_12 - b.delta_12) for a, b in zip(last["fast"], last["one"], strict=True))
    result = BenchResult(name="label_real", baseline="original layout padded to the longest prompt of each forward "
                                                     "(4 pairs x 2 orders per forward, one forward per principle)")
    result.comparisons = [
        Comparison("prefill tokens, vs padded to longest in forward", "tokens", slow_stats.tokens_processed,
                   fast_stats.tokens_processed, "lower", None if quick else 2.5),
        Comparison("wall time, vs padded to longest in forward", "s", times["longest"], times["salmon"], "lower",
                   None if quick else 2.0, note=f"median of {repeats}, interleaved"),
        Comparison("prefill tokens, principle segments grouped by length vs one call", "tokens",
                   one_stats.tokens_processed, fast_stats.tokens_processed, "lower"),
        Comparison("wall time, principle segments grouped by length vs one call", "s", times["one_call"],
                   times["salmon"], "lower"),
    ]
    shared = [len(t.shared) for t in toks]
    outputs = [max(len(o) for o in t.outputs) for t in toks]
    result.figures = {"max_abs_delta_diff_vs_longest": diff, "max_abs_delta_diff_grouped_vs_one_call": diff_one,
                      "tokens_salmon": fast_stats.tokens_processed, "tokens_one_call": one_stats.tokens_processed,
                      "tokens_baseline_longest": slow_stats.tokens_processed,
                      "forward_calls_salmon": fast_stats.forward_calls, "seconds_salmon": times["salmon"],
                      "seconds_one_call": times["one_call"], "seconds_baseline_longest": times["longest"]}
    result.setup = {"model": "SmolLM2-135M-Instruct" if not quick else "nano bench model", "pairs": n_pairs,
                    "principles": len(principles), "prompt_format": prompt_format, "repeats": repeats,
                    "shared_tokens_mean": round(sum(shared) / len(shared), 1),
                    "outputs_tokens_mean": round(sum(outputs) / len(outputs), 1),
                    "principle_tokens": sorted(len(p) for p in p_ids), "threads": torch.get_num_threads(),
                    "dtype": "float32", "device": "cpu"}
    result.notes = [f"deltas agree: max |difference| {diff:.2e} against the baseline, {diff_one:.2e} between "
                    "grouped and one-call principle segments"]
    return result
