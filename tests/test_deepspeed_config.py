"""DeepSpeed settings: the rendered config (hand-checked), batch splits, config validation, the
torchrun environment, and a stage run with ``deepspeed=zero2`` on one rank (no torchrun)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from salmon.core.config import PPOConfig, SFTConfig, TrainRMConfig, build_config
from salmon.core.deepspeed_config import BatchLayout, batch_layout, render_deepspeed_config, use_bf16
from salmon.core.errors import SalmonInputError
from salmon.distributed import LaunchInfo, launch_info, shard_of

DS_KEYS = ("deepspeed", "offload_optimizer", "offload_param", "precision", "deepspeed_overrides")


def test_batch_layout_splits_over_ranks_and_micro_batches() -> None:
    # 64 pairs on 2 ranks: 32 each, micro-batches of 4 -> 8 accumulation steps; 4 * 8 * 2 = 64
    assert batch_layout(64, 4, 2) == BatchLayout(64, 2, 32, 4, 8)
    # the nano SFT preset (16 / 16) on 2 ranks: the micro-batch shrinks to the rank's 8
    assert batch_layout(16, 16, 2) == BatchLayout(16, 2, 8, 8, 1)
    assert batch_layout(8, 8, 1) == BatchLayout(8, 1, 8, 8, 1)
    assert batch_layout(12, 8, 2) == BatchLayout(12, 2, 6, 6, 1)
    with pytest.raises(SalmonInputError, match="do not split evenly over 4 ranks"):
        batch_layout(10, 4, 4)
    with pytest.raises(SalmonInputError, match="not a multiple of the micro-batch of 3"):
        batch_layout(20, 3, 2)


def test_zero2_on_cpu_renders_the_hand_written_config() -> None:
    config = render_deepspeed_config(mode="zero2", layout=batch_layout(64, 4, 2), max_grad_norm=0.3,
                                     device_type="cpu")
    assert config == {
        "train_batch_size": 64,
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 8,
        "gradient_clipping": 0.3,
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "zero_optimization": {"stage": 2, "contiguous_gradients": True, "overlap_comm": False},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def test_zero3_on_cuda_with_offload_and_bf16() -> None:
    config = render_deepspeed_config(mode="zero3", layout=batch_layout(128, 4, 8), max_grad_norm=1.0,
                                     device_type="cuda", precision="auto", offload_optimizer=True,
                                     offload_param=True)
    assert (config["train_batch_size"], config["train_micro_batch_size_per_gpu"],
            config["gradient_accumulation_steps"]) == (128, 4, 4)
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    assert config["zero_optimization"] == {
        "stage": 3, "contiguous_gradients": True, "overlap_comm": True,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "offload_param": {"device": "cpu", "pin_memory": True},
        "stage3_gather_16bit_weights_on_model_save": True,
    }
    # fp32 when asked, even on CUDA; ZeRO-3 without offload has no offload blocks
    plain = render_deepspeed_config(mode="zero3", layout=batch_layout(8, 8, 1), max_grad_norm=1.0,
                                    device_type="cuda", precision="fp32")
    assert plain["bf16"] == {"enabled": False}
    assert "offload_param" not in plain["zero_optimization"] and "offload_optimizer" not in plain["zero_optimization"]


def test_precision_rules() -> None:
    assert use_bf16("auto", "cuda") and use_bf16("bf16", "cuda")
    assert not use_bf16("auto", "cpu") and not use_bf16("fp32", "cuda") and not use_bf16("fp32", "cpu")
    with pytest.raises(SalmonInputError, match="needs a CUDA device"):
        use_bf16("bf16", "cpu")


def test_overrides_merge_key_by_key_but_never_set_batch_sizes() -> None:
    config = render_deepspeed_config(
        mode="zero3", layout=batch_layout(8, 8, 2), max_grad_norm=1.0, device_type="cpu",
        overrides={"zero_optimization": {"stage3_param_persistence_threshold": 0}, "steps_per_print": 5})
    assert config["zero_optimization"]["stage"] == 3  # kept
    assert config["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    assert config["steps_per_print"] == 5
    with pytest.raises(ValueError, match="train_batch_size"):
        render_deepspeed_config(mode="zero2", layout=batch_layout(8, 8, 2), max_grad_norm=1.0, device_type="cpu",
                                overrides={"train_batch_size": 4})


def _cfg(cls: Any, stage: str, *overrides: str) -> Any:
    required = {"sft": ["data=d.jsonl", "base_model=m", "output_dir=o"],
                "train_rm": ["instances=i.jsonl", "base_model=m", "output_dir=o"],
                "ppo": ["prompts=p.jsonl", "policy_model=m", "reward_model=r", "output_dir=o"]}[stage]
    return build_config(cls, stage=stage, overrides=required + list(overrides))


STAGES = [(SFTConfig, "sft"), (TrainRMConfig, "train_rm"), (PPOConfig, "ppo")]


@pytest.mark.parametrize(("cls", "stage"), STAGES)
def test_stage_configs_validate_the_deepspeed_keys(cls: Any, stage: str) -> None:
    assert _cfg(cls, stage).deepspeed == "off"
    assert _cfg(cls, stage, "deepspeed=off").deepspeed == "off"  # YAML reads a bare off as false
    cfg = _cfg(cls, stage, "deepspeed=zero3", "offload_param=true", "offload_optimizer=true", "precision=bf16",
               "deepspeed_overrides.zero_optimization.reduce_bucket_size=50000000")
    assert cfg.deepspeed_overrides == {"zero_optimization": {"reduce_bucket_size": 50000000}}
    for bad, message in [(["offload_optimizer=true"], "only apply with deepspeed"),
                         (["deepspeed=zero2", "offload_param=true"], "offload_param needs deepspeed: zero3"),
                         (["deepspeed=zero2", "deepspeed_overrides.gradient_accumulation_steps=2"],
                          "may not set gradient_accumulation_steps"),
                         (["deepspeed=zero4"], "deepspeed")]:
        with pytest.raises(SalmonInputError, match=message):
            _cfg(cls, stage, *bad)


def test_the_three_stages_share_identical_deepspeed_fields() -> None:
    fields = [{k: (repr(c.model_fields[k].annotation), c.model_fields[k].description,
                   c.model_fields[k].get_default(call_default_factory=True)) for k in DS_KEYS}
              for c, _ in STAGES]
    assert fields[0] == fields[1] == fields[2]
    assert all(fields[0][k][1] for k in DS_KEYS)  # documented


def test_launch_info_reads_torchrun_variables() -> None:
    assert launch_info({}) == LaunchInfo()
    assert launch_info({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == LaunchInfo(1, 2, 1, True)
    with pytest.raises(SalmonInputError, match="LOCAL_RANK not"):
        launch_info({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(SalmonInputError):
        launch_info({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert shard_of(list(range(8)), 0, 2) == [0, 1, 2, 3] and shard_of(list(range(8)), 1, 2) == [4, 5, 6, 7]
    with pytest.raises(ValueError):
        shard_of([1, 2, 3], 0, 2)


def test_several_torchrun_processes_without_deepspeed_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from salmon.distributed import session

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(SalmonInputError, match="torchrun started 2 processes"), session("off", "cpu"):
        pass


def test_whiten_over_ranks_uses_the_statistics_of_all_tokens() -> None:
    torch = pytest.importorskip("torch")
    from salmon.ppo.math import whiten

    x = torch.tensor([[1.0, 2.0, 0.0], [4.0, -1.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # two ranks holding the same rollouts: summing every statistic over them is whitening the batch twice over
    twice = whiten(torch.cat([x, x]), torch.cat([mask, mask]))[:2]
    assert torch.allclose(whiten(x, mask, all_sum=lambda t: 2 * t), twice, atol=1e-6)
    assert not torch.allclose(whiten(x, mask), twice, atol=1e-3)  # n-1 differs: the sums did matter
    # all_slots: the slot count is summed too (a rank that counted only its own slots would
    # halve the mean's denominator: the second line shows that this changes the result)
    both = whiten(torch.cat([x, x]), torch.cat([mask, mask]), slots=5)[:2]
    assert torch.allclose(whiten(x, mask, slots=5, all_sum=lambda t: 2 * t), both, atol=1e-6)
    assert not torch.allclose(whiten(x, mask, slots=10, all_sum=lambda t: 2 * t), both, atol=1e-3)


def _sft_data(tmp_path: Path) -> str:
    import random

    from salmon.core.io import write_jsonl
    from salmon.core.records import SFTExample
    from salmon.nano.world import make_prompts, make_response

    rng = random.Random(0)
    path = tmp_path / "sft.jsonl"
    write_jsonl(path, [SFTExample(example_id=p.prompt_id, instruction=p.instruction, prompt_type=p.prompt_type,
                                  response=make_response(p, rng) + "\n\n### User\n", source="nano")
                       for p in make_prompts(16, seed=2)])
    return str(path)


def test_sft_with_zero2_without_torchrun_is_one_rank_and_matches_plain_torch(tmp_path: Path,
                                                                            tiny_model: str) -> None:
    """Documented behaviour: deepspeed=zero2 with no torchrun variables trains as a single DeepSpeed rank."""
    pytest.importorskip("deepspeed")
    from salmon.stages.sft import run

    data = _sft_data(tmp_path)
    logs = {}
    for mode in ("off", "zero2"):
        cfg = build_config(SFTConfig, stage="sft", preset="nano", values=dict(
            data=data, base_model=tiny_model, output_dir=str(tmp_path / mode), batch_size=8, micro_batch_size=4,
            epochs=1.0, lora_r=4, save_every=100, log_every=1, device="cpu", deepspeed=mode))
        result = run(cfg)
        logs[mode] = [json.loads(x) for x in Path(result.outputs["train_log"]).read_text().splitlines()]
        assert result.metrics["finished"] and Path(result.outputs["adapter"], "adapter_model.safetensors").is_file()
    assert result.metrics["world_size"] == 1 and result.metrics["deepspeed"] == "zero2"
    # one rank, the same batches and the same AdamW: the same losses (up to float32 summation order)
    assert [e["step"] for e in logs["zero2"]] == [e["step"] for e in logs["off"]] == [1, 2]
    for a, b in zip(logs["off"], logs["zero2"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-4)
    import os

    assert "RANK" not in os.environ  # the single-rank variables are gone again
