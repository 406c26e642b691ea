"""The four PPO roles as LoRA adapters on ONE shared base model (method §4.1).

``policy`` (trainable; the SFT adapter continued, or new), ``reference`` (frozen copy of the SFT
adapter; without one, the bare base), ``value`` (trainable copy of the RM adapter, with a new
zero-initialised head) and ``reward`` (frozen RM adapter and the RM's head) all live on one
``PeftModel`` around the policy's causal LM; each pass activates its adapter. RM adapters are
saved on the transformer body, so their keys gain the causal LM's body prefix on loading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salmon.core.errors import SalmonInputError

if TYPE_CHECKING:
    import torch

    from salmon.ppo.rollout import RolloutBatch

TRAINABLE_ADAPTERS = ("policy", "value")


def _adapter_state(folder: Path, expected: set[str], body_prefix: str) -> dict[str, Any]:
    """The adapter's saved tensors, re-keyed for a causal LM when they were saved on its body."""
    from safetensors.torch import load_file

    state = load_file(str(folder / "adapter_model.safetensors"))
    if set(state) <= expected:
        return state
    moved = {k.replace("base_model.model.", f"base_model.model.{body_prefix}.", 1): v for k, v in state.items()}
    if set(moved) <= expected:
        return moved
    raise SalmonInputError(str(folder), "adapter does not fit the policy model (different base or targets)",
                           "use role_layout: separate, or train the RM as a LoRA adapter on policy_model")


def add_adapter_from(model: Any, folder: Path, name: str) -> None:
    """Add the adapter saved in ``folder`` to ``model`` under ``name``."""
    from peft import PeftConfig, get_peft_model_state_dict, set_peft_model_state_dict

    config = PeftConfig.from_pretrained(str(folder))
    config.inference_mode = False
    model.add_adapter(name, config)
    expected = set(get_peft_model_state_dict(model, adapter_name=name))
    prefix = model.get_base_model().base_model_prefix
    result = set_peft_model_state_dict(model, _adapter_state(folder, expected, prefix), adapter_name=name)
    missing = [k for k in result.missing_keys if f".{name}." in k and "lora_" in k]
    if missing:
        raise SalmonInputError(str(folder), f"{len(missing)} adapter weights did not load", "check the adapter")


class SharedRoles:
    """Policy, reference, value and reward as adapters of one base model."""

    layout = "shared"

    def __init__(self, policy_model: str, policy_adapter: str | None, reward_model: str, lora_r: int,
                 lora_alpha: int, device: torch.device, quantize: str = "none", merge_for_generation: bool = False,
                 gradient_checkpointing: bool = False) -> None:
        from peft import LoraConfig, PeftModel, get_peft_model

        from salmon.modeling import check_adapter_dir, load_4bit, load_causal_lm, load_tokenizer
        from salmon.ppo.generation import MergedCopy, enable_activation_checkpointing
        from salmon.ppo.rollout import zero_value_head
        from salmon.reward.model import RMMeta
        from salmon.reward.module import new_head

        rm_dir = Path(reward_model)
        meta_path = rm_dir / "rm.json"
        if not meta_path.is_file():
            raise SalmonInputError(f"reward model {reward_model}", "no rm.json in the folder",
                                   "give a folder written by train_rm (its model/ subfolder)")
        meta = RMMeta(**json.loads(meta_path.read_text(encoding="utf-8")))
        if meta.finetune != "lora":
            raise SalmonInputError("role_layout", "shared needs a LoRA reward model, this one is fully fine-tuned",
                                   "set role_layout: separate")
        if Path(meta.base_model).resolve() != Path(policy_model).resolve():
            raise SalmonInputError("role_layout", f"shared needs the RM's base ({meta.base_model}) to be "
                                   f"policy_model ({policy_model})", "set role_layout: separate")
        self.tokenizer = load_tokenizer(policy_model)
        self.rm_tokenizer = load_tokenizer(str(rm_dir))
        # 4bit: QLoRA, the one base in NF4 under all four adapters (the method's layout)
        base = (load_4bit(policy_model, device=device) if quantize == "4bit"
                else load_causal_lm(policy_model, device=device))
        # taken before the adapters wrap the base's layers in place
        self.generation_copy = MergedCopy(base) if merge_for_generation else None
        if policy_adapter:
            check_adapter_dir(policy_adapter)
            self.model = PeftModel.from_pretrained(base, policy_adapter, adapter_name="policy", is_trainable=True)
            add_adapter_from(self.model, Path(policy_adapter), "reference")
            self.has_reference_adapter = True
        else:
            self.model = get_peft_model(base, LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0,
                                                         target_modules="all-linear"), adapter_name="policy")
            self.has_reference_adapter = False
        add_adapter_from(self.model, rm_dir / "adapter", "reward")
        add_adapter_from(self.model, rm_dir / "adapter", "value")
        from safetensors.torch import load_file

        hidden = int(base.config.hidden_size)
        self.reward_head = new_head(hidden, 0).to(device)
        self.reward_head.load_state_dict(load_file(str(rm_dir / "reward_head.safetensors")))
        self.reward_head.requires_grad_(False)
        self.value_head = zero_value_head(hidden).to(device)
        if quantize != "4bit":  # a quantized model is placed on its device as it loads
            self.model.to(device)
        if gradient_checkpointing:
            enable_activation_checkpointing(self.model)
        self.use("policy")

    # -- adapter switching ------------------------------------------------------------------
    def use(self, name: str) -> None:
        self.model.set_adapter(name)

    def trainable(self) -> dict[str, Any]:
        """Name -> parameter of the policy and value adapters and the value head."""
        params = {f"model.{n}": p for n, p in self.model.named_parameters()
                  if "lora_" in n and any(f".{a}." in n for a in TRAINABLE_ADAPTERS)}
        params.update({f"value_head.{n}": p for n, p in self.value_head.named_parameters()})
        return params

    # -- passes -----------------------------------------------------------------------------
    @property
    def sampler(self) -> Any:
        """The model to sample rollouts from: the policy adapter active, or the generation copy
        with the policy's current weights merged in."""
        self.use("policy")
        if self.generation_copy is not None:
            return self.generation_copy.refresh(self.model, "policy")
        return self.model

    @property
    def learning_models(self) -> tuple[Any, ...]:
        """The modules the learning passes run through (checkpointed when that is on)."""
        return (self.model,)

    def policy_logprobs(self, batch: RolloutBatch, temperature: float) -> torch.Tensor:
        from salmon.ppo.rollout import response_logprobs

        self.use("policy")
        return response_logprobs(self.model, batch, temperature)

    def reference_logprobs(self, batch: RolloutBatch, temperature: float) -> torch.Tensor:
        from salmon.ppo.rollout import response_logprobs

        if self.has_reference_adapter:
            self.use("reference")
            return response_logprobs(self.model, batch, temperature)
        with self.model.disable_adapter():
            return response_logprobs(self.model, batch, temperature)

    def values(self, batch: RolloutBatch) -> torch.Tensor:
        self.use("value")
        out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids, output_hidden_states=True, use_cache=False)
        q = batch.query_width
        hidden = out.hidden_states[-1][:, q - 1:-1, :].float().to(next(self.value_head.parameters()).dtype)
        return self.value_head(hidden).squeeze(-1).float() * batch.response_mask

    def _reward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(batch,)`` rewards of left-padded inputs: reward adapter, head on the last position."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            output_hidden_states=True).hidden_states[-1]
        rewards: torch.Tensor = self.reward_head(hidden[:, -1, :].float()).squeeze(-1)
        return rewards

    def score(self, rows: list[list[int]], pad_id: int, batch_size: int) -> list[float]:
        """RM rewards of encoded RM inputs (reward adapter and head)."""
        from salmon.reward.model import score_sequences

        self.use("reward")
        try:
            return score_sequences(self._reward, rows, pad_id, batch_size, device=self.reward_head.weight.device)
        finally:
            self.use("policy")

    def engine_parts(self) -> dict[str, Any]:
        """The adapter model and the value head; every trainable adapter weight requires grad first
        (peft freezes inactive adapters, and DeepSpeed trains only what requires grad at start-up)."""
        for p in self.trainable().values():
            p.requires_grad_(True)
        return {"model": self.model, "value_head": self.value_head}

    def route_through_engine(self, routed: dict[str, Any]) -> None:
        for name, part in routed.items():
            setattr(self, name, part)
        self.use("policy")

    def save_policy(self, folder: Path) -> None:
        """The policy adapter alone, loadable with ``PeftModel.from_pretrained`` on the base."""
        self.model.save_pretrained(str(folder), selected_adapters=["policy"])
        nested = folder / "policy"
        if nested.is_dir():  # peft writes non-default adapters into a subfolder
            for f in nested.iterdir():
                f.rename(folder / f.name)
            nested.rmdir()
