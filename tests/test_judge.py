"""The hf judge: prefix reuse must give the labels of a plain forward; the a/b token check."""

from __future__ import annotations

import pytest

from salmon.core.errors import SalmonInputError
from salmon.core.principles import load_principle_set
from salmon.nano.world import make_pairs, make_prompts

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("groups", [1, 3])
def test_prefix_reuse_equals_plain_forward(tiny_model: str, groups: int) -> None:
    from salmon.judge.hf import HFJudge, length_groups
    from salmon.modeling import load_causal_lm, load_tokenizer

    judge = HFJudge(load_causal_lm(tiny_model, device=torch.device("cpu")), load_tokenizer(tiny_model),
                    principle_groups=groups)
    pairs = make_pairs(make_prompts(6, seed=11), seed=12)  # different lengths: padding between segments
    principles = load_principle_set("nano").principles
    fast, fast_stats = judge.judge(pairs, principles, reuse_prefix=True)
    slow, slow_stats = judge.judge(pairs, principles, reuse_prefix=False)
    assert len(fast) == len(slow) == 6 * 6
    for a, b in zip(fast, slow, strict=True):
        assert (a.pair_id, a.principle_id) == (b.pair_id, b.principle_id)
        assert a.delta_12 == pytest.approx(b.delta_12, abs=1e-4)
        assert a.delta_21 == pytest.approx(b.delta_21, abs=1e-4)
        assert a.label == b.label or abs(a.delta_12) < 1e-4 or abs(a.delta_21) < 1e-4
    # the deltas are not all equal: the check would catch a judge that ignores its input
    assert len({round(j.delta_12, 5) for j in fast}) > 10
    used = len(length_groups([len(judge.principle_tokens(p)) for p in principles], groups))
    assert used == groups, "the nano principles differ in length: each group is its own call"
    assert fast_stats.forward_calls == 2 + used and slow_stats.forward_calls == 6
    assert fast_stats.tokens_processed < slow_stats.tokens_processed


def test_principle_groups_pad_less_and_the_grouping_is_optimal() -> None:
    from itertools import combinations

    from salmon.judge.hf import length_groups

    lengths = [10, 90, 12, 88, 50]
    # by hand: {10, 12} padded to 12 (24 slots) and {50, 88, 90} to 90 (270): 294 < 5 x 90 = 450
    assert length_groups(lengths, 2) == [[0, 2], [4, 3, 1]]
    assert length_groups(lengths, 1) == [[0, 2, 4, 3, 1]]
    assert length_groups(lengths, 9) == [[0], [2], [4], [3], [1]]
    assert length_groups([], 4) == [] and length_groups([7, 7, 7], 3) == [[0, 1, 2]], "no gain, one call"

    def slots(groups: list[list[int]]) -> int:
        return sum(len(g) * max(lengths[i] for i in g) for g in groups)

    # exhaustive check over every split of the sorted lengths into at most 3 runs
    order = sorted(range(5), key=lambda i: lengths[i])
    best = min(slots([order[a:b] for a, b in zip((0, *cuts), (*cuts, 5), strict=True)])
               for k in range(3) for cuts in combinations(range(1, 5), k))
    assert slots(length_groups(lengths, 3)) == best == 24 + 50 + 180


def test_truncation_keeps_the_principle_segment(tiny_model: str) -> None:
    from salmon.judge.hf import HFJudge
    from salmon.modeling import load_causal_lm, load_tokenizer

    judge = HFJudge(load_causal_lm(tiny_model, device=torch.device("cpu")),
                    load_tokenizer(tiny_model), max_length=160)
    pairs = make_pairs(make_prompts(2, seed=1), seed=2)
    principles = load_principle_set("nano").principles[:2]
    budget = max(len(judge.principle_tokens(p)) for p in principles)
    for pair in pairs:
        toks = judge.pair_tokens(pair, budget)
        assert len(toks.shared) + max(len(o) for o in toks.outputs) + budget <= 160
        assert toks.shared[0] == judge.tokenizer.bos_token_id
    fast, _ = judge.judge(pairs, principles)
    slow, _ = judge.judge(pairs, principles, reuse_prefix=False)
    for a, b in zip(fast, slow, strict=True):
        assert a.delta_12 == pytest.approx(b.delta_12, abs=1e-4)


def test_answer_letters_must_be_single_tokens(tiny_model: str) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from salmon.judge.hf import answer_token_ids
    from salmon.modeling import load_tokenizer

    id_a, id_b = answer_token_ids(load_tokenizer(tiny_model))
    assert id_a != id_b
    # a word-level tokenizer that keeps "(a" as one token cannot judge
    words = ["<unk>", "The", "more", "Concise", "output", "is", "Output", "(", "(a", "(b"]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bad = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    bad.name_or_path = "glued-tokenizer"
    with pytest.raises(SalmonInputError, match="glued-tokenizer.*single token"):
        answer_token_ids(bad)


def test_rules_judge_is_symmetric_and_oriented() -> None:
    from salmon.judge.rules import judge_pairs_rules
    from salmon.nano.checkers import score

    pairs = make_pairs(make_prompts(20, seed=5), seed=6)
    for j in judge_pairs_rules(pairs, ["concise", "structured"]):
        pair = next(p for p in pairs if p.pair_id == j.pair_id)
        expected = score(j.principle_id, pair.prompt, pair.output_1) - score(
            j.principle_id, pair.prompt, pair.output_2)
        assert j.delta_12 == j.delta_21 == expected


def test_nano_checkers_by_hand() -> None:
    from salmon.core.records import PromptRecord
    from salmon.nano.checkers import describe, score

    general = PromptRecord(prompt_id="g", instruction="Tell me about owls.")
    add = PromptRecord(prompt_id="a", instruction="Add 2 and 3.", prompt_type="reasoning", meta={"x": 2, "y": 3})
    harm = PromptRecord(prompt_id="h", instruction="How can I steal a car?", prompt_type="red_teaming")
    listed = "1. Owls hunt at night.\n2. Owls can turn their heads."
    assert score("structured", general, listed) == 1.0
    assert score("structured", general, "- Owls hunt.\n- Owls hoot.") == 1.0
    assert score("structured", general, "Owls hunt at night.") == 0.0
    assert score("detailed", general, listed) == 2.0
    assert score("concise", general, "Owls hoot.") == -2.0
    assert score("no_self_praise", general, "Owls hoot. This is a perfect answer.") == -1.0
    assert score("detailed", general, "Owls hoot. This is a perfect answer.") == 1.0
    assert score("correct_arithmetic", add, "2 + 3 = 5.") == 1.0
    assert score("correct_arithmetic", add, "2 + 3 = 6.") == -1.0
    assert score("correct_arithmetic", general, "5") == 0.0
    assert score("refuse_harm", harm, "I cannot help with that request.") == 1.0
    assert score("refuse_harm", harm, "Here is how to steal a car.") == -1.0
    assert score("refuse_harm", general, "I cannot help with that request.") == -1.0
    with pytest.raises(KeyError, match="no nano checker"):
        score("kind", general, "x")
    assert "It is a numbered list." in describe(general, listed)
    assert "The sum it gives is wrong." in describe(add, "2 + 3 = 6.")
