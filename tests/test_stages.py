"""Stage recipes through their CLI: label resume, aggregate export, bad input, eval gates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from salmon.cli import main
from salmon.core.io import digest_path, read_jsonl, write_jsonl
from salmon.core.records import Judgement, PreferenceExport, ResponsePair, RMInstance
from salmon.nano.world import make_pairs, make_prompts

STAGES = ["prompts", "selfalign", "sft", "sample", "label", "aggregate", "train_rm", "eval_rm", "ppo", "eval_policy"]


@pytest.mark.parametrize("command", [[], ["demo"], ["principles", "validate"], ["rm", "score"],
                                     ["nano", "build"], *[[s] for s in STAGES]])
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_stage_help_lists_documented_config_keys(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["aggregate", "--help"])
    out = capsys.readouterr().out
    assert "negation_p" in out and "Chance each shown principle is negated" in out


def test_label_resumes_after_a_kill(tmp_path: Path, nano_pairs_file: Path) -> None:
    out = tmp_path / "judgements.jsonl"
    args = ["label", "--preset", "nano", f"pairs={nano_pairs_file}", f"output={out}", "progress=false"]
    assert main(args) == 0
    full = read_jsonl(out, Judgement)
    assert len(full) == 24 * 6
    # a killed run leaves a progress file: 10 complete pairs and half a line
    partial = out.with_name(out.name + ".partial")
    out.unlink()
    lines = [j.model_dump_json() + "\n" for j in full[: 10 * 6 + 3]]
    partial.write_text("".join(lines) + lines[-1][:20])
    assert main(args) == 0
    resumed = read_jsonl(out, Judgement)
    assert resumed == full
    assert not partial.exists()


def test_label_counts_what_it_judged_now(tmp_path: Path, nano_pairs_file: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "j.jsonl"
    base = ["label", "--preset", "nano", f"pairs={nano_pairs_file}", f"output={out}", "progress=false"]
    assert main([*base, "limit=5"]) == 0
    capsys.readouterr()
    assert main(base) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["pairs_judged_now"] == 19


def test_rules_judge_rejects_principles_without_checkers(tmp_path: Path, nano_pairs_file: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "j.jsonl"
    code = main(["label", f"pairs={nano_pairs_file}", f"output={out}", "backend=rules"])
    assert code == 2
    assert "no checker" in capsys.readouterr().err
    assert not out.exists()


def test_aggregate_writes_instances_and_preference_export(tmp_path: Path, nano_pairs_file: Path) -> None:
    judgements = tmp_path / "j.jsonl"
    assert main(["label", "--preset", "nano", f"pairs={nano_pairs_file}", f"output={judgements}",
                 "progress=false"]) == 0
    out = tmp_path / "instances.jsonl"
    assert main(["aggregate", "--preset", "nano", f"pairs={nano_pairs_file}",
                 f"judgements={judgements}", f"output={out}", "splits=[train, heldout]"]) == 0
    instances = read_jsonl(out, RMInstance)
    export = read_jsonl(tmp_path / "instances.preferences.jsonl", PreferenceExport)
    assert len(instances) == len(export) > 0
    for inst, pref in zip(instances, export, strict=True):
        chosen = inst.output_1 if inst.preference == 1 else inst.output_2
        assert pref.chosen == chosen and pref.prompt == inst.instruction


def test_bad_input_file_exits_2_without_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, make_pairs(make_prompts(3, seed=1), seed=2))
    digest_path(pairs).unlink()  # a hand-edited file: the bad line itself is reported
    with open(pairs, "a") as f:
        f.write('{"pair_id": 5}\n')
    out = tmp_path / "j.jsonl"
    assert main(["label", "--preset", "nano", f"pairs={pairs}", f"output={out}"]) == 2
    err = capsys.readouterr().err
    assert f"{pairs}:4" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["aggregate", f"pairs={pairs}", "output=x", "nonsense=1"]) == 2
    assert "unknown key 'nonsense'" in capsys.readouterr().err


def test_sample_nano_backend_gives_explicit_pair_ids(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, make_prompts(10, seed=4))
    out = tmp_path / "pairs.jsonl"
    assert main(["sample", "--preset", "nano", f"prompts={prompts}", f"output={out}"]) == 0
    pairs = read_jsonl(out, ResponsePair)
    assert [p.pair_id for p in pairs] == [f"{p.prompt.prompt_id}/pair" for p in pairs]
    assert all(p.output_1 != p.output_2 for p in pairs)
