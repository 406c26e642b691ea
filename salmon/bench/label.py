"""``salmon bench label``: the prefix-shared judge against the original judging layout.

Both sides score the same nano pairs under the same principles with the same model and the
same token ids (one :class:`~salmon.judge.hf.JudgeTokenizer` builds them):

- **salmon**: :meth:`HFJudge.judge` with ``reuse_prefix=True``: per batch of pairs, three
  forward calls (shared segments, outputs per order on the cached prefix, principle segments on
  the cached prefix and outputs).
- **baseline**: :func:`judge_original_layout`, the method's released layout: for every principle,
  batches of ``pairs_per_forward`` pairs x 2 orders (4 pairs = 8 prompts), each prompt the full
  text ``shared | outputs | principle``, left-padded. Two paddings are measured:

  * ``longest``: padded to the longest prompt of the forward (a generous baseline: the
    original did not do this);
  * ``1536``: padded to ``max_length=1536`` as the released code did. All its forwards have
    the same shape ``[8, 1536]``, so one forward is timed and multiplied by the number of
    forwards; its tokens are counted exactly (prompts x 1536).

  The baseline reads only the last position's logits (``logits_to_keep=1``), which favours it.

Reported: prefill tokens (padding included on both sides), wall time (interleaved medians), and
the largest difference between the two sides' deltas.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salmon.bench.common import BenchResult, Comparison, interleaved_medians
from salmon.judge.hf import JudgeStats, PairTokens

if TYPE_CHECKING:
    from salmon.core.principles import Principle
    from salmon.core.records import Judgement, ResponsePair

ORIGINAL_PAD = 1536  # the released judge padded every prompt to max_length
PAIRS_PER_FORWARD = 4  # the released judge: 4 pairs = 8 prompts per forward


def judge_original_layout(
    model: Any, pairs: Sequence[PairTokens], principles: Sequence[Sequence[int]], id_a: int, id_b: int,
    *, pairs_per_forward: int = PAIRS_PER_FORWARD, pad_to: int | None = None,
    principle_ids: Sequence[int] | None = None, max_forwards: int | None = None,
) -> tuple[list[list[list[float]]], JudgeStats]:
    """Scores ``[pair][order][principle]`` (``nan`` where not run) the way the method's code ran them.

    One forward per (principle, chunk of ``pairs_per_forward`` pairs), two prompts per pair (both
    orders), every prompt the full sequence, left-padded to ``pad_to`` (or to the longest prompt
    of the forward). ``tokens_processed`` counts the padded tensor. ``principle_ids`` and
    ``max_forwards`` restrict the run (for timing one forward of a fixed shape).
    """
    import torch

    from salmon.judge.hf import positions_after_padding

    device = next(model.parameters()).device
    n_pr = len(principles)
    scores = [[[float("nan")] * n_pr for _ in (0, 1)] for _ in pairs]
    stats = JudgeStats()
    forwards = 0
    with torch.no_grad():
        for j in (principle_ids if principle_ids is not None else range(n_pr)):
            for start in range(0, len(pairs), pairs_per_forward):
                if max_forwards is not None and forwards >= max_forwards:
                    return scores, stats
                chunk = range(start, min(start + pairs_per_forward, len(pairs)))
                seqs = [pairs[i].shared + pairs[i].outputs[o] + list(principles[j]) for i in chunk for o in (0, 1)]
                longest = max(len(s) for s in seqs)
                if pad_to is not None and longest > pad_to:
                    raise ValueError(f"a prompt of {longest} tokens exceeds pad_to={pad_to}")
                width = pad_to or longest
                ids = torch.zeros((len(seqs), width), dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for r, s in enumerate(seqs):
                    ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
                    mask[r, width - len(s):] = 1
                mask = mask.to(device)
                positions = positions_after_padding(mask, width)
                logits = model(input_ids=ids.to(device), attention_mask=mask, position_ids=positions,
                               logits_to_keep=1).logits[:, -1].float()
                delta = (logits[:, id_a] - logits[:, id_b]).tolist()
                for r, i in enumerate(i for i in chunk for _ in (0, 1)):
                    scores[i][r % 2][j] = delta[r]
                forwards += 1
                stats.prompts += len(seqs)
                stats.tokens_processed += ids.numel()
                stats.tokens_unshared += int(mask.sum())
                stats.forward_calls += 1
    return scores, stats


def max_delta_difference(fast: Sequence[Judgement], scores: Sequence[Sequence[Sequence[float]]],
                         n_principles: int) -> float:
    """Largest ``|delta|`` difference between the judge's judgements and layout scores (nan skipped).

    ``fast`` is ordered pair-major, principle-minor (as :meth:`HFJudge.judge` returns it); the
    layout's order (2,1) score is negated to match ``delta_21``.
    """
    worst = 0.0
    for k, j in enumerate(fast):
        i, p = divmod(k, n_principles)
        for mine, theirs in ((j.delta_12, scores[i][0][p]), (j.delta_21, -scores[i][1][p])):
            if theirs == theirs:  # not nan
                worst = max(worst, abs(mine - theirs))
    return worst


def judge_both(judge: Any, pairs: Sequence[ResponsePair], principles: Sequence[Principle],
               batch_pairs: int = PAIRS_PER_FORWARD) -> dict[str, Any]:
    """Run both sides on ``pairs`` in batches of ``batch_pairs``: judgements, scores, stats."""
    fast: list[Judgement] = []
    slow: list[list[list[float]]] = []
    fast_stats, slow_stats = JudgeStats(), JudgeStats()
    for start in range(0, len(pairs), batch_pairs):
        batch = pairs[start:start + batch_pairs]
        out, st = judge.judge(batch, principles, reuse_prefix=True)
        fast += out
        fast_stats.add(st)
        toks, p_ids = judge.tokens.batch(batch, principles)
        sc, st = judge_original_layout(judge.model, toks, p_ids, judge.id_a, judge.id_b,
                                       pairs_per_forward=batch_pairs)
        slow += sc
        slow_stats.add(st)
    return {"fast": fast, "slow": slow, "fast_stats": fast_stats, "slow_stats": slow_stats,
            "max_abs_delta_diff": max_delta_difference(fast, slow, len(principles))}


def run(quick: bool, work: Path) -> BenchResult:
    import torch

    from salmon.bench.models import bench_model, parameter_count
    from salmon.core.principles import load_principle_set
    from salmon.judge.hf import HFJudge
    from salmon.modeling import load_causal_lm, load_tokenizer
    from salmon.nano.world import make_pairs, make_prompts

    path = bench_model(work, quick)
    judge = HFJudge(load_causal_lm(path, device=torch.device("cpu")), load_tokenizer(path), max_length=ORIGINAL_PAD)
    set_name = "nano" if quick else "reward_model"
    principles = list(load_principle_set(set_name).principles)
    n_pairs, repeats = 4, 3
    pairs = make_pairs(make_prompts(n_pairs, seed=7), seed=8)
    batches = [pairs[s:s + PAIRS_PER_FORWARD] for s in range(0, n_pairs, PAIRS_PER_FORWARD)]
    tokens = [judge.tokens.batch(b, principles) for b in batches]
    last: dict[str, Any] = {}

    def salmon_side() -> None:
        out, stats = [], JudgeStats()
        for b in batches:
            o, st = judge.judge(b, principles, reuse_prefix=True)
            out += o
            stats.add(st)
        last["fast"], last["fast_stats"] = out, stats

    def longest_side() -> None:
        scores: list[list[list[float]]] = []
        stats = JudgeStats()
        for toks, p_ids in tokens:
            sc, st = judge_original_layout(judge.model, toks, p_ids, judge.id_a, judge.id_b)
            scores += sc
            stats.add(st)
        last["slow"], last["slow_stats"] = scores, stats

    def padded_one_forward() -> None:  # the first forward of the 1536-padded layout (all have this shape)
        toks, p_ids = tokens[0]
        sc, st = judge_original_layout(judge.model, toks, p_ids, judge.id_a, judge.id_b, pad_to=ORIGINAL_PAD,
                                       max_forwards=1)
        last["pad1536"], last["pad1536_stats"] = sc, st

    # warm-up: one small call per code path, then the timed repeats in alternation
    salmon_side()
    times = interleaved_medians({"salmon": salmon_side, "longest": longest_side, "pad1536": padded_one_forward},
                                repeats=repeats, warmup=0)
    fast, fast_stats, slow_stats = last["fast"], last["fast_stats"], last["slow_stats"]
    n_prompts = fast_stats.prompts
    n_forwards_1536 = len(principles) * sum(-(-len(b) // PAIRS_PER_FORWARD) for b in batches)
    tokens_1536 = n_prompts * ORIGINAL_PAD
    time_1536 = times["pad1536"] * n_forwards_1536
    diff_longest = max_delta_difference(fast, last["slow"], len(principles))
    first = last["pad1536"][:PAIRS_PER_FORWARD]
    diff_1536 = max_delta_difference(fast[: len(first) * len(principles)], first, len(principles))
    spread = max(abs(j.delta_12) for j in fast)

    result = BenchResult(
        name="label", baseline="original layout: one forward per principle x 4 pairs x 2 orders, left-padded")
    result.comparisons = [
        Comparison("prefill tokens, vs padded to 1536 (released code)", "tokens", tokens_1536,
                   fast_stats.tokens_processed, "lower", 5.0,
                   note="baseline counted exactly: prompts x 1536"),
        Comparison("wall time, vs padded to 1536 (released code)", "s", time_1536, times["salmon"], "lower", 3.0,
                   note=f"baseline: median of one [8, 1536] forward x {n_forwards_1536} forwards"),
        Comparison("prefill tokens, vs padded to longest in forward", "tokens", slow_stats.tokens_processed,
                   fast_stats.tokens_processed, "lower", 5.0),
        Comparison("wall time, vs padded to longest in forward", "s", times["longest"], times["salmon"], "lower",
                   3.0, note=f"median of {repeats}, interleaved"),
    ]
    result.figures = {
        "max_abs_delta_diff_vs_longest": diff_longest,
        "max_abs_delta_diff_vs_1536_first_forward": diff_1536,
        "max_abs_delta": spread,
        "prompts": n_prompts,
        "tokens_unpadded_full_prompts": slow_stats.tokens_unshared,
        "tokens_salmon": fast_stats.tokens_processed,
        "tokens_baseline_longest": slow_stats.tokens_processed,
        "tokens_baseline_1536": tokens_1536,
        "forward_calls_salmon": fast_stats.forward_calls,
        "forward_calls_baseline": slow_stats.forward_calls,
        "seconds_salmon": times["salmon"],
        "seconds_baseline_longest": times["longest"],
        "seconds_baseline_1536_one_forward": times["pad1536"],
        "seconds_baseline_1536_extrapolated": time_1536,
        "salmon_tokens_per_second": fast_stats.tokens_processed / times["salmon"],
        "baseline_longest_tokens_per_second": slow_stats.tokens_processed / times["longest"],
    }
    t_lens = [len(t.shared) + max(len(o) for o in t.outputs) for toks, _ in tokens for t in toks]
    p_lens = [len(t) for _, p_ids in tokens[:1] for t in p_ids]
    result.setup = {"model": path, "parameters": parameter_count(path), "pairs": n_pairs, "principle_set": set_name,
                    "principles": len(principles), "pairs_per_forward": PAIRS_PER_FORWARD, "repeats": repeats,
                    "pair_tokens_mean": round(sum(t_lens) / len(t_lens), 1),
                    "principle_tokens_mean": round(sum(p_lens) / len(p_lens), 1),
                    "threads": torch.get_num_threads(), "dtype": "float32", "device": "cpu"}
    result.notes = [
        f"deltas agree: max |difference| {diff_longest:.2e} (largest |delta| {spread:.3g})",
        "salmon's principle segments are padded to the longest principle of the set; with short nano pairs "
        "the principle segment dominates what salmon processes",
    ]
    return result
