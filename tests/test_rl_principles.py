"""RL-time principle sampler (method §4.4 and §10 item 9)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from salmon.core.principles import Principle, load_principle_set
from salmon.core.rl_principles import principle_weight, rl_principle_lines, sample_principles


def inclusion(prompt_type: str, draws: int = 50_000) -> dict[str, float]:
    rl = load_principle_set("rl")
    rng = random.Random(0)
    counts: Counter[str] = Counter()
    for _ in range(draws):
        picked = sample_principles(rng, rl.principles, prompt_type, k=3)  # type: ignore[arg-type]
        assert len({p.id for p in picked}) == 3  # without replacement
        counts.update(p.id for p in picked)
    return {p.id: counts[p.id] / draws for p in rl.principles}


def test_general_prompt_inclusion_rates_match_the_method() -> None:
    rl = load_principle_set("rl")
    rates = inclusion("general")
    by_weight: dict[float, list[float]] = {}
    for p in rl.principles:
        by_weight.setdefault(p.weight, []).append(rates[p.id])
    expected = {4.0: 0.41, 3.0: 0.33, 2.0: 0.23, 1.0: 0.12}
    for weight, values in by_weight.items():
        for v in values:
            assert v == pytest.approx(expected[weight], abs=0.015), (weight, v)


def test_boosts_make_type_principles_near_certain() -> None:
    reasoning = inclusion("reasoning", 20_000)
    assert reasoning["consistent_reasoning"] == pytest.approx(0.98, abs=0.01)
    assert reasoning["numerical_sensitive"] == pytest.approx(0.98, abs=0.01)
    red = inclusion("red_teaming", 20_000)
    assert red["ethical"] > 0.99


def test_weights_and_edge_cases() -> None:
    p = Principle(id="a", name="A", definition="d", weight=2, boosts={"reasoning": 128})
    assert principle_weight(p, "reasoning") == 130 and principle_weight(p, "general") == 2
    zero = [Principle(id=f"z{i}", name="Z", definition="d", weight=0) for i in range(3)]
    rng = random.Random(1)
    assert len(sample_principles(rng, zero, "general", k=2)) == 2
    assert len(sample_principles(rng, zero, "general", k=5)) == 3
    assert sample_principles(rng, zero, "general", k=0) == []
    with pytest.raises(ValueError):
        sample_principles(rng, zero, "general", k=-1)


def test_interventions_always_come_first() -> None:
    rng = random.Random(2)
    fixed, sampled = rl_principle_lines(rng, load_principle_set("rl"), load_principle_set("interventions"),
                                        "general")
    assert fixed == [p.definition for p in load_principle_set("interventions").principles]
    assert len(sampled) == 3 and not set(fixed) & set(sampled)
