"""Zero-shot principles: aggregate holds principles out of the RM's training instances, train_rm
records what it was trained on, and eval_rm measures a held-out principle from its definition
alone (accuracy and flip rate), refusing one the RM has seen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from salmon.cli import main
from salmon.core.io import read_jsonl, write_jsonl
from salmon.core.records import RMInstance
from salmon.nano.world import make_pairs, make_prompts

HELD = ["concise", "detailed"]


@pytest.fixture()
def judged(tmp_path: Path) -> tuple[Path, Path]:
    """Nano pairs and their rules-judge judgements under every nano principle."""
    pairs, judgements = tmp_path / "pairs.jsonl", tmp_path / "judgements.jsonl"
    write_jsonl(pairs, make_pairs(make_prompts(80, seed=11), seed=12))
    assert main(["label", f"pairs={pairs}", f"output={judgements}", "backend=rules", "principles=nano",
                 "progress=false"]) == 0
    return pairs, judgements


def test_aggregate_holds_principles_out_of_every_instance(tmp_path: Path, judged: tuple[Path, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    pairs, judgements = judged
    out = tmp_path / "instances.jsonl"
    assert main(["aggregate", f"pairs={pairs}", f"judgements={judgements}", f"output={out}", "principles=nano",
                 f"holdout_principles=[{', '.join(HELD)}]"]) == 0
    shown = {line.principle_id for inst in read_jsonl(out, RMInstance) for line in inst.principles}
    assert shown and not shown & set(HELD), shown
    assert json.loads(capsys.readouterr().out)["metrics"]["holdout_principles"] == HELD

    # holding out every principle leaves nothing to train on: one error, no output
    everything = ["concise", "detailed", "structured", "no_self_praise", "correct_arithmetic", "refuse_harm"]
    out2 = tmp_path / "none.jsonl"
    assert main(["aggregate", f"pairs={pairs}", f"judgements={judgements}", f"output={out2}", "principles=nano",
                 f"holdout_principles=[{', '.join(everything)}]"]) == 2
    assert "leaves no training dimension" in capsys.readouterr().err and not out2.exists()


def test_train_rm_records_the_principles_it_was_trained_on(tmp_path: Path, tiny_model: str,
                                                           judged: tuple[Path, Path]) -> None:
    pairs, judgements = judged
    inst = tmp_path / "instances.jsonl"
    assert main(["aggregate", f"pairs={pairs}", f"judgements={judgements}", f"output={inst}", "principles=nano",
                 "holdout_principles=[concise]", "passes=1"]) == 0
    out = tmp_path / "rm"
    assert main(["train_rm", f"instances={inst}", f"base_model={tiny_model}", f"output_dir={out}", "lora_r=4",
                 "batch_size=4", "micro_batch_size=4", "epochs=0.1", "model_max_length=256", "query_len=32",
                 "response_len=96", "device=cpu"]) == 0
    meta = json.loads((out / "model" / "rm.json").read_text())
    expected = sorted({line.principle_id for i in read_jsonl(inst, RMInstance) for line in i.principles})
    assert meta["trained_principles"] == expected and "concise" not in expected


def _rm_with(tiny_rm: str, tmp_path: Path, trained: list[str]) -> str:
    """A copy of the tiny RM folder whose rm.json lists ``trained`` as its training principles."""
    import shutil

    from salmon.core.io import write_json

    dst = tmp_path / "rm"
    shutil.copytree(tiny_rm, dst)
    meta = json.loads((dst / "rm.json").read_text())
    write_json(dst / "rm.json", {**meta, "trained_principles": trained})
    (dst / "SHA256SUMS").unlink(missing_ok=True)  # the edited folder is re-hashed on read
    return str(dst)


def _eval(rm: str, pairs: Path, judgements: Path, out: Path, *extra: str) -> int:
    return main(["eval_rm", f"model={rm}", f"pairs={pairs}", f"judgements={judgements}", f"output_dir={out}",
                 "principles=nano", "sensitivity=[structured, no_self_praise]", "splits=[train, heldout]",
                 "device=cpu", "passes=1", *extra])


def test_eval_rm_zero_shot_measures_held_out_principles(tiny_rm: str, tmp_path: Path, judged: tuple[Path, Path],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """An RM that rewards shorter input whatever the principle says: under 'concise' alone it agrees
    with the judge, under 'detailed' alone it disagrees, and showing the negative definition never
    flips it (flip rate exactly 0). The counts are the pairs the judge decided under each."""
    import salmon.reward.model as rm_model
    from salmon.core.aggregate import index_judgements, principle_score
    from salmon.core.records import Judgement, ResponsePair

    pairs, judgements = judged

    def shorter_is_better(model: Any, rows: list[list[int]], pad_id: int, batch_size: int) -> list[float]:
        return [-float(len(r)) for r in rows]

    monkeypatch.setattr(rm_model, "score_sequences", shorter_is_better)
    rm = _rm_with(tiny_rm, tmp_path, ["structured", "no_self_praise", "correct_arithmetic", "refuse_harm"])
    out = tmp_path / "eval"
    assert _eval(rm, pairs, judgements, out, f"zero_shot=[{', '.join(HELD)}]") == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    index = index_judgements(read_jsonl(judgements, Judgement))
    for pid in HELD:
        decided = sum(1 for p in read_jsonl(pairs, ResponsePair)
                      if principle_score(index[p.pair_id][pid].delta_12, index[p.pair_id][pid].delta_21, 1.0) != 0)
        z = m["zero_shot"][pid]
        assert z["n"] == decided > 10 and z["flip_n"] == decided, (pid, z)
        assert z["flip_rate"] == 0.0, z
    assert m["zero_shot"]["concise"]["accuracy"] >= 0.9 and m["zero_shot"]["detailed"]["accuracy"] <= 0.1, m
    assert m["zero_shot_flip_rate"] == 0.0
    # the held-out principles are not in the other metrics' instances
    assert not set(m["accuracy_by_principle"]) & set(HELD), m["accuracy_by_principle"]
    assert "Zero-shot principles" in (out / "report.md").read_text()


def test_eval_rm_refuses_a_zero_shot_principle_the_rm_was_trained_on(tiny_rm: str, tmp_path: Path,
                                                                    judged: tuple[Path, Path],
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    pairs, judgements = judged
    rm = _rm_with(tiny_rm, tmp_path, ["concise", "structured"])
    out = tmp_path / "eval"
    assert _eval(rm, pairs, judgements, out, "zero_shot=[concise]") == 2
    err = capsys.readouterr().err
    assert "zero_shot=concise" in err and "trained on concise" in err and "holdout_principles" in err, err
    assert not out.exists()


def test_judge_agreement_counts_by_hand() -> None:
    from salmon.core.aggregate import judge_agreement
    from salmon.core.records import Judgement

    def j(pid: str, a: float, b: float, backend: str = "hf") -> Judgement:
        return Judgement(pair_id="p", principle_id=pid, delta_12=a, delta_21=b, backend=backend)

    ref = [j("a", 1, 1, "rules"), j("b", -1, -1, "rules"), j("c", 1, 1, "rules"), j("d", 0, 0, "rules")]
    # a: agrees; b: disagrees; c: inconsistent (a tie); d: the checker has no opinion
    got = [j("a", 2, 1), j("b", 1, 3), j("c", 1, -1), j("d", 1, 1)]
    # the order-averaged deltas: a +1.5 agrees, b +2 disagrees, c 0 (no opinion)
    assert judge_agreement(ref, got) == {"decided": 3, "consistent_rate": 0.6667, "agreement": 0.5,
                                         "agreement_n": 2, "mean_agreement": 0.5, "mean_agreement_n": 2}
    # an inconsistent verdict whose mean leans the checker's way counts in the mean agreement only
    leaning = [j("a", 2, 1), j("b", 1, 3), j("c", 3, -1), j("d", 1, 1)]
    assert judge_agreement(ref, leaning) == {"decided": 3, "consistent_rate": 0.6667, "agreement": 0.5,
                                             "agreement_n": 2, "mean_agreement": 0.6667, "mean_agreement_n": 3}
    assert judge_agreement(ref, []) == {"decided": 0, "consistent_rate": None, "agreement": None, "agreement_n": 0,
                                        "mean_agreement": None, "mean_agreement_n": 0}


def test_label_audits_the_hf_judge_against_the_checkers(tiny_model: str, judged: tuple[Path, Path],
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The checkers label every pair; the hf judge's verdicts on the first pairs are only reported,
    and the written judgements are the checkers' alone."""
    pairs, reference = judged
    out = tmp_path / "audited.jsonl"
    assert main(["label", f"pairs={pairs}", f"output={out}", "backend=rules", "principles=nano", "audit_pairs=3",
                 f"model={tiny_model}", "adapter=null", "progress=false", "device=cpu"]) == 0
    captured = capsys.readouterr()
    m = json.loads(captured.out)["metrics"]
    assert out.read_bytes() == reference.read_bytes()
    assert m["audit_pairs"] == 3 and 0 <= m["audit_position_consistent_rate"] <= 1
    assert 0 < m["audit_decided_by_checkers"] <= 3 * 6 and "audit: the hf judge on 3 pairs" in captured.err
    assert set(m) >= {f"audit_agreement/{p}" for p in ("concise", "detailed", "refuse_harm")}
    assert m["audit_agreement_n"] <= m["audit_mean_agreement_n"] <= m["audit_decided_by_checkers"]

    assert main(["label", f"pairs={pairs}", f"output={tmp_path / 'x.jsonl'}", "backend=rules", "principles=nano",
                 "audit_pairs=3", "progress=false"]) == 2
    assert "audit_pairs=3: the audit needs the judge model" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
