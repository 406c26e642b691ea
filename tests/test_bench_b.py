"""The ppo, sampling and pipeline benchmarks: structure and invariants, never timings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from salmon.core.io import write_jsonl
from salmon.nano.world import make_prompts


def _ppo_values(tiny_model: str, tmp_path: Path) -> dict[str, object]:
    from salmon.bench.ppo import build_lora_rm

    rm = build_lora_rm(tiny_model, tmp_path / "rm", lora_r=4)
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, make_prompts(12, seed=7, heldout_fraction=0.0))
    return {"prompts": str(prompts), "policy_model": tiny_model, "reward_model": rm, "rollout_batch_size": 2,
            "step_batch_size": 2, "forward_batch_size": 2, "response_len": 8, "total_steps": 2, "lora_r": 4,
            "lora_alpha": 8, "ppo_epochs": 1, "save_every": 100, "device": "cpu", "prompt_splits": None}


@pytest.mark.parametrize("layout", ["shared", "separate"])
def test_ppo_step_split_adds_up_to_the_step(tiny_model: str, tmp_path: Path, layout: str) -> None:
    import salmon.stages.ppo as stage
    from salmon.bench.ppo import PHASES, phase_medians, timed_ppo
    from salmon.turns import PolicyTurns

    before = (PolicyTurns.generate, stage.build_roles)
    values = {**_ppo_values(tiny_model, tmp_path), "role_layout": layout, "output_dir": str(tmp_path / "out")}
    out = timed_ppo(values)
    assert (PolicyTurns.generate, stage.build_roles) == before  # the stage is left as it was
    assert len(out["steps"]) == 2 and len(out["tokens"]) == 2
    for step in out["steps"]:
        assert step["step"] > 0
        for p in ("generation", "scoring", "reference_value", "learning"):
            assert 0 < step[p] < step["step"], (p, step)
        assert step["other"] >= -1e-9
        assert abs(sum(step[p] for p in PHASES) - step["step"]) < 1e-6
    assert all(0 < t <= 2 * 8 for t in out["tokens"])  # rollouts x response_len at most
    assert out["peak_kib"] >= out["rss_roles_kib"] >= out["rss_imports_kib"] > 0
    med = phase_medians(out)
    assert med["tokens_per_s"] > 0 and med["step"] > 0
    assert (tmp_path / "out" / "policy" / "adapter_model.safetensors").is_file()  # the stage finished


def test_ppo_memory_comparison_direction() -> None:
    from salmon.bench.common import Comparison

    # shared half of separate is exactly the goal; more than half misses it
    assert Comparison("m", "MiB", baseline=1000, salmon=500, better="lower", goal=2.0).met is True
    assert Comparison("m", "MiB", baseline=1000, salmon=600, better="lower", goal=2.0).met is False


def test_sampling_skips_without_the_vllm_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from salmon.bench import sampling
    from salmon.bench.runner import SkipBench

    monkeypatch.setenv("SALMON_VLLM_PYTHON", str(tmp_path / "missing" / "python"))
    with pytest.raises(SkipBench, match="no vLLM venv"):
        sampling.run(quick=True, work=tmp_path)


def test_sampling_counts_tokens(tiny_model: str) -> None:
    from salmon.bench.sampling import count_tokens
    from salmon.modeling import load_tokenizer

    tok = load_tokenizer(tiny_model)
    assert count_tokens(tok, []) == 0
    assert count_tokens(tok, [("a b", "")]) == len(tok.encode("a b", add_special_tokens=False)) > 0


@pytest.mark.vllm
def test_sampling_bench_both_backends(tmp_path: Path) -> None:
    from salmon.bench import sampling

    if not sampling.vllm_python().is_file():
        pytest.skip("no vLLM venv: make vllm-env")
    result = sampling.run(quick=True, work=tmp_path)
    f = result.figures
    assert f["hf.tokens"] > 0 and f["openai.tokens"] > 0 and f["vllm_startup_s"] > 0
    assert {c.metric for c in result.comparisons} == {"sample throughput", "sample wall time"}


def test_pipeline_direct_side_resolves_every_stage_like_the_tasks(tmp_path: Path) -> None:
    """The direct side's configs: the plan's preset and overrides, the principle values, the
    component's values; an unknown key (a drift from components/stages.py) would raise."""
    pytest.importorskip("kfp")
    from pipelines.bench import STAGES, TINY_PARAMS, pipeline_values, stage_config
    from salmon.tasks.plan import plan_task

    p = pipeline_values(TINY_PARAMS)
    assert p["nano_prompts"] == TINY_PARAMS["nano_prompts"] and p["preset"] == "nano"
    plans = plan_task(preset=p["preset"], stage_overrides=p["stage_overrides"], selfalign_rules="",
                      label_principles="", rl_principles="", params={}, register=False)
    assert set(STAGES) == set(plans)
    f = str(tmp_path / "x")
    cfg = stage_config("ppo", plans["ppo"], {"prompts": f, "policy_model": f, "reward_model": f, "output_dir": f,
                                             "total_steps": 1})
    assert cfg.rollout_batch_size == 4 and cfg.total_steps == 1  # the tiny override reached the config
    assert cfg.rl_principles == "nano"  # the preset's principle set, via the plan's refs
    rm = stage_config("eval_rm", plans["eval_rm"], {"model": f, "pairs": f, "judgements": f, "output_dir": f})
    assert rm.passes == 1
    json.dumps(TINY_PARAMS)  # pipeline parameters must be JSON
