"""``prompts``: cleaning, dedupe, tags, S3 sources (moto server on 127.0.0.1) and TGRT parsing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from salmon.core.prompt_sets import (
    balance_topics,
    clean_chat_artifacts,
    dedupe_key,
    hint_prefix,
    parse_hinted_questions,
    parse_topics,
    valid_topic,
)


def test_chat_artifacts_are_stripped() -> None:
    assert clean_chat_artifacts("1 / 3 Explain tides. Share Prompt") == "Explain tides."
    assert clean_chat_artifacts("Explain tides.Translate now Language: English") == "Explain tides."
    assert clean_chat_artifacts("Explain tides.") == "Explain tides."


def test_dedupe_keys() -> None:
    assert dedupe_key("Hi, there!", "exact") != dedupe_key("hi there", "exact")
    assert dedupe_key("Hi, there!", "normalized") == dedupe_key("hi  there", "normalized") == "hi there"


def test_topic_filters_and_balance() -> None:
    assert valid_topic("Stock prices") and valid_topic("Weather")
    assert not valid_topic("stock prices")          # no capital
    assert not valid_topic("Prices of many stocks")  # four words
    assert not valid_topic("Stock prices.")          # trailing punctuation
    assert parse_topics("1. Elections\n- Lottery numbers\n\n* Traffic") == ["Elections", "Lottery numbers", "Traffic"]
    balanced = balance_topics({"a": ["X", "x", "Y", "Z"], "b": ["P", "Q"]})
    assert balanced == {"a": ["X", "Y"], "b": ["P", "Q"]}


def test_hinted_questions_are_parsed_by_prefix() -> None:
    hints = [("future events", "Elections"), ("real-time info", "Traffic")]
    text = (f"{hint_prefix(*hints[0])} Who wins the next election?\n"
            f"{hint_prefix('other', 'Cats')} Ignored?\n"
            f"{hint_prefix(*hints[1])}\n")
    assert parse_hinted_questions(text, hints) == [("future events", "Elections", "Who wins the next election?")]


def _write(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _run(tmp_path: Path, sources: list[dict[str, Any]], **extra: Any):  # type: ignore[no-untyped-def]
    from salmon.core.config import PromptsConfig, build_config
    from salmon.stages.prompts import run

    values: dict[str, Any] = {"sources": sources, "output": str(tmp_path / "out.jsonl")}
    values.update(extra)
    return run(build_config(PromptsConfig, stage="prompts", values=values))


def test_local_sources_are_cleaned_deduped_and_tagged(tmp_path: Path) -> None:
    from salmon.core.io import read_jsonl
    from salmon.core.records import PromptRecord

    chat = _write(tmp_path / "chat.jsonl", [
        {"text": "2 / 2 Explain how tides work. Share Prompt"},
        {"text": "Explain how tides work."},             # duplicate after cleaning
        {"text": "Hi"},                                 # too short
        {"other": "no instruction"},                     # missing field
    ])
    orca = _write(tmp_path / "orca.jsonl", [
        {"q": "Premise: a dog runs. Hypothesis: an animal moves.", "ctx": ""},
        {"q": "Add 17 and 25, then explain.", "ctx": "Show the carry."},
    ])
    result = _run(tmp_path, [
        {"uri": chat, "instruction_field": "text", "clean_chat": True},
        {"uri": orca, "instruction_field": "q", "input_field": "ctx", "prompt_type": "reasoning",
         "drop_phrases": ["premise", "hypothesis"]},
    ], heldout_fraction=0.5)
    rows = read_jsonl(tmp_path / "out.jsonl", PromptRecord)
    assert [(r.instruction, r.input, r.prompt_type) for r in rows] == [
        ("Explain how tides work.", "", "general"), ("Add 17 and 25, then explain.", "Show the carry.", "reasoning")]
    m = result.metrics
    assert (m["dropped_duplicate"], m["dropped_length"], m["dropped_missing"], m["dropped_phrase"]) == (1, 1, 1, 1)
    assert m["by_type"] == {"general": 1, "reasoning": 1}
    again = _run(tmp_path, [{"uri": chat, "instruction_field": "text", "clean_chat": True}], heldout_fraction=0.5)
    assert again.metrics["prompts"] == 1
    assert read_jsonl(tmp_path / "out.jsonl", PromptRecord)[0].prompt_id == rows[0].prompt_id  # stable ids


def test_length_in_tokens_of_a_tokenizer_as_the_method_counts(tmp_path: Path, tiny_model: str) -> None:
    """The method keeps prompts of 2-256 tokens of its base model's tokenizer (BOS included); with
    ``length_tokenizer`` the stage counts the same way. Words stay the default."""
    from salmon.core.io import read_jsonl
    from salmon.core.records import PromptRecord
    from salmon.modeling import encode_document, load_tokenizer

    tok = load_tokenizer(tiny_model)
    dense = " ".join(["Xylqz-vwpk"] * 60)  # 60 words of rare characters: many tokens each
    short = "Hi"  # one word, but BOS plus at least one token
    assert len(encode_document(tok, dense)) > 256 and len(encode_document(tok, short)) >= 2
    src = _write(tmp_path / "p.jsonl", [{"instruction": dense}, {"instruction": short},
                                        {"instruction": "Explain how tides work."}])
    words = _run(tmp_path, [{"uri": src}])
    assert [r.instruction for r in read_jsonl(tmp_path / "out.jsonl", PromptRecord)] == [
        dense, "Explain how tides work."]
    assert words.metrics["dropped_length"] == 1
    tokens = _run(tmp_path, [{"uri": src}], length_tokenizer=tiny_model)
    assert [r.instruction for r in read_jsonl(tmp_path / "out.jsonl", PromptRecord)] == [
        short, "Explain how tides work."]
    assert tokens.metrics["dropped_length"] == 1
    n = len(encode_document(tok, "Explain how tides work."))
    _run(tmp_path, [{"uri": src}], length_tokenizer=tiny_model, max_tokens=n)
    assert read_jsonl(tmp_path / "out.jsonl", PromptRecord)[-1].instruction == "Explain how tides work."
    from salmon.core.errors import SalmonInputError

    with pytest.raises(SalmonInputError, match=f"max_tokens={n - 1}"):
        _run(tmp_path, [{"uri": src}], length_tokenizer=tiny_model, min_tokens=n, max_tokens=n - 1)


def test_bad_line_names_file_and_line_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from salmon.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "fine prompt here"}\n{not json\n')
    code = main(["prompts", f"sources=[{{uri: {bad}}}]", f"output={tmp_path / 'o.jsonl'}"])
    assert code == 2 and f"{bad}:2" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.fixture()
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1, stopped by PID."""
    pytest.importorskip("moto")
    from servers import moto_server

    with moto_server() as url:
        yield url


def test_s3_source(tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    for k, v in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="prompts")
    body = b'{"instruction": "Name three rivers in Europe."}\n{"instruction": "Why is the sky blue?"}\n'
    client.put_object(Bucket="prompts", Key="sets/dolly.jsonl", Body=body)
    result = _run(tmp_path, [{"uri": "s3://prompts/sets/dolly.jsonl"}])
    assert result.metrics["prompts"] == 2
    from salmon.core.errors import SalmonInputError

    with pytest.raises(SalmonInputError, match="cannot read the object"):
        _run(tmp_path, [{"uri": "s3://prompts/sets/missing.jsonl"}])


def test_red_team_synthesis_runs_and_reports(tmp_path: Path, tiny_model: str) -> None:
    seeds = _write(tmp_path / "seeds.jsonl", [
        {"type": "future events", "topic": "Elections", "question": "Who will win the 2040 election?"},
        {"type": "real-time info", "topic": "Traffic", "question": "Is the bridge busy right now?"},
    ])
    plain = _write(tmp_path / "plain.jsonl", [{"instruction": "Tell me about owls."}])
    result = _run(tmp_path, [{"uri": plain}], red_team={"model": tiny_model, "seeds": seeds, "topic_rounds": 1,
                                                         "topic_tokens": 16, "question_tokens": 24})
    red = result.metrics["red_team"]
    assert set(red) == {"topics", "hints", "questions"} and red["topics"] >= 2
    assert result.metrics["by_type"].get("red_teaming", 0) == red["questions"]


def test_red_team_defaults_are_the_methods() -> None:
    from salmon.core.config import RedTeamConfig

    cfg = RedTeamConfig(model="base")
    assert (cfg.temperature, cfg.topic_top_p, cfg.question_top_p) == (1.0, 0.98, 0.95)
    assert (cfg.topic_tokens, cfg.question_tokens, cfg.max_topic_words) == (128, 384, 3)
    assert cfg.suppress_eos and cfg.topic_rounds == 6  # the rounds whose topics the method's questions use
    assert cfg.seeds == "data/red_team_seeds.jsonl"


def test_the_shipped_seed_file_has_one_example_per_question_type() -> None:
    from salmon.core.principles import principles_dir
    from salmon.stages.prompts import seeds_uri

    path = seeds_uri("data/red_team_seeds.jsonl")
    assert Path(path) == principles_dir() / "data" / "red_team_seeds.jsonl"
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) >= 10 and len({r["type"] for r in rows}) == len(rows)
    assert all(set(r) == {"type", "topic", "question"} and r["question"].endswith("?") for r in rows)
    assert all(valid_topic(r["topic"]) for r in rows)
    assert seeds_uri("s3://bucket/seeds.jsonl") == "s3://bucket/seeds.jsonl"


def test_cut_off_last_lines_are_dropped() -> None:
    from salmon.stages.prompts import finished_lines

    assert finished_lines("- Elections\n- Lottery num") == "- Elections"
    assert finished_lines("Who will win the elec") == ""


def test_generate_ids_never_samples_suppressed_ids(tiny_model: str) -> None:
    import torch

    from salmon.modeling import encode_document, load_causal_lm, load_tokenizer
    from salmon.turns import generate_ids

    tok = load_tokenizer(tiny_model)
    model = load_causal_lm(tiny_model, device=torch.device("cpu"))
    queries = [encode_document(tok, t) for t in ("Topics:\n- Elections\n-", "Tell me about owls.")]
    torch.manual_seed(0)
    rows = generate_ids(model, tok, queries, temperature=1.0, top_p=0.98, max_new_tokens=24, batch_size=2,
                        end_ids=[tok.eos_token_id], suppress_ids=[tok.eos_token_id])
    assert all(len(r) == 24 and tok.eos_token_id not in r for r in rows)  # every row runs to the limit


def test_red_team_steps_use_their_top_p_and_suppress_eos(tmp_path: Path, tiny_model: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The default seeds (shipped), topics at top-p 0.98 and questions at 0.95, eos never sampled
    in either step; suppress_eos=false samples it freely."""
    import salmon.turns as turns
    from salmon.modeling import encode, load_tokenizer

    tok = load_tokenizer(tiny_model)
    calls: list[dict[str, Any]] = []
    real = turns.generate_ids
    brainstorm = encode(tok, " Harbour Cranes\n- Tide Tables\n- Lighthouse Ke")  # cut off: the last line goes

    def spy(model: Any, tokenizer: Any, queries: list[list[int]], **kw: Any) -> list[list[int]]:
        calls.append({"top_p": kw["top_p"], "suppress": list(kw.get("suppress_ids", ())),
                      "max_new": kw["max_new_tokens"]})
        if len(calls) == 1:  # the brainstorm: the same two new topics for every type, so questions follow
            return [brainstorm for _ in queries]
        return real(model, tokenizer, queries, **kw)

    monkeypatch.setattr(turns, "generate_ids", spy)
    plain = _write(tmp_path / "plain.jsonl", [{"instruction": "Tell me about owls."}])
    result = _run(tmp_path, [{"uri": plain}], red_team={"model": tiny_model, "topic_rounds": 1, "topic_tokens": 12,
                                                         "question_tokens": 16})
    eos = tok.eos_token_id
    assert calls[0] == {"top_p": 0.98, "suppress": [eos], "max_new": 12}
    assert len(calls) == 2 and calls[1] == {"top_p": 0.95, "suppress": [eos], "max_new": 16}
    red = result.metrics["red_team"]
    assert red["topics"] == 12 * 3 and red["hints"] == 12 * 2  # seed + 2 finished topics per type
    calls.clear()
    _run(tmp_path, [{"uri": plain}], red_team={"model": tiny_model, "topic_rounds": 1, "topic_tokens": 12,
                                               "question_tokens": 16, "suppress_eos": False})
    assert calls and all(c["suppress"] == [] for c in calls)
