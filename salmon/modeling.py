"""Loading models and tokenizers, and picking devices. torch is imported inside functions.

Models are referenced by a local HF folder (a PVC path on a cluster). Every failure to load
becomes one :class:`SalmonInputError` naming the path and what to do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salmon.core.errors import SalmonInputError
from salmon.core.io import TOKENIZER_FILES

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


def generation_end_ids(path: str) -> list[int]:
    """The eos ids of the folder's ``generation_config.json`` (a chat model may end a turn with
    more than its tokenizer's eos, e.g. Llama-3's ``<|eot_id|>``); [] when it names none."""
    f = Path(path) / "generation_config.json"
    if not f.is_file():
        return []
    try:
        value = read_json(f).get("eos_token_id")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return []
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0]


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


def check_quantization(path: str) -> None:
    """A folder whose config.json carries a ``quantization_config`` is refused before any work:
    transformers would load it through a quantizer that cannot save what is trained on it (a
    folder converted from GGUF keeps ``quant_method: gguf`` although its weights are dequantized)."""
    quant = model_config(path).get("quantization_config")
    if quant is None:
        return
    method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else "unknown"
    raise SalmonInputError(f"model {path}", f"config.json has a quantization_config (quant_method {method}); "
                           "salmon loads and saves unquantized weights",
                           "give an unquantized folder: `salmon base prepare` converts the packaged models, and a "
                           "folder converted from GGUF needs its quantization_config removed; to train in 4 bits "
                           "set quantize: 4bit on the unquantized folder")


def preflight(path: str, *, prompt_format: str | None = None, tokenizer: bool = True) -> list[str]:
    """Checks of a base-model folder before any work: a local folder with config.json (and its
    digests), a causal LM, no ``quantization_config``, tokenizer files. Returns notes worth a log
    line: the tokenizer pads with its eos; a chat template that ``prompt_format`` ignores.

    Raises:
        SalmonInputError: what is wrong, naming the folder and the fix.
    """
    check_model_dir(path)
    check_architecture(path, causal=True)
    check_quantization(path)
    if not tokenizer:
        return []
    folder = Path(path)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise SalmonInputError(f"model {path}", "has no tokenizer (none of " + ", ".join(TOKENIZER_FILES) + ")",
                               "save the tokenizer into the folder with tokenizer.save_pretrained")
    tok = load_tokenizer(path)
    notes = []
    if tok.eos_token_id is not None and tok.pad_token_id == tok.eos_token_id:
        notes.append(f"the tokenizer pads with its eos {tok.eos_token!r}: a turn ends at the first eos, padding "
                     "follows it")
    if prompt_format == "dromedary" and getattr(tok, "chat_template", None):
        notes.append("the tokenizer has a chat template, which prompt_format dromedary ignores; for a chat model "
                     "set prompt_format=chat_template")
    return notes


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
    check_quantization(path)
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
    check_quantization(path)
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


def check_4bit(device: torch.device, what: str = "quantize") -> None:
    """QLoRA (``quantize: 4bit``) needs bitsandbytes and a CUDA device: anything else is refused
    before a model is loaded.

    Raises:
        SalmonInputError: naming ``what``, with the fix.
    """
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        bitsandbytes = None
    if bitsandbytes is None or device.type != "cuda":
        raise SalmonInputError(what, f"4bit (QLoRA) needs bitsandbytes and a CUDA GPU; this run is on {device.type}"
                               + ("" if bitsandbytes is not None else " without bitsandbytes"),
                               "install the gpu extra (bitsandbytes) on a GPU machine, or set quantize: none")


def load_4bit(path: str, *, device: torch.device, body: bool = False) -> PreTrainedModel:
    """The model in ``path`` quantized to NF4 with double quantization and bf16 compute (QLoRA, as
    the method trains every LoRA role), prepared for training adapters on it (norms in float32,
    input gradients on). ``body=True``: the transformer body without the LM head (a reward model's)."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModel, AutoModelForCausalLM, BitsAndBytesConfig

    check_4bit(device)
    check_model_dir(path)
    check_architecture(path, causal=True)
    check_quantization(path)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    auto = AutoModel if body else AutoModelForCausalLM
    model = auto.from_pretrained(path, local_files_only=True, quantization_config=quant,
                                 device_map={"": device.index or 0})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def added_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids the tokenizer itself puts before a text when asked for its special tokens: its BOS
    for Llama-2, Llama-3 or Mistral tokenizers, nothing for Qwen or SmolLM2 ones (whose
    ``bos_token`` is not added). What a tokenizer appends (an EOS, for a few) is never used:
    a prompt does not end a document.
    """
    cached = getattr(tokenizer, "_salmon_added_prefix", None)
    if cached is None:
        plain = list(tokenizer("a b", add_special_tokens=False)["input_ids"])
        full = list(tokenizer("a b", add_special_tokens=True)["input_ids"])
        at = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
        cached = full[:at]
        tokenizer._salmon_added_prefix = cached
    return list(cached)


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens added (special-token text in it, such as a
    rendered chat template, becomes the special ids). Only for whole texts and for lengths: a
    piece of a longer text is tokenized by :func:`encode_segments`."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_document(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """A text as the tokenizer encodes a document: :func:`added_prefix`, then its ids."""
    return added_prefix(tokenizer) + encode(tokenizer, text)


def encode_segments(tokenizer: PreTrainedTokenizerBase, segments: Sequence[str], *,
                    prefix: bool = True) -> list[list[int]]:
    """The ids of ``"".join(segments)``, split into one list per segment.

    The whole text is tokenized once and each token goes to the segment its first character
    belongs to, so the lists always concatenate to the whole-text encoding (with
    :func:`added_prefix` at the start of the first when ``prefix``). Encoding each segment on its
    own would not: a SentencePiece tokenizer starts every text with a word-boundary piece, and a
    byte-level BPE merges whitespace across the join. A token that spans a boundary (rare:
    whitespace runs) goes to the earlier segment.

    Raises:
        SalmonInputError: the tokenizer cannot report character offsets (a slow tokenizer).
    """
    text = "".join(segments)
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise SalmonInputError(f"tokenizer {name}", "cannot report character offsets (a slow tokenizer)",
                               "save the model with a fast tokenizer (tokenizer.json)") from None
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    bounds, end = [], 0
    for seg in segments:
        end += len(seg)
        bounds.append(end)
    out: list[list[int]] = [[] for _ in segments]
    k = 0
    for tid, (start, _) in zip(ids, offsets, strict=True):
        while k < len(segments) - 1 and start >= bounds[k]:
            k += 1
        out[k].append(int(tid))
    if prefix:
        out[0] = added_prefix(tokenizer) + out[0]
    return out


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def with_adapter(model: PreTrainedModel, adapter: str | None) -> PreTrainedModel:
    """``model`` with a PEFT adapter folder merged in (``None``: unchanged)."""
    if not adapter:
        return model
    from peft import PeftModel

    check_adapter_dir(adapter)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()
