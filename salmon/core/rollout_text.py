"""Text post-processing of RL rollouts in the Dromedary format (method §4.3, step 2 and step 5).

In this format the policy ends its turn with the text ``\\n\\n### User`` (the next user turn);
:class:`salmon.turns.PolicyTurns` also counts a turn that ends at eos as ended, and removes
special tokens before these functions see the text.
:func:`postprocess_response` cuts a sampled continuation the way the method does;
:func:`has_stop` says whether the stop string survived (a response without it is penalised);
:func:`rm_response_text` is what the reward model sees.
"""

from __future__ import annotations

from collections.abc import Sequence

from salmon.core.templates import DROMEDARY_STOP

STOP = DROMEDARY_STOP
"""The end-of-turn marker of the Dromedary format."""

TRUNCATE_AFTER = ("<s>", "</s>", "\nUpdate", "\nNote", "\nComment")
"""Markers the method truncates after (keeping the marker), in this order, before the stop."""

RM_CUT_AT = ("<s>", "</s>", "###", "<|endoftext|>")
"""Markers the reward model's input is cut before."""


def truncate_after(text: str, marker: str) -> str:
    """``text`` up to and including the first ``marker``; unchanged if absent."""
    i = text.find(marker)
    return text if i < 0 else text[: i + len(marker)]


def postprocess_response(
    text: str,
    *,
    stop: str = STOP,
    truncate_markers: Sequence[str] = TRUNCATE_AFTER,
    pad_token: str | None = None,
) -> str:
    """Cut a sampled continuation as the method does.

    1. Drop everything from the first ``pad_token`` on.
    2. Truncate after each of ``truncate_markers`` in order, then after ``stop`` (markers kept).
    3. If ``###`` remains, keep it and at most the two words after it.

    >>> postprocess_response("Paris.\\n\\n### User\\nAnd Rome?")
    'Paris.\\n\\n### User'
    >>> postprocess_response("Paris.\\nNote: I am sure.")
    'Paris.\\nNote'
    """
    if pad_token:
        i = text.find(pad_token)
        if i >= 0:
            text = text[:i]
    for marker in (*truncate_markers, stop):
        text = truncate_after(text, marker)
    i = text.find("###")
    if i >= 0:
        words = text[i + 3:].split()[:2]
        text = text[:i] + " ".join(["###", *words])
    return text


def has_stop(text: str, stop: str = STOP) -> bool:
    """Whether the processed response contains the stop string (its turn ended properly)."""
    return stop in text


def rm_response_text(text: str, cut_at: Sequence[str] = RM_CUT_AT) -> str:
    """The response as the reward model sees it: cut before the first marker, stripped."""
    end = len(text)
    for marker in cut_at:
        i = text.find(marker)
        if 0 <= i < end:
            end = i
    return text[:end].strip()
