"""``selfalign``: principle-driven self-alignment (method §1.3-1.4).

The ``hf`` backend shows a base model the rules (``rules``, 17 by default), the worked
exemplars (``exemplars``) and one request, samples an internal thought and an answer, and
keeps the answer when it passes the post-filters of :func:`salmon.core.selfalign.filter_generation`
(thought prefix, repeated segments, end of turn, copying, exemplar leaks, length). The output is
SFTExample JSONL for ``sft``; the metrics count every drop reason.

The ``nano`` backend is a fallback for the nano world, whose 0.9 M model cannot follow written
rules: the answers come from the nano response generator, and every example says
``source: nano``.
"""

from __future__ import annotations

import random
from pathlib import Path

from salmon.core.config import SelfAlignConfig
from salmon.core.errors import GateFailed, SalmonInputError
from salmon.core.io import read_jsonl, write_jsonl
from salmon.core.principles import load_principle_set, principles_dir
from salmon.core.records import PromptRecord, SFTExample
from salmon.core.selfalign import (
    END_OF_TURN,
    ExemplarSet,
    count_reasons,
    filter_generation,
    load_exemplars,
    self_align_prompt,
)
from salmon.stages.common import StageResult, log, stage_main

STAGE = "selfalign"


class NothingKept(GateFailed):
    """Every generation was dropped by the post-filters (exit 1, nothing written)."""


def exemplar_path(cfg: SelfAlignConfig) -> Path:
    p = Path(cfg.exemplars)
    return p if p.is_absolute() or p.is_file() else principles_dir() / p


def generate_hf(cfg: SelfAlignConfig, prompts: list[PromptRecord], ex: ExemplarSet) -> list[str]:
    """One sampled continuation of the self-alignment prompt per request."""
    import torch

    from salmon.modeling import bos_ids, encode, load_causal_lm, load_tokenizer, resolve_device
    from salmon.ppo.rollout import sample_continuations

    if not cfg.model:
        raise SalmonInputError("model", "the hf backend needs a base model", "set model=PATH")
    rules = load_principle_set(cfg.rules)
    tok = load_tokenizer(cfg.model)
    model = load_causal_lm(cfg.model, device=resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    queries = [bos_ids(tok) + encode(tok, self_align_prompt(rules, ex, p.full_instruction())) for p in prompts]
    window = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    longest = max(len(q) for q in queries) + cfg.max_new_tokens
    if window and longest > window:
        log(STAGE, f"warning: the prompt ({max(len(q) for q in queries)} tokens) plus max_new_tokens exceeds the "
                   f"model's {window}-token window; use a model with a longer context or fewer exemplars")
    out: list[str] = []
    for start in range(0, len(queries), cfg.batch_size):
        out += sample_continuations(model, tok, queries[start:start + cfg.batch_size], temperature=cfg.temperature,
                                    top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
        log(STAGE, f"generated {len(out)}/{len(queries)}")
    return [t.replace(tok.pad_token or "\0", "") for t in out]


def run(cfg: SelfAlignConfig) -> StageResult:
    prompts = [p for p in read_jsonl(cfg.prompts, PromptRecord) if p.split in cfg.splits][: cfg.limit]
    if not prompts:
        raise SalmonInputError(cfg.prompts, f"no prompts in splits {cfg.splits}", "check splits or the file")
    examples: list[SFTExample] = []
    reasons: list[str] = []
    if cfg.backend == "nano":
        from salmon.nano.world import make_response

        rng = random.Random(cfg.seed)
        for p in prompts:
            examples.append(SFTExample(example_id=p.prompt_id, instruction=p.instruction, input=p.input,
                                       prompt_type=p.prompt_type, response=make_response(p, rng) + END_OF_TURN,
                                       source="nano"))
        reasons = ["kept"] * len(examples)
        log(STAGE, f"nano fallback: {len(examples)} answers from the nano generator (a 0.9 M model cannot "
                   "follow in-context rules)")
    else:
        ex = load_exemplars(exemplar_path(cfg))
        load_principle_set(cfg.rules)
        for p, gen in zip(prompts, generate_hf(cfg, prompts, ex), strict=True):
            answer, why = filter_generation(gen, p.instruction, p.input, ex, final_name=cfg.final_name,
                                            min_chars=cfg.min_chars, copy_min_chars=cfg.copy_min_chars)
            reasons.append(why)
            if answer is not None:
                examples.append(SFTExample(example_id=p.prompt_id, instruction=p.instruction, input=p.input,
                                           prompt_type=p.prompt_type, response=answer, source="selfalign"))
    counts = count_reasons(reasons)
    if not examples:
        raise NothingKept(f"no generation passed the filters ({counts}); the model does not follow the "
                          "self-alignment format (a base model of a few billion parameters or more is needed)")
    n = write_jsonl(cfg.output, examples)
    log(STAGE, f"kept {n} of {len(prompts)}; {counts}")
    return StageResult(STAGE, outputs={"examples": cfg.output},
                       metrics={"prompts": len(prompts), "kept": n, "reasons": counts, "backend": cfg.backend})


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, SelfAlignConfig, run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
