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


def check_local(path: str, what: str = "model") -> Path:
    """A model reference must be a local folder: a URI (``models:/``, ``s3://``, ``hf://``, ...) is refused
    with what to do instead."""
    if "://" in path or path.startswith(("models:/", "runs:/")):
        raise SalmonInputError(f"{what} {path}", "not a local folder (stages load models from local folders)",
                               "download the model to a folder first and give its path; in the pipeline, the "
                               "base_model task copies an s3:// prefix")
    return Path(path)


def model_config(path: str) -> dict[str, Any]:
    """The folder's ``config.json`` as a dict ({} when there is none)."""
    f = Path(path) / "config.json"
    if not f.is_file():
        return {}
    try:
        data = read_json(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise SalmonInputError(str(f), f"not valid JSON ({e})", "give a folder written by save_pretrained") from None
    if not isinstance(data, dict):
        raise SalmonInputError(str(f), "not a JSON object", "give a folder written by save_pretrained")
    return data


def check_architecture(path: str, *, causal: bool) -> None:
    """``config.json``'s ``model_type`` must be one transformers knows and, with ``causal``, a
    decoder-only language model (what the policy, the judge and the reward model's body are)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = model_config(path)
    if not config:
        return
    model_type = config.get("model_type")
    fix = "give a folder with a decoder-only model, e.g. Llama"
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING_NAMES:
        raise SalmonInputError(f"model {path}", f"config.json has model_type '{model_type}', which this "
                               "transformers version does not know", fix)
    if causal and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise SalmonInputError(f"model {path}", f"model_type '{model_type}' is not a causal (decoder-only) "
                               "language model", fix)


def model_window(path: str) -> int | None:
    """The model's context in tokens (``max_position_embeddings`` of its config.json), if it says."""
    value = model_config(path).get("max_position_embeddings")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def check_model_dir(path: str) -> Path:
    """The folder must exist, hold an HF ``config.json`` and match its ``SHA256SUMS`` if any."""
    from salmon.core.io import check_dir_digests

    p = check_local(path)
    if not p.is_dir():
        raise SalmonInputError(f"model {path}", "folder not found",
                               "give the path of a folder written by save_pretrained")
    if not (p / "config.json").is_file():
        raise SalmonInputError(f"model {path}", "no config.json in the folder",
                               "give the path of a folder written by save_pretrained")
    check_dir_digests(p)
    return p


def check_adapter_dir(path: str) -> Path:
    """A PEFT adapter folder: ``adapter_config.json`` present, ``SHA256SUMS`` (if any) matching."""
    from salmon.core.io import check_dir_digests

    p = Path(path)
    if not (p / "adapter_config.json").is_file():
        raise SalmonInputError(path, "not a PEFT adapter folder (no adapter_config.json)",
                               "give the adapter/ folder written by sft (or policy/ written by ppo)")
    check_dir_digests(p)
    return p


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local folder; it must have a pad token or an EOS to pad with."""
    from transformers import AutoTokenizer

    if not check_local(path, "tokenizer").is_dir():
        raise SalmonInputError(f"tokenizer {path}", "folder not found",
                               "give the path of a folder written by save_pretrained")
    check_architecture(path, causal=False)  # an unknown model_type makes transformers guess and warn
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
    check_architecture(path, causal=True)
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
    check_architecture(path, causal=True)
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

    check_adapter_dir(adapter)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()
