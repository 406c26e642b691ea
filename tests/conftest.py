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


def _save_tiny_rm(tiny_model: str, out: Path, lora: bool) -> str:
    import torch

    from salmon.modeling import load_backbone, load_tokenizer
    from salmon.reward.model import RM_FORMAT, RMMeta, build_reward_model, save_reward_model

    body = load_backbone(tiny_model, device=torch.device("cpu"))
    if lora:
        from peft import LoraConfig, get_peft_model

        body = get_peft_model(body, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        with torch.no_grad():  # a non-trivial adapter, so that copying it is observable
            for name, p in body.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    model = build_reward_model(body, seed=5)
    meta = RMMeta(format=RM_FORMAT, base_model=tiny_model, finetune="lora" if lora else "full",
                  model_max_length=384, query_len=48, response_len=64)
    save_reward_model(model, load_tokenizer(tiny_model), meta, out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_rm(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained RM folder (full backbone + seeded head) on the tiny model."""
    return _save_tiny_rm(tiny_model, tmp_path_factory.mktemp("rms") / "full", lora=False)


@pytest.fixture(scope="session")
def tiny_rm_lora(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An RM folder whose body is a (randomly non-zero) LoRA adapter on the tiny model."""
    return _save_tiny_rm(tiny_model, tmp_path_factory.mktemp("rms") / "lora", lora=True)


@pytest.fixture(scope="session")
def smollm2_model() -> str:
    """SmolLM2-135M-Instruct as an HF folder, prepared from its package (cached across runs)."""
    pytest.importorskip("torch")
    from salmon.base_models import prepare

    return str(prepare("smollm2"))


@pytest.fixture(scope="session")
def family_models(smollm2_model: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A model folder per tokenizer family: SmolLM2 itself (byte-level BPE, bos = <|im_start|> never
    added, eos = pad = <|im_end|>), and tiny random Llamas on a SentencePiece Llama-2-style tokenizer
    (BOS added, no pad) and on a Qwen-style tokenizer (no BOS, pad <|endoftext|> != eos <|im_end|>)."""
    from tokenizer_families import FAMILIES, tiny_llama_for

    root = tmp_path_factory.mktemp("families")
    out = {"smollm2": smollm2_model}
    for name, build in FAMILIES.items():
        out[name] = str(tiny_llama_for(build(root / f"{name}-tok"), root / name))
    return out
