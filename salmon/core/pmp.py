"""Preference-model pre-training (PMP) pairs from public preference data, as pure functions.

Two formats, one JSON object per line:

- ``hh_rlhf`` (Anthropic HH-RLHF): ``chosen`` and ``rejected``, each a whole transcript of
  ``\\n\\nHuman: ...`` / ``\\n\\nAssistant: ...`` turns. The conversation is everything up to and
  including the last ``\\n\\nAssistant:``; the two final assistant turns are the answers. A
  pair needs both transcripts to hold the same conversation.
- ``shp`` (Stanford SHP): ``history`` (the post), ``human_ref_A`` / ``human_ref_B`` (two
  comments), ``labels`` (1: A is preferred, 0: B is) and ``score_ratio`` (the preferred
  comment's score over the other's). Only pairs with ``score_ratio`` above a threshold count.

A pair is ``(instruction, chosen, rejected)``; :func:`pmp_instance` makes it the record
``train_rm`` reads as ``pmp_data``: an :class:`~salmon.core.records.RMInstance` with the
preferred answer as ``output_1``, ``preference`` 1 and no principles. A line whose structure is
wrong (not JSON, a missing key, a wrong type, NaN) raises :class:`SalmonInputError` naming the
line; a well-formed line that makes no usable pair is dropped with a reason (a string).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from salmon.core.errors import SalmonInputError
from salmon.core.io import _finite_float, _no_constant  # the JSONL readers' number policy
from salmon.core.records import RMInstance

PMPFormat = Literal["hh_rlhf", "shp"]
FORMATS: tuple[str, ...] = ("hh_rlhf", "shp")
HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
HH_KEYS = ("chosen", "rejected")
SHP_KEYS = ("history", "human_ref_A", "human_ref_B", "labels", "score_ratio")
FIX = {
    "hh_rlhf": 'each line needs "chosen" and "rejected", two strings of "\\n\\nHuman: ... \\n\\nAssistant: ..." '
               "turns (the HH-RLHF JSONL files, uncompressed)",
    "shp": 'each line needs "history", "human_ref_A", "human_ref_B" (strings), "labels" (0 or 1) and '
           '"score_ratio" (a finite number), as in the SHP JSONL files',
}

# Drop reasons (a well-formed line that gives no usable pair)
NO_ASSISTANT_TURN = "no_assistant_turn"
DIFFERENT_CONVERSATION = "different_conversation"
EMPTY_INSTRUCTION = "empty_instruction"
EMPTY_ANSWER = "empty_answer"
IDENTICAL = "identical"
LOW_SCORE_RATIO = "low_score_ratio"


@dataclass(frozen=True)
class Pair:
    """One generic preference: the instruction (or conversation) and the preferred answer first."""

    instruction: str
    chosen: str
    rejected: str


def parse_line(text: str, where: str, fmt: str) -> dict[str, Any]:
    """One JSONL line as a JSON object; NaN, Infinity and numbers too big for a float are refused."""
    try:
        obj = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise SalmonInputError(where, f"not valid JSON ({e.msg})", "each line must be one complete JSON object"
                               ) from None
    except ValueError as e:
        raise SalmonInputError(where, f"holds {e}", "write a finite number") from None
    if not isinstance(obj, dict):
        raise SalmonInputError(where, f"expected a JSON object, got {type(obj).__name__}", FIX[fmt])
    return obj


def _strings(obj: dict[str, Any], keys: tuple[str, ...], where: str, fmt: str) -> list[str]:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise SalmonInputError(where, f"missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                               f"(a {fmt} line)", FIX[fmt])
    for k in keys:
        if not isinstance(obj[k], str):
            raise SalmonInputError(where, f"key {k} must be a string, not {type(obj[k]).__name__}", FIX[fmt])
    return [obj[k] for k in keys]


def split_transcript(text: str) -> tuple[str, str] | None:
    """``(conversation up to and including the last '\\n\\nAssistant:', the final answer)``, or
    None when the transcript has no assistant turn."""
    at = text.rfind(ASSISTANT)
    if at < 0:
        return None
    cut = at + len(ASSISTANT)
    return text[:cut], text[cut:].strip()


def render_conversation(prefix: str) -> str:
    """The conversation before the final answer, readable: one human turn alone is its text;
    several turns are ``Human: ...`` / ``Assistant: ...`` paragraphs, ending with the last human
    turn (the dangling final ``Assistant:`` is left out)."""
    body = prefix[: -len(ASSISTANT)] if prefix.endswith(ASSISTANT) else prefix
    turns: list[tuple[str, str]] = []
    rest = body
    while rest:
        h, a = rest.find(HUMAN), rest.find(ASSISTANT)
        starts = [(i, m) for i, m in ((h, HUMAN), (a, ASSISTANT)) if i >= 0]
        if not starts:  # text before any marker (a transcript not starting with one): kept as is
            turns.append(("", rest))
            break
        i, marker = min(starts)
        if i > 0:
            turns.append(("", rest[:i]))
        rest = rest[i + len(marker):]
        nxt = [j for j in (rest.find(HUMAN), rest.find(ASSISTANT)) if j >= 0]
        end = min(nxt) if nxt else len(rest)
        turns.append((marker.strip(), rest[:end]))
        rest = rest[end:]
    turns = [(who, text.strip()) for who, text in turns if text.strip()]
    if len(turns) == 1 and turns[0][0] in ("Human:", ""):
        return turns[0][1]
    return "\n\n".join(f"{who} {text}" if who else text for who, text in turns)


def hh_pair(obj: dict[str, Any], where: str) -> Pair | str:
    """An HH-RLHF line as a pair, or the reason it gives none."""
    chosen, rejected = _strings(obj, HH_KEYS, where, "hh_rlhf")
    a, b = split_transcript(chosen), split_transcript(rejected)
    if a is None or b is None:
        return NO_ASSISTANT_TURN
    if a[0] != b[0]:
        return DIFFERENT_CONVERSATION
    return _checked(render_conversation(a[0]), a[1], b[1])


def shp_pair(obj: dict[str, Any], where: str, min_score_ratio: float) -> Pair | str:
    """An SHP line as a pair (the preferred comment first), or the reason it gives none."""
    history, ref_a, ref_b = _strings(obj, SHP_KEYS[:3], where, "shp")
    for k in SHP_KEYS[3:]:
        if k not in obj:
            raise SalmonInputError(where, f"missing key {k} (a shp line)", FIX["shp"])
    label, ratio = obj["labels"], obj["score_ratio"]
    if isinstance(label, bool) or label not in (0, 1):
        raise SalmonInputError(where, f"key labels must be 0 or 1, not {json.dumps(label)}", FIX["shp"])
    if isinstance(ratio, bool) or not isinstance(ratio, int | float):
        raise SalmonInputError(where, f"key score_ratio must be a number, not {type(ratio).__name__}", FIX["shp"])
    try:
        value = float(ratio)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise SalmonInputError(where, f"key score_ratio {ratio} is not a finite number", FIX["shp"])
    if not value > min_score_ratio:
        return LOW_SCORE_RATIO
    chosen, rejected = (ref_a, ref_b) if label == 1 else (ref_b, ref_a)
    return _checked(history.strip(), chosen.strip(), rejected.strip())


def _checked(instruction: str, chosen: str, rejected: str) -> Pair | str:
    if not instruction:
        return EMPTY_INSTRUCTION
    if not chosen or not rejected:
        return EMPTY_ANSWER
    if chosen == rejected:
        return IDENTICAL
    return Pair(instruction, chosen, rejected)


def pair_id(pair: Pair) -> str:
    """A stable id from the content: the same pair has the same id in every run."""
    h = hashlib.sha256("\0".join((pair.instruction, pair.chosen, pair.rejected)).encode("utf-8"))
    return "pmp-" + h.hexdigest()[:16]


def pmp_instance(pair: Pair, instance_id: str) -> RMInstance:
    """The pair as ``train_rm``'s ``pmp_data`` record: preferred answer as output_1, preference 1."""
    return RMInstance(instance_id=instance_id, pair_id=pair_id(pair), augmentation_pass=0,
                      instruction=pair.instruction, output_1=pair.chosen, output_2=pair.rejected, principles=[],
                      preference=1, dominant_index=-1)


def parse_source_spec(spec: str) -> list[dict[str, str]]:
    """The pipeline's ``pmp_sources`` text, ``FORMAT:URI`` entries separated by commas, as
    ``pmp_data`` sources (``{"format", "uri"}``); empty text gives none."""
    out = []
    for entry in spec.split(","):
        entry = entry.strip()
        if not entry:
            continue
        fmt, sep, uri = entry.partition(":")
        fmt, uri = fmt.strip(), uri.strip()
        if not sep or fmt not in FORMATS or not uri:
            raise SalmonInputError(f"'{entry}'", f"not FORMAT:URI with FORMAT one of {', '.join(FORMATS)}",
                                   "write e.g. hh_rlhf:s3://data/hh-rlhf/train.jsonl,shp:/mnt/models/shp.jsonl")
        if "://" in uri and not uri.startswith("s3://"):
            raise SalmonInputError(f"'{entry}'", f"'{uri}' is not a local path or s3:// URI",
                                   "give a local path (a PVC path on a cluster) or s3://bucket/key")
        out.append({"format": fmt, "uri": uri})
    return out
