"""Pure helpers of RM training: learning-rate schedule, data order, checkpoint files."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, kind: str) -> float:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based, before the step is taken).

    Linear warm-up from ``1/(warmup+1)`` to 1 over ``warmup_steps``, then ``cosine`` decay to 0,
    ``linear`` decay to 0, or ``constant``.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def data_order(n: int, epochs: float, batch_size: int, seed: int) -> list[list[int]]:
    """The batches of a run: ``ceil(n * epochs / batch_size)`` lists of example indices.

    Each epoch is a fresh permutation from ``Random(seed + epoch)``, so the order depends only
    on (n, epochs, batch_size, seed) and a resumed run sees exactly the batches it would have.
    """
    total = math.ceil(n * epochs / batch_size) * batch_size
    stream: list[int] = []
    epoch = 0
    while len(stream) < total:
        perm = list(range(n))
        random.Random(seed + epoch).shuffle(perm)
        stream += perm
        epoch += 1
    stream = stream[:total]
    return [stream[i:i + batch_size] for i in range(0, total, batch_size)]


def resume_point(ctx: Any, ckpt_dir: Path, sched: Any, load_local: Callable[[Path], int]) -> tuple[int, Path | None]:
    """(step to resume after, the checkpoint it comes from) for a training loop in ``ctx``: in a
    DeepSpeed session the engine's own checkpoint (``ckpt_dir/deepspeed``, which also restores the
    schedule ``sched``), else the newest complete one, read with ``load_local``; (0, None) when
    there is none."""
    if ctx.deepspeed:
        state = ctx.load_engine_checkpoint(ckpt_dir / "deepspeed")
        if state is None:
            return 0, None
        sched.load_state_dict(state["scheduler"])
        return int(state["step"]), ckpt_dir / "deepspeed"
    found = latest_checkpoint(ckpt_dir)
    return (load_local(found), found) if found is not None else (0, None)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint folder (``state.json`` is written last), if any."""
    if not ckpt_dir.is_dir():
        return None
    done = [p for p in ckpt_dir.glob("step-*") if (p / "state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)
