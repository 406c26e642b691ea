"""Special tokens handled one way for real tokenizers: three families, every stage's ids.

SmolLM2's own tokenizer (byte-level BPE; its bos <|im_start|> is never added; eos = pad =
<|im_end|>), a SentencePiece Llama-2-style tokenizer (adds BOS, no pad, word-boundary pieces) and
a Qwen-style tokenizer (no BOS, pad <|endoftext|> != eos <|im_end|>), all built offline.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from salmon.core import templates
from salmon.core.config import EvalPolicyConfig, PPOConfig, SampleConfig, SFTConfig, build_config
from salmon.core.principles import load_principle_set
from salmon.core.records import PromptRecord, SFTExample
from salmon.nano.world import make_pairs, make_prompts

FAMILIES = ["smollm2", "sentencepiece_llama", "qwen_style"]
TEXTS = [
    "Add 7 and 5.",
    "  leading spaces and\ttabs\n\nand a blank line",
    "Describe a windmill in three sentences.\n\n- first\n- second",
    "¿Quién es Marta? 東京 naïve café",
    "### User\nnot a turn\n\n### Dromedary\n",
]


def _tok(family_models: dict[str, str], family: str) -> Any:
    from salmon.modeling import load_tokenizer

    return load_tokenizer(family_models[family])


@pytest.mark.parametrize("family", FAMILIES)
def test_segments_concatenate_to_the_whole_text_encoding(family_models: dict[str, str], family: str) -> None:
    from salmon.modeling import added_prefix, encode, encode_segments

    tok = _tok(family_models, family)
    rng = random.Random(0)
    for text in TEXTS * 4:
        cuts = sorted(rng.sample(range(1, len(text)), 3))
        segments = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        parts = encode_segments(tok, segments)
        assert sum(parts, []) == added_prefix(tok) + encode(tok, text), (family, segments)


@pytest.mark.parametrize("family", FAMILIES)
def test_segment_wise_encoding_of_a_piece_differs_for_sentencepiece(family_models: dict[str, str],
                                                                    family: str) -> None:
    """Why the segments are cut out of the whole text: a piece encoded alone gains a word-boundary
    piece under SentencePiece (and may merge whitespace differently under byte-level BPE)."""
    from salmon.modeling import encode, encode_segments

    tok = _tok(family_models, family)
    text = templates.judge_shared("Name a colour.") + templates.judge_outputs("Red.", "Blue, or green.")
    whole = encode_segments(tok, [templates.judge_shared("Name a colour."),
                                  templates.judge_outputs("Red.", "Blue, or green.")], prefix=False)
    alone = [encode(tok, templates.judge_shared("Name a colour.")),
             encode(tok, templates.judge_outputs("Red.", "Blue, or green."))]
    assert sum(whole, []) == encode(tok, text)
    if family == "sentencepiece_llama":
        assert sum(alone, []) != encode(tok, text)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_tokenizer_adds_its_own_prefix_and_nothing_else(family_models: dict[str, str], family: str) -> None:
    from salmon.modeling import added_prefix

    tok = _tok(family_models, family)
    expected = [tok.bos_token_id] if family == "sentencepiece_llama" else []
    assert added_prefix(tok) == expected  # SmolLM2's bos <|im_start|> is never added by the tokenizer


def _configs(model: str, prompt_format: str, system: str | None) -> dict[str, Any]:
    common = {"prompt_format": prompt_format}
    return {
        "sft": build_config(SFTConfig, stage="sft", values={
            **common, "data": "d", "base_model": model, "output_dir": "o",
            "system_prompts": [system] if system else None}),
        "sample": build_config(SampleConfig, stage="sample", values={
            **common, "prompts": "p", "output": "o", "model": model, "system_prompt": system}),
        "ppo": build_config(PPOConfig, stage="ppo", values={
            **common, "prompts": "p", "policy_model": model, "reward_model": "r", "output_dir": "o",
            "system_prompt": system}),
        "eval_policy": build_config(EvalPolicyConfig, stage="eval_policy", values={
            **common, "prompts": "p", "base_model": model, "output_dir": "o", "system_prompt": system}),
    }


@pytest.mark.parametrize("prompt_format", ["dromedary", "chat_template"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_stage_builds_the_same_query_ids(family_models: dict[str, str], family: str,
                                               prompt_format: str) -> None:
    from salmon.modeling import load_tokenizer
    from salmon.stages.ppo import encode_queries
    from salmon.stages.sample import sample_turns
    from salmon.stages.sft import encode_examples
    from salmon.turns import policy_turns

    model = family_models[family]
    tok = load_tokenizer(model)
    system = "### User" if prompt_format == "dromedary" else None
    cfgs = _configs(model, prompt_format, system)
    instruction = "Name three colours."
    prompt = PromptRecord(prompt_id="p1", instruction=instruction)
    ids, labels = encode_examples(tok, [SFTExample(example_id="e1", instruction=instruction, response="Red.")],
                                  cfgs["sft"])[0]
    built = {
        "sft": ids[: labels.count(-100)],  # the source: the tokens that carry no loss
        "sample": sample_turns(cfgs["sample"]).query_ids(instruction),
        "ppo": encode_queries(tok, [prompt], cfgs["ppo"])[0][0],
        "eval_policy": policy_turns(tok, cfgs["eval_policy"], model).query_ids(instruction),
    }
    query = built["sample"]
    assert all(ids == query for ids in built.values()), {k: len(v) for k, v in built.items()}
    bos = tok.bos_token_id
    if prompt_format == "chat_template":
        expected = tok.apply_chat_template([{"role": "user", "content": instruction}], add_generation_prompt=True,
                                           return_dict=False)
        assert query == list(expected)
    if family == "sentencepiece_llama":
        assert query[0] == bos and query.count(bos) == 1  # one BOS, whoever writes it
    else:
        assert query[0] != bos or family == "smollm2" and prompt_format == "chat_template"
        if prompt_format == "dromedary":
            assert bos not in query  # no <|im_start|> opening a Dromedary query


@pytest.mark.parametrize("prompt_format", ["dromedary", "chat_template"])
@pytest.mark.parametrize("family", FAMILIES)
def test_sft_targets_follow_the_query_and_end_the_turn(family_models: dict[str, str], family: str,
                                                       prompt_format: str) -> None:
    from salmon.modeling import encode, load_tokenizer
    from salmon.turns import PolicyTurns

    tok = load_tokenizer(family_models[family])
    turns = PolicyTurns(tok, prompt_format)
    response = "Red, blue and green." + templates.DROMEDARY_END_OF_TURN
    source, target = turns.sft_ids("Name three colours.", response)
    assert source == turns.query_ids("Name three colours.")
    if prompt_format == "dromedary":  # the whole training text, as one encoding; no eos
        text = turns.query_text("Name three colours.") + "\n" + response
        prefix = [tok.bos_token_id] if family == "sentencepiece_llama" else []
        assert source + target == prefix + encode(tok, text)
        assert tok.eos_token_id not in target
    else:
        assert target[-1] == tok.eos_token_id and target.count(tok.eos_token_id) == 1
        assert tok.decode(target[:-1]) == "Red, blue and green."


@pytest.mark.parametrize("prompt_format", ["dromedary", "chat_template"])
@pytest.mark.parametrize("family", FAMILIES)
def test_judge_prompts_are_whole_text_encodings(family_models: dict[str, str], family: str,
                                                prompt_format: str) -> None:
    from salmon.judge.hf import JudgeTokenizer
    from salmon.modeling import encode, encode_document, load_tokenizer

    tok = load_tokenizer(family_models[family])
    judge = JudgeTokenizer(tok, max_length=4096, prompt_format=prompt_format)
    principles = load_principle_set("reward_model").principles
    for pair in make_pairs(make_prompts(6, seed=2), seed=3):
        toks, p_ids = judge.batch([pair], principles)
        for order, (a, b) in enumerate([(pair.output_1, pair.output_2), (pair.output_2, pair.output_1)]):
            for p, ids in zip(principles, p_ids, strict=True):
                prompt = templates.judge_prompt(pair.prompt.full_instruction(), a, b, p.name, p.definition,
                                                judge.wrap)
                whole = encode_document(tok, prompt.text) if prompt_format == "dromedary" else encode(tok, prompt.text)
                assert toks[0].shared + toks[0].outputs[order] + ids == whole, (family, p.id)
    if prompt_format == "chat_template":
        text = templates.judge_shared("x", judge.wrap)
        assert text.startswith(judge.wrap[0]) and "### User" not in text


@pytest.mark.parametrize("family", FAMILIES)
def test_reward_model_inputs_are_whole_text_encodings(family_models: dict[str, str], family: str) -> None:
    from salmon.modeling import encode_document, load_tokenizer
    from salmon.reward.model import EncodeLimits, RMEncoder

    tok = load_tokenizer(family_models[family])
    encoder = RMEncoder(tok, EncodeLimits(4096, 512, 1024))
    for pair in make_pairs(make_prompts(5, seed=4), seed=5):
        prompt = templates.rm_prompt(pair.output_1, pair.prompt.full_instruction(), ["Be brief.", "Be kind."])
        assert encoder.encode(prompt) == encode_document(tok, prompt.text)
    short = RMEncoder(tok, EncodeLimits(4096, 3, 5)).encode(prompt)
    assert short[-8:] == encode_document(tok, prompt.text)[-8:]  # the reward stem is never cut


def _ids(tok: Any, text: str) -> list[int]:
    from salmon.modeling import encode

    return encode(tok, text)


@pytest.mark.parametrize("prompt_format", ["dromedary", "chat_template"])
@pytest.mark.parametrize("family", FAMILIES)
def test_an_eos_ended_rollout_is_stopped_and_its_text_has_no_special_tokens(
        family_models: dict[str, str], family: str, prompt_format: str) -> None:
    from salmon.modeling import generation_end_ids, load_tokenizer
    from salmon.turns import PolicyTurns

    tok = load_tokenizer(family_models[family])
    turns = PolicyTurns(tok, prompt_format, end_ids=generation_end_ids(family_models[family]))
    eos, pad = tok.eos_token_id, tok.pad_token_id
    body = _ids(tok, "The answer is 12.")
    turn = turns.read(body + [eos] + [pad] * 3)
    assert turn.stopped and turn.ids == body + [eos]
    assert turns.answer_text(turn.text) == "The answer is 12."
    special = [t for t in (tok.eos_token, tok.pad_token, tok.bos_token, "<|im_start|>", "</s>", "<s>") if t]
    leaky = turns.read(body + ([tok.bos_token_id] if tok.bos_token_id is not None else []) + body)
    assert not any(s in leaky.text for s in special)
    unfinished = turns.read(body + body)
    assert not unfinished.stopped and unfinished.ids == body + body
    if pad != eos:  # Qwen style: a stopped sequence is followed by pad, never counted as text
        assert turns.read(body + [eos] + [pad]).ids == body + [eos]
        assert turns.read(body + [pad, pad]).ids == body


@pytest.mark.parametrize("family", FAMILIES)
def test_a_dromedary_turn_ends_at_its_stop_string_with_the_method_cut(family_models: dict[str, str],
                                                                      family: str) -> None:
    from salmon.modeling import load_tokenizer
    from salmon.turns import PolicyTurns

    tok = load_tokenizer(family_models[family])
    turns = PolicyTurns(tok, "dromedary")
    turn = turns.read(_ids(tok, "Paris.\n\n### User\nAnd Rome?"))
    assert turn.stopped and turn.text == "Paris.\n\n### User"
    assert tok.decode(turn.ids).startswith("Paris.\n\n### User") and turns.answer_text(turn.text) == "Paris."
    noted = turns.read(_ids(tok, "Paris.\nNote: I am sure."))
    assert not noted.stopped and noted.text == "Paris.\nNote"


def test_chat_template_needs_a_template(tiny_model: str) -> None:
    from salmon.core.errors import SalmonInputError
    from salmon.modeling import load_tokenizer
    from salmon.turns import PolicyTurns

    with pytest.raises(SalmonInputError, match="has no chat template"):
        PolicyTurns(load_tokenizer(tiny_model), "chat_template")


def test_generation_stops_per_sequence_at_eos_and_at_the_stop_string(smollm2_model: str) -> None:
    """SmolLM2, greedy: a short answer ends at eos while a long one in the same batch goes on;
    in the Dromedary format it writes the next user turn at once, and generation stops there. That
    turn is only the stop string: the method's final strip removes its leading newlines, so it does
    not count as stopped (the no-stop penalty for an empty answer)."""
    import torch

    from salmon.modeling import generation_end_ids, load_causal_lm, load_tokenizer
    from salmon.turns import PolicyTurns

    tok = load_tokenizer(smollm2_model)
    model = load_causal_lm(smollm2_model, device=torch.device("cpu"))
    chat = PolicyTurns(tok, "chat_template", end_ids=generation_end_ids(smollm2_model))
    short, long = chat.generate(model, [chat.query_ids("Add 7 and 5."), chat.query_ids("Write a long poem.")],
                                temperature=0, top_p=1, max_new_tokens=24, batch_size=2)
    assert short.stopped and short.ids[-1] == tok.eos_token_id and len(short.ids) < 24
    assert short.text == "The answer is 12." and not long.stopped and len(long.ids) == 24
    dromedary = PolicyTurns(tok, "dromedary")
    (turn,) = dromedary.generate(model, [dromedary.query_ids("Add 7 and 5.")], temperature=0, top_p=1,
                                 max_new_tokens=48, batch_size=1)
    assert turn.text == "### User" and not turn.stopped and len(turn.ids) < 10
    assert tok.decode(turn.ids) == "\n\n### User"


def test_a_packaged_model_name_works_as_a_stage_model_key(smollm2_model: str) -> None:
    from salmon.core.config import SampleConfig
    from salmon.stages.common import resolve_model_names

    cfg = resolve_model_names(build_config(SampleConfig, stage="sample", values={
        "prompts": "p", "output": "o", "model": "smollm2"}), "sample")
    assert cfg.model == smollm2_model and Path(cfg.model, "config.json").is_file()



@pytest.mark.parametrize("family", FAMILIES)
def test_padding_after_a_stop_string_is_not_a_sampled_eos(family_models: dict[str, str], family: str) -> None:
    """Generation stopped at the stop string pads the rest of the batch row; with pad == eos that
    padding must not be read as an eos the model sampled."""
    from salmon.modeling import load_tokenizer
    from salmon.turns import PolicyTurns

    tok = load_tokenizer(family_models[family])
    turns = PolicyTurns(tok, "dromedary")
    body = _ids(tok, "Paris.\n\n### User")
    turn = turns.read(body + [tok.pad_token_id] * 3)
    assert turn.stopped and turn.ids == body and tok.eos_token_id not in turn.ids
    assert turns.text_of(body + [tok.pad_token_id] * 3) == ("Paris.\n\n### User", len(body), False)
    sampled = turns.read(_ids(tok, "Paris.") + [tok.eos_token_id] + [tok.pad_token_id] * 2)
    assert sampled.stopped and sampled.ids[-1] == tok.eos_token_id  # a real eos is kept


def test_stopping_early_changes_no_kept_text(smollm2_model: str) -> None:
    """Sampled with the same seed, rollouts that stop at the stop string keep exactly the text that
    rollouts run to the token limit keep after the method's cut (a finished row still draws its
    sample each step, so the random stream is unchanged), with fewer tokens."""
    import torch

    from salmon.modeling import generation_end_ids, load_causal_lm, load_tokenizer
    from salmon.nano.world import make_prompts
    from salmon.turns import PolicyTurns, generate_ids

    tok = load_tokenizer(smollm2_model)
    model = load_causal_lm(smollm2_model, device=torch.device("cpu"))
    turns = PolicyTurns(tok, "dromedary", end_ids=generation_end_ids(smollm2_model))
    queries = [turns.query_ids(p.full_instruction()) for p in make_prompts(6, seed=11)]
    runs = {}
    for stop in (False, True):
        torch.manual_seed(3)
        runs[stop] = generate_ids(model, tok, queries, temperature=0.7, top_p=1.0, max_new_tokens=40, batch_size=6,
                                  stop_strings=turns.stop_strings if stop else (),
                                  end_ids=turns.end_ids if stop else ())
    full, stopped = ([turns.read(ids) for ids in runs[s]] for s in (False, True))
    assert [t.text for t in stopped] == [t.text for t in full]
    assert sum(len(t.ids) for t in stopped) <= sum(len(t.ids) for t in full)
    assert any(t.stopped for t in stopped)
