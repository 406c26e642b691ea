"""The `gpu` tier: what only a CUDA device can run. Every test skips without one; on a GPU
machine `scripts/gpu-check.sh` runs them (`pytest -m gpu`) and the real world at a larger size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from salmon.cli import main

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


def _sft_data(tmp_path: Path) -> Path:
    from salmon.core.io import write_jsonl
    from salmon.core.records import SFTExample

    rows = [SFTExample(example_id=f"g{i}", instruction=f"What is {i} + {i + 1}?", input="", prompt_type="reasoning",
                       response=f"{i} + {i + 1} = {2 * i + 1}.", source="selfalign") for i in range(16)]
    path = tmp_path / "sft.jsonl"
    write_jsonl(path, rows)
    return path


@pytest.mark.parametrize("extra", [["dtype=bfloat16"], ["quantize=4bit"]], ids=["bf16", "qlora"])
def test_sft_on_smollm2_trains_on_cuda(tmp_path: Path, smollm2_model: str, extra: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """SFT of a LoRA adapter on SmolLM2 on the GPU, in bf16 and as QLoRA (NF4): the loss falls
    and the adapter is written."""
    out = tmp_path / "sft"
    assert main(["sft", "--preset", "small", f"data={_sft_data(tmp_path)}", "base_model=smollm2",
                 f"output_dir={out}", "epochs=4", "batch_size=4", "micro_batch_size=4", "log_every=1",
                 "device=cuda", *extra]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["finished"] and (out / "adapter" / "adapter_model.safetensors").is_file()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"], log


def _rm_instances(tmp_path: Path) -> Path:
    from salmon.core.aggregate import AggregateParams, aggregate, index_judgements
    from salmon.core.io import write_jsonl
    from salmon.core.principles import load_principle_set
    from salmon.judge.rules import judge_pairs_rules
    from salmon.nano.world import make_pairs, make_prompts

    pset = load_principle_set("nano")
    pairs = make_pairs(make_prompts(48, seed=8), seed=9)
    instances, _ = aggregate(pairs, index_judgements(judge_pairs_rules(pairs, pset.ids())), pset,
                             AggregateParams(dimensions=tuple(pset.ids()), passes=1))
    path = tmp_path / "instances.jsonl"
    write_jsonl(path, instances)
    return path


def test_qlora_reward_model_and_ppo_on_one_4bit_base(tmp_path: Path, smollm2_model: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The method's QLoRA everywhere: the RM's LoRA trained on an NF4 SmolLM2 (the loss falls), then
    one PPO step with all four roles as adapters on one NF4 base, which writes a loadable policy."""
    from salmon.core.io import write_jsonl
    from salmon.nano.world import make_prompts

    rm_out = tmp_path / "rm"
    assert main(["train_rm", "--preset", "small", f"instances={_rm_instances(tmp_path)}", "base_model=smollm2",
                 f"output_dir={rm_out}", "quantize=4bit", "epochs=2", "batch_size=8", "micro_batch_size=8",
                 "log_every=1", "device=cuda"]) == 0
    capsys.readouterr()
    log = [json.loads(line) for line in (rm_out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"], log
    write_jsonl(tmp_path / "prompts.jsonl", make_prompts(32, seed=5))
    ppo_out = tmp_path / "ppo"
    assert main(["ppo", "--preset", "small", f"prompts={tmp_path / 'prompts.jsonl'}", "policy_model=smollm2",
                 f"reward_model={rm_out / 'model'}", f"output_dir={ppo_out}", "quantize=4bit", "total_steps=1",
                 "response_len=32", "device=cuda"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["finished"] and (ppo_out / "policy" / "adapter_model.safetensors").is_file()
    resources = [json.loads(line) for line in (ppo_out / "resources.jsonl").read_text().splitlines()]
    assert resources[0]["peak_memory_mib"] is not None
