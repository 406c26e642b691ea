"""QLoRA (``quantize: 4bit``) for every LoRA role, as the method trains them: sft, train_rm and
ppo's shared base. Without a CUDA GPU and bitsandbytes each stage refuses it up front (exit 2,
nothing written); the ``gpu`` tier (tests/test_gpu.py) trains with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from salmon.cli import main


def _instances(tmp_path: Path) -> Path:
    from salmon.core.io import write_jsonl
    from salmon.core.records import RMInstance, RMPrinciple

    line = RMPrinciple(principle_id="concise", negated=False, text="Be brief.", score=1.0)
    path = tmp_path / "instances.jsonl"
    write_jsonl(path, [RMInstance(instance_id="i", pair_id="p", augmentation_pass=0, instruction="Hi?",
                                  output_1="Hello.", output_2="Hi.", principles=[line], preference=1,
                                  dominant_index=0)])
    return path


def test_train_rm_4bit_on_cpu_is_refused_before_any_work(tmp_path: Path, tiny_model: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rm"
    code = main(["train_rm", f"instances={_instances(tmp_path)}", f"base_model={tiny_model}", f"output_dir={out}",
                 "quantize=4bit", "device=cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "quantize" in err and "4bit (QLoRA) needs bitsandbytes and a CUDA GPU" in err, err
    assert "quantize: none" in err  # the fix is named
    assert not out.exists()


def test_train_rm_4bit_needs_lora(tmp_path: Path, tiny_model: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rm"
    code = main(["train_rm", f"instances={_instances(tmp_path)}", f"base_model={tiny_model}", f"output_dir={out}",
                 "quantize=4bit", "finetune=full", "device=cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "finetune=lora" in err, err
    assert not out.exists()


@pytest.mark.parametrize(("layout", "needle"), [("shared", "4bit (QLoRA) needs bitsandbytes and a CUDA GPU"),
                                                ("separate", "role_layout=shared")])
def test_ppo_4bit_needs_a_gpu_and_the_shared_base(tmp_path: Path, tiny_model: str, tiny_rm_lora: str, layout: str,
                                                  needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    from salmon.core.io import write_jsonl
    from salmon.nano.world import make_prompts

    write_jsonl(tmp_path / "prompts.jsonl", make_prompts(4, seed=1))
    out = tmp_path / "ppo"
    code = main(["ppo", f"prompts={tmp_path / 'prompts.jsonl'}", f"policy_model={tiny_model}",
                 f"reward_model={tiny_rm_lora}", f"output_dir={out}", f"role_layout={layout}", "quantize=4bit",
                 "device=cpu"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err, err
    assert not out.exists()
