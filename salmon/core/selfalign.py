"""Principle-driven self-alignment (SELF-ALIGN, method §1.3-1.4): the in-context prompt and the
post-filters of generated answers, as pure functions.

The base model sees the rules, the exemplars and the user's request, then writes an internal
thought (always opening with ``thought_prefix``) that names the rules that apply, then
``\\n\\n{assistant}:`` and the answer. :func:`filter_generation` turns such a generation into a
training answer or gives the reason it was dropped.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from salmon.core.errors import SalmonInputError
from salmon.core.principles import PrincipleSet
from salmon.core.templates import DROMEDARY_END_OF_TURN
from salmon.core.yamlio import safe_load

END_OF_TURN = DROMEDARY_END_OF_TURN
"""Appended to an answer whose turn ended (Dromedary format); the SFT target ends with it."""

_SEGMENT_END = re.compile(r"(?<=[\n.?!;:,`])")


class ExemplarTurn(BaseModel):
    """One user turn of an exemplar, with the assistant's internal thought and answer."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    user: str = Field(min_length=1, description="What the user writes.")
    thoughts: str = Field(min_length=1, description="The internal thought after the fixed prefix.")
    answer: str = Field(min_length=1, description="The assistant's answer.")


class Exemplar(BaseModel):
    """A worked conversation shown in the self-alignment prompt."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: str = Field(min_length=1, description="Short name.")
    turns: list[ExemplarTurn] = Field(min_length=1, description="User turns in order.")
    leak_terms: list[str] = Field(default=[], description="Words that betray a copied exemplar.")


class ExemplarSet(BaseModel):
    """The exemplars of the self-alignment prompt, with the closing exchange of each."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    version: str = Field(min_length=1, description="Human version label.")
    assistant: str = Field(min_length=1, description="The assistant's name in the prompt, e.g. Watson.")
    thought_prefix: str = Field(min_length=1, description="Sentence every internal thought opens with.")
    closing_user: str = Field(min_length=1, description="User turn after each exemplar (ends the conversation).")
    closing_reply: str = Field(min_length=1, description="The assistant's automatic reply to it.")
    exemplars: list[Exemplar] = Field(min_length=1, description="The exemplars in prompt order.")


M = TypeVar("M", bound=BaseModel)


def _load_yaml(path: str | Path, schema: type[M], what: str, example: str) -> M:
    """Load and validate a YAML data file against ``schema``; errors name the file and ``example``."""
    p = Path(path)
    if not p.is_file():
        raise SalmonInputError(str(p), "file not found", f"give the path of an {what} YAML file")
    try:
        return schema.model_validate(safe_load(p.read_text(encoding="utf-8")))
    except (yaml.YAMLError, ValidationError) as e:
        raise SalmonInputError(str(p), f"not a valid {what} file ({str(e).splitlines()[0]})",
                               f"see {example} for the layout") from None


def load_exemplars(path: str | Path) -> ExemplarSet:
    """Load and validate an exemplar file (YAML)."""
    return _load_yaml(path, ExemplarSet, "exemplar", "principles/exemplars/self_align.yaml")


def self_align_context(rules: PrincipleSet, ex: ExemplarSet) -> str:
    """The part of the in-context prompt shared by every request: overview, numbered rules and
    exemplars (it ends with a newline)."""
    a = ex.assistant
    lines = [f"# {a}", "", "## General rules", "",
             f"{a} is an AI assistant. It thinks about which of the following rules apply before "
             "it answers, and then answers by them.", ""]
    lines += [f"{i}. {p.name}: {p.definition}" for i, p in enumerate(rules.principles, start=1)]
    lines += ["", "## Examples", ""]
    for exemplar in ex.exemplars:
        for turn in exemplar.turns:
            lines += [f"User: {turn.user}", "", f"{a} (internal thoughts): {ex.thought_prefix} {turn.thoughts}", "",
                      f"{a}: {turn.answer}", ""]
        lines += [f"User: {ex.closing_user}", "", f"{a} (auto reply): {ex.closing_reply}", ""]
    return "\n".join(lines) + "\n"


def thought_header(ex: ExemplarSet) -> str:
    """What the assistant's turn opens with: the internal-thought header."""
    return f"{ex.assistant} (internal thoughts):"


def self_align_prompt(rules: PrincipleSet, ex: ExemplarSet, instruction: str) -> str:
    """The in-context prompt as one text (prompt_format dromedary): the shared context, the
    request, the thought header."""
    return f"{self_align_context(rules, ex)}User: {instruction.strip()}\n\n{thought_header(ex)}"


_PUNCTUATION_SEGMENTS = "\n.?!;:,`"
"""A segment that is a piece of this string (a lone newline or mark) may repeat (the method's rule)."""


def dedup_segments(text: str, compare: str = "raw") -> str:
    """Cut ``text`` before the first segment that repeats an earlier one, then strip it.

    Segments end after a newline or one of ``. ? ! ; : ,`` and a backtick. ``compare``:

    - ``raw`` (the method's, ``dedup`` in Dromedary's merge script): segments are compared as they
      are, so ``" A dog."`` does not repeat ``"A dog."``; empty segments and lone newlines or
      marks never count as repeats.
    - ``stripped``: segments are compared without surrounding whitespace, so a repeat after a
      different space or newline is cut too; empty and whitespace-only segments never count.

    >>> dedup_segments(" A dog. A cat. A dog. More.")
    'A dog. A cat.'
    >>> dedup_segments("A dog. A cat. A dog. More.")
    'A dog. A cat. A dog. More.'
    >>> dedup_segments("A dog. A cat. A dog. More.", compare="stripped")
    'A dog. A cat.'
    """
    seen: set[str] = set()
    kept: list[str] = []
    for seg in _SEGMENT_END.split(text):
        if compare == "raw":
            key = "" if seg in _PUNCTUATION_SEGMENTS else seg  # "" is in every string
        else:
            key = seg.strip()
        if key and key in seen:
            break
        if key:
            seen.add(key)
        kept.append(seg)
    return "".join(kept).strip()


_RULE_REFERENCE = re.compile(r"\b[Rr]ules? \d+ ?\(")
"""How the exemplars' internal thoughts cite a rule ("Rule 7 (candor)"): never in an answer."""


def blacklist(ex: ExemplarSet) -> list[str]:
    """Terms whose presence means an exemplar leaked, plus conversation artefacts: another turn's
    header, the internal-thought header or its fixed opening sentence."""
    terms = [t for e in ex.exemplars for t in e.leak_terms]
    return terms + ["User:", ex.closing_user, f"{ex.assistant} (auto reply):", "(internal thoughts)",
                    ex.thought_prefix]


def turn_end(answer: str, ex: ExemplarSet) -> int:
    """Where the assistant's turn ends in ``answer``: at the next speaker's header (a user turn,
    another assistant turn, an internal thought or an auto reply); -1 if none follows."""
    a = ex.assistant
    found = [i for m in ("\n\nUser:", f"\n\n{a}:", f"\n\n{a} (") if (i := answer.find(m)) >= 0]
    return min(found, default=-1)


def filter_generation(generation: str, instruction: str, input_text: str, ex: ExemplarSet, *,
                      ended: bool = False, final_name: str = "Dromedary", min_chars: int = 160,
                      copy_min_chars: int = 16, keep_truncated: bool = False, end_of_turn: str = "",
                      dedupe: str = "raw") -> tuple[str | None, str]:
    """(answer or None, reason) for one generation that followed ``(internal thoughts):``.

    1. It must open with the thought prefix and contain ``\\n\\n{assistant}:``; the answer is
       what follows.
    2. The turn ends at the next speaker's header (:func:`turn_end`), or where the model ended
       it with eos (``ended``); the answer is cut there. A generation that did neither ran out of
       tokens: it is dropped as ``truncated`` (with ``keep_truncated``, the method's behaviour,
       it is kept without its last, partial word).
    3. Repeated segments are cut (:func:`dedup_segments` with ``compare=dedupe``); a finished
       answer must then be at least ``min_chars`` long counting the ``end_of_turn`` text the
       stage appends to it, as the method counts it (its check follows the appending: with the
       Dromedary marker, 149 characters of answer reach 160).
    4. Copying the instruction or the input (longer than ``copy_min_chars``) verbatim drops it.
    5. Any :func:`blacklist` term, or a cited rule ("Rule 7 ("), drops it as ``leak``.
    6. The assistant's name becomes ``final_name``.

    The answer is returned without an end-of-turn marker (the stage adds the one of its
    ``prompt_format``). Reasons: ``kept``, ``no_thought``, ``no_answer``, ``truncated``,
    ``too_short``, ``copied``, ``leak``, ``empty``.
    """
    a = ex.assistant
    text = generation.lstrip()
    if not text.startswith(ex.thought_prefix):
        return None, "no_thought"
    marker = f"\n\n{a}:"
    if marker not in text:
        return None, "no_answer"
    answer = text.split(marker, 1)[1]
    end = turn_end(answer, ex)
    if end >= 0:
        answer = answer[:end]
    elif not ended:
        if not keep_truncated:
            return None, "truncated"
        answer = answer.rsplit(" ", 1)[0] if " " in answer.strip() else ""
    answer = dedup_segments(answer.strip(), dedupe)
    if not answer.strip():
        return None, "empty"
    if (end >= 0 or ended) and len(answer + end_of_turn) < min_chars:
        return None, "too_short"
    for source in (instruction.strip(), input_text.strip()):
        if len(source) > copy_min_chars and source in answer:
            return None, "copied"
    if any(term in answer for term in blacklist(ex)) or _RULE_REFERENCE.search(answer):
        return None, "leak"
    return answer.replace(a, final_name), "kept"


class IdentityConversation(BaseModel):
    """One identity question with the answers it may get (``{name}``: the assistant's name)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    user: str = Field(min_length=1, description="What the user asks.")
    answers: list[str] = Field(min_length=1, description="Answers; {name} is replaced by the assistant's name.")


class IdentitySet(BaseModel):
    """Identity ("who are you") conversations mixed into the SFT data, as the method mixes its
    dummy conversations into its self-aligned data."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    version: str = Field(min_length=1, description="Human version label.")
    description: str = Field(default="", description="What the set is for.")
    conversations: list[IdentityConversation] = Field(min_length=1, description="The questions and answers.")


def load_identity(path: str | Path) -> IdentitySet:
    """Load and validate an identity conversation file (YAML)."""
    return _load_yaml(path, IdentitySet, "identity conversation", "principles/data/identity.yaml")


def identity_pairs(ident: IdentitySet, name: str, count: int | None, seed: int) -> list[tuple[str, str]]:
    """(question, answer) pairs with ``{name}`` filled in, in an order shuffled by ``seed``.

    ``count`` None: every (question, answer) pair of the file once. ``count`` N: the first N of
    the shuffled pairs, reshuffled (same seed stream) each time they run out, so every pair
    appears before any repeats. The same arguments give the same list.
    """
    pairs = [(c.user.strip(), a.replace("{name}", name).strip()) for c in ident.conversations for a in c.answers]
    rng = random.Random(seed)
    want = len(pairs) if count is None else count
    out: list[tuple[str, str]] = []
    while len(out) < want:
        batch = pairs[:]
        rng.shuffle(batch)
        out += batch[: want - len(out)]
    return out


def count_reasons(reasons: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in reasons:
        out[r] = out.get(r, 0) + 1
    return dict(sorted(out.items()))
