"""What a PPO run carries: its state from step to step (:class:`Training`), and each step's
rollouts (:class:`Rollouts`) and advantages (:class:`Advantages`)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salmon.core.config import PPOConfig
from salmon.core.principles import PrincipleSet
from salmon.core.records import PromptRecord
from salmon.ppo.passes import RolloutStats
from salmon.ppo.roles import Roles


@dataclass
class Rollouts:
    """One step's ``B`` rollouts on this rank (steps 1-2 of the module docstring).

    ``items``, ``q_ids``, ``r_ids``, ``texts``, ``lines``, ``rm_rows``: per rollout, its prompt,
    query ids, response ids (cut at the end of the turn, at most ``response_len``), text, the
    (intervention, drawn principle) lines the RM sees and the encoded RM input; ``stops`` ``(B,)``
    bool, the turn ended; ``server_logps``: the server's per-token log-probs (openai);
    ``scores`` ``(B,)`` the RM's scores (:func:`score`)."""

    items: list[PromptRecord]
    q_ids: list[list[int]]
    r_ids: list[list[int]]
    texts: list[str]
    lines: list[tuple[list[str], list[str]]]
    rm_rows: list[list[int]]
    stops: Any
    server_logps: list[list[float]] | None
    scores: Any = None


@dataclass
class Advantages:
    """What the update needs from a step's rollouts (steps 3-4), tensors over ``(B, T)`` response
    slots unless said: ``old`` (log-probs of the sampling policy and the reference, values),
    ``mask``, ``lengths`` ``(B,)``, ``multipliers`` ``(B,)``, shaped ``rewards`` and ``terminal``
    ``(B,)``, per-token ``kl``, ``raw`` advantages and the (whitened) ``advantages``, ``returns``."""

    old: RolloutStats
    mask: Any
    lengths: Any
    multipliers: Any
    rewards: Any
    terminal: Any
    kl: Any
    raw: Any
    advantages: Any
    returns: Any


@dataclass
class Training:
    """The state a PPO run carries from step to step (built by :func:`start`)."""

    cfg: PPOConfig
    ctx: Any
    roles: Roles
    trainable: dict[str, Any]
    """The trainable parameters by name (taken before DeepSpeed wraps the roles)."""
    turns: Any
    encoder: Any
    kept: list[PromptRecord]
    queries: list[list[int]]
    rl_set: PrincipleSet
    interventions: PrincipleSet | None
    batches: list[list[int]]
    group: int
    opt: Any
    sched: Any
    rng: random.Random
    first: int
    last: int
    history: list[dict[str, Any]]
    resources: list[dict[str, Any]]
    served: Any
    memory: Any
    updates: int
    started: float

    @property
    def critic(self) -> bool:
        return self.cfg.algorithm == "ppo"

    @property
    def total(self) -> int:
        return len(self.batches)

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.output_dir)


def rollout_line(r: Rollouts, a: Advantages, i: int) -> dict[str, Any]:
    """Rollout ``i`` as a line of ``rollouts/step_<k>.jsonl``: its ids, principles, score, and per
    token the log-probs, shaped rewards, values and advantages before whitening."""
    n = int(a.lengths[i])
    p = r.items[i]
    return {
        "prompt_id": p.prompt_id, "prompt_type": p.prompt_type, "response": r.texts[i], "response_ids": r.r_ids[i],
        "has_stop": bool(r.stops[i]), "rm_score": float(r.scores[i]), "interventions": r.lines[i][0],
        "principles": r.lines[i][1], "length": n, "length_multiplier": float(a.multipliers[i]),
        "logp": floats(a.old.logp[i, :n]), "logp_ref": floats(a.old.logp_ref[i, :n]),
        "shaped_rewards": floats(a.rewards[i, :n]), "values": floats(a.old.values[i, :n]),
        "advantages": floats(a.raw[i, :n]),
    }


def floats(values: Any) -> list[float]:
    return [float(v) for v in values]


def save_training_checkpoint(ckpt_dir: Path, step: int, params: dict[str, Any], opt: Any, sched: Any,
                     rng: random.Random) -> None:
    """Trainable weights, optimizer, schedule, torch RNG and the principle sampler's RNG."""
    from salmon.checkpoints import save_checkpoint

    version, state, gauss = rng.getstate()
    save_checkpoint(ckpt_dir, step, params, opt, sched, {"sampler_rng": [version, list(state), gauss]})


def load_training_checkpoint(path: Path, params: dict[str, Any], opt: Any, sched: Any, rng: random.Random) -> int:
    """Restore what :func:`save_training_checkpoint` wrote; returns its step."""
    from salmon.checkpoints import load_checkpoint

    state = load_checkpoint(path, params, opt, sched)
    version, inner, gauss = state["sampler_rng"]
    rng.setstate((version, tuple(inner), gauss))
    return int(state["step"])
