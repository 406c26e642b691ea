"""Aggregation (method §2.3) and the acceptance checks of method §10 items 1-3."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from types import SimpleNamespace

import pytest

from salmon.core.aggregate import (
    AggregateParams,
    aggregate,
    ai_phrase_rule,
    detect_script,
    dominant_label,
    index_judgements,
    language_rule,
    normalizers,
    principle_score,
    truncated_geometric,
)
from salmon.core.principles import Principle, PrincipleSet
from salmon.core.records import Judgement, PromptRecord, ResponsePair


def make_set(n: int) -> PrincipleSet:
    return PrincipleSet(
        name="test", version="1", kind="reward_model", description="d",
        principles=[Principle(id=f"p{i}", name=f"P{i}", definition=f"Do {i}.",
                              negative_definition=f"Avoid {i}.") for i in range(n)])


def make_pairs(n: int, out1: str = "first answer", out2: str = "second answer") -> list[ResponsePair]:
    return [ResponsePair(pair_id=f"x{i}", prompt=PromptRecord(prompt_id=f"x{i}", instruction="Q?"),
                         output_1=out1, output_2=out2) for i in range(n)]


def test_dominant_principle_hand_case() -> None:
    # method §10.2: A = (2, 3, 6) and B = (1, 5, 5); positive favours A (output_1)
    scores = [2 - 1, 3 - 5, 6 - 5]
    idx, label = dominant_label(scores)
    assert (idx, label) == (1, 2)  # the second principle, |−2| is largest: B wins
    negated = list(scores)
    negated[idx] = -negated[idx]
    assert dominant_label(negated) == (1, 1)  # negating the decisive principle alone flips it
    assert dominant_label([0.0, 0.0]) == (0, 0)
    assert dominant_label([]) == (-1, 0)


def test_principle_score_orientation_and_ties() -> None:
    assert principle_score(2.0, 4.0, 2.0) == 1.5
    assert principle_score(-2.0, -4.0, 1.0) == -3.0
    assert principle_score(2.0, -1.0, 1.0) == 0.0
    assert principle_score(0.0, 3.0, 1.0) == 0.0


def test_position_biased_judge_yields_only_ties() -> None:
    """Method §10.1: a judge that always says "(a)" gives delta_12 > 0, delta_21 < 0, a tie."""
    import torch

    from salmon.judge.hf import HFJudge

    class AlwaysA(torch.nn.Module):
        def __init__(self, vocab: int, id_a: int) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.vocab, self.id_a = vocab, id_a

        def forward(self, input_ids, **kw):  # type: ignore[no-untyped-def]
            logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.vocab)
            logits[..., self.id_a] = 3.0
            return SimpleNamespace(logits=logits)

    tok = pytest.importorskip("salmon.nano.model").build_tokenizer(
        pytest.importorskip("salmon.nano.model").NanoModelSpec(vocab_size=400))
    probe = HFJudge(model=AlwaysA(len(tok), 0), tokenizer=tok)
    judge = HFJudge(model=AlwaysA(len(tok), probe.id_a), tokenizer=tok)
    pset = make_set(2)
    judgements, _ = judge.judge(make_pairs(3), pset.principles, reuse_prefix=False)
    assert len(judgements) == 6
    for j in judgements:
        assert j.delta_12 == pytest.approx(3.0) and j.delta_21 == pytest.approx(-3.0)
        assert principle_score(j.delta_12, j.delta_21, 1.0) == 0.0 and j.label == 0


def test_truncated_geometric_statistics() -> None:
    """Method §10.3: K ~ Geometric(0.2) truncated to 1..8: P(K=1) ~ 0.24, E[K] ~ 3.39."""
    rng = random.Random(0)
    draws = [truncated_geometric(rng, 0.2, 8) for _ in range(100_000)]
    assert min(draws) == 1 and max(draws) == 8
    assert Counter(draws)[1] / len(draws) == pytest.approx(0.2403, abs=0.01)
    assert statistics.fmean(draws) == pytest.approx(3.39, abs=0.03)
    with pytest.raises(ValueError):
        truncated_geometric(rng, 0.0, 8)


def test_normalizers() -> None:
    scales = normalizers({"a": [1.0, -1.0, 3.0, -3.0], "flat": [2.0, 2.0]}, "variance")
    assert scales == {"a": 5.0, "flat": 1.0}
    assert normalizers({"a": [1.0, -1.0, 3.0, -3.0]}, "std")["a"] == pytest.approx(5.0**0.5)


def test_rules() -> None:
    phrase = "As an AI language model"
    assert ai_phrase_rule(f"{phrase}, no.", "Yes.", phrase) == 2
    assert ai_phrase_rule("Yes.", f"{phrase}, no.", phrase) == 1
    assert ai_phrase_rule("Yes.", "No.", phrase) == 0
    assert detect_script("Hello there") == "Latn"
    assert detect_script("你好世界") == "Hani"
    assert detect_script("Привет") == "Cyrl"
    assert detect_script("123 !") == "und"
    assert language_rule("Latn", "Latn", "Hani") == 1
    assert language_rule("Latn", "Hani", "Latn") == 2
    assert language_rule("Latn", "Hani", "Cyrl") == "drop"
    assert language_rule("Latn", "und", "Hani") == 0


def synthetic_judgements(pairs: list[ResponsePair], pset: PrincipleSet, seed: int) -> list[Judgement]:
    rng = random.Random(seed)
    out = []
    for p in pairs:
        for pr in pset.principles:
            d = rng.choice([-1, 1]) * rng.uniform(0.5, 2.0)
            out.append(Judgement(pair_id=p.pair_id, principle_id=pr.id, delta_12=d, delta_21=d,
                                 backend="test"))
    return out


def test_aggregate_statistics_over_many_draws() -> None:
    """Method §10.3: negation ~0.5, label noise ~0.10 (0.25 with a rule), swaps ~0.5."""
    pset = make_set(8)
    pairs = make_pairs(5000)
    judged = index_judgements(synthetic_judgements(pairs, pset, 1))
    params = AggregateParams(dimensions=tuple(pset.ids()), passes=4, seed=3)
    instances, stats = aggregate(pairs, judged, pset, params)
    n = len(instances)
    assert n == stats.instances == 20_000
    assert stats.negations / stats.principles_shown == pytest.approx(0.5, abs=0.01)
    assert stats.noise_flips / n == pytest.approx(0.10, abs=0.01)
    assert stats.swaps / n == pytest.approx(0.5, abs=0.015)
    ks = [len(i.principles) for i in instances]
    assert statistics.fmean(ks) == pytest.approx(3.39, abs=0.05)
    # every clean instance's label is its dominant principle's sign, swaps included
    for inst in instances:
        if inst.noise_flip:
            continue
        dom = inst.principles[inst.dominant_index]
        assert abs(dom.score) == max(abs(p.score) for p in inst.principles)
        assert inst.preference == (1 if dom.score > 0 else 2)
        assert dom.text == (f"Avoid {dom.principle_id[1:]}." if dom.negated
                            else f"Do {dom.principle_id[1:]}.")

    # the AI-phrase rule fires on half of the eligible pairs and is noised at 0.25
    phrase_pairs = make_pairs(4000, out1="As an AI language model, I think so.", out2="Sure.")
    judged = index_judgements(synthetic_judgements(phrase_pairs, pset, 2))
    inst2, stats2 = aggregate(phrase_pairs, judged, pset, params)
    ruled = [i for i in inst2 if i.rule_flag]
    assert len(ruled) / len(inst2) == pytest.approx(0.5, abs=0.015)
    assert sum(i.noise_flip for i in ruled) / len(ruled) == pytest.approx(0.25, abs=0.015)
    for i in ruled:
        winner = i.output_1 if i.preference == 1 else i.output_2
        assert (winner == "Sure.") != i.noise_flip
        assert i.dominant_index == -1


def test_aggregate_is_reproducible_and_seed_sensitive() -> None:
    pset = make_set(4)
    pairs = make_pairs(200)
    judged = index_judgements(synthetic_judgements(pairs, pset, 5))
    a, _ = aggregate(pairs, judged, pset, AggregateParams(dimensions=tuple(pset.ids()), seed=1))
    b, _ = aggregate(pairs, judged, pset, AggregateParams(dimensions=tuple(pset.ids()), seed=1))
    c, _ = aggregate(pairs, judged, pset, AggregateParams(dimensions=tuple(pset.ids()), seed=2))
    assert a == b
    assert a != c
    assert len({i.instance_id for i in a}) == len(a)


def test_all_tie_subsets_are_skipped_and_missing_dimensions_counted() -> None:
    pset = make_set(2)
    pairs = make_pairs(10)
    ties = [Judgement(pair_id=p.pair_id, principle_id=pr, delta_12=1.0, delta_21=-1.0, backend="t")
            for p in pairs for pr in pset.ids()]
    inst, stats = aggregate(pairs, index_judgements(ties), pset,
                            AggregateParams(dimensions=tuple(pset.ids()), passes=2))
    assert inst == [] and stats.skipped_all_ties == 20
    partial = index_judgements(ties[:1])
    _, stats = aggregate(pairs, partial, pset, AggregateParams(dimensions=tuple(pset.ids())))
    assert stats.pairs_missing_dimensions == 10
