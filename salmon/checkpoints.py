"""Resumable training state on disk: ``<dir>/step-<k>/`` with the trainable tensors, optimizer,
scheduler, torch RNG and a JSON state, written to a temp folder and renamed (``state.json`` and
``SHA256SUMS`` are inside before the rename, so a folder that exists is complete, and a damaged
one is refused on load). The newest ``keep`` are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from salmon.core.errors import SalmonInputError
from salmon.core.io import atomic_dir, check_dir_digests, write_json


def save_checkpoint(ckpt_dir: Path, step: int, params: dict[str, Any], opt: Any, sched: Any,
                    state: dict[str, Any] | None = None, keep: int = 2) -> Path:
    """Write ``step-<step>`` and drop all but the newest ``keep`` checkpoints."""
    import torch
    from safetensors.torch import save_file

    final = ckpt_dir / f"step-{step:08d}"
    with atomic_dir(final) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in params.items()}, str(tmp / "trainable.safetensors"))
        save_file({"torch_rng": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        torch.save(sched.state_dict(), tmp / "scheduler.pt")
        write_json(tmp / "state.json", {"step": step, **(state or {})})
    for old in sorted(ckpt_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, params: dict[str, Any], opt: Any, sched: Any) -> dict[str, Any]:
    """Restore tensors, optimizer, scheduler and torch RNG in place; returns the JSON state."""
    import torch
    from safetensors.torch import load_file

    check_dir_digests(path)
    weights = load_file(str(path / "trainable.safetensors"))
    missing = set(params) - set(weights)
    if missing:
        raise SalmonInputError(str(path), f"checkpoint lacks {len(missing)} trainable tensors (another config "
                               "wrote it?)", "delete the checkpoints folder to start over")
    with torch.no_grad():
        for name, value in weights.items():
            if name in params:
                params[name].copy_(value)
    opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    sched.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch_rng"])
    return dict(json.loads((path / "state.json").read_text()))


def publish_adapter(dest: Path, save: Any, tokenizer: Any, meta_name: str, meta: dict[str, Any]) -> None:
    """Write an adapter folder atomically: ``save(tmp)`` (the adapter), the tokenizer and a JSON
    record of how it was made, then rename over ``dest``."""
    with atomic_dir(dest) as tmp:
        save(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / meta_name, meta)
