"""Build the nano world's tokenizer and tiny Llama-architecture model, locally and seeded.

The tokenizer is a byte-level BPE trained on nano-world text and the project's prompt
templates; the model is a small Llama (head dim 64, so vLLM can serve it too) briefly
pretrained on nano conversations in the Dromedary turn format and on neutral descriptions of
responses (see :func:`description_texts`). ``build_nano_model`` writes an
ordinary HF folder that every stage loads with ``from_pretrained``.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from salmon.core import templates
from salmon.core.io import atomic_dir, write_json
from salmon.core.principles import available_sets, load_principle_set
from salmon.nano.checkers import describe
from salmon.nano.world import make_pairs, make_prompts, make_response, pretraining_texts


@dataclass(frozen=True)
class NanoModelSpec:
    """Size and training of the nano model."""

    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 4
    num_heads: int = 2
    max_position_embeddings: int = 1024
    pretrain_steps: int = 300
    pretrain_batch_size: int = 16
    pretrain_lr: float = 3e-3
    description_share: float = 0.5
    seed: int = 0


def description_texts(n: int, seed: int) -> list[str]:
    """Documents that show a response, then its instruction, then neutral facts about it.

    They stand in for what a real base model knows about text (how long it is, whether it is
    a list, whether it refuses): the facts come after the response, as in the reward model's
    layout, so the model learns to carry them to later positions. No principle or preference
    ever appears.
    """
    rng = random.Random(seed)
    texts = []
    for p in make_prompts(n, seed):
        response = make_response(p, rng)
        texts.append(f"### Response\n{response}\n\n### Instruction\n{p.instruction}\n\n"
                     f"### Notes\n{describe(p, response)}\n")
    return texts


def _tokenizer_corpus(seed: int) -> list[str]:
    texts = pretraining_texts(800, seed) + description_texts(200, seed + 3)
    for pair in make_pairs(make_prompts(200, seed + 1), seed + 2):
        instr = pair.prompt.instruction
        texts.append(templates.judge_prompt(instr, pair.output_1, pair.output_2, "Concise", "x").text)
        texts.append(templates.rm_prompt(pair.output_1, instr, ["x"]).text)
    for name in available_sets():
        for p in load_principle_set(name).principles:
            texts += [p.name, p.definition, p.negative_definition or ""]
    return texts


def build_tokenizer(spec: NanoModelSpec):  # type: ignore[no-untyped-def]
    """A byte-level BPE tokenizer with ``<pad>``, ``<s>`` (BOS, added by default) and ``</s>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_tokenizer_corpus(spec.seed), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", padding_side="left")


def pretrain(model, tokenizer, spec: NanoModelSpec, log=print) -> list[float]:  # type: ignore[no-untyped-def]
    """Brief next-token pretraining on nano conversations and response descriptions.

    Returns the loss per step.
    """
    import torch

    n = max(spec.pretrain_steps * spec.pretrain_batch_size // 4, 64)
    n_desc = round(n * spec.description_share)
    texts = pretraining_texts(n - n_desc, spec.seed + 7) + description_texts(n_desc, spec.seed + 11)
    rng = random.Random(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.pretrain_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / max(1, spec.pretrain_steps)))
    model.train()
    losses = []
    for step in range(spec.pretrain_steps):
        batch = rng.sample(texts, spec.pretrain_batch_size)
        enc = tokenizer(batch, return_tensors="pt", padding=True, padding_side="right")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == spec.pretrain_steps:
            log(f"nano pretrain step {step + 1}/{spec.pretrain_steps} loss {loss.item():.3f}")
    model.eval()
    return losses


def build_nano_model(out_dir: str | Path, spec: NanoModelSpec | None = None, log=print) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Build, pretrain and save the nano model + tokenizer to ``out_dir`` (atomically).

    Returns a summary: parameter count, tokenizer size, final pretraining loss, seconds.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    spec = spec or NanoModelSpec()
    t0 = time.time()
    torch.manual_seed(spec.seed)
    tokenizer = build_tokenizer(spec)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    losses = pretrain(model, tokenizer, spec, log=log) if spec.pretrain_steps else []
    summary: dict[str, object] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "pretrain_loss_first": losses[0] if losses else None,
        "pretrain_loss_last": losses[-1] if losses else None,
        "spec": asdict(spec),
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "nano_model.json", summary)
    summary["seconds"] = round(time.time() - t0, 1)
    return summary
