"""``selfalign``: principle-driven self-alignment (method §1.3-1.4).

The ``hf`` backend shows a base model the rules (``rules``, 17 by default), the worked
exemplars (``exemplars``) and one request, samples an internal thought and an answer, and
keeps the answer when it passes the post-filters of :func:`salmon.core.selfalign.filter_generation`
(thought prefix, end of turn, repeated segments, length, copying, exemplar leaks and
conversation artefacts). Generation stops at the next ``User:`` turn or at the tokenizer's eos,
either of which ends the assistant's turn; a generation that ran out of tokens is dropped. The
output is SFTExample JSONL for ``sft``; the metrics count every drop reason.

Every prompt opens with the same rules and exemplars. With ``reuse_prefix`` (the default) the
tokens all prompts share are run through the model once, and each batch generates from a copy
of their key/value cache (:func:`salmon.turns.generate_ids`); greedy outputs are the same as
when every prompt is encoded whole.

``prompt_format: dromedary`` (the method's) writes everything as one plain-text prompt for a base
model. ``chat_template`` puts the rules and exemplars in the system message and the request in the
user turn, and opens the assistant turn with the internal-thought header; kept answers then carry
no end-of-turn text (``sft`` ends them with eos), while Dromedary answers end with
``\\n\\n### User\\n``.

With ``identity`` (the default, as in the method) the output also holds the identity
conversations of ``identity_file`` ("Who are you?" and the like, answered as ``final_name``),
after the self-aligned answers, with ``source: identity``; ``identity_examples`` sets how many.

The ``nano`` backend is a fallback for the nano world, whose 0.9 M model cannot follow written
rules: the answers come from the nano response generator, and every example says
``source: nano``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salmon.core.config import SelfAlignConfig
from salmon.core.errors import GateFailed, SalmonInputError
from salmon.core.io import read_jsonl, write_jsonl
from salmon.core.principles import PrincipleSet, load_principle_set, principles_dir
from salmon.core.records import GenerationRecord, PromptRecord, SFTExample
from salmon.core.selfalign import (
    END_OF_TURN,
    ExemplarSet,
    count_reasons,
    filter_generation,
    identity_pairs,
    load_exemplars,
    load_identity,
    self_align_context,
    self_align_prompt,
    thought_header,
)
from salmon.stages.common import StageResult, log, preflight_model, stage_main

if TYPE_CHECKING:
    from salmon.turns import SharedPrefix

STAGE = "selfalign"


class NothingKept(GateFailed):
    """Every generation was dropped by the post-filters (exit 1, nothing written)."""


def exemplar_path(cfg: SelfAlignConfig) -> Path:
    return _shipped(cfg.exemplars)


def _shipped(value: str) -> Path:
    """A file path as given, else the file of that name under the principles folder."""
    p = Path(value)
    return p if p.is_absolute() or p.is_file() else principles_dir() / p


def identity_examples(cfg: SelfAlignConfig) -> list[SFTExample]:
    """The identity conversations of ``cfg.identity_file`` as SFT examples (none without
    ``cfg.identity``), answered as ``cfg.final_name`` and ending the turn as the kept answers do."""
    if not cfg.identity:
        return []
    end = END_OF_TURN if cfg.backend == "nano" or cfg.prompt_format == "dromedary" else ""
    pairs = identity_pairs(load_identity(_shipped(cfg.identity_file)), cfg.final_name, cfg.identity_examples,
                           cfg.seed)
    return [SFTExample(example_id=f"identity-{i:05d}", instruction=q, response=a + end, source="identity")
            for i, (q, a) in enumerate(pairs)]


def self_align_query(tok: Any, cfg: SelfAlignConfig, rules: PrincipleSet, ex: ExemplarSet,
                     instruction: str) -> list[int]:
    """The token ids of the in-context prompt for one request, in ``cfg.prompt_format``."""
    from salmon.modeling import encode, encode_document
    from salmon.turns import render_chat

    if cfg.prompt_format == "dromedary":
        return encode_document(tok, self_align_prompt(rules, ex, instruction))
    messages = [{"role": "system", "content": self_align_context(rules, ex).rstrip()},
                {"role": "user", "content": instruction.strip()}]
    return encode(tok, render_chat(tok, messages, add_generation_prompt=True) + thought_header(ex))


def stop_strings(ex: ExemplarSet) -> list[str]:
    """Where generation stops besides eos: the next speaker, whose turn ends the assistant's."""
    return ["\n\nUser:", f"\n\n{ex.assistant} ("]


def shared_prefix(model: Any, queries: list[list[int]], longest: int) -> SharedPrefix | None:
    """The cache of the ids every query starts with (the rules and exemplars, and whatever
    opens the request), encoded once; ``None`` (logged) when there is nothing to share or the
    model's cache cannot be reused (:func:`salmon.turns.prefix_reuse_unsupported`).
    ``longest``: the longest query plus ``max_new_tokens``."""
    from salmon.turns import common_prefix_length, encode_prefix, prefix_reuse_unsupported

    n = common_prefix_length(queries)
    why = "the requests share no leading tokens" if n == 0 else prefix_reuse_unsupported(model, longest)
    if why:
        log(STAGE, f"prefix not reused: {why}; every prompt is encoded whole")
        return None
    log(STAGE, f"prefix reuse: the first {n} tokens (of {min(len(q) for q in queries)}-{max(len(q) for q in queries)}"
               f"-token prompts) are shared by all {len(queries)} requests and encoded once")
    return encode_prefix(model, queries[0][:n])


def generate_hf(cfg: SelfAlignConfig, prompts: list[PromptRecord], ex: ExemplarSet) -> list[tuple[str, bool]]:
    """One sampled continuation of the self-alignment prompt per request: its text (no special
    tokens) and whether the model ended it with eos."""
    import torch

    from salmon.modeling import generation_end_ids, load_causal_lm, load_tokenizer, resolve_device
    from salmon.turns import PolicyTurns, generate_ids

    if not cfg.model:
        raise SalmonInputError("model", "the hf backend needs a base model", "set model=PATH")
    preflight_model(STAGE, cfg.model, prompt_format=cfg.prompt_format)
    rules = load_principle_set(cfg.rules)
    tok = load_tokenizer(cfg.model)
    queries = [self_align_query(tok, cfg, rules, ex, p.full_instruction()) for p in prompts]
    turns = PolicyTurns(tok, "dromedary", stop="", end_ids=generation_end_ids(cfg.model))
    model = load_causal_lm(cfg.model, device=resolve_device(cfg.device), dtype=cfg.dtype)
    torch.manual_seed(cfg.seed)
    window = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    longest = max(len(q) for q in queries) + cfg.max_new_tokens
    if window and longest > window:
        log(STAGE, f"warning: the prompt ({max(len(q) for q in queries)} tokens) plus max_new_tokens exceeds the "
                   f"model's {window}-token window; use a model with a longer context or fewer exemplars")
    prefix = shared_prefix(model, queries, longest) if cfg.reuse_prefix else None
    stops = stop_strings(ex)
    out: list[tuple[str, bool]] = []
    for start in range(0, len(queries), cfg.batch_size):
        for ids in generate_ids(model, tok, queries[start:start + cfg.batch_size], temperature=cfg.temperature,
                                top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                stop_strings=stops, end_ids=turns.end_ids, prefix=prefix):
            text, _, ended = turns.text_of(ids, stops)
            out.append((text, ended))
        log(STAGE, f"generated {len(out)}/{len(queries)}")
    return out


def run(cfg: SelfAlignConfig) -> StageResult:
    prompts = [p for p in read_jsonl(cfg.prompts, PromptRecord) if p.split in cfg.splits][: cfg.limit]
    if not prompts:
        raise SalmonInputError(cfg.prompts, f"no prompts in splits {cfg.splits}", "check splits or the file")
    # the method mixes identity conversations into its SFT data (Dromedary's merge script adds its
    # dummy conversations after the filters); read before any generation, they are written after
    # the self-aligned answers and never count towards the kept-answer gate
    identity = identity_examples(cfg)
    examples: list[SFTExample] = []
    reasons: list[str] = []
    audit: list[GenerationRecord] = []
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
        end_of_turn = END_OF_TURN if cfg.prompt_format == "dromedary" else ""
        for p, (gen, ended) in zip(prompts, generate_hf(cfg, prompts, ex), strict=True):
            answer, why = filter_generation(gen, p.instruction, p.input, ex, ended=ended, final_name=cfg.final_name,
                                            min_chars=cfg.min_chars, copy_min_chars=cfg.copy_min_chars,
                                            keep_truncated=cfg.keep_truncated, end_of_turn=end_of_turn,
                                            dedupe=cfg.dedupe)
            reasons.append(why)
            audit.append(GenerationRecord(prompt_id=p.prompt_id, instruction=p.instruction, input=p.input,
                                          generation=gen, ended_at_eos=ended, reason=why, answer=answer))
            if answer is not None:
                examples.append(SFTExample(example_id=p.prompt_id, instruction=p.instruction, input=p.input,
                                           prompt_type=p.prompt_type, response=answer + end_of_turn,
                                           source="selfalign"))
    counts = count_reasons(reasons)
    if cfg.generations_output and audit:  # written before the gate: it explains a failure
        write_jsonl(cfg.generations_output, audit)
    if not examples:
        raise NothingKept(f"no generation passed the filters ({counts}); the model does not follow the "
                          "self-alignment format (a base model of a few billion parameters or more is needed)")
    kept = len(examples)
    n = write_jsonl(cfg.output, examples + identity)
    log(STAGE, f"kept {kept} of {len(prompts)}; {counts}; wrote {n} examples with {len(identity)} identity "
               "conversations")
    return StageResult(STAGE, outputs={"examples": cfg.output},
                       metrics={"prompts": len(prompts), "kept": kept, "identity": len(identity), "reasons": counts,
                                "backend": cfg.backend})


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, SelfAlignConfig, run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
