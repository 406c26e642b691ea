"""Generation from a shared prefix's KV cache (``salmon.turns``): the same greedy ids as encoding
every query whole, and the ``selfalign`` stage's ``reuse_prefix``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from salmon.turns import common_prefix_length


@pytest.mark.parametrize(("queries", "expected"), [
    ([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 9]], 2),   # the third differs at index 2
    ([[1, 2, 3, 4, 5], [1, 2, 3, 4, 6, 7]], 4),         # differs at index 4
    ([[1, 2, 3], [1, 2, 3, 4]], 2),                     # the shortest keeps its last id
    ([[5, 6, 7], [5, 6, 7]], 2),                        # identical queries keep one id each
    ([[1, 2, 3]], 2),                                   # one query: all but its last id
    ([[1], [1, 2]], 0),                                 # a one-id query shares nothing
    ([[4, 5], [6, 5]], 0),                              # the first ids differ
    ([], 0),
])
def test_common_prefix_length_leaves_every_query_one_id(queries: list[list[int]], expected: int) -> None:
    assert common_prefix_length(queries) == expected


def _random_llama(tok: Any) -> Any:
    """A seeded random 2-layer Llama on ``tok``'s vocabulary. Its weights are drawn wider than
    transformers' default (std 0.2, not 0.02) so that greedy generation wanders over the
    vocabulary and differs from query to query; the briefly trained nano model repeats one id
    after a long prompt."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                         initializer_range=0.2, **ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(**ids)
    return model.eval()


def _queries(tok: Any) -> list[list[int]]:
    """Seven queries: one long shared opening (a few hundred ids), then requests of different
    lengths, so that every batch pads its rows differently."""
    from salmon.modeling import encode_document
    from salmon.nano.world import pretraining_texts

    context = "\n".join(pretraining_texts(4, 1)) + "\n\nUser: "
    requests = ["hi", "What is the capital of the moon?", "Say hello.", "Tell me about rivers and the sea, "
                "please, in two sentences.", "Add 2 and 3.", "Why?", "Write a short poem about the rain."]
    return [encode_document(tok, context + r + "\n\nAssistant:") for r in requests]


def test_greedy_ids_from_the_shared_prefix_equal_the_whole_prompt_ids(tiny_model: str) -> None:
    """Greedy (float32) generation from the prefix's cache gives exactly the ids of generation on
    the whole prompts, per sequence stops at an end id included, with batches of 3 (the last
    one short)."""
    from salmon.modeling import load_tokenizer
    from salmon.turns import encode_prefix, generate_ids, prefix_reuse_unsupported

    tok = load_tokenizer(tiny_model)
    model = _random_llama(tok)
    queries = _queries(tok)
    n = common_prefix_length(queries)
    assert n > 200 and len({len(q) - n for q in queries}) > 3
    assert prefix_reuse_unsupported(model, max(len(q) for q in queries) + 16) is None
    kw: dict[str, Any] = dict(temperature=0.0, top_p=1.0, max_new_tokens=16, batch_size=3)
    free = generate_ids(model, tok, queries, **kw)
    # an id that some rows generate mid-way and others never do: as an end id it stops some rows early
    counts = {t: sum(t in row[:14] for row in free) for row in free for t in row[2:14]}
    end = next(t for t, c in sorted(counts.items()) if 0 < c < len(free) and t != tok.pad_token_id)
    plain = generate_ids(model, tok, queries, end_ids=[end], **kw)
    prefix = encode_prefix(model, queries[0][:n])
    reused = generate_ids(model, tok, queries, end_ids=[end], prefix=prefix, **kw)
    assert reused == plain
    assert len({tuple(row) for row in plain}) == len(plain)  # every query is answered differently
    assert generate_ids(model, tok, queries, prefix=prefix, **kw) == free
    stopped = [row for row in plain if end in row]
    assert stopped and len(stopped) < len(plain)
    assert all(set(row[row.index(end) + 1:]) <= {tok.pad_token_id} for row in stopped)
    assert prefix.cache.get_seq_length() == n and prefix.cache.layers[0].keys.shape[0] == 1  # left as it was


def test_a_query_that_does_not_extend_the_prefix_is_refused(tiny_model: str) -> None:
    from salmon.modeling import load_tokenizer
    from salmon.turns import encode_prefix, generate_ids

    tok = load_tokenizer(tiny_model)
    model = _random_llama(tok)
    prefix = encode_prefix(model, [5, 6, 7])
    for bad in ([5, 6, 7], [5, 6, 8, 9]):
        with pytest.raises(ValueError, match="shared prefix"):
            generate_ids(model, tok, [[5, 6, 7, 8], bad], temperature=0.0, top_p=1.0, max_new_tokens=2,
                         batch_size=2, prefix=prefix)


def test_caches_that_cannot_be_shared_are_named(tiny_model: str) -> None:
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from salmon.modeling import load_tokenizer
    from salmon.turns import prefix_reuse_unsupported

    model = _random_llama(load_tokenizer(tiny_model))
    assert prefix_reuse_unsupported(model, 4096) is None  # full attention: any length
    model.generation_config.cache_implementation = "static"
    assert "'static' cache" in str(prefix_reuse_unsupported(model, 10))
    with torch.random.fork_rng(devices=[]):
        mistral = MistralForCausalLM(MistralConfig(
            vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, head_dim=8, sliding_window=64))
    assert prefix_reuse_unsupported(mistral, 60) is None
    assert "64-token sliding window" in str(prefix_reuse_unsupported(mistral, 100))


def test_selfalign_generations_are_the_same_with_and_without_prefix_reuse(
        tmp_path: Path, tiny_model: str, capsys: pytest.CaptureFixture[str]) -> None:
    from salmon.core.config import SelfAlignConfig, build_config
    from salmon.core.io import write_jsonl
    from salmon.nano.world import make_prompts
    from salmon.stages.selfalign import NothingKept, run

    write_jsonl(tmp_path / "prompts.jsonl", make_prompts(12, seed=1))
    generations = {}
    for reuse in (True, False):
        audit = tmp_path / f"gen-{reuse}.jsonl"
        with pytest.raises(NothingKept):  # the tiny model never writes the internal thought
            run(build_config(SelfAlignConfig, stage="selfalign", values=dict(
                prompts=str(tmp_path / "prompts.jsonl"), output=str(tmp_path / "out.jsonl"), model=tiny_model,
                max_new_tokens=6, limit=3, batch_size=2, temperature=0.0, reuse_prefix=reuse,
                generations_output=str(audit))))
        generations[reuse] = [json.loads(line)["generation"] for line in audit.read_text().splitlines()]
        err = capsys.readouterr().err
        assert ("prefix reuse: the first" in err) == reuse
    assert len(generations[True]) == 3 and generations[True] == generations[False]


def test_bench_counts_the_prompt_slots_each_side_encodes() -> None:
    from salmon.bench.selfalign import prompt_slots

    queries = [[1, 2, 3], [1, 2, 3, 4, 5], [1, 2]]
    assert prompt_slots(queries, 2, 0) == 2 * 5 + 1 * 2  # batches [q0, q1] (width 5) and [q2] (width 2)
    assert prompt_slots(queries, 2, 1) == 1 + 2 * 4 + 1 * 1  # the shared id once, then the rest
