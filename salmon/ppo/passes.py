"""The passes over a step's rollouts, batch by batch: the log-probs and values before the update
(no gradients), and the clipped updates of one minibatch (gradients accumulated over
micro-batches). Memory grows with ``forward_batch_size`` and ``micro_batch_size``, not with the
rollout batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from salmon.core.config import PPOConfig


def chunks(indices: list[int], size: int) -> list[list[int]]:
    """``indices`` in consecutive pieces of at most ``size``.

    >>> chunks([4, 5, 6, 7, 8], 2)
    [[4, 5], [6, 7], [8]]
    """
    return [indices[s:s + size] for s in range(0, len(indices), size)]


@dataclass
class RolloutStats:
    """What the rollouts' tokens are worth before the update, each ``(B, T)`` (0 on padding):
    log-probs under the sampling policy and the reference, and the value model's values."""

    logp: Any
    logp_ref: Any
    values: Any


def rollout_stats(roles: Any, q_ids: list[list[int]], r_ids: list[list[int]], pad_id: int, cfg: PPOConfig,
                  critic: bool, device: Any) -> RolloutStats:
    """Old and reference log-probs and (``critic``) values of every rollout, computed without
    gradients ``forward_batch_size`` rollouts at a time (rollouts of similar length together), so
    that memory grows with that number and not with the rollout batch. Equal, within float
    tolerance, to one pass over the whole batch: positions count real tokens only."""
    import torch

    from salmon.ppo.rollout import make_batch

    width = max(1, max(len(r) for r in r_ids))
    out = RolloutStats(*(torch.zeros(len(r_ids), width, device=device) for _ in range(3)))
    by_length = sorted(range(len(r_ids)), key=lambda i: (len(q_ids[i]) + len(r_ids[i]), i))
    with torch.no_grad():
        for idx in chunks(by_length, cfg.forward_batch_size):
            sub = make_batch([q_ids[i] for i in idx], [r_ids[i] for i in idx], pad_id).to(device)
            w = sub.response_mask.shape[1]
            out.logp[idx, :w] = roles.policy_logprobs(sub, cfg.temperature)
            out.logp_ref[idx, :w] = roles.reference_logprobs(sub, cfg.temperature)
            if critic:
                out.values[idx, :w] = roles.values(sub)
    return out


def update_minibatch(roles: Any, mb: list[int], q_ids: list[list[int]], r_ids: list[list[int]], pad_id: int,
                     old: RolloutStats, advantages: Any, returns: Any, cfg: PPOConfig, critic: bool,
                     micro_batch_size: int, backward: Any, device: Any) -> tuple[float, float, float]:
    """Backpropagate the clipped policy loss (and the value loss) of one minibatch, ``micro_batch_size``
    rollouts per forward/backward; the caller clips and steps.

    Each micro-batch's masked mean is weighted by its share of the minibatch's real tokens, so
    the accumulated gradients are those of the minibatch's loss in one piece (within float
    tolerance). Policy and value losses are backpropagated one after the other (each pass
    activates its own adapter when the roles share one base). Returns the minibatch's policy
    loss, clip fraction and value loss.
    """
    from salmon.ppo import math as ppo_math
    from salmon.ppo.generation import checkpointed_learning
    from salmon.ppo.rollout import make_batch

    tokens = max(1, sum(len(r_ids[i]) for i in mb))
    pl_sum = cf_sum = vl_sum = 0.0
    with checkpointed_learning(*roles.learning_models):  # a no-op unless gradient_checkpointing
        for idx in chunks(mb, micro_batch_size):
            sub = make_batch([q_ids[i] for i in idx], [r_ids[i] for i in idx], pad_id).to(device)
            w = sub.response_mask.shape[1]
            share = float(sub.response_mask.sum()) / tokens
            logp = roles.policy_logprobs(sub, cfg.temperature)
            pl, cf = ppo_math.policy_loss(logp, old.logp[idx, :w], advantages[idx, :w], sub.response_mask,
                                          cfg.clip_range)
            backward(pl * share)
            pl_sum += float(pl.detach()) * share
            cf_sum += float(cf) * share
            if critic:
                v = roles.values(sub)
                vl = ppo_math.value_loss(v, old.values[idx, :w], returns[idx, :w], sub.response_mask,
                                         cfg.clip_range_value, cfg.vf_coef)
                backward(vl * share)
                vl_sum += float(vl.detach()) * share
    return pl_sum, cf_sum, vl_sum


def micro_batch(cfg: PPOConfig, world_size: int) -> int:
    """Rollouts per forward/backward on this rank: ``micro_batch_size``, at most the rank's share
    of a minibatch (``step_batch_size / world_size``)."""
    return max(1, min(cfg.micro_batch_size, cfg.step_batch_size // world_size))
