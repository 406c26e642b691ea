"""``aggregate``: principle-conditioned RM training instances from judgements (method §2.3).

Per pair and augmentation pass: shuffle the training dimensions, draw K ~ Geometric(0.2)
(K <= 8), negate each shown principle with p = 0.5, label by the principle with the largest
normalised |score|, apply the AI-phrase and language rules, add label noise (0.10, or 0.25 when
a rule fired) and swap the outputs with p = 0.5. All draws come from one seeded RNG.
"""

from __future__ import annotations

from pathlib import Path

from salmon.core.aggregate import AggregateParams, aggregate, index_judgements
from salmon.core.config import AggregateConfig
from salmon.core.errors import SalmonInputError
from salmon.core.io import read_jsonl, write_jsonl
from salmon.core.principles import PrincipleSet, load_principle_set
from salmon.core.records import Judgement, ResponsePair, to_preference_export
from salmon.stages.common import StageResult, log, stage_main

STAGE = "aggregate"


def training_dimensions(pset: PrincipleSet, dimensions: list[str] | None, negated: bool = False,
                        holdout: list[str] | tuple[str, ...] = ()) -> tuple[str, ...]:
    """The configured dimensions (checked against the set), or the set's rm_training ones, less
    the ``holdout`` ones; with ``negated`` (principles may be shown negated), each must have a
    negative definition."""
    for h in holdout:
        pset.get(h)
    if dimensions is not None and not dimensions:
        raise SalmonInputError(f"principle set {pset.name}", "an empty list of dimensions",
                               "give at least one principle id, or dimensions=null for the rm_training ones")
    if dimensions:
        for d in dimensions:
            pset.get(d)
        dims = tuple(dimensions)
    else:
        dims = tuple(p.id for p in pset.principles if p.rm_training)
    if not dims:
        raise SalmonInputError(f"principle set {pset.name}", "no principle has rm_training: true",
                               "mark the training dimensions or pass dimensions=[...]")
    dims = tuple(d for d in dims if d not in holdout)
    if not dims:
        raise SalmonInputError(f"principle set {pset.name}", f"holding out {', '.join(holdout)} leaves no "
                               "training dimension", "hold out fewer principles")
    lacking = [d for d in dims if not pset.get(d).negative_definition]
    if negated and lacking:
        raise SalmonInputError(f"principle set {pset.name} ({pset.kind})",
                               f"principles {', '.join(lacking)} have no negative_definition, which a negated "
                               "principle shows", "use a reward_model set, add negative definitions, or set "
                               "negation_p=0")
    return dims


def check_judged_principles(judgements: list[Judgement], pset: PrincipleSet, source: str) -> None:
    """Every judgement's principle must be in the set the stage reads (a judgement of another
    set's principle would be silently ignored)."""
    known = set(pset.ids())
    stray = sorted({j.principle_id for j in judgements} - known)
    if stray:
        raise SalmonInputError(source, f"holds judgements for {', '.join(repr(s) for s in stray)}, which principle "
                               f"set {pset.name} does not have", "give the principle set the pairs were judged with "
                               "(principles=...)")


def run(cfg: AggregateConfig) -> StageResult:
    pset = load_principle_set(cfg.principles)
    dims = training_dimensions(pset, cfg.dimensions, negated=cfg.negation_p > 0, holdout=cfg.holdout_principles)
    pairs = [p for p in read_jsonl(cfg.pairs, ResponsePair) if p.prompt.split in cfg.splits]
    if not pairs:
        raise SalmonInputError(cfg.pairs, f"no pairs in splits {cfg.splits}",
                               "check the splits key or the prompts' split field")
    judged = read_jsonl(cfg.judgements, Judgement)
    check_judged_principles(judged, pset, cfg.judgements)
    judgements = index_judgements(judged)
    params = AggregateParams(
        dimensions=dims, normalizer=cfg.normalizer, passes=cfg.passes, geometric_p=cfg.geometric_p,
        max_principles=cfg.max_principles, negation_p=cfg.negation_p, ai_phrase=cfg.ai_phrase,
        ai_phrase_p=cfg.ai_phrase_p, language_rule=cfg.language_rule, label_noise=cfg.label_noise,
        rule_label_noise=cfg.rule_label_noise, swap_p=cfg.swap_p, seed=cfg.seed)
    instances, stats = aggregate(pairs, judgements, pset, params)
    if not instances:
        raise SalmonInputError(cfg.judgements, "aggregation produced no instances",
                               "every pair was missing a dimension or tied; check the judgements")
    write_jsonl(cfg.output, instances)
    outputs = {"instances": cfg.output}
    if cfg.export_preferences:
        out = Path(cfg.output)
        export = out.with_name(out.stem + ".preferences.jsonl")
        write_jsonl(export, (to_preference_export(i) for i in instances))
        outputs["preferences"] = str(export)
    n = max(1, stats.instances)
    metrics = {
        "pairs": stats.pairs_in, "pairs_missing_dimensions": stats.pairs_missing_dimensions,
        "instances": stats.instances, "skipped_all_ties": stats.skipped_all_ties,
        "dropped_language": stats.dropped_language,
        "mean_principles": round(stats.principles_shown / n, 3),
        "negation_rate": round(stats.negations / max(1, stats.principles_shown), 4),
        "noise_flip_rate": round(stats.noise_flips / n, 4),
        "rule_rate": round(stats.rule_fired / n, 4), "swap_rate": round(stats.swaps / n, 4),
        "principles_digest": pset.digest(),
    }
    if cfg.holdout_principles:
        metrics["holdout_principles"] = list(cfg.holdout_principles)
    held = f"; held out: {', '.join(cfg.holdout_principles)}" if cfg.holdout_principles else ""
    log(STAGE, f"{stats.instances} instances from {stats.pairs_in} pairs x {cfg.passes} passes "
               f"(dimensions: {', '.join(dims)}{held}) -> {cfg.output}")
    return StageResult(STAGE, outputs=outputs, metrics=metrics)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, AggregateConfig, run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
