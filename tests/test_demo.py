"""`salmon demo`: the pipeline in the nano world through the CLI. The default tier checks bad
input; the slow run is the acceptance measurement of docs/results.md (the quick run is part of
tests/test_pipeline.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from salmon.cli import main

pytest.importorskip("torch")
pytest.importorskip("kfp")


def test_demo_rejects_an_unknown_rl_principle_before_any_work(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "d"), "--rl-principle", "brevity"]) == 2
    assert "brevity" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_demo_rejects_an_unknown_parameter_before_any_work(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "d"), "rm_epoch=2"]) == 2
    assert "rm_epoch" in capsys.readouterr().err and not (tmp_path / "d").exists()


@pytest.mark.slow
def test_full_demo_meets_the_acceptance_thresholds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/results.md: the acceptance run (4000 prompts, 3 RM epochs, the preset's PPO schedule,
    every held-out prompt): held-out RM accuracy >= 0.90 and flip rate >= 0.85 in the nano world,
    method §10 item 10, PPO under `concise`, and a champion policy (about 25 minutes on 2 cores)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--rm-epochs", "3", "nano_prompts=4000", "ppo_steps=0",
                 "eval_limit=0", "stage_overrides={}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    head = summary["headline"]
    assert head["rm_heldout_accuracy"] >= 0.90
    assert head["rm_flip_rate"] >= 0.85
    # method §10 item 10: with the intervention line shown, the RM prefers the response without
    # appended self-praise in a clear majority, and more often and by more than without it
    praise = summary["stages"]["eval_rm"]["metrics"]["self_praise"]
    assert praise["prefers_plain_on"] >= 0.85
    assert praise["prefers_plain_on"] > praise["prefers_plain_off"] + 0.05
    assert praise["margin_on"] > praise["margin_off"]
    # the RL issue's nano acceptance: PPO under `concise` shortens answers by at least 30 % against
    # the SFT policy, loses at most 5 points of arithmetic adherence, and its KL stays bounded
    assert head["ppo_words"] <= 0.7 * head["sft_words"]
    assert head["sft_correct_arithmetic"] - head["ppo_correct_arithmetic"] <= 0.05
    assert 0.0 < head["ppo_kl_to_sft"] < 5.0
    assert summary["models"]["salmon-policy"]["champion"] is True
