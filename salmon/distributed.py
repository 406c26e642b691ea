"""Training on several processes: torchrun ranks, a DeepSpeed ZeRO engine, and the one-process path.

A training stage opens :func:`session` around its work and gets a :class:`Dist`:

- no torchrun environment and ``deepspeed: off``: one process, plain torch, exactly as without
  this module (``Dist.deepspeed`` is False, every collective is a no-op);
- ``deepspeed: zero2|zero3``: the process group is initialised (gloo on CPU, nccl on CUDA; with
  no torchrun variables, as a single rank on a free local port) and the stage trains through
  :meth:`Dist.initialize`, a DeepSpeed engine over a plain torch AdamW;
- torchrun with several processes but ``deepspeed: off`` is an input error (every rank would
  train the whole run and write the same outputs).

The optimizer is the stage's own ``torch.optim.AdamW``, handed to DeepSpeed as a client
optimizer: DeepSpeed's FusedAdam / CPUAdam are C++ ops compiled on first use (50-100 s each on a
fresh machine, see docs/distributed.md), torch's AdamW needs no build and steps the same update.

Collectives must be entered by every rank in the same order: the stages shard data evenly so
that each rank runs the same number of forward passes, and rank 0 alone writes files while the
others wait at a barrier. The session ends with ``barrier`` + ``destroy_process_group`` in a
``finally``: without them a non-zero rank can abort at interpreter exit and torchrun fails.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from salmon.core.deepspeed_config import DeepSpeedMode
from salmon.core.errors import SalmonInputError
from salmon.processes import free_port

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
R = TypeVar("R")

TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class LaunchInfo:
    """This process's place in a torchrun launch (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    torchrun: bool = False


def launch_info(environ: Mapping[str, str] | None = None) -> LaunchInfo:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by torchrun); all or none must be set."""
    env = os.environ if environ is None else environ
    present = [k for k in TORCHRUN_KEYS if k in env]
    if not present:
        return LaunchInfo()
    missing = [k for k in TORCHRUN_KEYS if k not in env]
    if missing:
        raise SalmonInputError("torchrun environment", f"{', '.join(present)} set but {', '.join(missing)} not",
                               "launch with torchrun, or unset RANK, WORLD_SIZE and LOCAL_RANK")
    try:
        rank, world, local = (int(env[k]) for k in TORCHRUN_KEYS)
    except ValueError:
        raise SalmonInputError("torchrun environment", "RANK, WORLD_SIZE and LOCAL_RANK must be integers",
                               "launch with torchrun") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise SalmonInputError("torchrun environment", f"RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}",
                               "launch with torchrun")
    return LaunchInfo(rank, world, local, True)


def shard_of(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s contiguous share of ``items``; the length must split evenly.

    >>> shard_of([0, 1, 2, 3, 4, 5], 1, 2)
    [3, 4, 5]
    """
    if len(items) % world_size:
        raise ValueError(f"{len(items)} items do not split evenly over {world_size} ranks")
    n = len(items) // world_size
    return list(items[rank * n:(rank + 1) * n])


class Routed:
    """One trainable role inside a DeepSpeed engine, used like the module itself.

    Calls and ``generate`` go through the engine's forward (``engine(role, method, ...)``), so
    ZeRO-3's hooks see the start of every pass; other attributes are the module's own.
    """

    def __init__(self, engine: Any, role: str, synced_generation: bool) -> None:
        self._engine = engine
        self._role = role
        self._synced = synced_generation

    @property
    def module(self) -> Any:
        return self._engine.module.parts[self._role]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._engine(self._role, "__call__", *args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        if self._synced:  # ZeRO-3 gathers are collectives: every rank runs the same number of passes
            kwargs.setdefault("synced_gpus", True)
        return self._engine(self._role, "generate", *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


def _parts_module(parts: dict[str, Any]) -> Any:
    import torch

    class Parts(torch.nn.Module):
        """The trainable roles as one module; ``forward(role, method, ...)`` runs one of them."""

        def __init__(self) -> None:
            super().__init__()
            self.parts = torch.nn.ModuleDict(parts)

        def forward(self, role: str, method: str, *args: Any, **kwargs: Any) -> Any:
            target = self.parts[role]
            return target(*args, **kwargs) if method == "__call__" else getattr(target, method)(*args, **kwargs)

    return Parts()


@dataclass
class Dist:
    """Rank, world size, device and DeepSpeed mode of this process, and the collectives the stages use."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mode: DeepSpeedMode
    engine: Any = None

    @property
    def deepspeed(self) -> bool:
        return self.mode != "off"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def zero_stage(self) -> int:
        return {"off": 0, "zero2": 2, "zero3": 3}[self.mode]

    # -- logging and data ---------------------------------------------------------------------
    def log(self, stage: str, message: str, every_rank: bool = False) -> None:
        """A progress line on stderr: rank 0 only, unless ``every_rank``; tagged with the rank under DeepSpeed."""
        if not (every_rank or self.is_main):
            return
        tag = f"{stage} rank {self.rank}/{self.world_size}" if self.deepspeed else stage
        print(f"[{tag}] {message}", file=sys.stderr, flush=True)

    def shard(self, items: Sequence[T], what: str = "batch") -> list[T]:
        """This rank's contiguous share of ``items`` (all of them on one rank)."""
        if self.world_size == 1:
            return list(items)
        if len(items) % self.world_size:
            raise SalmonInputError(what, f"{len(items)} items do not split evenly over {self.world_size} ranks",
                                   f"use a multiple of {self.world_size}")
        return shard_of(items, self.rank, self.world_size)

    # -- collectives (no-ops on one process) ------------------------------------------------------
    def barrier(self) -> None:
        if self.deepspeed:
            import torch.distributed as dist

            dist.barrier()

    def all_sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over ranks (a new tensor; the input itself on one process)."""
        if not self.deepspeed or self.world_size == 1:
            return tensor
        import torch.distributed as dist

        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of a list of floats over ranks (float64 on the wire)."""
        if not self.deepspeed or self.world_size == 1:
            return [float(v) for v in values]
        import torch

        device = self.device if self.device.type == "cuda" else torch.device("cpu")
        return [float(v) for v in self.all_sum_tensor(torch.tensor(list(values), dtype=torch.float64,
                                                                      device=device)).tolist()]

    def gather_lists(self, items: list[T]) -> list[T]:
        """The concatenation of every rank's ``items``, in rank order, on every rank."""
        if not self.deepspeed or self.world_size == 1:
            return list(items)
        import torch.distributed as dist

        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, items)
        return [x for part in parts for x in part]

    def on_main(self, fn: Callable[[], R]) -> R | None:
        """Run ``fn`` on rank 0 only (files are written once); every rank then waits at a barrier."""
        result = fn() if self.is_main else None
        self.barrier()
        return result

    # -- the DeepSpeed engine -------------------------------------------------------------------
    def initialize(self, model: Any, optimizer: Any, config: dict[str, Any]) -> Any:
        """Wrap ``model`` (trained by the torch ``optimizer``) in a DeepSpeed engine with ``config``."""
        import deepspeed

        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config,
                                               dist_init_required=False)
        self.engine = engine
        return engine

    def initialize_parts(self, parts: dict[str, Any], optimizer: Any, config: dict[str, Any]) -> dict[str, Routed]:
        """One engine over several trainable modules; returns a :class:`Routed` stand-in for each."""
        engine = self.initialize(_parts_module(parts), optimizer, config)
        synced = self.zero_stage == 3 and self.world_size > 1
        return {name: Routed(engine, name, synced) for name in parts}

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of this rank's share of the step objective (the shares sum to it over ranks).

        DeepSpeed averages gradients over ranks, so the share is scaled by the world size; the
        stage has already divided by its own batch, so DeepSpeed's division by the accumulation
        steps is turned off. Then one engine micro-step: the update happens at the last one.
        """
        engine = self.engine
        engine.backward(loss * self.world_size, scale_wrt_gas=False)
        engine.step()

    def finish_step(self, expected_updates: int) -> None:
        """Check that the engine took exactly ``expected_updates`` optimizer steps so far."""
        if int(self.engine.global_steps) != expected_updates:
            raise RuntimeError(f"DeepSpeed engine is at update {self.engine.global_steps}, expected "
                               f"{expected_updates}: the micro-batches per step do not match the config")

    @contextlib.contextmanager
    def gathered(self, params: Sequence[Any]) -> Iterator[None]:
        """Under ZeRO-3, the full values of ``params`` on every rank inside the block (a collective)."""
        if self.zero_stage != 3:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params), modifier_rank=None):
            yield

    # -- engine checkpoints -------------------------------------------------------------------------
    def save_engine_checkpoint(self, folder: Path, step: int, client_state: dict[str, Any], keep: int = 2) -> None:
        """DeepSpeed checkpoint ``<folder>/step-<k>`` (every rank writes its partition); keeps the newest."""
        import shutil

        self.engine.save_checkpoint(str(folder), tag=f"step-{step:08d}", client_state=client_state,
                                    exclude_frozen_parameters=True)
        self.barrier()
        if self.is_main:
            tags = sorted((p for p in folder.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
            for old in tags[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.barrier()

    def load_engine_checkpoint(self, folder: Path) -> dict[str, Any] | None:
        """Restore the newest DeepSpeed checkpoint in ``folder`` (weights, optimizer); its client state."""
        if not (folder / "latest").is_file():
            return None
        path, client_state = self.engine.load_checkpoint(str(folder), load_module_strict=False)
        if path is None:
            raise SalmonInputError(str(folder), "DeepSpeed could not load the newest checkpoint",
                                   "delete the folder to start over")
        return dict(client_state or {})


def _resolve_device(device: str, local_rank: int) -> torch.device:
    import torch

    from salmon.modeling import resolve_device

    d = resolve_device(device)
    if d.type == "cuda":
        d = torch.device("cuda", local_rank)
        torch.cuda.set_device(d)
    return d


def _skip_shm_comm_build() -> None:
    """Keep DeepSpeed's CPU comm backend from compiling its shared-memory all-reduce op.

    On CPU, DeepSpeed JIT-compiles ``deepspeed_shm_comm`` (C++, needs g++; 58-190 s on the first
    run of a machine, measured) when its comm backend starts. The op only serves
    ``inference_all_reduce`` (tensor-parallel inference); ZeRO training reduces through the
    process group (gloo) either way. Marking it incompatible skips the build: no compiler in the
    image and no first-run delay.
    """
    import deepspeed.ops

    compatible = deepspeed.ops.__compatible_ops__  # probed once per process, then kept (and editable)
    compatible["deepspeed_shm_comm"] = False


@contextlib.contextmanager
def session(mode: DeepSpeedMode, device: str) -> Iterator[Dist]:
    """The distributed context of one stage run; see the module docstring."""
    info = launch_info()
    if mode == "off":
        if info.world_size > 1:
            raise SalmonInputError("deepspeed=off", f"torchrun started {info.world_size} processes",
                                   "set deepspeed=zero2 or zero3, or launch one process")
        from salmon.modeling import resolve_device

        yield Dist(0, 1, 0, resolve_device(device), mode)
        return

    dev = _resolve_device(device, info.local_rank)
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if dev.type == "cuda" else "cpu")
    added: list[str] = []
    if not info.torchrun:  # one DeepSpeed rank without torchrun
        single = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                  "MASTER_PORT": str(free_port())}
        added = [k for k in single if k not in os.environ]
        os.environ.update({k: single[k] for k in added})
    import logging
    import warnings

    import deepspeed
    import torch.distributed as dist

    from salmon.modeling import quiet_progress_bars

    quiet_progress_bars()
    deepspeed.utils.logger.setLevel(logging.WARNING)  # the stages log their own progress
    # DeepSpeed 0.19 calls collectives that torch 2.13 marks deprecated, once per call
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    if dev.type == "cpu":
        _skip_shm_comm_build()
    started_here = not dist.is_initialized()
    if started_here:
        deepspeed.init_distributed(dist_backend="nccl" if dev.type == "cuda" else "gloo",
                                   auto_mpi_discovery=False, verbose=False)
    ok = False
    try:
        yield Dist(dist.get_rank(), dist.get_world_size(), info.local_rank, dev, mode)
        ok = True
    finally:
        if started_here and dist.is_initialized():
            if ok:
                dist.barrier()
            dist.destroy_process_group()
        for k in added:
            os.environ.pop(k, None)
