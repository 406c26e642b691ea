"""``eval_policy``: a policy against a baseline (the SFT model) on held-out prompts.

Both models answer every prompt with the same sampler and seed, in ``prompt_format`` as in
``ppo`` (:class:`salmon.turns.PolicyTurns`): each answer stops at eos or the stop string.
Reported per model: response length (tokens, words), stop rate, the mean RM reward under each
held-out principle set (the RM sees all of a set's principles), and the nano checkers'
adherence rates. Reported between them: the RM win rate of the policy per
principle set (ties count half) and the KL from the policy to the baseline, estimated on the
policy's own samples as the mean of ``sum_t log pi(y_t) - log pi_base(y_t)`` at the sampling
temperature.

Outputs in ``output_dir``: ``metrics.json``, ``report.md`` (a table and the plots),
``responses.jsonl`` (both answers per prompt with their scores) and ``plots/<metric>.png``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from salmon.core.config import EvalPolicyConfig
from salmon.core.errors import SalmonInputError
from salmon.core.io import read_jsonl, write_json, write_text
from salmon.core.principles import PrincipleSet, load_principle_set
from salmon.core.records import PromptRecord
from salmon.stages.common import StageResult, log, preflight_model, stage_main

STAGE = "eval_policy"


def parse_principle_spec(spec: str) -> tuple[str, PrincipleSet]:
    """``"harmless"`` or ``"nano:concise,detailed"`` -> (label, the set or its subset)."""
    name, _, ids = spec.partition(":")
    pset = load_principle_set(name)
    if ids:
        pset = pset.subset([i.strip() for i in ids.split(",") if i.strip()])
    return spec, pset


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def win_rate(policy: list[float], baseline: list[float]) -> float:
    """Share of prompts where the policy scores higher; ties count half."""
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(policy, baseline, strict=True))
    return wins / len(policy)


def _load(cfg: EvalPolicyConfig, adapter: str | None, device: Any) -> Any:
    from salmon.modeling import load_causal_lm, with_adapter

    model = with_adapter(load_causal_lm(cfg.base_model, device=device), adapter)
    model.requires_grad_(False)
    return model.eval()


def _plot(path: Path, metric: str, labels: list[str], values: list[float]) -> None:
    """One bar chart per metric, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    bars = ax.bar(labels, values, color=["#8c8c8c", "#2f6db5"][: len(values)])
    ax.bar_label(bars, fmt="%.3g")
    ax.set_title(metric)
    ax.margins(y=0.2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def run(cfg: EvalPolicyConfig) -> StageResult:
    import torch

    from salmon.modeling import resolve_device
    from salmon.nano import checkers
    from salmon.ppo.rollout import make_batch, response_logprobs
    from salmon.turns import policy_turns

    prompts = [p for p in read_jsonl(cfg.prompts, PromptRecord) if p.split in cfg.splits][: cfg.limit]
    if not prompts:
        raise SalmonInputError(cfg.prompts, f"no prompts in splits {cfg.splits}", "check splits or the file")
    unknown = [a for a in cfg.adherence if a not in checkers.CHECKERS]
    if unknown:
        raise SalmonInputError("adherence", f"no nano checker for {unknown}",
                               f"use ids among {', '.join(checkers.CHECKERS)}")
    sets = [parse_principle_spec(s) for s in cfg.principle_sets] if cfg.reward_model else []
    device = resolve_device(cfg.device)

    from salmon.modeling import check_adapter_dir, load_tokenizer

    preflight_model(STAGE, cfg.base_model, prompt_format=cfg.prompt_format)
    for adapter in (cfg.policy_adapter, cfg.baseline_adapter):
        if adapter:
            check_adapter_dir(adapter)
    if cfg.reward_model:  # checked before sampling: its folder, and that each principle set fits its input
        from salmon.reward.model import EncodeLimits, RMEncoder, read_rm_meta

        read_rm_meta(cfg.reward_model)
        checker = RMEncoder(load_tokenizer(cfg.reward_model),
                            EncodeLimits(cfg.rm_max_length, cfg.rm_query_len, cfg.max_new_tokens), "rm_max_length")
        longest = checker.instruction_tokens([p.full_instruction() for p in prompts])
        for label, pset in sets:
            checker.check_fit([p.definition for p in pset.principles], [], f"principle set {label}", longest)
    tok = load_tokenizer(cfg.base_model)
    turns = policy_turns(tok, cfg, cfg.base_model)
    queries = [turns.query_ids(p.full_instruction()) for p in prompts]
    sides = {"policy": cfg.policy_adapter, "baseline": cfg.baseline_adapter}
    models = {side: _load(cfg, adapter, device) for side, adapter in sides.items()}
    log(STAGE, f"{len(prompts)} prompts; {cfg.policy_label} vs {cfg.baseline_label}")

    answers: dict[str, list[Any]] = {}
    for side, model in models.items():
        torch.manual_seed(cfg.seed)
        answers[side] = turns.generate(model, queries, temperature=cfg.temperature, top_p=cfg.top_p,
                                       max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
        log(STAGE, f"sampled {len(answers[side])} responses from the {side}")

    # KL from the policy to the baseline on the policy's samples
    temp = cfg.temperature if cfg.temperature > 0 else 1.0
    r_ids = {side: [t.ids[: cfg.max_new_tokens] for t in answers[side]] for side in sides}
    kl_terms: list[float] = []
    with torch.no_grad():
        for start in range(0, len(queries), cfg.batch_size):
            idx = range(start, min(start + cfg.batch_size, len(queries)))
            batch = make_batch([queries[i] for i in idx], [r_ids["policy"][i] for i in idx],
                               int(tok.pad_token_id)).to(device)
            lp = response_logprobs(models["policy"], batch, temp)
            lb = response_logprobs(models["baseline"], batch, temp)
            kl_terms += (lp - lb).sum(-1).tolist()
    del models

    clean = {side: [turns.answer_text(t.text) for t in answers[side]] for side in sides}
    rewards: dict[str, dict[str, list[float]]] = {side: {} for side in sides}
    if cfg.reward_model:
        from salmon.reward.model import EncodeLimits, RMEncoder, load_reward_model, score_sequences

        rm, rm_tok, _ = load_reward_model(cfg.reward_model, device=device)
        encoder = RMEncoder(rm_tok, EncodeLimits(cfg.rm_max_length, cfg.rm_query_len, cfg.max_new_tokens),
                            "rm_max_length")
        for label, pset in sets:
            lines = [p.definition for p in pset.principles]
            for side in sides:
                encoded = [encoder.encode_rm(r, p.full_instruction(), lines, [])
                           for r, p in zip(clean[side], prompts, strict=True)]
                rewards[side][label] = score_sequences(rm, encoded, int(rm_tok.pad_token_id), cfg.batch_size)
            log(STAGE, f"scored both under {label}")

    per_side: dict[str, dict[str, float | None]] = {}
    for side in sides:
        m: dict[str, float | None] = {
            "response_tokens": mean([float(len(r)) for r in r_ids[side]]),
            "response_words": mean([float(checkers.word_count(t)) for t in clean[side]]),
            "stop_rate": mean([float(t.stopped) for t in answers[side]]),
        }
        for label, vals in rewards[side].items():
            m[f"reward/{label}"] = mean(vals)
        for pid in cfg.adherence:
            marks = [checkers.adherence(pid, p, t) for p, t in zip(prompts, clean[side], strict=True)]
            m[f"adherence/{pid}"] = mean([x for x in marks if x is not None])
        per_side[side] = m
    metrics: dict[str, Any] = {
        cfg.policy_label: per_side["policy"], cfg.baseline_label: per_side["baseline"],
        "kl_to_baseline": mean(kl_terms), "prompts": len(prompts),
        "win_rate": {label: win_rate(rewards["policy"][label], rewards["baseline"][label]) for label, _ in sets},
        "relative_change": {k: (v - b) / abs(b) if v is not None and b else None
                            for k, v, b in ((k, per_side["policy"][k], per_side["baseline"][k])
                                            for k in per_side["policy"])},
    }

    out = Path(cfg.output_dir)
    labels = [cfg.baseline_label, cfg.policy_label]
    plots = []
    for key in per_side["policy"]:
        before, after = per_side["baseline"][key], per_side["policy"][key]
        if before is None or after is None:
            continue
        name = key.replace("/", "_").replace(":", "_").replace(",", "_") + ".png"
        _plot(out / "plots" / name, key, labels, [before, after])
        plots.append((key, f"plots/{name}"))
    rows = []
    for i, p in enumerate(prompts):
        rows.append({"prompt_id": p.prompt_id, "prompt_type": p.prompt_type, "instruction": p.instruction,
                     cfg.policy_label: clean["policy"][i], cfg.baseline_label: clean["baseline"][i],
                     "rewards": {label: [rewards["policy"][label][i], rewards["baseline"][label][i]]
                                 for label, _ in sets},
                     "kl": kl_terms[i]})
    write_text(out / "responses.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_json(out / "metrics.json", metrics)
    write_text(out / "report.md", _report(cfg, metrics, per_side, plots))
    log(STAGE, f"kl {metrics['kl_to_baseline']:.3f}; length {per_side['baseline']['response_words']:.1f} -> "
               f"{per_side['policy']['response_words']:.1f} words; report in {out / 'report.md'}")
    flat = {f"{cfg.policy_label}/{k}": v for k, v in per_side["policy"].items()}
    flat.update({f"{cfg.baseline_label}/{k}": v for k, v in per_side["baseline"].items()})
    flat.update({f"win_rate/{k}": v for k, v in metrics["win_rate"].items()})
    flat["kl_to_baseline"] = metrics["kl_to_baseline"]
    flat["prompts"] = len(prompts)
    return StageResult(STAGE, outputs={"metrics": str(out / "metrics.json"), "report": str(out / "report.md"),
                                       "responses": str(out / "responses.jsonl"), "plots": str(out / "plots")},
                       metrics=flat)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _report(cfg: EvalPolicyConfig, metrics: dict[str, Any], per_side: dict[str, dict[str, float | None]],
            plots: list[tuple[str, str]]) -> str:
    lines = [f"# eval_policy: {cfg.policy_label} vs {cfg.baseline_label}", "",
             f"{metrics['prompts']} prompts from `{cfg.prompts}` (splits {', '.join(cfg.splits)}), "
             f"temperature {cfg.temperature}, seed {cfg.seed}.", "",
             f"| metric | {cfg.baseline_label} | {cfg.policy_label} | change |", "|---|---|---|---|"]
    for key in per_side["policy"]:
        change = metrics["relative_change"][key]
        lines.append(f"| {key} | {_fmt(per_side['baseline'][key])} | {_fmt(per_side['policy'][key])} | "
                     f"{'n/a' if change is None else f'{100 * change:+.1f} %'} |")
    lines += ["", f"KL({cfg.policy_label} || {cfg.baseline_label}) per response: "
                  f"{_fmt(metrics['kl_to_baseline'])} nats", ""]
    if metrics["win_rate"]:
        lines += ["RM win rate of the policy (ties count half):", ""]
        lines += [f"- {label}: {_fmt(v)}" for label, v in metrics["win_rate"].items()] + [""]
    lines += [f"![{key}]({path})" for key, path in plots]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, EvalPolicyConfig, run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
