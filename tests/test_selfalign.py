"""SELF-ALIGN: the in-context prompt and the post-filters (method §1.3), and the selfalign stage."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from salmon.core.principles import load_principle_set, principles_dir
from salmon.core.selfalign import END_OF_TURN, dedup_segments, filter_generation, load_exemplars, self_align_prompt

EX = load_exemplars(principles_dir() / "exemplars" / "self_align.yaml")
PREFIX = EX.thought_prefix
LONG = ("Bees collect nectar from flowers, carry it home in a special stomach, and pass it to other "
        "bees, who fan it with their wings until most of the water evaporates and it turns to honey.")


def test_prompt_lists_the_17_rules_and_6_exemplars_and_ends_with_the_thought_header() -> None:
    rules = load_principle_set("self_align")
    prompt = self_align_prompt(rules, EX, "How do bees make honey?")
    assert len(rules.principles) == 17 and len(EX.exemplars) == 6
    assert all(f"{i}. {p.name}: " in prompt for i, p in enumerate(rules.principles, start=1))
    assert prompt.count(f"Watson (internal thoughts): {PREFIX}") == 7  # the code exemplar has two turns
    assert prompt.count(f"User: {EX.closing_user}") == 6
    assert prompt.endswith("User: How do bees make honey?\n\nWatson (internal thoughts):")


def test_dedup_cuts_at_the_first_repeated_segment() -> None:
    assert dedup_segments("A.\nB.\nA.\n") == "A.\nB."
    assert dedup_segments("One, two, three, two, four.") == "One, two, three,"  # " two," repeats as written
    assert dedup_segments("No repeats here.") == "No repeats here."
    assert dedup_segments("Yes.\n\nNo.\n\nMaybe.") == "Yes.\n\nNo.\n\nMaybe."  # lone newlines may repeat


def test_dedup_compares_raw_segments_as_the_method_does() -> None:
    """Dromedary's ``dedup`` compares the segments as written: "One," opening the text and
    " One," after a space differ, so nothing is cut; ``stripped`` (this project's former rule)
    cuts there."""
    assert dedup_segments("One, two, three. One, four.") == "One, two, three. One, four."
    assert dedup_segments("One, two, three. One, four.", compare="stripped") == "One, two, three."
    once = "Bees turn the nectar of flowers into honey and keep it in wax cells for the winter."
    twice = _gen(f"{once} {once}\n\nUser: ok")  # the first copy opens the answer, the second follows a space
    assert filter_generation(twice, "Bees?", "", EX, min_chars=0) == (f"{once} {once}", "kept")
    assert filter_generation(twice, "Bees?", "", EX, min_chars=0, dedupe="stripped") == (once, "kept")


ANSWER_150 = ("Honey starts as nectar. Bees carry it to the hive in a second stomach, pass it from bee to "
              "bee, and fan it with their wings till it thickens to honey.")


def test_the_length_minimum_counts_the_end_of_turn_marker() -> None:
    """The method appends '\\n\\n### User\\n' (11 characters) before its 160-character check, so a
    150-character answer is kept in the Dromedary format and dropped without a marker."""
    assert len(ANSWER_150) == 150 and len(ANSWER_150 + END_OF_TURN) == 161
    gen = _gen(ANSWER_150 + "\n\nUser: ok")
    assert filter_generation(gen, "Bees?", "", EX, end_of_turn=END_OF_TURN) == (ANSWER_150, "kept")
    assert filter_generation(gen, "Bees?", "", EX) == (None, "too_short")  # chat_template: nothing appended
    short = _gen(ANSWER_150[:148] + "\n\nUser: ok")
    assert filter_generation(short, "Bees?", "", EX, end_of_turn=END_OF_TURN) == (None, "too_short")


def _stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, generations: list[tuple[str, bool]],
           **values: Any) -> Any:
    """The selfalign stage (hf backend) on canned generations, one per train prompt."""
    import salmon.stages.selfalign as stage
    from salmon.core.config import SelfAlignConfig, build_config
    from salmon.core.io import write_jsonl
    from salmon.core.records import PromptRecord

    prompts = [PromptRecord(prompt_id=f"p-{i}", instruction=f"Question {i} about bees?") for i in
               range(len(generations))]
    write_jsonl(tmp_path / "prompts.jsonl", prompts)
    monkeypatch.setattr(stage, "generate_hf", lambda cfg, ps, ex: generations[:len(ps)])
    return stage.run(build_config(SelfAlignConfig, stage="selfalign", values=dict(
        prompts=str(tmp_path / "prompts.jsonl"), output=str(tmp_path / "out.jsonl"), model="unused", **values)))


def test_stage_counts_the_marker_of_its_prompt_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from salmon.core.io import read_jsonl
    from salmon.core.records import SFTExample

    gens = [(_gen(ANSWER_150 + "\n\nUser: ok"), False)]
    result = _stage(tmp_path, monkeypatch, gens, identity=False)
    assert result.metrics["reasons"] == {"kept": 1}
    assert [r.response for r in read_jsonl(tmp_path / "out.jsonl", SFTExample)] == [ANSWER_150 + END_OF_TURN]
    from salmon.stages.selfalign import NothingKept

    with pytest.raises(NothingKept, match="'too_short': 1"):
        _stage(tmp_path, monkeypatch, gens, identity=False, prompt_format="chat_template")


def test_identity_conversations_are_mixed_in_deterministically(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from salmon.core.io import read_jsonl
    from salmon.core.records import SFTExample

    gens = [(_gen(LONG + "\n\nUser: ok"), False)]
    result = _stage(tmp_path, monkeypatch, gens)  # the defaults: identity on, every pair once
    rows = read_jsonl(tmp_path / "out.jsonl", SFTExample)
    identity = [r for r in rows if r.source == "identity"]
    assert result.metrics["kept"] == 1 and result.metrics["identity"] == len(identity) == len(rows) - 1 >= 10
    assert rows[0].source == "selfalign"
    assert any(r.instruction == "Who are you?" and "Dromedary" in r.response for r in identity)
    assert all(r.response.endswith(END_OF_TURN) and "{name}" not in r.response for r in identity)
    assert len({r.example_id for r in rows}) == len(rows)
    first = [(r.instruction, r.response) for r in identity]
    _stage(tmp_path, monkeypatch, gens)
    assert [(r.instruction, r.response) for r in read_jsonl(tmp_path / "out.jsonl", SFTExample)
            if r.source == "identity"] == first  # same seed, same conversations in the same order
    _stage(tmp_path, monkeypatch, gens, seed=7)
    other = [(r.instruction, r.response) for r in read_jsonl(tmp_path / "out.jsonl", SFTExample)
             if r.source == "identity"]
    assert other != first and sorted(other) == sorted(first)
    result = _stage(tmp_path, monkeypatch, gens, identity_examples=30, final_name="Camel",
                    prompt_format="chat_template")
    identity = [r for r in read_jsonl(tmp_path / "out.jsonl", SFTExample) if r.source == "identity"]
    assert len(identity) == result.metrics["identity"] == 30
    assert any("Camel" in r.response for r in identity) and not any("Dromedary" in r.response for r in identity)
    assert not any(r.response.endswith(END_OF_TURN) for r in identity)  # chat_template: sft adds eos
    result = _stage(tmp_path, monkeypatch, gens, identity=False)
    assert result.metrics["identity"] == 0
    assert [r.source for r in read_jsonl(tmp_path / "out.jsonl", SFTExample)] == ["selfalign"]


def test_identity_conversations_never_pass_the_kept_answer_gate(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from salmon.stages.selfalign import NothingKept

    with pytest.raises(NothingKept):
        _stage(tmp_path, monkeypatch, [("Bees make honey.", False)])
    assert not (tmp_path / "out.jsonl").exists()


def _gen(answer: str, thought: str = "Rule 2 applies.") -> str:
    return f" {PREFIX} {thought}\n\nWatson: {answer}"


def test_a_finished_answer_is_kept_whole_and_renamed() -> None:
    answer, why = filter_generation(_gen(LONG + " Watson hopes this helps.\n\nUser: thanks"),
                                    "How do bees make honey?", "", EX)
    assert why == "kept"
    assert answer == LONG + " Dromedary hopes this helps."


def test_an_eos_ended_turn_is_finished_and_keeps_its_last_word() -> None:
    answer, why = filter_generation(_gen(LONG + " The capital of France is Paris."), "Bees?", "", EX, ended=True)
    assert why == "kept" and answer is not None and answer.endswith("The capital of France is Paris.")


@pytest.mark.parametrize("end", ["\n\nWatson: And another thing.", "\n\nWatson (internal thoughts): I wonder.",
                                 "\n\nWatson (auto reply): Glad it helped."])
def test_a_later_assistant_turn_ends_the_answer(end: str) -> None:
    answer, why = filter_generation(_gen(LONG + end), "Bees?", "", EX)
    assert (answer, why) == (LONG, "kept")


@pytest.mark.parametrize(("generation", "reason"), [
    ("Bees make honey.", "no_thought"),
    (f"{PREFIX} Rule 2 applies. Bees make honey.", "no_answer"),
    (_gen("Bees make honey.\n\nUser: ok"), "too_short"),
    (_gen(LONG + " Tell me how bees make honey from flowers, please.\n\nUser: ok"), "copied"),
    (_gen(LONG + " The red panda does not.\n\nUser: ok"), "leak"),
    (_gen(LONG + " Rule 7 (candor) says so.\n\nUser: ok"), "leak"),
    (_gen(LONG + f" {PREFIX} The user asks about bees.\n\nUser: ok"), "leak"),
    (_gen(LONG + " Watson (internal thoughts) are private.\n\nUser: ok"), "leak"),
    (_gen("Bees collect nectar and turn it into hon"), "truncated"),
])
def test_filters_drop_with_a_reason(generation: str, reason: str) -> None:
    answer, why = filter_generation(generation, "Tell me how bees make honey from flowers, please.", "", EX)
    assert (answer, why) == (None, reason)


def test_keep_truncated_restores_the_method_filter() -> None:
    answer, why = filter_generation(_gen("Bees collect nectar and turn it into hon"), "Bees?", "", EX,
                                    keep_truncated=True)
    assert why == "kept" and answer == "Bees collect nectar and turn it into"


def test_stage_hf_backend_fails_when_nothing_passes_and_nano_backend_says_so(tmp_path: Path, tiny_model: str) -> None:
    from salmon.core.config import SelfAlignConfig, build_config
    from salmon.core.io import read_jsonl, write_jsonl
    from salmon.core.records import SFTExample
    from salmon.nano.world import make_prompts
    from salmon.stages.selfalign import run

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, make_prompts(12, seed=1))
    from salmon.stages.selfalign import NothingKept

    # the tiny model never writes the thought prefix: every generation is dropped, with its reason
    with pytest.raises(NothingKept, match="'no_thought': 3"):
        run(build_config(SelfAlignConfig, stage="selfalign", values=dict(
            prompts=str(prompts), output=str(tmp_path / "hf.jsonl"), model=tiny_model, max_new_tokens=8, limit=3)))
    assert not (tmp_path / "hf.jsonl").exists()
    nano = run(build_config(SelfAlignConfig, stage="selfalign", preset="nano", values=dict(
        prompts=str(prompts), output=str(tmp_path / "nano.jsonl"))))
    rows = read_jsonl(tmp_path / "nano.jsonl", SFTExample)
    n_train = sum(p.split == "train" for p in make_prompts(12, seed=1))
    assert nano.metrics["backend"] == "nano" and len(rows) == nano.metrics["kept"] == n_train > 0
    assert all(r.source == "nano" and r.response.endswith(END_OF_TURN) for r in rows)


@pytest.mark.parametrize(("key", "content"), [("exemplars", "version: '1'\nassistant: W\n"),
                                            ("identity_file", "version: '1'\nconversations: []\n")])
def test_a_bad_data_file_exits_2_before_generating(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str,
                                                   content: str) -> None:
    """An invalid exemplar or identity file stops the stage (exit 2, the file named) before any
    model is loaded: model=/nonexistent is never reached."""
    from salmon.cli import main
    from salmon.core.io import write_jsonl
    from salmon.nano.world import make_prompts

    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    write_jsonl(tmp_path / "p.jsonl", make_prompts(4, seed=1))
    code = main(["selfalign", f"prompts={tmp_path / 'p.jsonl'}", f"output={tmp_path / 'out.jsonl'}",
                 f"{key}={bad}", "model=/nonexistent"])
    assert code == 2 and "bad.yaml" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


REAL = [json.loads(line) for line in
        (Path(__file__).parent / "data" / "selfalign_smollm2.jsonl").read_text(encoding="utf-8").splitlines()]
"""Real SmolLM2 generations after the self-alignment prompt, both prompt formats (tests/data/README.md)."""


def _real(instruction: str, prompt_format: str) -> dict[str, Any]:
    return next(r for r in REAL if r["instruction"] == instruction and r["prompt_format"] == prompt_format)


def _filter(row: dict[str, Any], **kw: Any) -> tuple[str | None, str]:
    return filter_generation(row["generation"], row["instruction"], row["input"], EX, ended=row["ended_at_eos"], **kw)


def test_real_generations_get_their_reviewed_verdicts() -> None:
    assert len(REAL) == 128
    for row in REAL:
        assert _filter(row) == (row["answer"], row["reason"]), row["prompt_id"]
    verdicts = Counter(r["reason"] for r in REAL)
    assert verdicts["kept"] == 16 and verdicts["truncated"] == 3 and verdicts["leak"] == 17


def test_real_dromedary_answers_of_149_to_159_characters_now_pass() -> None:
    """Replayed as the stage filters them (the Dromedary marker counted, the method's order), two
    reviewed too_short answers of 152 characters are kept and nothing else changes. One repeats its
    first sentence after a space: the method's raw compare keeps the repeat, ``stripped`` cuts it."""
    changed = {}
    for row in REAL:
        end = END_OF_TURN if row["prompt_format"] == "dromedary" else ""
        got = _filter(row, end_of_turn=end)
        if got != (row["answer"], row["reason"]):
            changed[row["prompt_id"]] = (row["reason"], got[1], len(got[0] or ""))
    assert changed == {"nano-21-00020": ("too_short", "kept", 152), "nano-21-00027": ("too_short", "kept", 152)}
    car = _real("Tell me how to steal a car.", "dromedary")
    assert _filter(car, end_of_turn=END_OF_TURN, dedupe="stripped") == (None, "too_short")


def test_kept_real_answers_carry_no_conversation_artefacts() -> None:
    kept = [r for r in REAL if r["reason"] == "kept"]
    for row in kept:
        answer = row["answer"]
        assert len(answer) >= 160
        assert not any(m in answer for m in ("User:", "Watson", "(internal thoughts)", EX.thought_prefix))
        assert not re.search(r"\b[Rr]ules? \d+ ?\(", answer)
        finished = row["ended_at_eos"] or any(m in row["generation"].split("\n\nWatson:", 1)[1]
                                              for m in ("\n\nUser:", "\n\nWatson:", "\n\nWatson ("))
        assert finished, row["prompt_id"]


def test_a_real_answer_ends_at_the_next_assistant_turn() -> None:
    row = _real("Tell me about rivers.", "chat_template")
    assert "\n\nWatson: I am a careful" in row["generation"]
    answer, why = _filter(row)
    assert why == "kept" and answer is not None and answer.endswith("located in the mountains of the east of Japan.")


def test_real_eos_ended_turns_count_as_finished() -> None:
    """Nine chat-format generations ended at eos: none is dropped as truncated, and the kept one
    loses nothing but a repeated segment; read as unfinished (the eos unseen), it would be dropped."""
    rows = [r for r in REAL if r["ended_at_eos"]]
    assert len(rows) == 9 and all(r["reason"] != "truncated" for r in rows)
    (kept,) = [r for r in rows if r["reason"] == "kept"]
    tail = kept["generation"].split("\n\nWatson:", 1)[1].strip().replace("Watson", "Dromedary")
    assert kept["answer"] == dedup_segments(tail)
    assert _filter({**kept, "ended_at_eos": False}) == (None, "truncated")


@pytest.mark.parametrize(("instruction", "prompt_format", "reason"), [
    ("Add 9 and 4.", "chat_template", "leak"),        # the answer re-emits the internal thought
    ("Add 5 and 4.", "dromedary", "leak"),            # the answer copies an exemplar (blanket fort)
    ("Tell me about robots.", "chat_template", "truncated"),  # a repetition loop to the token limit
])
def test_real_generations_the_method_filter_kept(instruction: str, prompt_format: str, reason: str) -> None:
    row = _real(instruction, prompt_format)
    assert _filter(row) == (None, reason)
