"""Loading models and tokenizers, and picking devices. torch is imported inside functions.

Models are referenced by a local HF folder (a PVC path on a cluster). Every failure to load
becomes one :class:`SalmonInputError` naming the path and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salmon.core.errors import SalmonInputError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def quiet_progress_bars() -> None:
    """Turn off transformers' per-load and per-save progress bars (stages log their own progress)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda if available, else cpu; ``cuda`` without a GPU is an input error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SalmonInputError("device=cuda", "no CUDA device is visible", "use device=cpu or auto")
    return torch.device(device)


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def check_model_dir(path: str) -> Path:
    """The folder must exist and hold an HF ``config.json``."""
    p = Path(path)
    if not p.is_dir():
        raise SalmonInputError(f"model {path}", "folder not found",
                               "give the path of a folder written by save_pretrained")
    if not (p / "config.json").is_file():
        raise SalmonInputError(f"model {path}", "no config.json in the folder",
                               "give the path of a folder written by save_pretrained")
    return p


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local folder; it must have a pad token or an EOS to pad with."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise SalmonInputError(f"tokenizer {path}", "folder not found",
                               "give the path of a folder written by save_pretrained")
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise SalmonInputError(f"tokenizer {path}", f"cannot be loaded ({e})".replace("\n", " "),
                               "the folder needs tokenizer.json or the files of a slow tokenizer") from None
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise SalmonInputError(f"tokenizer {path}", "has neither a pad nor an EOS token",
                                   "add a pad token to the tokenizer")
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, *, device: torch.device, dtype: str = "float32") -> PreTrainedModel:
    """Load an HF causal LM from a local folder onto ``device`` in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    quiet_progress_bars()
    check_model_dir(path)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=torch_dtype(dtype), config=config)
    except (OSError, ValueError, KeyError) as e:
        raise SalmonInputError(f"model {path}", f"is not a loadable causal LM ({e})".replace("\n", " "),
                               "give a folder with a decoder-only model, e.g. Llama") from None
    model.to(device)
    model.eval()
    return model


def load_backbone(path: str, *, device: torch.device, dtype: str = "float32") -> PreTrainedModel:
    """Load the transformer body of a causal LM (no LM head): what the reward model sits on."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    quiet_progress_bars()
    check_model_dir(path)
    level = hf_logging.get_verbosity()
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        # the causal LM's lm_head is expected to be left out: silence that load report
        hf_logging.set_verbosity_error()
        model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch_dtype(dtype),
                                          config=config)
    except (OSError, ValueError, KeyError) as e:
        raise SalmonInputError(f"model {path}", f"is not a loadable transformer ({e})".replace("\n", " "),
                               "give a folder with a decoder-only model, e.g. Llama") from None
    finally:
        hf_logging.set_verbosity(level)
    return model.to(device)


def bos_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """``[bos_token_id]`` when the tokenizer has one, else ``[]`` (BOS is prepended by hand)."""
    bos = tokenizer.bos_token_id
    return [int(bos)] if bos is not None else []


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a text segment, with no special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def with_adapter(model: PreTrainedModel, adapter: str | None) -> PreTrainedModel:
    """``model`` with a PEFT adapter folder merged in (``None``: unchanged)."""
    if not adapter:
        return model
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise SalmonInputError(adapter, "not a PEFT adapter folder (no adapter_config.json)",
                               "give the adapter/ folder written by sft")
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()
