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
    """Cut a sampled continuation as the method does (``truncate_after_stop_token``, then the
    pad split, in the original's ``ppo_trainer.py``).

    1. Truncate after each of ``truncate_markers`` in order, then after ``stop`` (markers kept).
    2. If ``###`` remains, keep it and what follows up to the next ``###``, split at single
       spaces, at most two pieces rejoined. After a space that is one word, the first piece
       being empty: ``"### User"`` stays whole, ``"### Dromedary says hi"`` becomes
       ``"### Dromedary"``; ``"###A B C"`` keeps ``"###A B"``.
    3. Strip surrounding whitespace.
    4. Drop everything from the first ``pad_token`` on.

    Step 3 is why a turn that is nothing but the stop string (an empty answer) loses the
    stop string's leading newlines and so does not count as stopped (:func:`has_stop` reads this
    result, as the method's ``has_stop_token`` does): the method gives it the no-stop penalty.

    >>> postprocess_response("Paris.\\n\\n### User\\nAnd Rome?")
    'Paris.\\n\\n### User'
    >>> postprocess_response("Paris.\\nNote: I am sure.")
    'Paris.\\nNote'
    >>> postprocess_response("\\n\\n### User")
    '### User'
    >>> postprocess_response("Hi ### Dromedary says hi")
    'Hi ### Dromedary'
    """
    for marker in (*truncate_markers, stop):
        text = truncate_after(text, marker)
    i = text.find("###")
    if i >= 0:
        tail = text[i + 3:].split("###", 1)[0]
        text = text[:i] + "###" + " ".join(tail.split(" ")[:2])
    text = text.strip()
    if pad_token:
        text = text.split(pad_token, 1)[0]
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
