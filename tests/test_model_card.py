"""The model card written into each registered version's description (salmon.core.model_card)."""

from __future__ import annotations

from salmon.core.model_card import DatasetLine, GateFigure, model_card, principle_sets


def test_gate_results_read_min_and_max_thresholds() -> None:
    assert GateFigure("acc", 0.6, 0.55, "min").result() == "pass"
    assert GateFigure("acc", 0.5, 0.55, "min").result() == "FAIL"
    assert GateFigure("kl", 2.0, 1.5, "max").result() == "FAIL"
    assert GateFigure("kl", 1.5, 1.5, "max").result() == "pass"
    assert GateFigure("acc", None, 0.5, "min").result() == "missing"
    assert GateFigure("acc", 0.5, None, "min").result() == "not gated"


def test_principle_sets_come_from_the_version_tags() -> None:
    tags = {"salmon.principles.nano.digest": "sha256:aa", "salmon.principles.nano.uri": "prompts:/p/1",
            "salmon.principles.self_align.digest": "sha256:bb", "salmon.stage": "ppo", "salmon.principles": "x",
            "salmon.principles.data/identity.yaml.digest": "sha256:cc"}
    assert principle_sets(tags) == [("data/identity.yaml", "sha256:cc", ""), ("nano", "sha256:aa", "prompts:/p/1"),
                                    ("self_align", "sha256:bb", "")]


def test_the_card_names_base_principles_data_and_gates() -> None:
    card = model_card(
        name="salmon-policy", version="3", stage="ppo", kfp_run_id="run-1", git_sha="0123456789abcdef",
        base_source="nano", base_reference="models:/m-abc", base_digest="sha256:" + "1" * 64,
        tags={"salmon.principles.nano.digest": "sha256:" + "2" * 64, "salmon.principles.nano.uri": "prompts:/n/2"},
        datasets=[DatasetLine("sample", "pairs", "sha256:" + "3" * 64, "40")],
        gates=[GateFigure("eval_rm accuracy", 0.625, 0.55, "min"),
               GateFigure("eval_policy kl_to_baseline", 2.5, 2.0, "max"),
               GateFigure("eval_rm flip_rate", 0.1, None, "min")],
        champion=False, reasons=["eval_policy kl_to_baseline 2.5 > 2"])
    lines = card.splitlines()
    assert lines[0] == "# salmon-policy v3"
    assert "Trained by salmon `0123456789ab` in pipeline run `run-1`." in lines
    assert "- source: `nano`" in lines and "- loaded from: `models:/m-abc`" in lines
    assert f"- content digest: `sha256:{'1' * 64}`" in lines
    assert f"| nano | `sha256:{'2' * 12}` | `prompts:/n/2` |" in lines
    assert f"| sample | pairs | 40 | `sha256:{'3' * 12}` |" in lines
    assert "| eval_rm accuracy | 0.625 | ≥ 0.55 | pass |" in lines
    assert "| eval_policy kl_to_baseline | 2.5 | ≤ 2 | FAIL |" in lines
    assert "| eval_rm flip_rate | 0.1 | - | not gated |" in lines
    assert "Champion: no (eval_policy kl_to_baseline 2.5 > 2)." in lines
    assert 'model = mlflow.pyfunc.load_model("models:/salmon-policy/3")' in lines


def test_a_card_without_principles_or_data_says_so() -> None:
    card = model_card(name="salmon-reward", version="1", stage="train_rm", kfp_run_id="", git_sha="",
                      base_source="", base_reference="", base_digest="", tags={}, datasets=[], gates=[],
                      champion=True, reasons=[])
    assert "No principle set recorded." in card and "No dataset recorded." in card
    assert "Champion: yes, every gate passed." in card and '"principles": ["Be concise."]' in card
    assert "trained by salmon `unknown`" in card.lower()
