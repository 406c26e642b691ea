"""What the ``ppo`` stage reads before any model is loaded: the prompts, the RL-time principle
sets, the policy queries that fit ``query_len``, and the RM's input limits at RL time."""

from __future__ import annotations

from typing import Any

from salmon.core.config import PPOConfig
from salmon.core.errors import SalmonInputError
from salmon.core.io import read_jsonl
from salmon.core.principles import PrincipleSet, load_principle_set
from salmon.core.records import PromptRecord


def load_rl_prompts(cfg: PPOConfig) -> list[PromptRecord]:
    """The prompts to roll out on, filtered by split, with a length multiplier for every type."""
    prompts = read_jsonl(cfg.prompts, PromptRecord)
    if cfg.prompt_splits is not None:
        prompts = [p for p in prompts if p.split in cfg.prompt_splits]
    if not prompts:
        raise SalmonInputError(cfg.prompts, f"no prompts in splits {cfg.prompt_splits}",
                               "check prompt_splits or the file")
    for p in prompts:
        if p.prompt_type not in cfg.length_multipliers:
            raise SalmonInputError(cfg.prompts, f"prompt {p.prompt_id} has type {p.prompt_type}, which has "
                                   "no length multiplier", "add it to length_multipliers")
    return prompts


def load_rl_principles(cfg: PPOConfig) -> tuple[PrincipleSet, PrincipleSet | None]:
    """(RL-time principle set, intervention set or None), restricted to the configured ids."""
    rl_set = load_principle_set(cfg.rl_principles).subset(cfg.rl_principle_ids)
    interventions = (load_principle_set(cfg.interventions).subset(cfg.intervention_ids)
                     if cfg.interventions else None)
    return rl_set, interventions


def encode_queries(tok: Any, prompts: list[PromptRecord], cfg: PPOConfig) -> tuple[list[list[int]], list[PromptRecord]]:
    """Token ids of each prompt's policy query; prompts longer than ``query_len`` are dropped."""
    from salmon.turns import policy_turns

    turns = policy_turns(tok, cfg, cfg.policy_model)
    queries, kept = [], []
    for p in prompts:
        ids = turns.query_ids(p.full_instruction())
        if len(ids) <= cfg.query_len:
            queries.append(ids)
            kept.append(p)
    if not kept:
        raise SalmonInputError(cfg.prompts, f"every prompt is longer than query_len={cfg.query_len} tokens",
                               "raise query_len")
    return queries, kept


def reward_limits(cfg: PPOConfig) -> Any:
    """The RM's input limits at RL time (method §4.3 step 5): the instruction (its last
    ``query_len`` tokens) and the whole rollout (``response_len``) within ``rm_max_length``, whatever
    limits the RM was trained with. Everything the policy wrote, a closing self-praise sentence
    included, is scored."""
    from salmon.reward.model import EncodeLimits

    return EncodeLimits(cfg.rm_max_length, cfg.query_len, cfg.response_len)
