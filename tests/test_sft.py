"""``sft`` on the tiny model: loss on the answer only, learning, resume, QLoRA refusal on CPU."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from salmon.stages.sft import IGNORE, sft_tokens


def test_sft_tokens_truncate_source_left_target_right_and_mask_the_source() -> None:
    ids, labels = sft_tokens([1, 2, 3, 4], [7, 8, 9], source_max_len=3, target_max_len=2)
    assert ids == [2, 3, 4, 7, 8]
    assert labels == [IGNORE, IGNORE, IGNORE, 7, 8]
    assert sft_tokens([5], [6], 8, 8) == ([5, 6], [IGNORE, 6])


@pytest.fixture()
def sft_data(tmp_path: Path) -> str:
    from salmon.core.io import write_jsonl
    from salmon.core.records import SFTExample
    from salmon.nano.world import make_prompts, make_response

    rng = random.Random(0)
    examples = [SFTExample(example_id=p.prompt_id, instruction=p.instruction, prompt_type=p.prompt_type,
                           response=make_response(p, rng) + "\n\n### User\n", source="nano")
                for p in make_prompts(48, seed=2)]
    path = tmp_path / "sft.jsonl"
    write_jsonl(path, examples)
    return str(path)


def _run(tiny_model: str, data: str, out: Path, **extra: Any):  # type: ignore[no-untyped-def]
    from salmon.core.config import SFTConfig, build_config
    from salmon.stages.sft import run

    values: dict[str, Any] = dict(data=data, base_model=tiny_model, output_dir=str(out), batch_size=48,
                                  micro_batch_size=16, epochs=6.0, save_every=2, log_every=2, lora_r=4,
                                  learning_rate=3e-3)
    values.update(extra)
    return run(build_config(SFTConfig, stage="sft", preset="nano", values=values))


def test_sft_learns_and_resumes_to_the_same_adapter(tmp_path: Path, tiny_model: str, sft_data: str) -> None:
    import torch
    from safetensors.torch import load_file

    full = _run(tiny_model, sft_data, tmp_path / "full")
    assert full.metrics["steps"] == 6 and full.metrics["finished"]
    log = [json.loads(x) for x in Path(full.outputs["train_log"]).read_text().splitlines()]
    # every step sees all 48 examples: the loss falls step after step
    assert all(b["loss"] < a["loss"] for a, b in zip(log, log[1:], strict=False))
    assert log[-1]["loss"] < log[0]["loss"] - 0.1
    part = _run(tiny_model, sft_data, tmp_path / "killed", max_steps=3)
    assert "adapter" not in part.outputs and not (tmp_path / "killed" / "adapter").exists()
    resumed = _run(tiny_model, sft_data, tmp_path / "killed")
    a = load_file(str(Path(full.outputs["adapter"]) / "adapter_model.safetensors"))
    b = load_file(str(Path(resumed.outputs["adapter"]) / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [json.loads(x) for x in Path(resumed.outputs["train_log"]).read_text().splitlines()] == log

    # the adapter loads on the base and changes the model
    from peft import PeftModel

    from salmon.modeling import load_causal_lm

    base = load_causal_lm(tiny_model, device=torch.device("cpu"))
    ids = torch.tensor([[1, 5, 9, 12]])
    before = base(input_ids=ids).logits
    tuned = PeftModel.from_pretrained(base, full.outputs["adapter"])
    assert not torch.allclose(before, tuned(input_ids=ids).logits)


def test_qlora_without_a_gpu_is_an_input_error(tmp_path: Path, tiny_model: str, sft_data: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from salmon.cli import main

    code = main(["sft", f"data={sft_data}", f"base_model={tiny_model}", f"output_dir={tmp_path / 'q'}",
                 "quantize=4bit", "device=cpu"])
    assert code == 2 and "4bit" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
