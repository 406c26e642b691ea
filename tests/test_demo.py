"""`salmon demo`: the nano chain end to end. The quick run is a smoke test of every stage and of
summary.json; the slow run is the acceptance measurement of docs/results.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from salmon.cli import main

pytest.importorskip("torch")


def check_summary(out: Path) -> dict:  # type: ignore[type-arg]
    summary = json.loads((out / "summary.json").read_text())
    for stage in ("nano_model", "prompts", "selfalign", "sft", "sample", "label", "label_hf", "aggregate",
                  "train_rm", "eval_rm", "ppo", "eval_policy"):
        assert stage in summary["stages"], stage
        for path in summary["stages"][stage]["outputs"].values():
            assert Path(path).exists(), path
    head = summary["headline"]
    for key in ("rm_heldout_accuracy", "rm_flip_rate", "rm_principle_sensitivity"):
        assert 0.0 <= head[key] <= 1.0
    return summary


def test_quick_demo_runs_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--hf-judge-pairs", "4"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert "response_words" in captured.err and "kl_to_baseline" in captured.err  # the before/after table
    summary = check_summary(out)
    assert printed == summary["headline"]
    assert summary["stages"]["label"]["metrics"]["judgements"] == summary["stages"]["sample"]["metrics"]["pairs"] * 6
    assert summary["stages"]["eval_rm"]["metrics"]["accuracy_n"] > 0
    praise = summary["stages"]["eval_rm"]["metrics"]["self_praise"]
    assert praise["n"] > 0 and praise["interventions"] == ["no_self_praise"]
    assert summary["stages"]["ppo"]["metrics"]["finished"] and summary["stages"]["ppo"]["metrics"]["steps"] >= 2
    assert summary["stages"]["sft"]["metrics"]["finished"]
    head = summary["headline"]
    assert head["rl_principle"] == "concise" and head["sft_words"] > 0 and head["ppo_words"] > 0


def test_demo_rejects_an_unknown_rl_principle_before_any_work(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "d"), "--rl-principle", "brevity"]) == 2
    assert "brevity" in capsys.readouterr().err and not (tmp_path / "d").exists()


@pytest.mark.slow
def test_full_demo_meets_the_acceptance_thresholds(tmp_path: Path) -> None:
    """docs/results.md: held-out RM accuracy >= 0.90 and flip rate >= 0.85 in the nano world
    and method §10 item 10, then PPO and eval_policy (about 23 minutes on 2 cores)."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--rm-epochs", "3"]) == 0
    summary = check_summary(out)
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
