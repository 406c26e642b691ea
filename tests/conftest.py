"""Shared fixtures: a tiny nano model built once per test session (seconds, offline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from salmon.core.io import write_jsonl
from salmon.nano.world import make_pairs, make_prompts


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer nano Llama (head dim 64) + tokenizer, briefly pretrained, as an HF folder."""
    pytest.importorskip("torch")
    from salmon.nano.model import NanoModelSpec, build_nano_model

    out = tmp_path_factory.mktemp("models") / "tiny"
    build_nano_model(out, NanoModelSpec(vocab_size=600, num_layers=2, pretrain_steps=20,
                                        pretrain_batch_size=8), log=lambda _: None)
    return str(out)


@pytest.fixture()
def nano_pairs_file(tmp_path: Path) -> Path:
    """24 nano response pairs (train and held-out prompts) as JSONL."""
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, make_pairs(make_prompts(24, seed=3), seed=4))
    return path
