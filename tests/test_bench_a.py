"""Benchmarks label, train_rm and hardware: both sides compute the same thing (never timings)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from salmon.core.principles import load_principle_set
from salmon.nano.world import make_pairs, make_prompts

torch = pytest.importorskip("torch")


def _judge(model: str):  # type: ignore[no-untyped-def]
    from salmon.judge.hf import HFJudge
    from salmon.modeling import load_causal_lm, load_tokenizer

    return HFJudge(load_causal_lm(model, device=torch.device("cpu")), load_tokenizer(model))


def test_label_fast_and_original_layout_give_the_same_deltas(tiny_model: str) -> None:
    from salmon.bench.label import judge_both

    judge = _judge(tiny_model)
    pairs = make_pairs(make_prompts(5, seed=21), seed=22)  # 5 pairs: a full and a partial forward of 4
    principles = load_principle_set("nano").principles
    got = judge_both(judge, pairs, principles, batch_pairs=4)
    fast, slow = got["fast"], got["slow"]
    assert len(fast) == 5 * len(principles) and len(slow) == 5
    assert all(not math.isnan(x) for pair in slow for order in pair for x in order)
    assert got["max_abs_delta_diff"] < 1e-4
    # the deltas differ between prompts: a judge that ignored its input would not pass
    assert len({round(j.delta_12, 5) for j in fast}) > 10
    # one forward per principle and chunk of 4 pairs; salmon: per batch of pairs, two prefix calls
    # and one per group of principles of similar length (the judge's principle_groups)
    from salmon.judge.hf import length_groups

    groups = len(length_groups([len(judge.principle_tokens(p)) for p in principles], judge.principle_groups))
    assert got["slow_stats"].forward_calls == 2 * len(principles)
    assert got["fast_stats"].forward_calls == 2 * (2 + groups)
    assert got["fast_stats"].prompts == got["slow_stats"].prompts == 5 * 2 * len(principles)
    assert got["fast_stats"].tokens_processed < got["slow_stats"].tokens_processed


def test_label_fixed_padding_changes_tokens_not_deltas(tiny_model: str) -> None:
    from salmon.bench.label import judge_original_layout, max_delta_difference

    judge = _judge(tiny_model)
    pairs = make_pairs(make_prompts(3, seed=5), seed=6)
    principles = load_principle_set("nano").principles[:3]
    fast, _ = judge.judge(pairs, principles)
    toks, p_ids = judge.tokens.batch(pairs, principles)
    scores, stats = judge_original_layout(judge.model, toks, p_ids, judge.id_a, judge.id_b, pad_to=512,
                                          max_forwards=2)
    assert stats.forward_calls == 2 and stats.tokens_processed == 2 * 3 * 2 * 512
    assert math.isnan(scores[0][0][2]) and not math.isnan(scores[2][1][1])  # only principles 0 and 1 ran
    assert max_delta_difference(fast, scores, len(principles)) < 1e-4
    with pytest.raises(ValueError, match="exceeds pad_to"):
        judge_original_layout(judge.model, toks, p_ids, judge.id_a, judge.id_b, pad_to=16)


def test_train_rm_both_sides_train_the_same_pairs(tiny_model: str, tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from salmon.bench.train_rm import (
        encoded_pairs,
        make_instances,
        pairs_per_second,
        rm_config,
        salmon_train,
        trl_train,
    )

    inst = make_instances(tmp_path / "inst.jsonl", 6)
    cfg = rm_config(tiny_model, inst, tmp_path / "salmon", batch=2, micro=1)
    chosen, rejected, steps = encoded_pairs(cfg)
    assert steps == 3 and len(chosen) == len(rejected) == 6 and chosen != rejected
    s = salmon_train(cfg)
    t = trl_train(rm_config(tiny_model, inst, tmp_path / "x", batch=2, micro=1), tmp_path / "trl")
    assert len(s["ends"]) == t["steps"] == len(t["ends"]) == 3
    assert t["pairs"] == s["metrics"]["instances"] == 6
    # the same LoRA and a scalar head on both sides (salmon's head has a bias, TRL's score has none)
    assert s["metrics"]["trainable_parameters"] == t["trainable_parameters"] + 1
    assert pairs_per_second(s["ends"], 2) > 0 and pairs_per_second(t["ends"], 2) > 0
    with pytest.raises(RuntimeError):
        pairs_per_second(s["ends"][:1], 2)


def test_hardware_counts_the_flops_of_an_rm_step(tiny_model: str, tmp_path: Path) -> None:
    from salmon.bench.hardware import count_and_time, matmul_peak, rm_step
    from salmon.bench.models import parameter_count

    cpu = torch.device("cpu")
    assert matmul_peak(64, 2, torch.float32, cpu) > 0
    step, tokens, _ = rm_step(tiny_model, tmp_path, 1, cpu, "float32")
    flops, seconds = count_and_time(step, 1, cpu)
    assert seconds > 0
    # at least the forward through the frozen weights, at most forward + full backward + LoRA
    assert 2 * parameter_count(tiny_model) * tokens * 0.5 < flops < 6 * parameter_count(tiny_model) * tokens * 4
