"""Batched rollout tensors: query and response layout, log-probs at the sampling temperature,
and values (method §4.3, step 4).

A batch is laid out as ``[query (left-padded) | response (right-padded)]`` of widths ``Q`` and
``T``. Position ids count real tokens only, so padding never shifts a sequence. The log-prob
of response token ``t`` comes from the logits at the position just before it; so does the value
``V_t`` (the state before token ``t`` is consumed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class RolloutBatch:
    """Token tensors of a batch of rollouts.

    Attributes:
        input_ids: ``(B, Q + T)`` query then response ids.
        attention_mask: ``(B, Q + T)``.
        response_mask: ``(B, T)`` float, 1 on real response tokens.
        query_width: ``Q``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    query_width: int

    @property
    def position_ids(self) -> torch.Tensor:
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    def to(self, device: torch.device) -> RolloutBatch:
        return RolloutBatch(self.input_ids.to(device), self.attention_mask.to(device),
                            self.response_mask.to(device), self.query_width)


def make_batch(queries: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int) -> RolloutBatch:
    """Lay out token lists as ``[left-padded query | right-padded response]``."""
    import torch

    if len(queries) != len(responses) or not queries:
        raise ValueError("need one response per query, and at least one")
    q_w = max(len(q) for q in queries)
    r_w = max(1, max(len(r) for r in responses))
    n = len(queries)
    ids = torch.full((n, q_w + r_w), pad_id, dtype=torch.long)
    mask = torch.zeros((n, q_w + r_w), dtype=torch.long)
    rmask = torch.zeros((n, r_w))
    for i, (q, r) in enumerate(zip(queries, responses, strict=True)):
        if not q:
            raise ValueError(f"query {i} is empty")
        ids[i, q_w - len(q):q_w] = torch.tensor(list(q), dtype=torch.long)
        mask[i, q_w - len(q):q_w] = 1
        if r:
            ids[i, q_w:q_w + len(r)] = torch.tensor(list(r), dtype=torch.long)
            mask[i, q_w:q_w + len(r)] = 1
            rmask[i, :len(r)] = 1.0
    return RolloutBatch(ids, mask, rmask, q_w)


def response_logprobs(model: Any, batch: RolloutBatch, temperature: float) -> torch.Tensor:
    """Per-token log-probs ``(B, T)`` of the response tokens under ``model`` at ``temperature``.

    The logits are divided by the sampling temperature before the softmax, as in the method,
    so that the policy's log-probs are those of the distribution it sampled from. Padding: 0.
    The model must accept ``logits_to_keep`` (transformers' causal LMs do).
    """
    import torch

    q = batch.query_width
    width = batch.input_ids.shape[1] - q  # response slots
    # only the positions that predict response tokens go through the LM head (logits_to_keep): the
    # vocabulary-wide tensors are (B, T + 1, V), not (B, Q + T, V)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=batch.position_ids, logits_to_keep=width + 1, use_cache=False).logits
    # logits at position q-1+t predict response token t
    pred = logits[:, :-1, :].float() / temperature
    targets = batch.input_ids[:, q:]
    logp = torch.log_softmax(pred, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp * batch.response_mask


def response_values(value_body: Any, value_head: Any, batch: RolloutBatch) -> torch.Tensor:
    """Values ``(B, T)``: the head on the hidden state just before each response token. Padding: 0."""
    hidden = value_body(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids, use_cache=False).last_hidden_state
    q = batch.query_width
    head_dtype = next(value_head.parameters()).dtype  # float32, or bf16 under DeepSpeed bf16 training
    values = value_head(hidden[:, q - 1:-1, :].float().to(head_dtype)).squeeze(-1).float()
    return values * batch.response_mask


def zero_value_head(hidden_size: int) -> Any:
    """``Linear(hidden, 1)`` with weight and bias 0: the value model starts at V = 0 everywhere."""
    import torch

    head = torch.nn.Linear(hidden_size, 1)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    return head
