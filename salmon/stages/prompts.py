"""``prompts``: load prompt sets from local or S3 JSONL, clean, dedupe and tag them (method §1.4,
§4.2), and optionally add topic-guided red-teaming prompts written by a base model (§1.3).

Per source: read the instruction (and optional input) field of every line, strip chat-export
artefacts when ``clean_chat`` is set, drop prompts with an excluded phrase, and tag them with
the source's ``prompt_type``. Then, across sources: keep prompts of ``min_words`` to
``max_words`` words (or, with ``length_tokenizer``, ``min_tokens`` to ``max_tokens`` tokens of
that tokenizer, as the method counts) and drop duplicates (first one wins). Prompt ids are
derived from the text, so they are stable across reruns; ``heldout_fraction`` marks a hash-chosen share as held out.

Red-teaming synthesis (``red_team``): for ``topic_rounds`` rounds the model sees, per question
type, a few known topics and continues the list; topics of at most ``max_topic_words`` words
that start with a capital and do not end in punctuation are kept, deduplicated and balanced
across types. Then it sees seed examples as ``Type: ... | Topic: ... | Question: ...`` lines plus
hints to fill; lines matching a hint become ``red_teaming`` prompts, one per (type, topic).
As in the method, both steps sample at temperature 1.0 (topics at top-p 0.98, questions at
0.95) with eos suppressed, so each generation runs to its token limit and its last, cut-off line
is dropped. The seeds default to the shipped ``principles/data/red_team_seeds.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from salmon.core.config import PromptsConfig, PromptSource, RedTeamConfig
from salmon.core.errors import SalmonInputError
from salmon.core.io import write_jsonl
from salmon.core.principles import principles_dir
from salmon.core.prompt_sets import (
    balance_topics,
    clean_chat_artifacts,
    dedupe_key,
    has_phrase,
    hint_prefix,
    parse_hinted_questions,
    parse_topics,
    valid_topic,
)
from salmon.core.records import PromptRecord
from salmon.stages.common import StageResult, log, stage_main

STAGE = "prompts"


def prompt_id(text: str) -> str:
    return "p-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def is_heldout(text: str, fraction: float) -> bool:
    """A stable, hash-chosen share ``fraction`` of texts."""
    h = int(hashlib.sha256(("split:" + text).encode("utf-8")).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def load_source(src: PromptSource) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """(instruction, input) pairs of one source, cleaned and filtered, and the drop counts."""
    from salmon.storage import read_text

    rows: list[tuple[str, str]] = []
    dropped = {"phrase": 0, "missing": 0}
    for n, line in enumerate(read_text(src.uri).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SalmonInputError(f"{src.uri}:{n}", f"not JSON ({e.msg})", "one JSON object per line") from None
        if not isinstance(obj, dict):
            raise SalmonInputError(f"{src.uri}:{n}", "not a JSON object", "one JSON object per line")
        instruction = obj.get(src.instruction_field)
        if not isinstance(instruction, str) or not instruction.strip():
            dropped["missing"] += 1
            continue
        extra = obj.get(src.input_field, "") if src.input_field else ""
        extra = extra if isinstance(extra, str) else ""
        if src.clean_chat:
            instruction = clean_chat_artifacts(instruction)
        if has_phrase(instruction + " " + extra, src.drop_phrases):
            dropped["phrase"] += 1
            continue
        rows.append((instruction.strip(), extra.strip()))
        if src.limit and len(rows) >= src.limit:
            break
    return rows, dropped


def length_filter(cfg: PromptsConfig) -> tuple[Callable[[str, str], int], int, int, str]:
    """(length of an (instruction, input) prompt, lowest kept, highest kept, the bounds as
    config keys).

    With ``length_tokenizer`` the length is the method's: the tokens its base model's tokenizer
    gives the text as a document (``tokenizer.encode``, BOS included where the tokenizer adds
    one), kept from ``min_tokens`` to ``max_tokens``. Without it (the default) the length is in
    whitespace words: this stage needs no model and may run before the base model is chosen, and
    counting words keeps its output the same whatever model follows.
    """
    if cfg.length_tokenizer is None:  # words: the stage must run with no model (see above)
        return (lambda instruction, extra: len((instruction + " " + extra).split())), cfg.min_words, \
            cfg.max_words, f"min_words={cfg.min_words}, max_words={cfg.max_words}"
    from salmon.modeling import encode_document, load_tokenizer

    tok = load_tokenizer(cfg.length_tokenizer)

    def tokens(instruction: str, extra: str) -> int:
        return len(encode_document(tok, instruction + "\n\n" + extra if extra else instruction))

    return tokens, cfg.min_tokens, cfg.max_tokens, \
        f"min_tokens={cfg.min_tokens}, max_tokens={cfg.max_tokens} (tokens of {cfg.length_tokenizer})"


def seeds_uri(value: str) -> str:
    """The seed file a ``seeds`` value names: a URI or an existing path as given, else the file
    of that name under the principles folder (the shipped ``data/red_team_seeds.jsonl``)."""
    if "://" in value or Path(value).is_absolute() or Path(value).is_file():
        return value
    return str(principles_dir() / value)


def finished_lines(text: str) -> str:
    """``text`` without its last line (a generation cut off by the token limit ends mid-line).

    >>> finished_lines("- Elections\\n- Lottery num")
    '- Elections'
    """
    return text.rsplit("\n", 1)[0] if "\n" in text else ""


def synthesize_red_team(cfg: RedTeamConfig, seed: int) -> tuple[list[tuple[str, str, str]], dict[str, Any]]:
    """(type, topic, question) triples from topic brainstorming and hinted question writing."""
    import torch

    from salmon.modeling import encode_document, generation_end_ids, load_causal_lm, load_tokenizer, resolve_device
    from salmon.storage import read_text
    from salmon.turns import PolicyTurns, generate_ids

    where = seeds_uri(cfg.seeds)
    seeds = []
    for n, line in enumerate(read_text(where).splitlines(), start=1):
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SalmonInputError(f"{where}:{n}", f"not JSON ({e.msg})", "one JSON object per line") from None
            if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) for k in ("type", "topic", "question")):
                raise SalmonInputError(f"{where}:{n}", "needs string fields type, topic and question",
                                       'write {"type": ..., "topic": ..., "question": ...}')
            seeds.append(obj)
    if not seeds:
        raise SalmonInputError(where, "no seeds", "give one seed line per question type")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    tok = load_tokenizer(cfg.model)
    model = load_causal_lm(cfg.model, device=resolve_device(cfg.device))

    plain = PolicyTurns(tok, "dromedary", stop="", end_ids=generation_end_ids(cfg.model))
    # the method suppresses eos in both steps (logit bias -100), so every list runs to the limit
    suppress = plain.end_ids if cfg.suppress_eos else []

    def sample(texts: list[str], max_new: int, top_p: float) -> list[str]:
        """Continuations of plain-text prompts (as documents), without special tokens, each
        without its last line when it ran out of tokens (that line is cut off mid-way; the
        method drops it from its questions, and from its topics when more than 20 came)."""
        queries = [encode_document(tok, t) for t in texts]
        raw = generate_ids(model, tok, queries, temperature=cfg.temperature, top_p=top_p,
                           max_new_tokens=max_new, batch_size=8, end_ids=plain.end_ids, suppress_ids=suppress)
        out = []
        for ids in raw:
            text, _, ended = plain.text_of(ids, [])
            out.append(text if ended else finished_lines(text))
        return out

    topics: dict[str, list[str]] = {}
    for s in seeds:
        topics.setdefault(s["type"], []).append(s["topic"])
    for rnd in range(cfg.topic_rounds):
        kinds = sorted(topics)
        texts = []
        for kind in kinds:
            known = rng.sample(topics[kind], min(cfg.topics_shown, len(topics[kind])))
            texts.append(f"Question type: {kind}\nTopics people ask about for this type, one per line:\n"
                         + "".join(f"- {t}\n" for t in known) + "-")
        for kind, gen in zip(kinds, sample(texts, cfg.topic_tokens, cfg.topic_top_p), strict=True):
            topics[kind] += [t for t in parse_topics(gen) if valid_topic(t, cfg.max_topic_words)]
        topics = balance_topics(topics)
        log(STAGE, f"topic round {rnd + 1}/{cfg.topic_rounds}: {sum(map(len, topics.values()))} topics")
    seeded = {(s["type"], s["topic"]) for s in seeds}
    hints_all = [(k, t) for k, ts in topics.items() for t in ts if (k, t) not in seeded]
    rng.shuffle(hints_all)
    texts, hint_groups = [], []
    for start in range(0, len(hints_all), cfg.hints_per_prompt):
        hints = hints_all[start:start + cfg.hints_per_prompt]
        shown = rng.sample(seeds, min(cfg.examples_shown, len(seeds)))
        texts.append("Write questions that an AI assistant cannot answer or tends to answer wrongly.\n\n"
                     + "".join(f"{hint_prefix(s['type'], s['topic'])} {s['question']}\n" for s in shown)
                     + "".join(f"{hint_prefix(k, t)}\n" for k, t in hints[:-1]) + hint_prefix(*hints[-1]))
        hint_groups.append(hints)
    found: dict[tuple[str, str], str] = {}
    if texts:
        for hints, gen, text in zip(hint_groups, sample(texts, cfg.question_tokens, cfg.question_top_p), texts,
                                    strict=True):
            last = text.rsplit("\n", 1)[-1]
            for kind, topic, q in parse_hinted_questions(last + gen, hints):
                found.setdefault((kind, topic), q)
    triples = [(k, t, q) for (k, t), q in found.items()]
    return triples, {"topics": sum(map(len, topics.values())), "hints": len(hints_all), "questions": len(triples)}


def run(cfg: PromptsConfig) -> StageResult:
    records: list[PromptRecord] = []
    seen: set[str] = set()
    stats: dict[str, int] = {"loaded": 0, "dropped_phrase": 0, "dropped_missing": 0, "dropped_length": 0,
                             "dropped_duplicate": 0}
    by_type: dict[str, int] = {}
    length, shortest, longest, bounds = length_filter(cfg)

    def add(instruction: str, extra: str, kind: str, meta: dict[str, str]) -> None:
        if not shortest <= length(instruction, extra) <= longest:
            stats["dropped_length"] += 1
            return
        key = dedupe_key(instruction + "\n\n" + extra, cfg.dedupe)
        if key in seen:
            stats["dropped_duplicate"] += 1
            return
        seen.add(key)
        text = instruction + "\n\n" + extra
        records.append(PromptRecord(prompt_id=prompt_id(text), instruction=instruction, input=extra,
                                    prompt_type=kind,
                                    split="heldout" if is_heldout(text, cfg.heldout_fraction) else "train",
                                    meta=meta))
        by_type[kind] = by_type.get(kind, 0) + 1

    for src in cfg.sources:
        rows, dropped = load_source(src)
        stats["loaded"] += len(rows) + dropped["phrase"] + dropped["missing"]
        stats["dropped_phrase"] += dropped["phrase"]
        stats["dropped_missing"] += dropped["missing"]
        for instruction, extra in rows:
            add(instruction, extra, src.prompt_type, {"source": src.uri})
        log(STAGE, f"{src.uri}: {len(rows)} prompts after cleaning")
    if cfg.nano_prompts:
        from salmon.nano.world import make_prompts

        nano = make_prompts(cfg.nano_prompts, cfg.seed)
        records += nano
        for r in nano:
            by_type[r.prompt_type] = by_type.get(r.prompt_type, 0) + 1
        log(STAGE, f"nano world: {len(nano)} prompts (seed {cfg.seed})")
    red: dict[str, Any] = {}
    if cfg.red_team is not None:
        triples, red = synthesize_red_team(cfg.red_team, cfg.seed)
        for kind, topic, question in triples:
            add(question, "", "red_teaming", {"source": "tgrt", "question_type": kind, "topic": topic})
    if not records:
        where = ", ".join(src.uri for src in cfg.sources) or "sources"
        raise SalmonInputError(where, f"no prompt survived cleaning ({stats})",
                               "check instruction_field, drop_phrases and the length bounds: "
                               f"{bounds}")
    n = write_jsonl(cfg.output, records)
    log(STAGE, f"wrote {n} prompts ({by_type}); {stats}")
    metrics: dict[str, Any] = {"prompts": n, "by_type": by_type,
                               "heldout": sum(r.split == "heldout" for r in records), **stats}
    if red:
        metrics["red_team"] = red
    return StageResult(STAGE, outputs={"prompts": cfg.output}, metrics=metrics)


def main(argv: list[str] | None = None) -> int:
    return stage_main(STAGE, PromptsConfig, run, argv, __doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
