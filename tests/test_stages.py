"""Stage recipes through their CLI: label resume, aggregate export, bad input, eval gates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from salmon.cli import main
from salmon.core.io import digest_path, read_jsonl, write_jsonl
from salmon.core.records import Judgement, PreferenceExport, ResponsePair, RMInstance
from salmon.nano.world import make_pairs, make_prompts

STAGES = ["prompts", "selfalign", "sft", "sample", "label", "aggregate", "pmp_data", "train_rm", "eval_rm", "ppo",
          "eval_policy"]


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


@pytest.mark.parametrize(("stage", "record", "key"), [
    ("sample", "prompts", "prompt_id"), ("label", "pairs", "pair_id"), ("aggregate", "judgements", "pair_id")])
def test_duplicate_ids_are_refused_naming_both_lines(tmp_path: Path, stage: str, record: str, key: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from salmon.judge.rules import judge_pairs_rules

    prompts = make_prompts(4, seed=1)
    pairs = make_pairs(prompts, seed=2)
    judged = judge_pairs_rules(pairs, ["concise"])
    files: dict[str, list[Any]] = {"prompts": prompts, "pairs": pairs, "judgements": judged}
    files[record] = [*files[record], files[record][1]]  # the second record again, as the last line
    for name, records in files.items():
        write_jsonl(tmp_path / f"{name}.jsonl", records)
    out = tmp_path / "out.jsonl"
    args = {"sample": ["sample", "--preset", "nano", f"prompts={tmp_path / 'prompts.jsonl'}"],
            "label": ["label", "--preset", "nano", f"pairs={tmp_path / 'pairs.jsonl'}", "progress=false"],
            "aggregate": ["aggregate", "--preset", "nano", f"pairs={tmp_path / 'pairs.jsonl'}",
                          f"judgements={tmp_path / 'judgements.jsonl'}"]}[stage]
    assert main([*args, f"output={out}"]) == 2
    err = capsys.readouterr().err
    last = len(files[record])
    assert f"{record}.jsonl:{last}: duplicate {key}" in err and "(first on line 2)" in err, err
    assert not out.exists()


def test_label_warns_when_the_judge_is_mostly_position_inconsistent(tiny_model: str, tmp_path: Path,
                                                                   nano_pairs_file: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A judge that always answers (a) is never position-consistent: label says so and records it."""
    from types import SimpleNamespace

    import torch

    import salmon.stages.label as label
    from salmon.judge.hf import HFJudge
    from salmon.modeling import load_tokenizer

    class AlwaysA(torch.nn.Module):
        def __init__(self, vocab: int, id_a: int) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.vocab, self.id_a = vocab, id_a

        def forward(self, input_ids, **kw):  # type: ignore[no-untyped-def]
            logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.vocab)
            logits[..., self.id_a] = 3.0
            return SimpleNamespace(logits=logits)

    tok = load_tokenizer(tiny_model)
    probe = HFJudge(model=AlwaysA(len(tok), 0), tokenizer=tok)
    monkeypatch.setattr(label, "_make_judge", lambda cfg, principles: HFJudge(
        model=AlwaysA(len(tok), probe.id_a), tokenizer=tok))
    out = tmp_path / "j.jsonl"
    assert main(["label", f"pairs={nano_pairs_file}", f"output={out}", "backend=hf", f"model={tiny_model}",
                 "principles=nano", "limit=3", "progress=false", "reuse_prefix=false"]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)["metrics"]
    assert metrics["position_consistent_rate"] == 0.0 and metrics["position_consistency_below_half"] is True
    assert "warning: the judge picks the same output in both orders on only 0.0% of checks" in captured.err


def test_eval_rm_with_nothing_to_score_is_an_input_error(tiny_rm: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Held-out pairs whose every judgement is a tie (an inconsistent judge): exit 2 naming why,
    and no metrics file (none with NaN)."""
    pairs = make_pairs(make_prompts(12, seed=3), seed=4)
    held = [p for p in pairs if p.prompt.split == "heldout"]
    assert held
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    ties = [Judgement(pair_id=p.pair_id, principle_id=pid, delta_12=2.0, delta_21=-2.0, backend="hf")
            for p in pairs for pid in ("concise", "detailed", "structured")]
    write_jsonl(tmp_path / "judgements.jsonl", ties)
    out = tmp_path / "eval"
    code = main(["eval_rm", f"model={tiny_rm}", f"pairs={tmp_path / 'pairs.jsonl'}",
                 f"judgements={tmp_path / 'judgements.jsonl'}", f"output_dir={out}", "principles=nano",
                 "sensitivity=[concise, detailed]", "device=cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "no instance to score" in err and f"0 of their {3 * len(held)} judgements" in err
    assert not (out / "metrics.json").exists()


def test_metrics_files_refuse_nan() -> None:
    from salmon.core.io import finite_or_none, write_json

    with pytest.raises(ValueError):
        write_json("/nonexistent/never-written.json", {"accuracy": float("nan")})
    assert finite_or_none({"a": [1.0, float("inf")], "b": {"c": float("nan")}}) == {"a": [1.0, None], "b": {"c": None}}
