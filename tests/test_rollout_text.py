"""Rollout text post-processing (method §4.3)."""

from __future__ import annotations

import doctest

import salmon.core.rollout_text as rt
from salmon.core.rollout_text import has_stop, postprocess_response, rm_response_text


def test_doctests() -> None:
    assert doctest.testmod(rt).failed == 0


def test_stop_string_is_kept_and_the_rest_dropped() -> None:
    out = postprocess_response("An answer.\n\n### User\nNext question?\n\n### Dromedary\nMore.")
    assert out == "An answer.\n\n### User"
    assert has_stop(out)
    assert rm_response_text(out) == "An answer."


def test_trailing_note_loses_the_stop_string() -> None:
    out = postprocess_response("An answer.\nNote: this is great.\n\n### User\n")
    assert out == "An answer.\nNote"
    assert not has_stop(out)


def test_eos_and_pad_cut() -> None:
    assert postprocess_response("Yes.</s> junk") == "Yes.</s>"
    assert postprocess_response("Yes.<pad><pad>", pad_token="<pad>") == "Yes."
    assert rm_response_text("Yes. </s> junk") == "Yes."


def test_hashes_keep_two_words() -> None:
    assert postprocess_response("Text ### Dromedary says hello there") == "Text ### Dromedary says"
    assert rm_response_text("Text ### Dromedary says") == "Text"


def test_no_markers_unchanged() -> None:
    assert postprocess_response("Plain answer without an end.") == "Plain answer without an end."
    assert not has_stop("Plain answer without an end.")
