"""The ``rules`` judge: nano checkers score each response; the delta is the score difference."""

from __future__ import annotations

from collections.abc import Sequence

from salmon.core.records import Judgement, ResponsePair
from salmon.nano import checkers


def judge_pairs_rules(
    pairs: Sequence[ResponsePair], principle_ids: Sequence[str], scale: float = 1.0
) -> list[Judgement]:
    """Judgements from exact checkers. Both orders give ``scale * (s(out1) - s(out2))``."""
    out = []
    for pair in pairs:
        for pid in principle_ids:
            d = scale * (checkers.score(pid, pair.prompt, pair.output_1)
                         - checkers.score(pid, pair.prompt, pair.output_2))
            out.append(Judgement(pair_id=pair.pair_id, principle_id=pid, delta_12=d, delta_21=d,
                                 backend="rules"))
    return out
