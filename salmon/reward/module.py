"""The reward-model ``nn.Module``. Imported lazily (it imports torch at module level)."""

from __future__ import annotations

from typing import Any

import torch


class RewardModel(torch.nn.Module):
    """A transformer body and a scalar head read at the last position of left-padded inputs."""

    def __init__(self, backbone: Any, head: torch.nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards for left-padded ``input_ids, attention_mask: (batch, seq)`` -> ``(batch,)``."""
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("reward-model inputs must be left-padded: the last position of "
                             "every row must be a real token")
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=positions).last_hidden_state
        # the head is float32, or bf16 when DeepSpeed casts the whole model for bf16 training
        last = hidden[:, -1, :].float().to(self.head.weight.dtype)
        rewards: torch.Tensor = self.head(last).squeeze(-1).float()
        if rewards.shape != (input_ids.shape[0],):
            raise RuntimeError(f"reward shape {tuple(rewards.shape)} != (batch,)")
        return rewards


def new_head(hidden_size: int, seed: int) -> torch.nn.Linear:
    """``Linear(hidden, 1)`` in float32: uniform(+-1/sqrt(hidden)) weight, zero bias, seeded."""
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(hidden_size, 1)
    with torch.no_grad():
        bound = 1.0 / hidden_size**0.5
        head.weight.uniform_(-bound, bound, generator=gen)
        head.bias.zero_()
    return head
