"""Prompt-set cleaning and topic-guided red-teaming (method §1.3, §1.4, §4.2) as pure functions.

Cleaning: chat-export artefacts are stripped (:func:`clean_chat_artifacts`), prompts outside a
length window and prompts with excluded phrases are dropped, duplicates are removed
(:func:`dedupe_key`). Red-teaming synthesis (TGRT): a base model brainstorms topics per
adversarial question type (kept by :func:`valid_topic`, balanced by :func:`balance_topics`),
then writes questions for (type, topic) hints, parsed by :func:`parse_hinted_questions`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence

_COUNTER = re.compile(r"^\s*\d+\s*/\s*\d+\s*|\s*\d+\s*/\s*\d+\s*$")
_SUFFIXES = re.compile(r"\s*(?:Share Prompt|Translate now|Language:\s*[A-Za-z\- ()]+)\s*$", re.IGNORECASE)
_PUNCT = str.maketrans("", "", string.punctuation)


def clean_chat_artifacts(text: str) -> str:
    """Strip chat-export artefacts: ``n / m`` counters at either end and trailing
    "Share Prompt", "Translate now" and "Language: X" labels (repeatedly), then whitespace.

    >>> clean_chat_artifacts("2 / 2 Explain tides. Share Prompt")
    'Explain tides.'
    """
    prev = None
    text = text.strip()
    while prev != text:
        prev = text
        text = _SUFFIXES.sub("", _COUNTER.sub("", text)).strip()
    return text


def dedupe_key(text: str, mode: str) -> str:
    """``exact``: the text itself; ``normalized``: lower-cased, punctuation and spacing removed."""
    if mode == "exact":
        return text
    return " ".join(text.lower().translate(_PUNCT).split())


def has_phrase(text: str, phrases: Sequence[str]) -> bool:
    """Whether ``text`` contains any of ``phrases`` (case-insensitive)."""
    low = text.lower()
    return any(p.lower() in low for p in phrases)


def valid_topic(topic: str, max_words: int = 3) -> bool:
    """A brainstormed topic is kept when it has at most ``max_words`` words, starts with a capital
    letter and does not end in punctuation."""
    t = topic.strip()
    return bool(t) and len(t.split()) <= max_words and t[0].isupper() and t[-1] not in string.punctuation


def parse_topics(generation: str) -> list[str]:
    """Topic lines of a brainstorm continuation: list markers and surrounding spaces removed."""
    out = []
    for line in generation.splitlines():
        t = re.sub(r"^\s*(?:\d+[.)]|[-*\u2022])\s*", "", line).strip()
        if t:
            out.append(t)
    return out


def balance_topics(topics: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Case-insensitive dedupe per type, then cut every type to the smallest count, so that
    question types stay balanced."""
    unique: dict[str, list[str]] = {}
    for kind, items in topics.items():
        seen: set[str] = set()
        unique[kind] = []
        for t in items:
            if t.lower() not in seen:
                seen.add(t.lower())
                unique[kind].append(t)
    n = min((len(v) for v in unique.values()), default=0)
    return {k: v[:n] for k, v in unique.items()}


def hint_prefix(kind: str, topic: str) -> str:
    """The line prefix a question for (type, topic) must start with."""
    return f"Type: {kind} | Topic: {topic} | Question:"


def parse_hinted_questions(generation: str, hints: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(type, topic, question) for every line that starts with one of the hints' prefixes."""
    found = []
    for line in generation.splitlines():
        for kind, topic in hints:
            prefix = hint_prefix(kind, topic)
            if line.strip().startswith(prefix):
                q = line.strip()[len(prefix):].strip()
                if q:
                    found.append((kind, topic, q))
    return found
