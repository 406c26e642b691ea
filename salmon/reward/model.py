"""Reward model: a causal-LM body (+ LoRA or fully trained) and a scalar head at the last token.

Inputs are left-padded, so the last position is the last real token of every sequence: the
end of "... The quality of the output is". The head reads the final-layer hidden state there
(after the last norm) and returns one reward per sequence, shape ``(batch,)``.

A saved RM is a folder: ``rm.json`` (how it was built), ``tokenizer*``, ``reward_head.safetensors``
and either ``adapter/`` (LoRA on the base model named in rm.json) or ``backbone/`` (full weights).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salmon.core import templates
from salmon.core.errors import SalmonInputError
from salmon.core.io import atomic_dir, check_dir_digests, write_json
from salmon.modeling import check_local, check_model_dir, encode, encode_segments, load_backbone, load_tokenizer

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

RM_FORMAT = "salmon-reward-model/1"


@dataclass(frozen=True)
class EncodeLimits:
    """Token budgets of an RM input (method §3.1)."""

    model_max_length: int = 1280
    query_len: int = 128
    response_len: int = 768


class RMEncoder:
    """Turns (response, instruction, principle texts) into token ids for the RM.

    The whole prompt is tokenized once, after the tokenizer's own prefix (its BOS, if it adds
    one), and split into its five segments (:func:`salmon.modeling.encode_segments`), so an
    untruncated input is exactly the whole prompt's encoding. The instruction keeps its last
    ``query_len`` tokens, the response its first ``response_len``. If the whole still exceeds
    ``model_max_length``, the response is cut further: the closing stem where the reward is read
    is never truncated. The same encoder serves training, evaluation, PPO scoring, ``rm score``
    and the logged model. ``limit_name`` is how errors name ``model_max_length`` (``ppo`` and
    ``eval_policy`` score within their own ``rm_max_length``).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, limits: EncodeLimits,
                 limit_name: str = "the reward model's model_max_length") -> None:
        self.tokenizer = tokenizer
        self.limits = limits
        self.limit_name = limit_name

    def encode(self, prompt: templates.RMPrompt) -> list[int]:
        lim = self.limits
        head, response, between, instruction, closing = encode_segments(
            self.tokenizer, [prompt.header, prompt.response, prompt.between, prompt.instruction, prompt.closing])
        response = response[: lim.response_len]
        instruction = instruction[-lim.query_len:] if lim.query_len else []
        fixed = len(head) + len(between) + len(instruction) + len(closing)
        room = lim.model_max_length - fixed
        if room < 1:
            raise SalmonInputError(
                "reward-model input", f"the principle lines and template take {fixed} tokens, "
                f"more than {self.limit_name}={lim.model_max_length}",
                "shorten the principle lines or show fewer at once, or raise model_max_length")
        return head + response[:room] + between + instruction + closing

    def instruction_tokens(self, instructions: Sequence[str]) -> int:
        """The most tokens any of ``instructions`` takes in an RM input (at most ``query_len``)."""
        if not self.limits.query_len:
            return 0
        return max((min(len(encode(self.tokenizer, i.strip())), self.limits.query_len) for i in instructions),
                   default=0)

    def check_fit(self, principles: Sequence[str], interventions: Sequence[str], source: str,
                  instruction_tokens: int | None = None) -> None:
        """Principle lines must leave room in ``model_max_length`` for the instruction
        (``instruction_tokens``, default ``query_len``) and one response token: checked before any
        scoring, so that no input fails half-way.

        Raises:
            SalmonInputError: naming ``source`` (the principle, its set or the input line).
        """
        lim = self.limits
        instruction = lim.query_len if instruction_tokens is None else instruction_tokens
        prompt = templates.rm_prompt("", "", principles, interventions)
        head, _, between, _, closing = encode_segments(
            self.tokenizer, [prompt.header, "", prompt.between, "", prompt.closing])
        fixed = len(head) + len(between) + len(closing)
        if fixed + instruction + 1 > lim.model_max_length:
            raise SalmonInputError(
                source, f"the principle lines and the template take {fixed} tokens; with an instruction of "
                f"{instruction} tokens that is more than {self.limit_name}={lim.model_max_length}",
                "shorten the principle or show fewer principles at once")

    def encode_rm(self, response: str, instruction: str, principles: Sequence[str],
                  interventions: Sequence[str] = ()) -> list[int]:
        return self.encode(templates.rm_prompt(response, instruction, principles, interventions))


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, L]`` ids and attention mask with padding on the LEFT."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def build_reward_model(backbone: Any, seed: int = 0) -> Any:
    """Wrap a transformer body with a fresh scalar head on the body's device."""
    from salmon.reward.module import RewardModel, new_head

    device = next(backbone.parameters()).device
    return RewardModel(backbone, new_head(backbone.config.hidden_size, seed).to(device))


@dataclass
class RMMeta:
    """What ``rm.json`` records about a saved reward model."""

    format: str
    base_model: str
    finetune: str
    model_max_length: int
    query_len: int
    response_len: int
    template: str = "rm_v0"
    trained_principles: list[str] = field(default_factory=list)
    """Principle ids shown in the training instances (empty in folders written before it was
    recorded): eval_rm's zero-shot check refuses a principle the RM was trained on."""

    def limits(self) -> EncodeLimits:
        return EncodeLimits(self.model_max_length, self.query_len, self.response_len)


def save_reward_model(model: Any, tokenizer: PreTrainedTokenizerBase, meta: RMMeta, out_dir: str | Path) -> None:
    """Write the RM folder atomically (temp folder, then rename)."""
    from safetensors.torch import save_file

    with atomic_dir(out_dir) as tmp:
        sub = "adapter" if meta.finetune == "lora" else "backbone"
        model.backbone.save_pretrained(tmp / sub)
        tokenizer.save_pretrained(tmp)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
                  str(tmp / "reward_head.safetensors"))
        write_json(tmp / "rm.json", asdict(meta))


def read_rm_meta(path: str) -> RMMeta:
    """The checked ``rm.json`` of an RM folder (no weights are read): what a stage checks before
    its heavy work."""
    p = check_local(path, "reward model")
    fix = "give a folder written by train_rm (its model/ subfolder)"
    if not p.is_dir():
        raise SalmonInputError(f"reward model {path}", "folder not found", fix)
    meta_path = p / "rm.json"
    if not meta_path.is_file():
        raise SalmonInputError(f"reward model {path}", "no rm.json in the folder", fix)
    try:
        meta = RMMeta(**json.loads(meta_path.read_text(encoding="utf-8")))
    except (TypeError, ValueError) as e:  # bad JSON, not UTF-8, missing or unknown fields
        raise SalmonInputError(str(meta_path), f"unreadable ({e})".replace("\n", " "),
                               "rerun train_rm to write the folder again") from None
    if meta.format != RM_FORMAT:
        raise SalmonInputError(str(meta_path), f"unknown format {meta.format!r}", f"expected {RM_FORMAT}")
    return meta


def load_reward_model(path: str, *, device: torch.device, dtype: str = "float32",
                      base_model: str | None = None) -> tuple[Any, PreTrainedTokenizerBase, RMMeta]:
    """Load a saved RM folder for scoring (eval mode); ``dtype`` is the body's, the head stays float32.
    ``base_model``: the folder a LoRA RM's adapter sits on, where it is not ``rm.json``'s
    ``base_model`` (a logged model loaded on another machine)."""
    from safetensors.torch import load_file

    p = Path(path)
    meta = read_rm_meta(path)
    check_dir_digests(p)
    tokenizer = load_tokenizer(str(p))
    if meta.finetune == "lora":
        from peft import PeftModel

        base = base_model or meta.base_model
        check_model_dir(base)
        body = PeftModel.from_pretrained(load_backbone(base, device=device, dtype=dtype),
                                         str(p / "adapter"))
    else:
        body = load_backbone(str(p / "backbone"), device=device, dtype=dtype)
    model = build_reward_model(body)
    model.head.load_state_dict(load_file(str(p / "reward_head.safetensors")))
    model.to(device)
    model.eval()
    return model, tokenizer, meta


def score_sequences(model: Any, rows: Sequence[Sequence[int]], pad_id: int, batch_size: int = 16,
                    device: torch.device | None = None) -> list[float]:
    """Rewards of already-encoded sequences, batched by similar length.

    ``model(ids, mask)`` returns ``(batch,)`` rewards for left-padded inputs; ``device`` defaults
    to the device of its parameters.
    """
    import torch

    device = device or next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = [0.0] * len(rows)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids, mask = left_pad([rows[i] for i in idx], pad_id)
            rewards = model(ids.to(device), mask.to(device)).tolist()
            for i, r in zip(idx, rewards, strict=True):
                out[i] = r
    return out
