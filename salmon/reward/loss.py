"""Reward-model losses and metrics as small pure functions."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log sigmoid(r_chosen - r_rejected)``.

    Args:
        r_chosen: ``(batch,)`` rewards of the preferred responses.
        r_rejected: ``(batch,)`` rewards of the other responses.

    Returns:
        A scalar. Equal to the method's ``BCEWithLogits(r2 - r1, choice)``.
    """
    import torch.nn.functional as F

    if r_chosen.shape != r_rejected.shape or r_chosen.dim() != 1:
        raise ValueError(f"expected two (batch,) tensors, got {tuple(r_chosen.shape)} "
                         f"and {tuple(r_rejected.shape)}")
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """Share of pairs where the preferred response gets the strictly higher reward."""
    return float((r_chosen > r_rejected).float().mean())
