"""DeepSpeed settings of the training stages, and the DeepSpeed config dict rendered from them.

Pure: no torch, no deepspeed. :mod:`salmon.distributed` passes the rendered dict to
``deepspeed.initialize``. The training stages (``sft``, ``train_rm``, ``ppo``) share the same
config keys, defined here once:

- ``deepspeed``: ``off`` (plain torch, one process), ``zero2`` (optimizer state and gradients
  partitioned across ranks) or ``zero3`` (parameters partitioned too);
- ``offload_optimizer`` / ``offload_param``: keep optimizer state / parameters in CPU memory
  (parameters only with ZeRO-3);
- ``precision``: ``auto`` (bf16 on CUDA, fp32 on CPU), ``bf16`` (CUDA only) or ``fp32``;
- ``deepspeed_overrides``: extra DeepSpeed keys merged over the rendered dict.

Batch arithmetic: an optimizer step sees ``batch_size`` examples in all. Each of the
``world_size`` ranks takes ``batch_size / world_size`` of them, in micro-batches of
``min(micro_batch_size, batch_size / world_size)``; the gradient-accumulation steps are what is
left. DeepSpeed checks ``train_batch_size == micro * accumulation * world_size``, and so does
:func:`batch_layout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from salmon.core.errors import SalmonInputError


def _off_from_yaml(value: Any) -> Any:
    """YAML reads a bare ``off`` (``deepspeed=off`` on the command line) as ``False``."""
    return "off" if value is False else value


DeepSpeedMode = Annotated[Literal["off", "zero2", "zero3"], BeforeValidator(_off_from_yaml)]
Precision = Literal["auto", "bf16", "fp32"]

ZERO_STAGE = {"zero2": 2, "zero3": 3}

BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
"""Keys derived from the stage's batch settings: ``deepspeed_overrides`` may not set them."""


# -- the shared config fields (one definition, used by SFTConfig, TrainRMConfig and PPOConfig) --

def deepspeed_field() -> Any:
    return Field(default="off", description=(
        "Multi-process training: off (plain torch), zero2 or zero3 (DeepSpeed ZeRO stage). Under torchrun "
        "each process is one rank; without torchrun DeepSpeed runs as a single rank."))


def offload_optimizer_field() -> Any:
    return Field(default=False, description="DeepSpeed: keep the optimizer state in CPU memory (ZeRO-Offload).")


def offload_param_field() -> Any:
    return Field(default=False, description="DeepSpeed ZeRO-3: keep the partitioned parameters in CPU memory.")


def precision_field() -> Any:
    return Field(default="auto", description=(
        "DeepSpeed training precision: auto (bf16 on CUDA, fp32 on CPU), bf16 (CUDA only) or fp32."))


def deepspeed_overrides_field() -> Any:
    def empty() -> dict[str, Any]:
        return {}

    return Field(default_factory=empty, description=(
        "Extra DeepSpeed config keys merged over the rendered config, e.g. "
        "deepspeed_overrides.zero_optimization.reduce_bucket_size=50000000 (batch sizes come from the stage)."))


def check_deepspeed_settings(mode: DeepSpeedMode, offload_optimizer: bool, offload_param: bool,
                             precision: Precision, overrides: dict[str, Any]) -> None:
    """Reject combinations that mean nothing; raises ``ValueError`` (a config validation error)."""
    if mode == "off":
        used = [name for name, on in (("offload_optimizer", offload_optimizer), ("offload_param", offload_param),
                                      ("precision=bf16", precision == "bf16"),
                                      ("deepspeed_overrides", bool(overrides))) if on]
        if used:
            raise ValueError(f"{', '.join(used)} only apply with deepspeed: zero2 or zero3")
    if offload_param and mode != "zero3":
        raise ValueError("offload_param needs deepspeed: zero3 (ZeRO-2 does not partition parameters)")
    from salmon.core.io import non_finite

    if non_finite(overrides):
        raise ValueError(f"deepspeed_overrides holds a NaN or infinite number at {', '.join(non_finite(overrides))}")
    bad = [k for k in BATCH_KEYS if k in overrides]
    if bad:
        raise ValueError(f"deepspeed_overrides may not set {', '.join(bad)}: they follow from the batch settings")


# -- rendering ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchLayout:
    """How one optimizer step's ``batch_size`` examples are split over ranks and micro-batches."""

    batch_size: int
    world_size: int
    per_rank: int
    micro_batch_size: int
    accumulation: int


def batch_layout(batch_size: int, micro_batch_size: int, world_size: int,
                 what: str = "batch_size") -> BatchLayout:
    """Split ``batch_size`` examples over ``world_size`` ranks and micro-batches.

    >>> batch_layout(16, 4, 2)
    BatchLayout(batch_size=16, world_size=2, per_rank=8, micro_batch_size=4, accumulation=2)
    >>> batch_layout(16, 16, 2).micro_batch_size  # the micro-batch shrinks to the rank's share
    8
    """
    if world_size < 1 or micro_batch_size < 1 or batch_size < 1:
        raise ValueError("batch_size, micro_batch_size and world_size must be positive")
    if batch_size % world_size:
        raise SalmonInputError(what, f"{batch_size} examples do not split evenly over {world_size} ranks",
                               f"use a multiple of {world_size}")
    per_rank = batch_size // world_size
    micro = min(micro_batch_size, per_rank)
    if per_rank % micro:
        raise SalmonInputError(what, f"each of the {world_size} ranks gets {per_rank} examples per step, "
                               f"not a multiple of the micro-batch of {micro}",
                               f"make {what} / {world_size} a multiple of the micro-batch size")
    return BatchLayout(batch_size, world_size, per_rank, micro, per_rank // micro)


def use_bf16(precision: Precision, device_type: str) -> bool:
    """bf16 mixed precision: on CUDA for ``auto`` and ``bf16``; never on CPU (``bf16`` there is an error)."""
    if precision == "bf16" and device_type != "cuda":
        raise SalmonInputError("precision=bf16", f"bf16 training needs a CUDA device, this run is on {device_type}",
                               "use precision=auto or fp32 on CPU")
    return device_type == "cuda" and precision in ("auto", "bf16")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render_deepspeed_config(*, mode: DeepSpeedMode, layout: BatchLayout, max_grad_norm: float, device_type: str,
                            precision: Precision = "auto", offload_optimizer: bool = False,
                            offload_param: bool = False, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The DeepSpeed config dict of a stage run.

    - batch keys from ``layout`` (``train_batch_size = micro * accumulation * world_size``);
    - ``gradient_clipping`` = ``max_grad_norm`` (DeepSpeed clips the reduced, global gradient);
    - ``bf16`` on CUDA for ``auto``/``bf16``, fp32 on CPU (:func:`use_bf16`); fp16 never;
    - ZeRO ``stage`` 2 or 3; offloads to ``cpu`` (pinned memory only on CUDA); ZeRO-3 gathers
      the 16-bit weights on save, so a saved model is whole;
    - the optimizer is the stage's torch AdamW (a client optimizer): no ``optimizer`` block, and
      ``zero_force_ds_cpu_optimizer`` off so ZeRO-Offload accepts it;
    - ``overrides`` merged last (dicts merge key by key).
    """
    if mode not in ZERO_STAGE:
        raise ValueError(f"no DeepSpeed config for deepspeed={mode!r}")
    check_deepspeed_settings(mode, offload_optimizer, offload_param, precision, overrides or {})
    cuda = device_type == "cuda"
    zero: dict[str, Any] = {"stage": ZERO_STAGE[mode], "contiguous_gradients": True, "overlap_comm": cuda}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    if mode == "zero3":
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if offload_param:
            zero["offload_param"] = {"device": "cpu", "pin_memory": cuda}
    config: dict[str, Any] = {
        "train_batch_size": layout.micro_batch_size * layout.accumulation * layout.world_size,
        "train_micro_batch_size_per_gpu": layout.micro_batch_size,
        "gradient_accumulation_steps": layout.accumulation,
        "gradient_clipping": float(max_grad_norm),
        "bf16": {"enabled": use_bf16(precision, device_type)},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return _merge(config, overrides or {})


def stage_deepspeed_config(cfg: Any, *, world_size: int, device_type: str) -> tuple[dict[str, Any], int]:
    """The DeepSpeed config of a stage whose config has ``batch_size`` and ``micro_batch_size``
    (sft, train_rm) plus the DeepSpeed fields, and the per-rank micro-batch it implies."""
    layout = batch_layout(cfg.batch_size, cfg.micro_batch_size, world_size)
    config = render_deepspeed_config(
        mode=cfg.deepspeed, layout=layout, max_grad_norm=cfg.max_grad_norm, device_type=device_type,
        precision=cfg.precision, offload_optimizer=cfg.offload_optimizer, offload_param=cfg.offload_param,
        overrides=cfg.deepspeed_overrides)
    return config, layout.micro_batch_size
