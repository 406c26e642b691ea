"""Two memory/speed trades of the PPO roles, each one config switch.

- :class:`MergedCopy` (``merge_for_generation``): rollouts are generated from a plain copy of the
  base model whose linear weights are ``W + ΔW`` of the policy adapter, refreshed before every
  step. Generation then runs plain matmuls instead of the base matmul plus the two low-rank
  ones of every adapted layer, at the price of one more copy of the base weights.
- :func:`enable_activation_checkpointing` / :func:`checkpointed_learning`
  (``gradient_checkpointing``): the decoder layers recompute their activations in the backward
  pass of the learning passes instead of keeping them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class MergedCopy:
    """A plain copy of a base model that holds a PEFT model's adapter merged into its weights.

    Build it from the base model *before* the adapters are injected (injection wraps the base's
    layers in place). :meth:`refresh` writes ``base weight + delta`` of ``adapter`` into the
    copy's matching layers; the copy's other weights (embeddings, norms, the LM head) are the
    base's, which LoRA does not change.
    """

    def __init__(self, base: Any) -> None:
        import copy

        self.model = copy.deepcopy(base)
        self.model.requires_grad_(False)
        self.model.eval()
        self._modules = dict(self.model.named_modules())  # the layers refresh writes into, by name

    def refresh(self, peft_model: Any, adapter: str) -> Any:
        """Merge ``adapter``'s current weights into the copy; returns the copy, ready to generate.

        Raises ValueError when a layer of the adapter has no matching layer in the copy (the
        copy was taken from a different model)."""
        import torch
        from peft.tuners.lora import LoraLayer

        prefix = "base_model.model."
        with torch.no_grad():
            for name, layer in peft_model.named_modules():
                if not isinstance(layer, LoraLayer) or adapter not in layer.lora_A:
                    continue
                target = self._modules.get(name.removeprefix(prefix))
                base_weight = layer.get_base_layer().weight
                if target is None or target.weight.shape != base_weight.shape:
                    raise ValueError(f"the generation copy has no layer matching {name}")
                target.weight.copy_(base_weight + layer.get_delta_weight(adapter).to(base_weight.dtype))
        return self.model


def enable_activation_checkpointing(*models: Any) -> None:
    """Turn on transformers' activation checkpointing (non-reentrant) in ``models``' decoder layers.

    It only acts inside :func:`checkpointed_learning`: transformers checkpoints a layer only
    while the layer is in training mode, and the roles stay in eval mode."""
    for model in models:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


@contextlib.contextmanager
def checkpointed_learning(*models: Any) -> Iterator[int]:
    """Within the block, the checkpointing decoder layers of ``models`` recompute their activations
    in the backward pass. Yields how many layers that is (0 when checkpointing is off).

    Only the layers' own ``training`` flag is set, not their children's: attention and dropout
    modules stay in eval mode, so the forward computes exactly what it computes outside."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for model in models for m in model.modules()
              if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    before = [m.training for m in layers]
    for m in layers:
        m.training = True
    try:
        yield len(layers)
    finally:
        for m, flag in zip(layers, before, strict=True):
            m.training = flag
