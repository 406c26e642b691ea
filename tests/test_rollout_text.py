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


def test_hashes_keep_what_the_method_keeps() -> None:
    """The method keeps ``"###" + " ".join(tail.split(" ")[:2])``: after a space, one word."""
    assert postprocess_response("Text ### Dromedary says hello there") == "Text ### Dromedary"
    assert postprocess_response("Text ###Dromedary says hello") == "Text ###Dromedary says"
    assert postprocess_response("Text ### A ### B") == "Text ### A"  # only up to the next ###
    assert rm_response_text("Text ### Dromedary") == "Text"


def test_the_processed_text_is_stripped_and_has_stop_reads_it() -> None:
    """The method strips the cut text (S:ppo_trainer.py truncate_after_stop_token) and computes
    has_stop_token on the stripped text: an answer that is only the stop string loses its
    leading newlines and counts as not stopped."""
    out = postprocess_response("\nParis.\n\n### User\nAnd Rome?")
    assert out == "Paris.\n\n### User" and has_stop(out)
    assert postprocess_response("  Paris, without an end.  ") == "Paris, without an end."
    empty = postprocess_response("\n\n### User\nAnd Rome?")
    assert empty == "### User" and not has_stop(empty)


def test_policy_turns_read_strips_the_text_and_keeps_the_sampled_ids(tiny_model: str) -> None:
    from salmon.modeling import encode, load_tokenizer
    from salmon.turns import PolicyTurns

    tok = load_tokenizer(tiny_model)
    turns = PolicyTurns(tok, "dromedary")
    ids = encode(tok, "\nParis.\n\n### User\nAnd Rome?")
    turn = turns.read(ids)
    assert turn.stopped and turn.text == "Paris.\n\n### User"
    assert tok.decode(turn.ids).startswith("\nParis.\n\n### User")  # the sampled newline is trained on
    assert len(tok.decode(turn.ids)) < len("\nParis.\n\n### User\nAnd Rome?")
    empty = turns.read(encode(tok, "\n\n### User\nAnd Rome?"))
    assert empty.text == "### User" and not empty.stopped  # the method's no-stop penalty applies


def test_no_markers_unchanged() -> None:
    assert postprocess_response("Plain answer without an end.") == "Plain answer without an end."
    assert not has_stop("Plain answer without an end.")
