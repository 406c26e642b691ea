"""RL-time principle selection (method §4.4): the principles the reward model sees during RL.

Every RM call at RL time shows the fixed interventions first, then ``k`` principles drawn by
weight, without replacement, from an RL principle set. A principle's weight for a prompt is
its ``weight`` plus its ``boosts`` for the prompt's type (the method adds 128 for reasoning and
red-teaming principles). The original found boosted principles by substrings of their names;
here the boost is data in the principle set.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from salmon.core.principles import Principle, PrincipleSet, PromptType


def principle_weight(principle: Principle, prompt_type: PromptType) -> float:
    """``weight`` plus the boost for ``prompt_type`` (0 if none)."""
    return principle.weight + principle.boosts.get(prompt_type, 0.0)


def sample_principles(
    rng: random.Random, principles: Sequence[Principle], prompt_type: PromptType, k: int = 3
) -> list[Principle]:
    """Draw ``min(k, n)`` principles by weight without replacement, in draw order.

    Each draw picks principle i with probability ``w_i / sum(w)`` among those not yet drawn.
    Principles of weight 0 are drawn only once every positive weight is used up, uniformly.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    pool = list(principles)
    rng.shuffle(pool)  # as the method: shuffle, then draw, so ties in weight are unbiased
    weights = [principle_weight(p, prompt_type) for p in pool]
    chosen: list[Principle] = []
    while pool and len(chosen) < k:
        total = sum(weights)
        if total > 0:
            i = rng.choices(range(len(pool)), weights=weights)[0]
        else:
            i = rng.randrange(len(pool))
        chosen.append(pool.pop(i))
        weights.pop(i)
    return chosen


def rl_principle_lines(
    rng: random.Random,
    rl_set: PrincipleSet,
    interventions: PrincipleSet | None,
    prompt_type: PromptType,
    k: int = 3,
) -> tuple[list[str], list[str]]:
    """The RM's lines for one rollout: ``(intervention texts, sampled principle texts)``."""
    fixed = [p.definition for p in interventions.principles] if interventions else []
    return fixed, [p.definition for p in sample_principles(rng, rl_set.principles, prompt_type, k)]
