"""Offline stand-ins for two tokenizer families met in the wild, plus a tiny random Llama on each.

Tests use them to check that salmon builds the same prompt ids whatever the tokenizer family:

* ``sentencepiece_llama``: a SentencePiece BPE model (byte fallback, dummy prefix ``▁``) trained
  with the ``sentencepiece`` package, served by transformers' ``LlamaTokenizer`` the way Llama-2 and
  Mistral are: ``<unk>``/``<s>``/``</s>`` at ids 0/1/2, BOS added by the tokenizer, no EOS, no pad,
  and a Llama-2 ``[INST]`` chat template.
* ``qwen_style``: a byte-level BPE trained with ``tokenizers`` behind the Qwen2 split regex, served
  by ``Qwen2Tokenizer`` the way Qwen2.5-Instruct is: no BOS and no special tokens added on
  encoding, ``<|endoftext|>`` (pad), ``<|im_start|>`` and ``<|im_end|>`` (EOS) appended after the
  learned vocabulary, and a ChatML chat template.

Everything is trained from ``salmon.nano.world`` text in well under a second and is deterministic;
nothing is downloaded. ``tiny_llama_for`` turns either tokenizer folder into a complete HF model
folder with a seeded, randomly initialised ``LlamaForCausalLM``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Lines that make the prompt formats salmon writes (and the chat formats) common in the corpus,
# so the tokenizers learn pieces for them as real ones would have.
_FORMAT_LINES = (
    "### User", "### Dromedary", "#### Output (a)", "#### Output (b)",
    "Output (a) is better than Output (b).", "Output (b) is better than Output (a).",
    "The quality of the output is good.", "The quality of the output is poor.",
    "[INST] <<SYS>>", "<</SYS>>", "[INST] Hello, who are you? [/INST]",
    "hello", "hello world", "Say hello to the assistant.",
)

# Llama-2's chat layout: BOS before every user turn, the system prompt folded into the first user
# turn, each answer closed by EOS. It has no separate generation prompt: "[/INST]" is one.
LLAMA2_CHAT_TEMPLATE = "".join((
    "{%- if messages and messages[0]['role'] == 'system' -%}",
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}",
    "{%- else -%}{%- set system = none -%}{%- set turns = messages -%}{%- endif -%}",
    "{%- for m in turns -%}",
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}",
    "{{ raise_exception('after an optional system message, roles must alternate user/assistant') }}",
    "{%- endif -%}",
    "{%- if m['role'] == 'user' -%}",
    "{%- set text = m['content'] -%}",
    "{%- if loop.first and system is not none -%}",
    "{%- set text = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + text -%}",
    "{%- endif -%}",
    "{{ bos_token + '[INST] ' + text.strip() + ' [/INST]' }}",
    "{%- else -%}",
    "{{ ' ' + m['content'].strip() + ' ' + eos_token }}",
    "{%- endif -%}",
    "{%- endfor -%}",
))

# ChatML as Qwen2.5-Instruct uses it (tools left out): a default system message when none is given.
CHATML_TEMPLATE = "".join((
    "{%- if not messages or messages[0]['role'] != 'system' -%}",
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}",
    "{%- endif -%}",
    "{%- for m in messages -%}",
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}",
    "{%- endfor -%}",
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}",
))

QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _corpus() -> list[str]:
    """Nano conversations plus the prompt-format lines, repeated so they get merged into pieces."""
    from salmon.nano.world import pretraining_texts

    return pretraining_texts(300, 0) + ["\n".join(_FORMAT_LINES) + "\n"] * 20


def _check_choice_letters(tok: PreTrainedTokenizerBase) -> None:
    """The judge prompt ends in "Output (" and scores the next token: "a" and "b" must each be one
    token that leaves the ids of the prefix unchanged."""
    prefix = "Which is better? #### Output ("
    base = tok(prefix, add_special_tokens=False)["input_ids"]
    for letter in "ab":
        ids = tok(prefix + letter, add_special_tokens=False)["input_ids"]
        if ids[:-1] != base or len(ids) != len(base) + 1:
            raise AssertionError(f"'({letter}' does not tokenize as the prefix plus one token: {base} vs {ids}")


def build_sentencepiece_llama(out: Path) -> Path:
    """Train a Llama-2-like SentencePiece BPE tokenizer and save it to ``out`` (returned).

    The folder holds ``tokenizer.json`` (what ``AutoTokenizer`` loads, as ``LlamaTokenizer``),
    ``tokenizer_config.json``, ``chat_template.jinja`` and the SentencePiece ``tokenizer.model``
    itself (a reference encoder for tests). Ids: ``<unk>`` 0, ``<s>`` 1 (BOS, prepended on
    encoding), ``</s>`` 2 (EOS, never appended); no pad token; 800 pieces. The HF encoding equals
    ``sentencepiece``'s except for text that starts with a space, where sentencepiece adds one
    more ``▁`` (transformers does not prepend the dummy prefix to text that already has one).
    """
    import io

    import sentencepiece as spm
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    lines = [line for text in _corpus() for line in text.split("\n") if line]
    model = io.BytesIO()
    # Llama-2's trainer settings, at a toy vocabulary size.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=800,
        byte_fallback=True, add_dummy_prefix=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", num_threads=1, minloglevel=2)
    proto = model.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    # transformers would read the .model through protobuf (which fails in this venv: the protobuf
    # runtime is older than sentencepiece's generated code), so take the pieces from the processor
    # and derive the BPE merges from the piece order exactly as transformers' converter does.
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    tok = LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab), legacy=False,
                         add_bos_token=True, add_eos_token=False)
    tok.chat_template = LLAMA2_CHAT_TEMPLATE
    _check_choice_letters(tok)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    (out / "tokenizer.model").write_bytes(proto)
    return out


def build_qwen_style(out: Path) -> Path:
    """Train a Qwen2.5-like byte-level BPE tokenizer and save it to ``out`` (returned).

    ``AutoTokenizer`` reloads it as ``Qwen2Tokenizer``. 797 learned tokens (the 256 bytes first),
    then ``<|endoftext|>`` 797 (pad), ``<|im_start|>`` 798 and ``<|im_end|>`` 799 (EOS); no BOS, and
    encoding adds no special token.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800 - len(QWEN_SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(_corpus(), trainer=trainer)
    # Like Qwen's, the special tokens come after the learned vocabulary.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    tok = Qwen2Tokenizer(tokenizer_object=backend, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", extra_special_tokens=["<|im_start|>", "<|im_end|>"],
                         add_bos_token=False, add_eos_token=False)
    tok.chat_template = CHATML_TEMPLATE
    _check_choice_letters(tok)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    return out


def tiny_llama_for(tokenizer_dir: Path, out: Path) -> Path:
    """Save to ``out`` (returned) a complete model folder: a seeded random ``LlamaForCausalLM``
    (2 layers, hidden 128, 2 query heads and 1 KV head of dim 64, tied embeddings) sized to the
    tokenizer in ``tokenizer_dir``, with its generation config and a copy of the tokenizer files.
    The special ids follow the tokenizer; a tokenizer without pad pads with EOS."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": pad}
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                         max_position_embeddings=2048, tie_word_embeddings=True, **ids)
    with torch.random.fork_rng(devices=[]):  # seeded, without moving the caller's global RNG
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(**ids)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for f in sorted(tokenizer_dir.iterdir()):
        if f.is_file() and f.name not in ("config.json", "generation_config.json"):
            shutil.copy2(f, out / f.name)
    return out


FAMILIES: dict[str, Callable[[Path], Path]] = {
    "sentencepiece_llama": build_sentencepiece_llama,
    "qwen_style": build_qwen_style,
}


def build_family(name: str, out: Path) -> Path:
    """Build the tokenizer of family ``name`` (a key of ``FAMILIES``) into ``out``; returns ``out``."""
    try:
        builder = FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown tokenizer family {name!r}; known: {sorted(FAMILIES)}") from None
    return builder(out)
