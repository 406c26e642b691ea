"""Turn per-principle judgements into principle-conditioned RM training instances (method §2.3).

Small pure functions, each testable by hand, and one driver, :func:`aggregate`. All randomness
comes from one seeded ``random.Random``, so a run is reproducible (the original also used an
unseeded global numpy RNG; here nothing is unseeded).
"""

from __future__ import annotations

import random
import statistics
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from salmon.core.principles import PrincipleSet
from salmon.core.records import Judgement, ResponsePair, RMInstance, RMPrinciple

Label = Literal[0, 1, 2]


def truncated_geometric(rng: random.Random, p: float, k_max: int) -> int:
    """Draw K ~ Geometric(p) on {1, 2, ...}, redrawn until K <= k_max.

    P(K = k) is proportional to (1-p)^(k-1) p on 1..k_max. For p = 0.2, k_max = 8:
    P(K=1) ~= 0.240 and E[K] ~= 3.39.
    """
    if not 0 < p <= 1:
        raise ValueError(f"p must be in (0, 1], got {p}")
    while True:
        k = 1
        while rng.random() >= p:
            k += 1
            if k > k_max:
                break
        if k <= k_max:
            return k


def normalizers(
    deltas: Mapping[str, Sequence[float]], kind: Literal["variance", "std"] = "variance"
) -> dict[str, float]:
    """Per-principle scale of the judge's deltas, pooled over both orders and all pairs.

    Args:
        deltas: principle id -> every delta (delta_12 and delta_21 of every pair).
        kind: ``variance`` (the method's choice) or ``std``.

    Returns:
        principle id -> divisor. A principle whose deltas are all equal gets 1.0.
    """
    out: dict[str, float] = {}
    for pid, values in deltas.items():
        var = statistics.pvariance(values) if len(values) > 1 else 0.0
        scale = var if kind == "variance" else var**0.5
        out[pid] = scale if scale > 0 else 1.0
    return out


def principle_score(delta_12: float, delta_21: float, scale: float) -> float:
    """Score of one principle for one pair; positive favours output_1.

    Position-consistent deltas (same sign) give their mean divided by ``scale``; inconsistent
    ones (a tie, or a zero) give 0: no opinion.

    >>> principle_score(2.0, 4.0, 2.0)
    1.5
    >>> principle_score(2.0, -1.0, 1.0)
    0.0
    """
    if delta_12 * delta_21 > 0:
        return (delta_12 + delta_21) / 2.0 / scale
    return 0.0


def dominant_label(scores: Sequence[float]) -> tuple[int, Label]:
    """The principle with the largest |score| decides; the others are ignored.

    Returns:
        (index of the deciding principle, label): label 1 if its score is positive (output_1
        wins), 2 if negative, 0 if every score is 0. Ties in |score| go to the first.
    """
    if not scores:
        return -1, 0
    idx = max(range(len(scores)), key=lambda i: abs(scores[i]))
    s = scores[idx]
    return idx, (1 if s > 0 else 2 if s < 0 else 0)


def ai_phrase_rule(output_1: str, output_2: str, phrase: str) -> Label:
    """If exactly one output contains ``phrase``, the OTHER output is preferred (1 or 2); else 0."""
    in1, in2 = phrase in output_1, phrase in output_2
    if in1 and not in2:
        return 2
    if in2 and not in1:
        return 1
    return 0


_SCRIPTS = (
    ("LATIN", "Latn"), ("CJK", "Hani"), ("HIRAGANA", "Jpan"), ("KATAKANA", "Jpan"),
    ("HANGUL", "Kore"), ("CYRILLIC", "Cyrl"), ("ARABIC", "Arab"), ("HEBREW", "Hebr"),
    ("GREEK", "Grek"), ("DEVANAGARI", "Deva"), ("THAI", "Thai"),
)


def detect_script(text: str) -> str:
    """The dominant writing system of ``text`` as an ISO 15924 code, or ``und`` if no letters.

    A dependency-free stand-in for a language identifier: it tells Chinese from English from
    Russian, but not English from French.
    """
    counts: dict[str, int] = {}
    for ch in text:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        for prefix, code in _SCRIPTS:
            if name.startswith(prefix):
                counts[code] = counts.get(code, 0) + 1
                break
    return max(counts, key=lambda c: counts[c]) if counts else "und"


def language_rule(lang_instruction: str, lang_1: str, lang_2: str) -> Label | Literal["drop"]:
    """Prefer the output in the instruction's language.

    Returns ``drop`` if both outputs differ from the instruction's language, 1 or 2 if exactly
    one does (the other wins), else 0. Undetermined languages (``und``) never trigger the rule.
    """
    if "und" in (lang_instruction, lang_1, lang_2):
        return 0
    off1, off2 = lang_1 != lang_instruction, lang_2 != lang_instruction
    if off1 and off2:
        return "drop"
    if off1:
        return 2
    if off2:
        return 1
    return 0


@dataclass(frozen=True)
class AggregateParams:
    """The knobs of aggregation; defaults are the method's values (see AggregateConfig)."""

    dimensions: tuple[str, ...]
    normalizer: Literal["variance", "std"] = "variance"
    passes: int = 4
    geometric_p: float = 0.2
    max_principles: int = 8
    negation_p: float = 0.5
    ai_phrase: str = "As an AI language model"
    ai_phrase_p: float = 0.5
    language_rule: bool = True
    label_noise: float = 0.10
    rule_label_noise: float = 0.25
    swap_p: float = 0.5
    seed: int = 42


@dataclass
class AggregateStats:
    """Counts of what aggregation did, for logs and tests."""

    pairs_in: int = 0
    pairs_missing_dimensions: int = 0
    instances: int = 0
    skipped_all_ties: int = 0
    dropped_language: int = 0
    rule_fired: int = 0
    noise_flips: int = 0
    swaps: int = 0
    negations: int = 0
    principles_shown: int = 0


def judge_agreement(reference: Iterable[Judgement], other: Iterable[Judgement]) -> dict[str, float | int | None]:
    """How a judge's verdicts compare with reference verdicts (e.g. exact checkers) on the same
    (pair, principle) cases.

    ``decided`` counts cases the reference decides (a nonzero :func:`principle_score`);
    ``consistent_rate`` is the share of those where ``other`` is position-consistent (decides);
    ``agreement`` the share of cases both decide where they prefer the same output, over
    ``agreement_n`` such cases (None when there are none). ``mean_agreement`` compares the sign of
    ``other``'s order-averaged delta instead, over the ``mean_agreement_n`` decided cases where it
    is nonzero: a constant position bias cancels in the mean, so an inconsistent judge still
    counts.

    >>> ref = [Judgement(pair_id="p", principle_id=i, delta_12=d, delta_21=d, backend="rules")
    ...        for i, d in (("a", 1.0), ("b", -1.0), ("c", 1.0), ("d", 0.0))]
    >>> got = [Judgement(pair_id="p", principle_id=i, delta_12=x, delta_21=y, backend="hf")
    ...        for i, x, y in (("a", 2.0, 1.0), ("b", 1.0, 3.0), ("c", 1.0, -0.5), ("d", 1.0, 1.0))]
    >>> a = judge_agreement(ref, got)
    >>> a["decided"], a["consistent_rate"], a["agreement"], a["agreement_n"]
    (3, 0.6667, 0.5, 2)
    >>> a["mean_agreement"], a["mean_agreement_n"]
    (0.6667, 3)
    """
    theirs = {(j.pair_id, j.principle_id): (principle_score(j.delta_12, j.delta_21, 1.0), j.delta_12 + j.delta_21)
              for j in other}
    decided = agree = both = consistent = mean_agree = mean_n = 0
    for j in reference:
        ref = principle_score(j.delta_12, j.delta_21, 1.0)
        key = (j.pair_id, j.principle_id)
        if ref == 0 or key not in theirs:
            continue
        decided += 1
        score, total = theirs[key]
        if score != 0:
            consistent += 1
            both += 1
            agree += (score > 0) == (ref > 0)
        if total != 0:
            mean_n += 1
            mean_agree += (total > 0) == (ref > 0)
    return {"decided": decided, "consistent_rate": round(consistent / decided, 4) if decided else None,
            "agreement": round(agree / both, 4) if both else None, "agreement_n": both,
            "mean_agreement": round(mean_agree / mean_n, 4) if mean_n else None, "mean_agreement_n": mean_n}


def index_judgements(judgements: Iterable[Judgement]) -> dict[str, dict[str, Judgement]]:
    """pair_id -> principle_id -> judgement (a later duplicate replaces an earlier one)."""
    out: dict[str, dict[str, Judgement]] = {}
    for j in judgements:
        out.setdefault(j.pair_id, {})[j.principle_id] = j
    return out


def aggregate(
    pairs: Sequence[ResponsePair],
    judgements: Mapping[str, Mapping[str, Judgement]],
    principle_set: PrincipleSet,
    params: AggregateParams,
) -> tuple[list[RMInstance], AggregateStats]:
    """Build RM training instances from judged pairs (method §2.3, steps 1-9).

    Args:
        pairs: the response pairs, in a fixed order.
        judgements: pair_id -> principle_id -> judgement (see :func:`index_judgements`).
        principle_set: supplies the definitions and negative definitions shown to the RM.
        params: aggregation knobs.

    Returns:
        The instances (``passes`` rounds over the pairs) and counts of what happened.
    """
    rng = random.Random(params.seed)
    stats = AggregateStats(pairs_in=len(pairs))
    dims = list(params.dimensions)
    principles = {d: principle_set.get(d) for d in dims}

    usable = []
    for pair in pairs:
        per = judgements.get(pair.pair_id, {})
        if all(d in per for d in dims):
            usable.append(pair)
        else:
            stats.pairs_missing_dimensions += 1

    pooled: dict[str, list[float]] = {d: [] for d in dims}
    for pair in usable:
        for d in dims:
            j = judgements[pair.pair_id][d]
            pooled[d] += [j.delta_12, j.delta_21]
    scales = normalizers(pooled, params.normalizer)

    langs: dict[str, tuple[str, str, str]] = {}
    if params.language_rule:
        for pair in usable:
            langs[pair.pair_id] = (detect_script(pair.prompt.full_instruction()),
                                   detect_script(pair.output_1), detect_script(pair.output_2))

    instances: list[RMInstance] = []
    for pass_index in range(params.passes):
        for pair in usable:
            order = dims[:]
            rng.shuffle(order)
            k = truncated_geometric(rng, params.geometric_p, min(params.max_principles, len(order)))
            chosen = order[:k]
            scores, negated = [], []
            for d in chosen:
                j = judgements[pair.pair_id][d]
                s = principle_score(j.delta_12, j.delta_21, scales[d])
                neg = rng.random() < params.negation_p
                scores.append(-s if neg else s)
                negated.append(neg)
            dom, label = dominant_label(scores)
            if label == 0:
                stats.skipped_all_ties += 1
                continue

            rule_flag = False
            rule = ai_phrase_rule(pair.output_1, pair.output_2, params.ai_phrase)
            if rule and rng.random() < params.ai_phrase_p:
                label, rule_flag = rule, True
            lang = None
            if params.language_rule:
                lang_i, lang_1, lang_2 = langs[pair.pair_id]
                lang = lang_i
                verdict = language_rule(lang_i, lang_1, lang_2)
                if verdict == "drop":
                    stats.dropped_language += 1
                    continue
                if verdict:
                    label, rule_flag = verdict, True
            if rule_flag:
                stats.rule_fired += 1

            noise_flip = rng.random() < (params.rule_label_noise if rule_flag else params.label_noise)
            if noise_flip:
                label = 2 if label == 1 else 1
                stats.noise_flips += 1

            out1, out2 = pair.output_1, pair.output_2
            if rng.random() < params.swap_p:
                out1, out2 = out2, out1
                label = 2 if label == 1 else 1
                scores = [-s for s in scores]
                stats.swaps += 1

            lines = []
            for d, s, neg in zip(chosen, scores, negated, strict=True):
                p = principles[d]
                text = p.negative_definition if neg else p.definition
                assert text is not None  # checked by PrincipleSet for RM sets
                lines.append(RMPrinciple(principle_id=d, negated=neg, text=text, score=s))
            stats.negations += sum(negated)
            stats.principles_shown += len(chosen)
            instances.append(RMInstance(
                instance_id=f"{pair.pair_id}/{pass_index}",
                pair_id=pair.pair_id,
                augmentation_pass=pass_index,
                instruction=pair.prompt.full_instruction(),
                output_1=out1,
                output_2=out2,
                principles=lines,
                preference=1 if label == 1 else 2,
                dominant_index=-1 if rule_flag else dom,
                noise_flip=noise_flip,
                rule_flag=rule_flag,
                lang=lang,
            ))
            stats.instances += 1
    return instances, stats
