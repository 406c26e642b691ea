"""``label``: principle-driven AI feedback on response pairs (method §2.2).

Every pair is judged under every principle of the set, once with output_1 shown as (a) and
once as (b). The ``hf`` backend reads ``logit(a) - logit(b)`` after "Output (" from a local
causal LM, sharing the KV cache of the instruction and outputs across principles and orders;
the ``openai`` backend sends the same prompts (as token ids, built with the judge's tokenizer
from ``model``) to an OpenAI-compatible server such as vLLM and reads
``log P(a) - log P(b)``, which equals the logit difference (see :mod:`salmon.judge.openai`:
the letters' log-probabilities asked for by token id, or read from the top log-probabilities,
with echo scoring for prompts where a letter is missing);
the ``rules`` backend scores nano principles with exact checkers. With ``audit_pairs`` N, the
rules backend also has the hf judge (``model`` with ``adapter``: the policy as its own judge, as
in the method) judge the first N pairs, and reports how often it agrees with the checkers and is
position-consistent: a measure of the judge the method would use, on ground truth.

With ``openai``, one request carries the prompts of one pair and order under every principle
(vLLM's prefix cache shares their instruction and outputs), ``concurrency`` requests are in
flight at once, and failed requests are retried. The SFT adapter is served as a LoRA model
(``--enable-lora --lora-modules sft=<adapter folder>``): with ``adapter`` set and no
``served_model``, the one LoRA model listed by ``/v1/models`` judges. With
``letter_logprobs=top`` the server needs ``--max-logprobs`` >= ``top_logprobs``. The API key
is read from the environment variable named by ``api_key_env``.

Resumable: judgements are appended to ``<output>.partial`` as batches finish; a rerun skips
pairs already judged there (or in an earlier ``<output>``). The final ``<output>`` appears
atomically when every pair is done, and the progress file is removed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from salmon.core.config import LabelConfig
from salmon.core.errors import SalmonInputError
from salmon.core.io import iter_jsonl, read_jsonl, record_line, write_jsonl
from salmon.core.principles import Principle, load_principle_set
from salmon.core.progress import Progress
from salmon.core.records import Judgement, ResponsePair
from salmon.stages.common import StageResult, log, preflight_model, stage_main

STAGE = "label"
CONSISTENCY_WARNING = 0.5
"""Below this share of position-consistent verdicts the stage warns that its labels are mostly ties."""


def _previous(path: Path, pair_ids: set[str], principle_ids: list[str]) -> dict[str, list[Judgement]]:
    """Judgements already on disk, by pair, keeping only pairs with every principle judged."""
    by_pair: dict[str, dict[str, Judgement]] = {}
    if path.is_file():
        for j in iter_jsonl(path, Judgement, allow_truncated_tail=True):
            if j.pair_id in pair_ids:
                by_pair.setdefault(j.pair_id, {})[j.principle_id] = j
    return {pid: [d[p] for p in principle_ids] for pid, d in by_pair.items()
            if all(p in d for p in principle_ids)}


def _make_openai_judge(cfg: LabelConfig, principles: list[Principle]):  # type: ignore[no-untyped-def]
    from salmon.judge.hf import JudgeTokenizer
    from salmon.judge.openai import OpenAIJudge
    from salmon.modeling import load_tokenizer
    from salmon.sampling.openai_client import OpenAIClient, choose_model

    if not cfg.endpoint:
        raise SalmonInputError("label config", "backend openai needs endpoint=<base URL>",
                               "e.g. endpoint=http://vllm:8000/v1")
    if not cfg.model:
        raise SalmonInputError("label config", "backend openai needs model=<HF folder> for the judge's tokenizer",
                               "give the folder of the model the server serves")
    preflight_model(STAGE, cfg.model, prompt_format=cfg.prompt_format)
    tokens = JudgeTokenizer(load_tokenizer(cfg.model), max_length=cfg.max_length, prompt_format=cfg.prompt_format)
    tokens.check_fit(principles, cfg.principles)
    client = OpenAIClient.from_config(cfg)
    models = client.wait_ready(cfg.ready_timeout_s)
    name = choose_model(models, cfg.served_model, bool(cfg.adapter), client.endpoint)
    served = next(m for m in models if m.id == name)
    # echo scoring sends the prompt, one letter and asks for one token: leave room for both
    if served.max_model_len and cfg.max_length + 2 > served.max_model_len:
        tokens.max_length = served.max_model_len - 2
        log(STAGE, f"{name} serves at most {served.max_model_len} tokens: judge prompts are truncated to "
                   f"{tokens.max_length}")
        tokens.check_fit(principles, cfg.principles)
    log(STAGE, f"judging with {name} at {client.endpoint}")
    return OpenAIJudge(client, name, tokens, letter_logprobs=cfg.letter_logprobs, top_logprobs=cfg.top_logprobs)


def _make_judge(cfg: LabelConfig, principles: list[Principle]):  # type: ignore[no-untyped-def]
    """The hf judge; the tokenizer's answer letters and the principles' length are checked before
    the model is loaded. Judge prompts are capped at the model's window."""
    from salmon.judge.hf import HFJudge, JudgeTokenizer
    from salmon.modeling import (
        load_causal_lm,
        load_tokenizer,
        model_window,
        resolve_device,
        with_adapter,
    )

    if not cfg.model:
        raise SalmonInputError("label config", "backend hf needs model=<HF folder>",
                               "set model=PATH of the judge, or backend=rules in the nano world")
    device = resolve_device(cfg.device)
    preflight_model(STAGE, cfg.model, prompt_format=cfg.prompt_format)
    tokenizer = load_tokenizer(cfg.model)
    max_length = cfg.max_length
    window = model_window(cfg.model)
    if window and window < max_length:
        max_length = window
        log(STAGE, f"{cfg.model} has a {window}-token window: judge prompts are truncated to {window}")
    JudgeTokenizer(tokenizer, max_length=max_length, prompt_format=cfg.prompt_format).check_fit(
        principles, cfg.principles)
    return HFJudge(with_adapter(load_causal_lm(cfg.model, device=device, dtype=cfg.dtype), cfg.adapter),
                   tokenizer, max_length=max_length, prompt_format=cfg.prompt_format,
                   principle_groups=cfg.principle_groups)


def audit_judge(cfg: LabelConfig, pairs: list[ResponsePair], principles: list[Principle],
                reference: list[Judgement]) -> dict[str, float | int | None]:
    """The hf judge on ``pairs`` against the checkers' ``reference`` verdicts (audit metrics)."""
    from salmon.core.aggregate import judge_agreement

    judge = _make_judge(cfg, principles)
    got: list[Judgement] = []
    bar = Progress(f"{STAGE} audit", len(pairs), "pairs", enabled=cfg.progress)
    for start in range(0, len(pairs), cfg.batch_size):
        batch = pairs[start:start + cfg.batch_size]
        got += judge.judge(batch, principles, reuse_prefix=cfg.reuse_prefix)[0]
        bar.update(len(batch))
    overall = judge_agreement(reference, got)
    out: dict[str, float | int | None] = {
        "audit_pairs": len(pairs), "audit_position_consistent_rate": round(
            sum(j.consistent for j in got) / max(1, len(got)), 4),
        "audit_decided_by_checkers": overall["decided"], "audit_agreement": overall["agreement"],
        "audit_agreement_n": overall["agreement_n"], "audit_mean_agreement": overall["mean_agreement"],
        "audit_mean_agreement_n": overall["mean_agreement_n"]}
    for p in principles:
        one = judge_agreement([j for j in reference if j.principle_id == p.id],
                              [j for j in got if j.principle_id == p.id])
        out[f"audit_agreement/{p.id}"] = one["agreement"]
    log(STAGE, f"audit: the hf judge on {len(pairs)} pairs is position-consistent on "
               f"{100 * (out['audit_position_consistent_rate'] or 0):.1f}% of checks and agrees with the checkers "
               f"on {_pct(overall['agreement'])} of the {overall['agreement_n']} cases both decide; its "
               f"order-averaged preference agrees on {_pct(overall['mean_agreement'])} of "
               f"{overall['mean_agreement_n']} cases the checkers decide")
    return out


def _pct(rate: float | int | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f}%"


def run(cfg: LabelConfig) -> StageResult:
    pairs = read_jsonl(cfg.pairs, ResponsePair)
    if cfg.limit:
        pairs = pairs[: cfg.limit]
    pset = load_principle_set(cfg.principles)
    if cfg.principle_ids is not None and not cfg.principle_ids:
        raise SalmonInputError(f"principle set {pset.name}", "an empty list of principle ids",
                               "give at least one id, or principle_ids=null for the whole set")
    principles: list[Principle] = (
        [pset.get(i) for i in cfg.principle_ids] if cfg.principle_ids else list(pset.principles))
    ids = [p.id for p in principles]
    if cfg.backend == "rules":
        from salmon.nano.checkers import CHECKERS

        unknown = [i for i in ids if i not in CHECKERS]
        if unknown:
            raise SalmonInputError(f"principle set {pset.name}",
                                   f"the rules judge has no checker for {', '.join(unknown)}",
                                   "use principles=nano with backend=rules, or backend=hf")

    if cfg.audit_pairs and cfg.backend != "rules":
        raise SalmonInputError(f"audit_pairs={cfg.audit_pairs}", f"audits the hf judge against the checkers, so it "
                               f"needs backend=rules (this run uses {cfg.backend})", "set audit_pairs=0")
    if cfg.audit_pairs and not cfg.model:
        raise SalmonInputError(f"audit_pairs={cfg.audit_pairs}", "the audit needs the judge model",
                               "set model=PATH (and adapter=PATH for the SFT policy)")
    output = Path(cfg.output)
    partial = output.with_name(output.name + ".partial")
    wanted = {p.pair_id for p in pairs}
    done = _previous(output, wanted, ids)
    done.update(_previous(partial, wanted, ids))
    todo = [p for p in pairs if p.pair_id not in done]
    log(STAGE, f"{len(pairs)} pairs x {len(ids)} principles x 2 orders, backend {cfg.backend}; "
               f"{len(done)} pairs already judged, {len(todo)} to go")

    judge = _make_judge(cfg, principles) if cfg.backend == "hf" and todo else None
    remote = _make_openai_judge(cfg, principles) if cfg.backend == "openai" and todo else None
    tokens, unshared, requests, echoed = 0, 0, 0, 0
    t0 = time.monotonic()
    output.parent.mkdir(parents=True, exist_ok=True)
    # rewrite the progress file with only complete pairs, then append as batches finish
    with open(partial, "w", encoding="utf-8") as f:
        for js in done.values():
            f.writelines(record_line(j) for j in js)
    bar = Progress(STAGE, len(pairs), "pairs", enabled=cfg.progress, done=len(done))
    with open(partial, "a", encoding="utf-8") as f:
        for b, start in enumerate(range(0, len(todo), cfg.batch_size)):
            batch = todo[start:start + cfg.batch_size]
            if judge is not None:
                new, stats = judge.judge(batch, principles, reuse_prefix=cfg.reuse_prefix)
                tokens += stats.tokens_processed
                unshared += stats.tokens_unshared
            elif remote is not None:
                new, rstats = remote.judge(batch, principles)
                tokens += rstats.prompt_tokens
                requests += rstats.requests
                echoed += rstats.echo_prompts
            else:
                from salmon.judge.rules import judge_pairs_rules

                new = judge_pairs_rules(batch, ids)
            for j in new:
                f.write(record_line(j))
                done.setdefault(j.pair_id, []).append(j)
            if (b + 1) % cfg.flush_every == 0:
                f.flush()
                os.fsync(f.fileno())
            bar.update(len(batch))
    seconds = time.monotonic() - t0

    ordered = [j for p in pairs for j in done[p.pair_id]]
    write_jsonl(output, ordered)
    partial.unlink(missing_ok=True)
    consistent = sum(j.consistent for j in ordered) / max(1, len(ordered))
    metrics: dict[str, float | int | bool | None] = {
        "pairs": len(pairs), "judgements": len(ordered), "pairs_judged_now": len(todo),
        "position_consistent_rate": round(consistent, 4), "seconds": round(seconds, 2),
    }
    if judge is not None:
        metrics.update(prefill_tokens=tokens, prefill_tokens_without_reuse=unshared)
    if remote is not None:
        metrics.update(prompt_tokens_sent=tokens, requests=requests, echo_scored_prompts=echoed)
    log(STAGE, f"wrote {len(ordered)} judgements to {output}; position-consistent "
               f"{100 * consistent:.1f}%")
    if cfg.audit_pairs and cfg.backend == "rules":
        metrics.update(audit_judge(cfg, pairs[: cfg.audit_pairs], principles, ordered))
    if ordered and consistent < CONSISTENCY_WARNING and cfg.backend != "rules":
        metrics["position_consistency_below_half"] = True
        log(STAGE, f"warning: the judge picks the same output in both orders on only {100 * consistent:.1f}% of "
                   "checks (below 50%); an inconsistent verdict counts as a tie, so most of these labels carry no "
                   "preference. Use a stronger judge model, or try the other prompt_format")
    return StageResult(STAGE, outputs={"judgements": str(output)}, metrics=metrics)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, LabelConfig, run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
