"""Every stage a few steps on a real chat model: SmolLM2-135M-Instruct, prompt_format chat_template.

prompts -> selfalign -> sft -> sample -> label -> aggregate -> train_rm -> eval_rm -> ppo ->
eval_policy, and ``rm score``, each through the ``salmon`` command, on the folder that
``salmon base prepare smollm2`` writes (loaded with ``from_pretrained`` like any model). Checked:
answers end at eos and carry no special-token or Dromedary text, the SFT, sample and PPO query ids
agree, the reward model saves and reloads to the same scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from salmon.cli import main
from salmon.core.io import read_jsonl, write_jsonl
from salmon.core.records import Judgement, PromptRecord, ResponsePair, RMInstance, ScoredResponse, SFTExample

LEAKS = ("<|im_end|>", "<|im_start|>", "### User", "### Dromedary", "<|endoftext|>")


def _run(args: list[str], capsys: pytest.CaptureFixture[str], code: int = 0) -> dict[str, Any]:
    got = main(args)
    captured = capsys.readouterr()
    assert got == code, captured.err[-3000:]
    return json.loads(captured.out)["metrics"] if code == 0 and captured.out.strip().startswith("{") else {}


def _no_leaks(texts: list[str]) -> None:
    for text in texts:
        assert not any(marker in text for marker in LEAKS), text


def test_every_stage_runs_on_smollm2_in_chat_template_mode(smollm2_model: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from salmon.modeling import load_tokenizer

    d = tmp_path
    tok = load_tokenizer(smollm2_model)
    eos = tok.eos_token_id
    chat = "prompt_format=chat_template"

    # prompts: nano-world prompts (train and held out), answered by the real model below
    _run(["prompts", "nano_prompts=10", "seed=5", f"output={d / 'prompts.jsonl'}"], capsys)
    prompts = read_jsonl(d / "prompts.jsonl", PromptRecord)
    assert {p.split for p in prompts} == {"train", "heldout"}

    # selfalign: the in-context prompt in the chat template; SmolLM2 rarely follows it, so the
    # kept answers (if any) join nano-written ones as SFT data
    code = main(["selfalign", f"prompts={d / 'prompts.jsonl'}", f"output={d / 'selfalign.jsonl'}",
                 "model=smollm2", chat, "limit=2", "max_new_tokens=40", "min_chars=0", "batch_size=2"])
    capsys.readouterr()
    assert code in (0, 1)  # 1: nothing passed the filters (NothingKept)
    kept = read_jsonl(d / "selfalign.jsonl", SFTExample) if code == 0 else []
    _no_leaks([e.response for e in kept])
    _run(["selfalign", "--preset", "nano", f"prompts={d / 'prompts.jsonl'}", f"output={d / 'nano_sft.jsonl'}"],
         capsys)
    data = (kept + read_jsonl(d / "nano_sft.jsonl", SFTExample))[:4]
    write_jsonl(d / "sft.jsonl", data)

    # sft: the LoRA adapter, targets ending with eos
    sft = _run(["sft", f"data={d / 'sft.jsonl'}", "base_model=smollm2", f"output_dir={d / 'sft'}", chat,
                "batch_size=2", "micro_batch_size=2", "lora_r=4", "lora_alpha=8", "source_max_len=96",
                "target_max_len=48", "log_every=1", "device=cpu"], capsys)
    assert sft["finished"] and (d / "sft" / "adapter" / "adapter_model.safetensors").is_file()
    made = json.loads((d / "sft" / "adapter" / "salmon_sft.json").read_text())
    assert made["prompt_format"] == "chat_template" and made["system_prompt"] is None
    _served_like_sampled(smollm2_model, d / "sft" / "adapter", d)

    # sample: two answers per prompt from base + SFT adapter, each stopping at eos
    sample = _run(["sample", f"prompts={d / 'prompts.jsonl'}", f"output={d / 'pairs.jsonl'}", "model=smollm2",
                   f"adapter={d / 'sft' / 'adapter'}", chat, "max_new_tokens=32", "min_chars=1", "batch_size=5",
                   "device=cpu"], capsys)
    pairs = read_jsonl(d / "pairs.jsonl", ResponsePair)
    assert len(pairs) >= 6 and sample["tokens_per_response"] <= 32
    _no_leaks([t for p in pairs for t in (p.output_1, p.output_2)])

    # label: SmolLM2 judging itself (the paper's labels) on two pairs; the checkers label all
    hf = _run(["label", f"pairs={d / 'pairs.jsonl'}", f"output={d / 'judged_hf.jsonl'}", "backend=hf",
               "model=smollm2", chat, "principles=nano", "limit=2", "batch_size=2", "progress=false", "device=cpu"],
              capsys)
    assert hf["judgements"] == 2 * 6 and 0 <= hf["position_consistent_rate"] <= 1
    _run(["label", "--preset", "nano", f"pairs={d / 'pairs.jsonl'}", f"output={d / 'judged.jsonl'}",
          "progress=false"], capsys)
    assert len(read_jsonl(d / "judged.jsonl", Judgement)) == 6 * len(pairs)

    # aggregate -> train_rm (LoRA on SmolLM2) -> eval_rm
    _run(["aggregate", "--preset", "nano", f"pairs={d / 'pairs.jsonl'}", f"judgements={d / 'judged.jsonl'}",
          f"output={d / 'instances.jsonl'}"], capsys)
    assert read_jsonl(d / "instances.jsonl", RMInstance)
    rm = _run(["train_rm", f"instances={d / 'instances.jsonl'}", f"output_dir={d / 'rm'}", "base_model=smollm2",
               "finetune=lora", "lora_r=4", "lora_alpha=8", "batch_size=16", "micro_batch_size=4",
               "model_max_length=384", "query_len=48", "response_len=96", "learning_rate=1e-3", "device=cpu"],
              capsys)
    assert rm["finished"]
    eval_rm = _run(["eval_rm", f"model={d / 'rm' / 'model'}", f"pairs={d / 'pairs.jsonl'}",
                    f"judgements={d / 'judged.jsonl'}", f"output_dir={d / 'eval_rm'}", "principles=nano",
                    "sensitivity=[concise, detailed]", "passes=1", "intervention_set=null", "batch_size=8",
                    "device=cpu"], capsys)
    metrics_text = (d / "eval_rm" / "metrics.json").read_text()
    assert eval_rm["accuracy_n"] > 0 and "NaN" not in metrics_text and "Infinity" not in metrics_text

    # rm score, and the saved RM reloaded in this process gives the same rewards
    requests = [{"prompt": p.prompt.instruction, "response": p.output_1, "principles": ["Answer briefly."]}
                for p in pairs[:3]]
    (d / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    assert main(["rm", "score", "--model", str(d / "rm" / "model"), "--input", str(d / "requests.jsonl"),
                 "--output", str(d / "scored.jsonl"), "--device", "cpu"]) == 0
    capsys.readouterr()
    scored = read_jsonl(d / "scored.jsonl", ScoredResponse)
    _reloaded_scores_match(d / "rm" / "model", requests, [s.reward for s in scored])

    # ppo: the four roles on one SmolLM2 (shared layout), rollouts ending at eos
    ppo_args = ["ppo", f"prompts={d / 'prompts.jsonl'}", "policy_model=smollm2", f"reward_model={d / 'rm' / 'model'}",
                f"output_dir={d / 'ppo'}", f"policy_adapter={d / 'sft' / 'adapter'}", chat, "rl_principles=nano",
                "interventions=null", "principles_per_rollout=1", "rollout_batch_size=3", "step_batch_size=3",
                "forward_batch_size=3", "ppo_epochs=1", "response_len=24", "total_steps=1", "warmup_steps=0",
                "device=cpu"]
    ppo = _run(ppo_args, capsys)
    assert ppo["finished"]
    rollouts = [json.loads(line) for line in (d / "ppo" / "rollouts" / "step_00001.jsonl").read_text().splitlines()]
    assert len(rollouts) == 3
    for r in rollouts:
        assert len(r["response_ids"]) == r["length"] <= 24
        assert r["has_stop"] == (r["response_ids"][-1] == eos)  # stopped exactly when it ended with eos
        assert eos not in r["response_ids"][:-1]
    _no_leaks([r["response"] for r in rollouts])

    # eval_policy: policy vs SFT, both stopping at eos
    pol = _run(["eval_policy", f"prompts={d / 'prompts.jsonl'}", "base_model=smollm2", f"output_dir={d / 'evalpol'}",
                f"policy_adapter={d / 'ppo' / 'policy'}", f"baseline_adapter={d / 'sft' / 'adapter'}",
                f"reward_model={d / 'rm' / 'model'}", chat, "principle_sets=[nano:concise]", "adherence=[concise]",
                "limit=2", "max_new_tokens=24", "batch_size=2", "device=cpu"], capsys)
    assert pol["prompts"] == 2 and 0 <= pol["policy/stop_rate"] <= 1
    rows = [json.loads(line) for line in (d / "evalpol" / "responses.jsonl").read_text().splitlines()]
    _no_leaks([r[k] for r in rows for k in ("policy", "sft")])

    _query_ids_agree(smollm2_model, d, ppo_args)


def _reloaded_scores_match(rm_dir: Path, requests: list[dict[str, Any]], rewards: list[float]) -> None:
    import torch

    from salmon.reward.model import RMEncoder, load_reward_model, score_sequences

    model, tok, meta = load_reward_model(str(rm_dir), device=torch.device("cpu"))
    encoder = RMEncoder(tok, meta.limits())
    rows = [encoder.encode_rm(r["response"], r["prompt"], r["principles"]) for r in requests]
    again = score_sequences(model, rows, int(tok.pad_token_id))
    assert again == pytest.approx(rewards, abs=1e-5)


def _query_ids_agree(model: str, d: Path, ppo_args: list[str]) -> None:
    """The ids sft trained on, sample sampled from and ppo rolled out from, for the same prompt."""
    from salmon.core.config import PPOConfig, SampleConfig, SFTConfig, build_config
    from salmon.modeling import load_tokenizer
    from salmon.stages.ppo import encode_queries
    from salmon.stages.sample import sample_turns
    from salmon.stages.sft import encode_examples

    tok = load_tokenizer(model)
    prompt = read_jsonl(d / "prompts.jsonl", PromptRecord)[0]
    example = SFTExample(example_id="x", instruction=prompt.instruction, response="Fine.")
    sft = build_config(SFTConfig, stage="sft", values={"data": "d", "base_model": model, "output_dir": "o",
                                                       "prompt_format": "chat_template"})
    ids, labels = encode_examples(tok, [example], sft)[0]
    sample = build_config(SampleConfig, stage="sample", values={"prompts": "p", "output": "o", "model": model,
                                                                "prompt_format": "chat_template"})
    ppo = build_config(PPOConfig, stage="ppo", overrides=[a for a in ppo_args[1:] if "=" in a])
    ppo.policy_model = model
    query = sample_turns(sample).query_ids(prompt.full_instruction())
    assert ids[: labels.count(-100)] == query == encode_queries(tok, [prompt], ppo)[0][0]
    assert query[-4:] == tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]


def _served_like_sampled(model: str, adapter: Path, tmp: Path) -> None:
    """The model logged to MLflow (salmon.mlflow_model) answers in the adapter's prompt format,
    as the stages sample it: greedy, it gives the stages' greedy answer."""
    from types import SimpleNamespace

    from salmon.mlflow_model import PolicyModel
    from salmon.modeling import generation_end_ids, load_causal_lm, load_tokenizer, resolve_device, with_adapter
    from salmon.turns import PolicyTurns

    served = PolicyModel()
    settings = tmp / "salmon_model.json"
    settings.write_text(json.dumps({"kind": "sft", "max_new_tokens": 24}))
    context = SimpleNamespace(artifacts={"model": str(adapter), "salmon_model": str(settings)})
    served.load_context(context)
    answers = served.predict(context, ["Add 7 and 5.", "Name a colour."])
    tok = load_tokenizer(model)
    turns = PolicyTurns(tok, "chat_template", end_ids=generation_end_ids(model))
    policy = with_adapter(load_causal_lm(model, device=resolve_device("cpu")), str(adapter))
    sampled = turns.generate(policy, [turns.query_ids("Add 7 and 5."), turns.query_ids("Name a colour.")],
                             temperature=0, top_p=1, max_new_tokens=24, batch_size=1)
    assert answers == [turns.answer_text(t.text) for t in sampled]
    _no_leaks(answers)


def test_sample_and_selfalign_generate_in_bfloat16_when_asked(smollm2_model: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import salmon.modeling as modeling

    loaded: list[Any] = []
    real = modeling.load_causal_lm

    def spy(*args: Any, **kwargs: Any) -> Any:
        model = real(*args, **kwargs)
        loaded.append(next(model.parameters()).dtype)
        return model

    monkeypatch.setattr(modeling, "load_causal_lm", spy)
    d = tmp_path
    _run(["prompts", "nano_prompts=4", "seed=3", f"output={d / 'prompts.jsonl'}"], capsys)
    _run(["sample", f"prompts={d / 'prompts.jsonl'}", f"output={d / 'pairs.jsonl'}", "model=smollm2",
          "prompt_format=chat_template", "max_new_tokens=12", "min_chars=1", "batch_size=4", "device=cpu",
          "dtype=bfloat16"], capsys)
    pairs = read_jsonl(d / "pairs.jsonl", ResponsePair)
    assert pairs and all(p.output_1.strip() and p.output_2.strip() for p in pairs)
    _no_leaks([t for p in pairs for t in (p.output_1, p.output_2)])
    code = main(["selfalign", f"prompts={d / 'prompts.jsonl'}", f"output={d / 'selfalign.jsonl'}",
                 "model=smollm2", "prompt_format=chat_template", "limit=2", "max_new_tokens=8", "min_chars=0",
                 "batch_size=2", "device=cpu", "dtype=bfloat16"])
    capsys.readouterr()
    assert code in (0, 1)  # 1: nothing passed the filters
    assert loaded == [torch.bfloat16, torch.bfloat16]
