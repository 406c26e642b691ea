"""The math of SALMON's RL stage (method §4.3, §4.5) as small pure functions over tensors.

Shapes: ``B`` rollouts, ``T`` response positions (right-padded). ``mask`` is 1.0 on real
response tokens and 0.0 on padding; real tokens form a prefix of each row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ShapingParams:
    """Reward shaping knobs, built from a ``PPOConfig`` (:meth:`from_config`), whose defaults are
    the method's values (:meth:`method_defaults`)."""

    kl_coef: float
    no_stop_penalty: float
    length_bonus: float
    length_cap: float
    length_norm: int
    reward_scale: float

    @classmethod
    def from_config(cls, cfg: Any) -> ShapingParams:
        """The knobs of a ``PPOConfig``; the length term is normalised by its ``response_len``."""
        return cls(kl_coef=cfg.kl_coef, no_stop_penalty=cfg.no_stop_penalty, length_bonus=cfg.length_bonus,
                   length_cap=cfg.length_cap, length_norm=cfg.response_len, reward_scale=cfg.reward_scale)

    @classmethod
    def method_defaults(cls) -> ShapingParams:
        """The method's values: ``PPOConfig``'s defaults, the one place they are written."""
        from salmon.core.config import PPOConfig

        return cls.from_config(PPOConfig.model_construct())


def length_bonus(lengths: torch.Tensor, multipliers: torch.Tensor, params: ShapingParams) -> torch.Tensor:
    """``bonus * min(L / norm * m, cap)`` per rollout: ``(B,), (B,) -> (B,)``.

    Only the top is capped: a negative multiplier (reasoning prompts, -0.4) makes long answers
    cost up to ``bonus * m``.
    """
    import torch

    raw = lengths.float() / params.length_norm * multipliers.float()
    return params.length_bonus * torch.clamp(raw, max=params.length_cap)


def per_token_kl(logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The k1 estimator clamped at 0, ``max(logp - logp_ref, 0)``, zero on padding: ``(B, T)``."""
    return (logp - logp_ref).clamp(min=0.0) * mask


def shaped_rewards(
    scores: torch.Tensor,
    has_stop: torch.Tensor,
    lengths: torch.Tensor,
    multipliers: torch.Tensor,
    logp: torch.Tensor,
    logp_ref: torch.Tensor,
    mask: torch.Tensor,
    params: ShapingParams | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``(B, T)`` and the terminal reward ``(B,)``, both times ``reward_scale``.

    Each real token gets ``-kl_coef * kl``; the last real token also gets the terminal reward
    ``score + (no_stop_penalty if no stop string) + length bonus``. (The original adds the
    terminal reward at the last slot of the padded window; with gamma = lambda = 1 the
    advantages of real tokens are the same, and value targets on padding are never used here.)

    Args:
        scores: ``(B,)`` reward-model scores.
        has_stop: ``(B,)`` bool, the response ended with the stop string.
        lengths: ``(B,)`` response lengths in tokens (the stop string included).
        multipliers: ``(B,)`` length multipliers by prompt type (1.0, -0.4, 0.0).
        logp, logp_ref: ``(B, T)`` per-token log-probs of policy and reference, at the
            sampling temperature.
        mask: ``(B, T)``.
        params: the shaping knobs (default: the method's values).
    """
    import torch

    params = params or ShapingParams.method_defaults()
    kl = per_token_kl(logp, logp_ref, mask)
    terminal = scores.float() + length_bonus(lengths, multipliers, params)
    terminal = terminal + torch.where(has_stop, 0.0, params.no_stop_penalty)
    rewards = -params.kl_coef * kl
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    rewards = rewards.clone()
    rewards[torch.arange(rewards.shape[0]), last] += terminal
    return rewards * mask * params.reward_scale, terminal * params.reward_scale


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over real tokens: ``(B, T)`` advantages and returns.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V`` = 0 after the last real token;
    ``A_t = delta_t + gamma * lam * A_{t+1}``; returns = A + V. Zero on padding.
    """
    import torch

    values = values * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        adv[:, t] = next_adv
    return adv, (adv + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
           all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
           slots: int | None = None) -> torch.Tensor:
    """Normalise ``x`` ``(B, T)`` to unit variance (and zero mean) over the WHOLE batch.

    ``slots=None`` (``whiten_over: real_tokens``): the statistics are those of the real tokens,
    with the unbiased variance. ``slots=S`` (``whiten_over: all_slots``, the original code's):
    every rollout counts ``S`` slots (its response window, ``S >= T``), the slots after its last
    real token counting as 0, with the population variance (``unbiased=False``). Either way the
    output is 0 on padding. With several ranks, ``all_sum`` sums a scalar tensor over them, so the
    statistics are those of all ranks' rollouts together.

    >>> import torch
    >>> x, m = torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    >>> whiten(x, m)[0, :2].tolist()  # 1, 2: mean 1.5, unbiased variance 0.5
    [-0.7071067690849304, 0.7071067690849304]
    >>> round(whiten(x, m, slots=4)[0, 0].item(), 4)  # 1, 2, 0, 0: mean 0.75, variance 0.6875
    0.3015
    """
    import torch

    total = all_sum or (lambda t: t)
    real = total(mask.sum())
    n = real if slots is None else total(torch.tensor(float(mask.shape[0] * slots), device=x.device))
    mean = total((x * mask).sum()) / n
    squares = total((((x - mean) * mask) ** 2).sum())
    if slots is None:
        var = squares / (n - 1).clamp(min=1)
    else:  # the empty slots hold 0, each (0 - mean)^2 away from the mean
        var = (squares + (n - real) * mean ** 2) / n
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate ``mean(max(-A * rho, -A * clip(rho, 1 - c, 1 + c)))`` over real tokens.

    Returns the loss and the share of tokens where clipping was active.
    """
    import torch

    ratio = torch.exp(logp - logp_old)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def value_loss(values: torch.Tensor, values_old: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2, coef: float = 0.1) -> torch.Tensor:
    """``coef * 0.5 * mean(max((V - R)^2, (clip(V, V_old +- c) - R)^2))`` over real tokens."""
    import torch

    v_clipped = values_old + (values - values_old).clamp(-clip, clip)
    return coef * 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (v_clipped - returns) ** 2), mask)


def rloo_advantages(scores: torch.Tensor) -> torch.Tensor:
    """RLOO: each of ``K`` samples of a prompt minus the mean of the other ``K - 1``: ``(P, K)``."""
    k = scores.shape[1]
    if k < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    return scores - (scores.sum(dim=1, keepdim=True) - scores) / (k - 1)


def grpo_advantages(scores: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: ``(s - mean) / (std + eps)`` within each prompt's group of samples: ``(P, K)``."""
    mean = scores.mean(dim=1, keepdim=True)
    std = scores.std(dim=1, keepdim=True)
    return (scores - mean) / (std + eps)
