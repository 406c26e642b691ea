"""``eval_rm``: does the reward model follow the principles it is given? (method §10, items 4-5)

On held-out pairs and their judgements:

- **accuracy**: instances built exactly as ``aggregate`` builds them, but without label noise
  or rules (so the label is what the principles say); share where the RM prefers the labelled
  output.
- **flip rate**: for the accuracy instances whose deciding principle is shown positively,
  replace that line by its negative definition; share where the RM's preference flips.
- **principle sensitivity**: pairs where the judge says the two ``sensitivity`` principles
  (e.g. concise vs comprehensive) disagree; share where the RM conditioned on each alone also
  prefers opposite outputs.
- **zero-shot principles** (``zero_shot``): principles held out of the RM's training instances
  (aggregate's ``holdout_principles``), each shown alone with only its definition: accuracy
  against the judge's verdict, and flip rate when its negative definition is shown instead. The
  RM's ``rm.json`` lists the principles it was trained on; one of those is refused here.
- **self-praise check** (method §10 item 10): each pair's first output R against R plus the
  ``self_praise`` sentence, under one training principle drawn per pair, without and with the
  RL-time intervention lines of ``intervention_set`` shown first; share where the RM prefers R
  and the mean margin r(R) - r(R + praise), for both prompts.

Writes ``metrics.json`` and ``report.md``; with ``min_accuracy`` / ``min_flip_rate`` set, a
result below them fails the stage (exit 1) after writing both.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salmon.core.aggregate import AggregateParams, aggregate, index_judgements, principle_score
from salmon.core.config import EvalRMConfig
from salmon.core.errors import GateFailed, SalmonInputError
from salmon.core.io import read_jsonl, write_json, write_text
from salmon.core.principles import PrincipleSet, load_principle_set
from salmon.core.records import Judgement, ResponsePair, RMInstance, RMPrinciple
from salmon.stages.aggregate import check_judged_principles, training_dimensions
from salmon.stages.common import StageResult, log, stage_main

STAGE = "eval_rm"


class EvalGateFailed(GateFailed):
    """An evaluation result fell below a configured threshold."""


def negate_dominant(inst: RMInstance, negative_text: str) -> RMInstance:
    """The instance with its deciding principle shown negatively and the label flipped."""
    lines = list(inst.principles)
    d = lines[inst.dominant_index]
    lines[inst.dominant_index] = RMPrinciple(principle_id=d.principle_id, negated=True,
                                             text=negative_text, score=-d.score)
    return inst.model_copy(update={"principles": lines,
                                   "preference": 2 if inst.preference == 1 else 1})


def check_principles_fit(cfg: EvalRMConfig, pset: PrincipleSet, ids: list[str],
                         interventions: PrincipleSet | None, pairs: list[ResponsePair]) -> None:
    """Each principle (either polarity, and with the intervention lines) must fit the RM's input
    with the longest instruction: checked from ``rm.json`` and the tokenizer, before the RM loads."""
    from salmon.modeling import load_tokenizer
    from salmon.reward.model import RMEncoder, read_rm_meta

    limits = read_rm_meta(cfg.model).limits()
    encoder = RMEncoder(load_tokenizer(cfg.model), limits)
    longest = encoder.instruction_tokens([p.prompt.full_instruction() for p in pairs])
    fixed = [p.definition for p in interventions.principles] if interventions else []
    for pid in dict.fromkeys(ids):
        p = pset.get(pid)
        for text in (p.definition, p.negative_definition or p.definition):
            encoder.check_fit([text], [], f"principle '{pid}' of {cfg.principles}", longest)
        if fixed:
            encoder.check_fit([p.definition], fixed, f"principle '{pid}' of {cfg.principles} with the "
                              f"interventions of {cfg.intervention_set}", longest)


def check_zero_shot(cfg: EvalRMConfig, pset: PrincipleSet, trained: list[str]) -> None:
    """The zero-shot principles must be in the set and absent from the RM's training instances."""
    for pid in cfg.zero_shot:
        pset.get(pid)
    seen = sorted(set(cfg.zero_shot) & set(trained))
    if seen:
        raise SalmonInputError(f"zero_shot={','.join(cfg.zero_shot)}",
                               f"the reward model was trained on {', '.join(seen)} (its rm.json lists them)",
                               "train the RM with aggregate's holdout_principles set to these principles")
    if cfg.zero_shot and not trained:
        log(STAGE, "warning: the RM folder does not list its training principles; the zero-shot principles are "
                   "assumed to have been held out")


def zero_shot_pairs(pairs: list[ResponsePair], judgements: dict[str, dict[str, Judgement]],
                    ids: list[str]) -> list[tuple[str, ResponsePair, bool]]:
    """(principle, pair, the judge prefers output_1) for every pair the judge decided under each
    zero-shot principle alone (a position-inconsistent verdict is a tie and is left out)."""
    out = []
    for pid in ids:
        for pair in pairs:
            j = judgements.get(pair.pair_id, {}).get(pid)
            score = principle_score(j.delta_12, j.delta_21, 1.0) if j is not None else 0.0
            if score != 0:
                out.append((pid, pair, score > 0))
    return out


def run(cfg: EvalRMConfig) -> StageResult:
    from salmon.modeling import resolve_device
    from salmon.reward.model import RMEncoder, load_reward_model, read_rm_meta, score_sequences

    meta = read_rm_meta(cfg.model)  # the RM folder first: a wrong folder is named before the data
    pset = load_principle_set(cfg.principles)
    # the flip rate shows negations; zero-shot principles are measured on their own
    dims = training_dimensions(pset, cfg.dimensions, negated=True, holdout=cfg.zero_shot)
    check_zero_shot(cfg, pset, meta.trained_principles)
    interventions = (load_principle_set(cfg.intervention_set).subset(cfg.intervention_ids)
                     if cfg.intervention_set else None)
    for pid in cfg.sensitivity:
        pset.get(pid)
    pairs = [p for p in read_jsonl(cfg.pairs, ResponsePair) if p.prompt.split in cfg.splits]
    if not pairs:
        raise SalmonInputError(cfg.pairs, f"no pairs in splits {cfg.splits}", "check the splits key")
    judged = read_jsonl(cfg.judgements, Judgement)
    check_judged_principles(judged, pset, cfg.judgements)
    judgements = index_judgements(judged)
    params = AggregateParams(dimensions=dims, normalizer=cfg.normalizer, passes=cfg.passes,
                             geometric_p=cfg.geometric_p, max_principles=cfg.max_principles,
                             ai_phrase_p=0.0, language_rule=False, label_noise=0.0,
                             rule_label_noise=0.0, seed=cfg.seed)
    instances, _ = aggregate(pairs, judgements, pset, params)
    if not instances:
        raise nothing_to_score(cfg, pairs, judgements, dims)
    flip_base = [i for i in instances if not i.principles[i.dominant_index].negated]
    flipped = [negate_dominant(i, pset.get(i.principles[i.dominant_index].principle_id)
                               .negative_definition or "") for i in flip_base]

    a_p, b_p = pset.get(cfg.sensitivity[0]), pset.get(cfg.sensitivity[1])
    sens_pairs = sensitivity_pairs(pairs, judgements, a_p.id, b_p.id)

    zero_pairs = zero_shot_pairs(pairs, judgements, cfg.zero_shot)
    check_principles_fit(cfg, pset, [*dims, *cfg.sensitivity, *cfg.zero_shot], interventions, pairs)
    device = resolve_device(cfg.device)
    model, tokenizer, meta = load_reward_model(cfg.model, device=device, dtype=cfg.dtype)
    encoder = RMEncoder(tokenizer, meta.limits())
    rows: list[list[int]] = []

    def add(resp: str, instr: str, lines: list[str], fixed: list[str] | None = None) -> int:
        try:
            rows.append(encoder.encode_rm(resp, instr, lines, fixed or []))
        except SalmonInputError as e:  # several principles shown at once
            raise SalmonInputError(f"principle set {cfg.principles}", e.message, e.fix) from None
        return len(rows) - 1

    def inst_rows(i: RMInstance) -> tuple[int, int]:
        lines = [p.text for p in i.principles]
        return add(i.output_1, i.instruction, lines), add(i.output_2, i.instruction, lines)

    acc_idx = [inst_rows(i) for i in instances]
    flip_idx = [inst_rows(i) for i in flipped]
    sens_idx = []
    for pair in sens_pairs:
        instr = pair.prompt.full_instruction()
        sens_idx.append((add(pair.output_1, instr, [a_p.definition]), add(pair.output_2, instr, [a_p.definition]),
                         add(pair.output_1, instr, [b_p.definition]), add(pair.output_2, instr, [b_p.definition])))
    zero_idx: list[tuple[str, bool, tuple[int, int], tuple[int, int] | None]] = []
    for pid, pair, prefers_first in zero_pairs:
        instr, p = pair.prompt.full_instruction(), pset.get(pid)
        pos = (add(pair.output_1, instr, [p.definition]), add(pair.output_2, instr, [p.definition]))
        neg = ((add(pair.output_1, instr, [p.negative_definition]), add(pair.output_2, instr, [p.negative_definition]))
               if p.negative_definition else None)
        zero_idx.append((pid, prefers_first, pos, neg))
    praise_idx = []
    if interventions is not None:
        fixed = [p.definition for p in interventions.principles]
        draw = random.Random(cfg.seed)
        for pair in pairs:
            instr = pair.prompt.full_instruction()
            line = [pset.get(draw.choice(dims)).definition]
            plain, praised = pair.output_1.strip(), f"{pair.output_1.strip()} {cfg.self_praise}"
            praise_idx.append((add(plain, instr, line), add(praised, instr, line),
                               add(plain, instr, line, fixed), add(praised, instr, line, fixed)))
    log(STAGE, f"scoring {len(rows)} sequences: {len(instances)} accuracy instances, "
               f"{len(flipped)} flip instances, {len(sens_pairs)} sensitivity pairs")
    r = score_sequences(model, rows, int(tokenizer.pad_token_id), cfg.batch_size)

    metrics = rm_metrics(cfg, r, pset, interventions, pairs, instances, flip_base, Indices(
        accuracy=acc_idx, flip=flip_idx, sensitivity=sens_idx, zero_shot=zero_idx, self_praise=praise_idx))
    out = Path(cfg.output_dir)
    write_json(out / "metrics.json", metrics)
    write_text(out / "report.md", report(cfg, metrics))
    log(STAGE, f"accuracy {_fmt(metrics['accuracy'])} (n={metrics['accuracy_n']}), flip rate "
               f"{_fmt(metrics['flip_rate'])} (n={metrics['flip_n']}), sensitivity {_fmt(metrics['sensitivity'])} "
               f"(n={metrics['sensitivity_n']})")
    for pid, z in metrics.get("zero_shot", {}).items():
        log(STAGE, f"zero-shot {pid}: accuracy {_fmt(z['accuracy'])} (n={z['n']}), flip rate "
                   f"{_fmt(z['flip_rate'])} (n={z['flip_n']})")
    result = StageResult(STAGE, outputs={"metrics": str(out / "metrics.json"),
                                         "report": str(out / "report.md")}, metrics=metrics)
    failures = []
    for name, key, gate in (("accuracy", "accuracy", cfg.min_accuracy), ("flip rate", "flip_rate", cfg.min_flip_rate)):
        if gate is not None and (metrics[key] is None or not metrics[key] >= gate):
            failures.append(f"{name} {_fmt(metrics[key])} < {gate}")
    if failures:
        raise EvalGateFailed("; ".join(failures))
    return result


def nothing_to_score(cfg: EvalRMConfig, pairs: list[ResponsePair], judgements: dict[str, Any],
                     dims: list[str]) -> SalmonInputError:
    """Why no instance could be built from the held-out pairs, and what to do."""
    judged = [pair for pair in pairs if pair.pair_id in judgements]
    shown = [j for pair in judged for pid, j in judgements[pair.pair_id].items() if pid in dims]
    why = (f"none of the {len(pairs)} pairs in splits {cfg.splits} has a judgement" if not judged else
           f"no judged pair prefers an output under the principles {', '.join(dims)}: "
           f"{sum(j.consistent for j in shown)} of their {len(shown)} judgements pick the same output in both "
           "orders, and an inconsistent verdict counts as a tie")
    return SalmonInputError(cfg.judgements, f"no instance to score: {why}",
                            "judge the held-out pairs with a stronger judge (label's position_consistent_rate "
                            "should be well above 0.5), or give more pairs")


def sensitivity_pairs(pairs: list[ResponsePair], judgements: dict[str, Any], a_id: str, b_id: str
                      ) -> list[ResponsePair]:
    """The pairs on which the judge says principles ``a_id`` and ``b_id`` prefer opposite outputs."""
    out = []
    for pair in pairs:
        per = judgements.get(pair.pair_id, {})
        if a_id in per and b_id in per:
            sa = principle_score(per[a_id].delta_12, per[a_id].delta_21, 1.0)
            sb = principle_score(per[b_id].delta_12, per[b_id].delta_21, 1.0)
            if sa * sb < 0:
                out.append(pair)
    return out


@dataclass
class Indices:
    """Where each measurement's RM inputs sit in the scored sequences: (response 1, response 2) per
    accuracy and flip instance; (a1, a2, b1, b2) per sensitivity pair; (principle, whether the
    judge prefers response 1, positive pair, negated pair or None) per zero-shot pair; (plain,
    praised, plain with interventions, praised with interventions) per self-praise pair."""

    accuracy: list[tuple[int, int]]
    flip: list[tuple[int, int]]
    sensitivity: list[tuple[int, int, int, int]]
    zero_shot: list[tuple[str, bool, tuple[int, int], tuple[int, int] | None]]
    self_praise: list[tuple[int, int, int, int]]


def rm_metrics(cfg: EvalRMConfig, r: list[float], pset: PrincipleSet, interventions: PrincipleSet | None,
               pairs: list[ResponsePair], instances: list[RMInstance], flip_base: list[RMInstance],
               ix: Indices) -> dict[str, Any]:
    """Accuracy, flip rate, sensitivity (overall, by principle and by principles shown), the
    zero-shot principles and the self-praise check, from the RM scores ``r`` of the sequences."""
    def prefers_1(i1: int, i2: int) -> bool:
        return r[i1] > r[i2]

    correct = [prefers_1(*ix) == (inst.preference == 1) for ix, inst in zip(ix.accuracy, instances, strict=True)]
    by_principle: dict[str, list[bool]] = defaultdict(list)
    by_k: dict[int, list[bool]] = defaultdict(list)
    for ok, inst in zip(correct, instances, strict=True):
        by_principle[inst.principles[inst.dominant_index].principle_id].append(ok)
        by_k[len(inst.principles)].append(ok)
    base_of = {i.instance_id: k for k, i in enumerate(instances)}
    flips = [prefers_1(*ix.accuracy[base_of[i.instance_id]]) != prefers_1(*fx)
             for i, fx in zip(flip_base, ix.flip, strict=True)]
    flip_by: dict[str, list[bool]] = defaultdict(list)
    for ok, inst in zip(flips, flip_base, strict=True):
        flip_by[inst.principles[inst.dominant_index].principle_id].append(ok)
    sens = [prefers_1(a1, a2) != prefers_1(b1, b2) for a1, a2, b1, b2 in ix.sensitivity]
    margins_off = [r[p0] - r[p1] for p0, p1, _, _ in ix.self_praise]
    margins_on = [r[q0] - r[q1] for _, _, q0, q1 in ix.self_praise]

    def rate(xs: list[bool]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    metrics = {
        "accuracy": rate(correct), "accuracy_n": len(correct),
        "flip_rate": rate(flips), "flip_n": len(flips),
        "sensitivity": rate(sens), "sensitivity_n": len(sens),
        "accuracy_by_principle": {k: rate(v) for k, v in sorted(by_principle.items())},
        "accuracy_by_k": {str(k): rate(v) for k, v in sorted(by_k.items())},
        "flip_rate_by_principle": {k: rate(v) for k, v in sorted(flip_by.items())},
        "pairs": len(pairs), "principles_digest": pset.digest(),
    }
    if cfg.zero_shot:
        per: dict[str, dict[str, list[bool]]] = {pid: {"acc": [], "flip": []} for pid in cfg.zero_shot}
        for pid, prefers_first, pos, neg in ix.zero_shot:
            per[pid]["acc"].append(prefers_1(*pos) == prefers_first)
            if neg is not None:
                per[pid]["flip"].append(prefers_1(*pos) != prefers_1(*neg))
        metrics["zero_shot"] = {pid: {"accuracy": rate(v["acc"]), "n": len(v["acc"]),
                                      "flip_rate": rate(v["flip"]), "flip_n": len(v["flip"])}
                                for pid, v in per.items()}
        metrics["zero_shot_accuracy"] = rate([x for v in per.values() for x in v["acc"]])
        metrics["zero_shot_flip_rate"] = rate([x for v in per.values() for x in v["flip"]])
    if ix.self_praise:
        metrics["self_praise"] = {
            "n": len(ix.self_praise), "interventions": interventions.ids() if interventions else [],
            "prefers_plain_off": rate([m > 0 for m in margins_off]),
            "prefers_plain_on": rate([m > 0 for m in margins_on]),
            "margin_off": round(sum(margins_off) / len(margins_off), 4),
            "margin_on": round(sum(margins_on) / len(margins_on), 4),
        }
    return metrics


def _fmt(value: float | None, spec: str = ".3f") -> str:
    """A rate for logs and the report; ``n/a`` where nothing was measured (metrics.json holds null)."""
    return "n/a" if value is None else format(value, spec)


def report(cfg: EvalRMConfig, m: dict) -> str:  # type: ignore[type-arg]
    lines = [
        "# Reward-model evaluation", "",
        f"Model: `{cfg.model}`; pairs: `{cfg.pairs}` (splits {', '.join(cfg.splits)}); "
        f"principles: `{cfg.principles}`.", "",
        "| metric | value | n |", "|---|---|---|",
        f"| pairwise accuracy | {_fmt(m['accuracy'])} | {m['accuracy_n']} |",
        f"| flip rate (deciding principle negated) | {_fmt(m['flip_rate'])} | {m['flip_n']} |",
        f"| principle sensitivity ({cfg.sensitivity[0]} vs {cfg.sensitivity[1]}) | "
        f"{_fmt(m['sensitivity'])} | {m['sensitivity_n']} |", "",
        "| deciding principle | accuracy | flip rate |", "|---|---|---|",
    ]
    for pid, acc in m["accuracy_by_principle"].items():
        lines.append(f"| {pid} | {_fmt(acc)} | {_fmt(m['flip_rate_by_principle'].get(pid))} |")
    if "zero_shot" in m:
        lines += ["", "Zero-shot principles (held out of training, shown alone by their definition):", "",
                  "| principle | accuracy | n | flip rate | n |", "|---|---|---|---|---|"]
        for pid, z in m["zero_shot"].items():
            lines.append(f"| {pid} | {_fmt(z['accuracy'])} | {z['n']} | {_fmt(z['flip_rate'])} | {z['flip_n']} |")
    if "self_praise" in m:
        sp = m["self_praise"]
        lines += ["", f"Self-praise check ({sp['n']} responses; interventions {', '.join(sp['interventions'])}):", "",
                  "| RM prompt | prefers the plain response | mean margin |", "|---|---|---|",
                  f"| without interventions | {_fmt(sp['prefers_plain_off'])} | {sp['margin_off']:+.3f} |",
                  f"| with interventions | {_fmt(sp['prefers_plain_on'])} | {sp['margin_on']:+.3f} |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, EvalRMConfig, run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
