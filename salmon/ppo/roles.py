"""The four PPO roles (policy, reference, value, reward) behind one interface, in either layout.

:class:`Roles` is what the ``ppo`` recipe asks of them. Two layouts implement it:
:class:`salmon.ppo.shared.SharedRoles` (the method's: four LoRA adapters on one base model) and
:class:`SeparateRoles` (four modules: the policy a LoRA adapter, a frozen reference, a value model
copied from the RM body, the frozen RM). ``B`` is the number of rollouts in a batch, ``T`` its
response slots (:class:`salmon.ppo.rollout.RolloutBatch`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from salmon.core.config import PPOConfig
from salmon.core.errors import SalmonInputError

if TYPE_CHECKING:
    import torch

    from salmon.ppo.rollout import RolloutBatch


class Roles(Protocol):
    """What the PPO recipe asks of its roles."""

    layout: str
    tokenizer: Any
    """The policy's tokenizer."""
    rm_tokenizer: Any
    """The reward model's tokenizer (the RM inputs are encoded with it)."""

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        """Name -> parameter of everything that trains: the policy adapter, the value model and head."""
        ...

    @property
    def sampler(self) -> Any:
        """The model to generate rollouts with, holding the policy's current weights."""
        ...

    @property
    def learning_models(self) -> tuple[Any, ...]:
        """The modules the learning passes run through (their layers are checkpointed when
        ``gradient_checkpointing`` is on)."""
        ...

    def policy_logprobs(self, batch: RolloutBatch, temperature: float) -> torch.Tensor:
        """``(B, T)`` log-probs of the response tokens under the policy at ``temperature``; 0 on padding."""
        ...

    def reference_logprobs(self, batch: RolloutBatch, temperature: float) -> torch.Tensor:
        """``(B, T)`` the same under the frozen reference."""
        ...

    def values(self, batch: RolloutBatch) -> torch.Tensor:
        """``(B, T)`` the value model's values before each response token; 0 on padding."""
        ...

    def score(self, rows: list[list[int]], pad_id: int, batch_size: int) -> list[float]:
        """The RM's reward of each encoded RM input, ``batch_size`` inputs per forward."""
        ...

    def save_policy(self, folder: Path) -> None:
        """The policy adapter alone, loadable with ``PeftModel.from_pretrained`` on the base."""
        ...

    def engine_parts(self) -> dict[str, Any]:
        """Name -> trainable module, to put into one DeepSpeed engine."""
        ...

    def route_through_engine(self, routed: dict[str, Any]) -> None:
        """Use the engine's stand-ins (same names as :meth:`engine_parts`) from now on."""
        ...


@dataclass
class SeparateRoles:
    """The four roles as separate modules: policy (LoRA), frozen reference, value body + head, frozen RM."""

    policy: Any
    reference: Any
    reward: Any
    value_body: Any | None
    value_head: Any | None
    tokenizer: Any
    rm_tokenizer: Any
    generation_copy: Any = None
    layout: str = "separate"

    def trainable(self) -> dict[str, Any]:
        mods = {"policy": self.policy}
        if self.value_body is not None:
            mods.update(value_body=self.value_body, value_head=self.value_head)
        return {f"{name}.{n}": p for name, m in mods.items() for n, p in m.named_parameters() if p.requires_grad}

    @property
    def sampler(self) -> Any:
        if self.generation_copy is not None:
            return self.generation_copy.refresh(self.policy, "default")
        return self.policy

    @property
    def learning_models(self) -> tuple[Any, ...]:
        return tuple(m for m in (self.policy, self.value_body) if m is not None)

    def policy_logprobs(self, batch: Any, temperature: float) -> Any:
        from salmon.ppo.rollout import response_logprobs

        return response_logprobs(self.policy, batch, temperature)

    def reference_logprobs(self, batch: Any, temperature: float) -> Any:
        from salmon.ppo.rollout import response_logprobs

        return response_logprobs(self.reference, batch, temperature)

    def values(self, batch: Any) -> Any:
        from salmon.ppo.rollout import response_values

        return response_values(self.value_body, self.value_head, batch)

    def score(self, rows: list[list[int]], pad_id: int, batch_size: int) -> list[float]:
        from salmon.reward.model import score_sequences

        return score_sequences(self.reward, rows, pad_id, batch_size)

    def save_policy(self, folder: Path) -> None:
        self.policy.save_pretrained(folder)

    def engine_parts(self) -> dict[str, Any]:
        parts = {"policy": self.policy}
        if self.value_body is not None:
            parts.update(value_body=self.value_body, value_head=self.value_head)
        return parts

    def route_through_engine(self, routed: dict[str, Any]) -> None:
        for name, part in routed.items():
            setattr(self, name, part)


def check_role_layout(cfg: PPOConfig) -> None:
    """The shared layout builds the value model from the RM adapter: ppo with init_value_with_reward."""
    if cfg.role_layout == "shared" and (cfg.algorithm != "ppo" or not cfg.init_value_with_reward):
        raise SalmonInputError("role_layout", "shared builds the value model from the RM adapter (ppo with "
                               "init_value_with_reward)", "set role_layout: separate")


def build_roles(cfg: PPOConfig, device: Any) -> Roles:
    """The roles in ``cfg.role_layout``: one base with four adapters, or separate modules."""
    import torch

    torch.manual_seed(cfg.seed)
    check_role_layout(cfg)
    if cfg.role_layout == "shared":
        from salmon.ppo.shared import SharedRoles

        return SharedRoles(cfg.policy_model, cfg.policy_adapter, cfg.reward_model, cfg.lora_r, cfg.lora_alpha,
                           device, quantize=cfg.quantize, merge_for_generation=cfg.merge_for_generation,
                           gradient_checkpointing=cfg.gradient_checkpointing)
    return build_separate_roles(cfg, device)


def build_separate_roles(cfg: PPOConfig, device: Any) -> SeparateRoles:
    """Policy (trainable LoRA), frozen reference and RM, and (for ppo) the value model."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from salmon.modeling import check_adapter_dir, load_causal_lm, load_tokenizer
    from salmon.ppo.generation import MergedCopy, enable_activation_checkpointing
    from salmon.ppo.rollout import zero_value_head
    from salmon.reward.model import load_reward_model

    tok = load_tokenizer(cfg.policy_model)
    base = load_causal_lm(cfg.policy_model, device=device)
    generation_copy = MergedCopy(base) if cfg.merge_for_generation else None  # before the adapter wraps base
    ref = load_causal_lm(cfg.policy_model, device=device)
    if cfg.policy_adapter:
        check_adapter_dir(cfg.policy_adapter)
        policy = PeftModel.from_pretrained(base, cfg.policy_adapter, is_trainable=True)
        ref = PeftModel.from_pretrained(ref, cfg.policy_adapter).merge_and_unload()
    else:
        policy = get_peft_model(base, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                 target_modules="all-linear"))
    ref.requires_grad_(False)
    ref.eval()
    rm, rm_tok, _ = load_reward_model(cfg.reward_model, device=device)
    rm.requires_grad_(False)

    value_body = value_head = None
    if cfg.algorithm == "ppo":
        if cfg.init_value_with_reward:
            value_body = copy.deepcopy(rm.backbone)
            lora = isinstance(value_body, PeftModel)
            for name, p in value_body.named_parameters():
                p.requires_grad_(not lora or "lora_" in name)
            hidden = rm.head.in_features
        else:
            value_body = copy.deepcopy(getattr(ref, ref.base_model_prefix))
            value_body.requires_grad_(True)
            hidden = value_body.config.hidden_size
        value_body.train()
        value_head = zero_value_head(hidden).to(device)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(*(m for m in (policy, value_body) if m is not None))
    return SeparateRoles(policy, ref, rm, value_body, value_head, tok, rm_tok, generation_copy)


def wrap_roles(roles: Roles, ctx: Any, opt: Any, cfg: PPOConfig) -> None:
    """Put the trainable roles into one DeepSpeed engine; the roles then call them through it."""
    from dataclasses import replace

    from salmon.core.deepspeed_config import batch_layout, render_deepspeed_config

    layout = batch_layout(cfg.step_batch_size, cfg.micro_batch_size, ctx.world_size, what="step_batch_size")
    if cfg.algorithm == "ppo":  # the value loss is a second backward of each micro-batch: twice the micro-steps
        layout = replace(layout, accumulation=2 * layout.accumulation)
    config = render_deepspeed_config(
        mode=cfg.deepspeed, layout=layout, max_grad_norm=cfg.max_grad_norm, device_type=ctx.device.type,
        precision=cfg.precision, offload_optimizer=cfg.offload_optimizer, offload_param=cfg.offload_param,
        overrides=cfg.deepspeed_overrides)
    roles.route_through_engine(ctx.initialize_parts(roles.engine_parts(), opt, config))
