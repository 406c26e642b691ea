"""`salmon demo`: the pipeline in the nano world through the CLI. The default tier checks bad
input; the slow run is the acceptance measurement of docs/results.md (the quick run is part of
tests/test_pipeline.py)."""

from __future__ import annotations

import json
import os
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


def _demo_args(*argv: str):  # type: ignore[no-untyped-def]
    from pipelines.cli import build_parser

    return build_parser().parse_args(["demo", *argv])


def test_smollm2_demo_runs_the_small_preset_on_the_real_model_with_held_out_principles() -> None:
    from pipelines.cli import SMALL_HOLDOUT, check_params, demo_params

    params = demo_params(_demo_args("--base", "smollm2", "--rl-principle", "detailed"))
    assert params["base_model_uri"] == "smollm2" and params["preset"] == "small"
    assert (params["selfalign_backend"], params["sample_backend"], params["label_backend"]) == ("hf", "hf", "rules")
    assert params["rl_principle_ids"] == ["detailed"] and params["policy_gate_principles"] == "nano:detailed"
    over = params["stage_overrides"]
    assert over["aggregate"]["holdout_principles"] == SMALL_HOLDOUT == over["eval_rm"]["zero_shot"]
    check_params(params)  # the plan task's checks accept them
    quick = demo_params(_demo_args("--base", "smollm2", "--quick", "--holdout", "structured", "--rl-principle",
                                   "detailed"))
    assert quick["stage_overrides"]["eval_policy"]["principle_sets"] == ["nano:detailed"]
    assert quick["nano_prompts"] < params["nano_prompts"] and quick["min_rm_accuracy"] == 0.0
    assert quick["stage_overrides"]["eval_rm"]["zero_shot"] == ["structured"]
    check_params(quick)
    none = demo_params(_demo_args("--base", "smollm2", "--holdout", ""))
    assert "holdout_principles" not in none["stage_overrides"].get("aggregate", {})


@pytest.mark.parametrize("argv, message", [
    (["--base", "smollm2", "--holdout", "brevity"], "brevity"),
    (["--base", "smollm2", "--holdout", "concise"], "is held out of the RM's training"),
    (["--holdout", "structured"], "applies to --base smollm2"),
])
def test_demo_refuses_bad_holdouts_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   argv: list[str], message: str) -> None:
    assert main(["demo", "--out", str(tmp_path / "d"), *argv]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "d").exists()


@pytest.mark.parametrize("preset", ["nano", "small"])
def test_every_stage_has_a_valid_preset_config(preset: str) -> None:
    from salmon.core.config import build_config
    from salmon.tasks.common import CONFIGS

    required = {"prompts": "p.jsonl", "output": "o.jsonl", "pairs": "p.jsonl", "judgements": "j.jsonl",
                "instances": "i.jsonl", "base_model": "smollm2", "output_dir": "d", "model": "m", "data": "d.jsonl",
                "policy_model": "smollm2", "reward_model": "r", "sources": [{"format": "shp", "uri": "s.jsonl"}]}
    for stage, config in CONFIGS.items():
        fields = config.model_fields
        values = {k: v for k, v in required.items() if k in fields and fields[k].is_required()}
        cfg = build_config(config, stage=stage, preset=preset, values=values)
        if preset == "small" and hasattr(cfg, "prompt_format"):
            assert cfg.prompt_format == "chat_template", stage  # a real chat model follows its own template


@pytest.mark.slow
def test_full_demo_meets_the_acceptance_thresholds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/results.md: the acceptance run (4000 prompts, 3 RM epochs, the preset's PPO schedule,
    every held-out prompt): held-out RM accuracy >= 0.90 and flip rate >= 0.85 in the nano world,
    method §10 item 10, PPO under `concise`, and a champion policy (about 25 minutes on 2 cores)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--rm-epochs", "3", "nano_prompts=4000", "ppo_steps=0",
                 "eval_limit=0", 'stage_overrides={"eval_rm": {"passes": 2}}']) == 0
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


@pytest.mark.slow
def test_default_smollm2_demo_holds_its_floors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/results.md, "The default run": `salmon demo --base smollm2` runs every task on
    SmolLM2-135M-Instruct within the 30-minute budget of 2 CPU cores (measured: 22 min 35 s), and
    its figures stay at the floors below the measured ones. The issue's goals (RM accuracy 0.85,
    PPO words -30 %) are not met on a CPU budget; the floors keep what it does reach."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "real"
    assert main(["demo", "--base", "smollm2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cached"] == [] and summary["seconds"] <= 30 * 60, summary["seconds"]
    stages, head = summary["stages"], summary["headline"]
    # the self-judge audit: 24 pairs, its order-averaged verdicts compared on every decided case
    label = stages["label"]["metrics"]
    assert label["audit_pairs"] == 24 and label["audit_mean_agreement_n"] >= 30
    assert head["self_judge_consistency"] <= 0.5  # SmolLM2-135M is no judge: why the checkers label
    # the RM: no worse than chance on held-out real answers (measured 0.56, n = 32), the two principles
    # held out of its training measured zero-shot
    ev = stages["eval_rm"]["metrics"]
    assert ev["accuracy_n"] >= 25 and head["rm_heldout_accuracy"] >= 0.5
    assert ev["flip_n"] >= 10 and head["rm_flip_rate"] is not None
    assert ev["zero_shot"]["structured"]["n"] >= 5 and set(ev["zero_shot"]) == {"structured", "refuse_harm"}
    assert stages["train_rm"]["metrics"]["instances"] >= 200 and stages["train_rm"]["metrics"]["train_loss"] < 0.69
    # PPO under `concise`: the KL stays bounded; words and adherence reported for both policies
    assert 0 < stages["ppo"]["metrics"]["kl"] <= 5 and abs(head["ppo_kl_to_sft"]) <= 5
    assert head["sft_words"] > 0 and head["ppo_words"] > 0 and "ppo_words_change" in head
    assert {"sft_adherence/concise", "ppo_adherence/concise", "ppo_stop_rate"} <= set(head)
    assert {"salmon-policy", "salmon-reward", "salmon-sft"} <= set(summary["models"])


@pytest.mark.slow
def test_quick_smollm2_demo_runs_every_task_on_the_real_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`salmon demo --base smollm2 --quick` (in .ci/run): every task runs on SmolLM2-135M-Instruct,
    with the checkers labelling, the self-judge audited, two principles held out of the RM and
    measured zero-shot, and both models registered."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "demo"
    assert main(["demo", "--base", "smollm2", "--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    stages = summary["stages"]
    assert set(stages) >= {"prompts", "selfalign", "sft", "sample", "label", "aggregate", "train_rm", "eval_rm",
                           "ppo", "eval_policy"}
    assert stages["selfalign"]["metrics"]["backend"] == "hf" and stages["selfalign"]["metrics"]["kept"] >= 1
    label = stages["label"]["metrics"]
    assert label["audit_pairs"] == 2 and 0 <= label["audit_position_consistent_rate"] <= 1
    assert stages["aggregate"]["metrics"]["holdout_principles"] == ["structured", "refuse_harm"]
    ev = stages["eval_rm"]["metrics"]
    assert set(ev["zero_shot"]) == {"structured", "refuse_harm"}
    head = summary["headline"]
    assert head["sft_words"] > 0 and head["ppo_words"] > 0 and head["ppo_kl_to_sft"] is not None
    assert "self_judge_consistency" in head and "rm_zero_shot_accuracy" in head
    assert {"salmon-policy", "salmon-reward"} <= set(summary["models"])
    report = capsys.readouterr().err
    assert "rm_zero_shot_accuracy" in report and "SALMON pipeline finished" in report
    # the registered policy loads where salmon is not installed and answers through the chat template
    from servers import load_in_venv, venv_without_salmon

    python = venv_without_salmon(tmp_path / "venv")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SALMON_", "PYTHON"))},
           "MLFLOW_TRACKING_URI": f"sqlite:///{(out / 'mlflow.db').resolve()}",
           "PATH": f"{python.parent}:/usr/bin:/bin"}
    uri = "models:/salmon-policy@candidate"
    loaded = load_in_venv(python, [uri], env, tmp_path)[uri]
    answers = loaded["answer"]
    assert isinstance(answers, list) and len(answers) == 2 and all(isinstance(a, str) and a.strip() for a in answers)
    assert not [a for a in answers if "<|im_" in a or "assistant\n" in a], answers
    assert str(loaded["settings"]["base_model"]).startswith("models:/m-")  # type: ignore[index]


def test_headline_reports_words_change_stop_rate_and_every_checker_adherence() -> None:
    from pipelines.local import headline

    pol = {"sft/response_words": 50.0, "ppo/response_words": 40.0, "sft/stop_rate": 0.5, "ppo/stop_rate": 0.75,
           "sft/adherence/concise": 0.2, "ppo/adherence/concise": 0.4, "sft/adherence/correct_arithmetic": 1.0,
           "ppo/adherence/correct_arithmetic": 0.5, "kl_to_baseline": 1.5, "win_rate/nano:concise": 0.6,
           "sft/reward/nano:concise": -0.1}
    head = headline({"stages": {"eval_policy": {"metrics": pol}, "label": {"metrics": {
        "audit_agreement": 0.5, "audit_position_consistent_rate": 0.25}}}})
    assert head["ppo_words_change"] == pytest.approx(-0.2)
    assert (head["sft_stop_rate"], head["ppo_stop_rate"]) == (0.5, 0.75)
    assert (head["sft_adherence/concise"], head["ppo_adherence/concise"]) == (0.2, 0.4)
    assert head["ppo_correct_arithmetic"] == 0.5 and head["ppo_win_rate/nano:concise"] == 0.6
    assert head["ppo_kl_to_sft"] == 1.5 and head["self_judge_consistency"] == 0.25
    assert not any("reward/" in k for k in head)
    assert "ppo_words_change" not in headline({"stages": {}})


def test_demo_stage_overrides_merge_per_stage_and_keep_the_held_out_principles() -> None:
    from pipelines.cli import SMALL_HOLDOUT, check_params, demo_params
    from salmon.core.errors import SalmonInputError

    params = demo_params(_demo_args("--base", "smollm2", 'stage_overrides={"train_rm": {"lora_layers": null}, '
                                    '"eval_rm": {"passes": 3}}', "rm_epochs=3"))
    over = params["stage_overrides"]
    assert over["train_rm"] == {"lora_layers": None} and params["rm_epochs"] == 3
    assert over["eval_rm"] == {"zero_shot": SMALL_HOLDOUT, "passes": 3}  # merged, the command line's key added
    assert over["aggregate"]["holdout_principles"] == SMALL_HOLDOUT
    check_params(params)
    nano = demo_params(_demo_args('stage_overrides={"eval_rm": {"passes": 2}}'))
    assert nano["stage_overrides"] == {"eval_rm": {"passes": 2}}  # the demo's passes=1, replaced
    with pytest.raises(SalmonInputError, match="stage_overrides"):
        check_params(demo_params(_demo_args("stage_overrides=[1, 2]")))
